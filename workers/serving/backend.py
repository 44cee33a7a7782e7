"""What every serving backend is given and offers (workers.serving picks one per process)."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from portllm_engine.prompt import PromptFormat, Turn


@dataclass(frozen=True)
class Served:
    """What answers in a channel: the live rollout's patch on its base."""

    assistant: str
    adapter: str  # the patch's name on a resident base or engine: `patch-<id>`
    patch_dir: Path
    fingerprint: str  # the base's
    base_dir: Path
    label: str  # "demo/v2": the base as PORTLLM_VLLM_URLS and the logs name it
    prompt: PromptFormat  # the assistant's: the format its patch was scored in
    rollout_id: int


class ServingBackend(Protocol):
    def answer(self, served: Served, turns: Sequence[Turn]) -> Iterator[str]:
        """The answer to the conversation's last question, piece by piece as it is generated."""

    def warm(self, served: Served) -> None:
        """Make the next answer fast: the base loaded (or its engine started), the patch on it."""

    def close(self) -> None:
        """Let go of what the backend runs (engines); the process is ending."""
