"""Answers on the worker's resident base with the patch attached (PORTLLM_SERVE_BACKEND=local).

The base comes from the cache the gpu steps share (workers.steps.resident_bases), so a process
holds each base once; one answer at a time per resident base (PatchServer holds its lock while
it streams).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

from portllm_engine.prompt import Turn
from workers.serving.backend import Served


class LocalBackend:
    def _server(self, served: Served):
        from workers import steps

        server = steps.resident_bases().get(served.fingerprint, served.base_dir, served.label)
        if server.patches.get(served.adapter) != served.patch_dir:
            server.attach(served.adapter, served.patch_dir)
        return server

    def answer(self, served: Served, turns: Sequence[Turn]) -> Iterator[str]:
        yield from self._server(served).generate(served.adapter, turns, fmt=served.prompt)

    def warm(self, served: Served) -> None:
        self._server(served)

    def close(self) -> None:
        pass
