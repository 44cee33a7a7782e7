"""What every world's builder shares: a cache keyed by the recipe's hash (locked, built in a
staging folder and renamed into place), progress per stage, seeded continued pretraining."""
from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from portllm_engine.progress import quiet_transformers

Progress = Callable[[float, str], None]


@dataclass
class World:
    root: Path
    bases: dict[str, Path]
    patch: Path
    train_data: Path
    suite: Path
    suite_mc: Path | None
    questions: list[str] = field(default_factory=list)
    system_prompt: str = ""  # the assistant's, which its patch was trained with
    # Per evolved base: a patch trained fresh on it with the same recipe, and its KPI accuracy.
    fresh_patches: dict[str, Path] = field(default_factory=dict)
    fresh_accuracy: dict[str, float] = field(default_factory=dict)


def world_from(root: Path, meta: dict[str, Any]) -> World:
    """The world a `world.json` describes (its paths are relative to the world's root)."""
    fresh = meta.get("fresh_patches", {})
    return World(
        root=root,
        bases={name: root / rel for name, rel in meta["bases"].items()},
        patch=root / meta["patch"],
        train_data=root / meta["train_data"],
        suite=root / meta["suite"],
        suite_mc=root / meta["suite_mc"] if meta.get("suite_mc") else None,
        questions=list(meta["questions"]),
        system_prompt=meta.get("system_prompt", ""),
        fresh_patches={name: root / entry["patch"] for name, entry in fresh.items()},
        fresh_accuracy={name: entry["accuracy"] for name, entry in fresh.items()},
    )


def load_cached(root: Path, recipe_hash: str) -> World | None:
    """The world at root when it was built from the recipe with this hash, else None."""
    try:
        meta = json.loads((Path(root) / "world.json").read_text())
    except (OSError, ValueError):
        return None
    return world_from(Path(root), meta) if meta.get("recipe_hash") == recipe_hash else None


def build_cached(
    root: Path, recipe_hash: str, build: Callable[[Path, Progress], dict[str, Any]], *, threads: int,
    progress: Progress | None = None,
) -> World:
    """Reuse the world at root, or run `build(staging, progress)` (which writes the files and
    returns world.json's content) and move the result into place."""
    root = Path(root).expanduser().resolve()
    report = progress or (lambda fraction, step: None)
    with locked(root):
        world = load_cached(root, recipe_hash)
        if world is not None:
            report(1.0, "reused")
            return world
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-build-", dir=root.parent))
        try:
            with torch_threads(threads), quiet_transformers():
                meta = build(staging, report)
            (staging / "world.json").write_text(json.dumps({"recipe_hash": recipe_hash, **meta}, indent=2) + "\n")
            if root.exists():
                stale = root.parent / f".{root.name}-stale-{os.getpid()}"
                os.rename(root, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.rename(staging, root)  # atomic: readers see the old world or the whole new one
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return load_cached(root, recipe_hash)


class Stages:
    """One progress bar over a whole build: each stage owns a share of it, and its measured
    seconds are kept for world.json."""

    def __init__(self, shares: dict[str, float], report: Progress) -> None:
        self.shares, self.report = shares, report
        self.done = 0.0
        self.seconds: dict[str, float] = {}
        self.started = self._mark = time.perf_counter()

    def progress(self, name: str) -> Callable[[float], None]:
        start = self.done
        return lambda fraction: self.report(start + self.shares[name] * fraction, name)

    def finish(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._mark, 1)
        self._mark = now
        self.done += self.shares[name]
        self.report(self.done, name)

    def total(self) -> float:
        return round(time.perf_counter() - self.started, 1)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(count, os.cpu_count() or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def locked(root: Path) -> Iterator[None]:
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # a second builder waits, then reuses the first's world
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def pretrain(model, tokenizer, lines: list[str], *, steps: int, lr: float, batch: int, seed: int,
             progress: Callable[[float], None]) -> None:
    """Causal LM training on whole lines (each … EOS), linear warm-up then linear decay."""
    import torch

    encoded = [tokenizer(line)["input_ids"] + [tokenizer.eos_token_id] for line in lines]
    # Batches drawn from one length bucket at a time: little padding, so little wasted compute.
    buckets: dict[int, list[list[int]]] = {}
    for ids in encoded:
        buckets.setdefault(len(ids) // 8, []).append(ids)
    groups = [buckets[key] for key in sorted(buckets)]
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    pad = tokenizer.pad_token_id
    model.train()
    for step in range(steps):
        group = rng.choices(groups, weights=[len(g) for g in groups])[0]
        rows = [group[rng.randrange(len(group))] for _ in range(batch)]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        progress((step + 1) / steps)
    model.eval()


def in_second_process(target: Callable[..., None], *args: Any) -> subprocess.Popen:
    """Start `target(*args)` (a module-level function; arguments JSON-able, paths passed as str)
    in a fresh interpreter; the caller waits for it. Not multiprocessing: a spawned child re-runs
    the parent's main script, which for a script without a main guard rebuilds the world and
    waits forever on the lock its parent holds."""
    code = (
        "import importlib, json, sys; "
        f"getattr(importlib.import_module({target.__module__!r}), {target.__name__!r})(*json.loads(sys.argv[1]))"
    )
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(args, default=str)])
