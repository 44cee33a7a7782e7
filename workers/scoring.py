"""Scores through the evaluation ledger: take what it holds, compute only what is missing.

A Subject is a model to score: a base, with a patch attached or alone. The Scorer keeps one base
resident for the run at a time: it scores the candidate and the base alone on the target base,
then (when the ledger lacks it) the live patch on its own base, letting go of the first base
before it loads the second.
"""
from __future__ import annotations

import gc
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from portllm_engine.prompt import PromptFormat
from registry import services
from registry.db import session_scope
from registry.errors import RegistryError
from registry.models import BASE_ALONE, Score
from workers import context
from workers.protocol import RunJob, Scored

log = logging.getLogger("portllm.scoring")


@dataclass(frozen=True)
class Subject:
    kind: str  # registry.models.EvalSubject
    fingerprint: str  # the base's weights
    base_dir: Path
    label: str
    patch_ref: str | None = None  # the patch's artifact ref (None: the base alone)
    patch_digest: str = BASE_ALONE


@dataclass(frozen=True)
class Suite:
    stage: str  # registry.models.EvalStage
    path: Path
    digest: str
    prompt: PromptFormat  # how its questions are put to the model: the assistant's, as served


def artifact_path(ref: str) -> Path:
    """Artifacts are registered as `sha256:` refs into the store; plain paths are allowed for suites."""
    if ref.startswith("sha256:"):
        return context.current().store.path(ref)
    return Path(ref).expanduser()


def store_items(items: list[dict]) -> str:
    """Per-item results go to the artifact store; the ledger entry keeps the ref."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "items.json"
        path.write_text(json.dumps(items, ensure_ascii=False, sort_keys=True))
        return context.current().store.put_file(path)


def _correct(items_ref: str | None) -> list[bool] | None:
    """Per item, whether it was right; None when the items are no longer in the store (the
    accuracy still allows the interval test)."""
    try:
        items = json.loads(artifact_path(items_ref).read_text()) if items_ref else None
    except (RegistryError, OSError, ValueError):
        return None
    return None if items is None else [bool(item["correct"]) for item in items]


def _scored(subject: Subject, suite: Suite, score: Score, computed: bool) -> Scored:
    groups = {name: (c["correct"], c["n"]) for name, c in (score.metrics or {}).get("groups", {}).items()}
    return Scored(subject.kind, suite.stage, score.id, computed, score.accuracy, (score.ci_low, score.ci_high),
                  _correct(score.items_ref), groups)


class Scorer:
    """One run's scoring: ledger first, then the model, one base resident at a time."""

    def __init__(self, job: RunJob, resident) -> None:
        from portllm_engine.kpi import SCORER_VERSION
        from portllm_engine.models import device_kind

        self.job = job
        self.resident = resident  # workers.caches.ResidentBases of this process
        self.scorer_version = SCORER_VERSION
        self.device_kind = device_kind(job.settings.device)
        self._server = None
        self._fingerprint: str | None = None
        self._attached: dict[str, str] = {}  # patch digest -> adapter name on the resident base
        self._tokenizers: dict[str, object] = {}  # base fingerprint -> tokenizer, for prompt digests

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc) -> None:
        self._detach_all()

    def key(self, subject: Subject, suite: Suite) -> services.ScoreKey:
        from portllm_engine.models import weights_dtype

        return services.ScoreKey(subject.fingerprint, subject.patch_digest, suite.digest,
                                 suite.prompt.digest(self._tokenizer(subject)), weights_dtype(subject.base_dir),
                                 self.device_kind, self.scorer_version)

    def _tokenizer(self, subject: Subject):
        """The subject's tokenizer alone (its chat template is part of the prompt format)."""
        from portllm_engine.models import load_tokenizer

        if subject.fingerprint not in self._tokenizers:
            self._tokenizers[subject.fingerprint] = load_tokenizer(subject.base_dir)
        return self._tokenizers[subject.fingerprint]

    def score(self, subject: Subject, suite: Suite, low: float, high: float, what: str) -> Scored:
        """The ledger's score of `subject` on `suite`, computed (and recorded) only when missing."""
        key = self.key(subject, suite)
        if self.job.settings.ledger:
            with session_scope(self.job.ctx.session_factory) as s:
                found = services.find_score(s, key)
                if found is not None:
                    log.info("run #%s: %s on %s suite from the ledger (run #%s)", self.job.run_id, subject.kind,
                             suite.stage, found.run_id)
                    return _scored(subject, suite, found, computed=False)
        result = self._compute(subject, suite, low, high, what)
        items_ref = store_items(result.items)
        with session_scope(self.job.ctx.session_factory) as s:
            score, inserted = services.record_score(
                s, key, run_id=self.job.run_id, computed_by=self.job.worker, n=result.n,
                accuracy=result.accuracy, ci_low=result.ci95[0], ci_high=result.ci95[1], metrics=result.metrics,
                items_ref=items_ref, duration_s=result.duration_s,
                prompt_format=suite.prompt.describe(self._tokenizer(subject)))
            if not inserted:  # the same key gives the same numbers: the first entry stands
                log.info("run #%s: run #%s recorded the same score first", self.job.run_id, score.run_id)
            return _scored(subject, suite, score, computed=True)

    def _compute(self, subject: Subject, suite: Suite, low: float, high: float, what: str):
        from portllm_engine.kpi import evaluate, load_suite

        on = "" if suite.stage == "quick" else f" on the {suite.stage} suite"
        self.job.step(low, f"evaluating {what}{on}")
        server = self._resident(subject)
        name = self._attach(server, subject)
        with server.use(name) as model:
            return evaluate(model, server.tokenizer, load_suite(suite.path), fmt=suite.prompt,
                            progress=self.job.progress_between(low, high, f"evaluating {what}{on}"))

    def _resident(self, subject: Subject):
        if self._fingerprint not in (None, subject.fingerprint):
            # Another base is needed: let go of this one before loading it, so the run holds one at a time.
            self._detach_all()
            self.resident.drop(self._fingerprint)
            self._server = None
            gc.collect()
        self._server = self.resident.get(subject.fingerprint, subject.base_dir, subject.label)
        self._fingerprint = subject.fingerprint
        return self._server

    def _attach(self, server, subject: Subject) -> str | None:
        if subject.patch_ref is None:
            return None
        if subject.patch_digest not in self._attached:
            name = f"run-{self.job.run_id}-{subject.kind}"
            server.attach(name, artifact_path(subject.patch_ref))
            self._attached[subject.patch_digest] = name
        return self._attached[subject.patch_digest]

    def _detach_all(self) -> None:
        for name in self._attached.values():  # answers attach the patches they serve under their own names
            self._server.detach(name)
        self._attached.clear()
