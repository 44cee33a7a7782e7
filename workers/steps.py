"""The steps of a run: load its inputs, check compatibility, measure drift, evaluate, gate,
re-tune or train. Each takes the RunJob (progress, heartbeat) and plain inputs copied out of
the registry; the engine is imported inside, so importing this module stays light.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from portllm_core.flows.catalog import NewPatch, folder_size
from registry import services
from registry.errors import RegistryError
from registry.models import EvalStage, EvalSubject, Run, RunKind
from workers import context
from workers.caches import ResidentBases
from workers.protocol import JobFailed, Outcome, RunJob, Scored

log = logging.getLogger("portllm.steps")

_resident: ResidentBases | None = None


def resident_bases() -> ResidentBases:
    """This process's one cache of loaded bases, shared by gpu runs and answers."""
    global _resident
    if _resident is None:
        s = context.current().settings
        _resident = ResidentBases(s.base_cache_size, s.device)
    return _resident


def artifact_path(ref: str) -> Path:
    """Artifacts are registered as `sha256:` refs into the store; plain paths are allowed for suites."""
    if ref.startswith("sha256:"):
        return context.current().store.path(ref)
    return Path(ref).expanduser()


@dataclass(frozen=True)
class Suite:
    stage: str  # registry.models.EvalStage
    path: Path
    digest: str


@dataclass
class RunInputs:
    """What a run needs, copied out of the registry as plain values."""

    run_id: int
    kind: str
    assistant: str
    channel: str
    requested_by: str
    patch_id: int
    patch_dir: Path
    patch_provenance: dict
    train_data_ref: str | None
    origin_dir: Path
    target_dir: Path
    target_label: str
    target_version: str
    target_fingerprint: str
    target_base_id: int
    suites: list[Suite]  # the quick suite, then the full one when the assistant has it
    min_accuracy: float
    max_regression: float


@dataclass
class TrainInputs:
    """What a train run needs: no source patch, only the target base and the run's spec."""

    run_id: int
    assistant: str
    requested_by: str
    target_dir: Path
    target_label: str
    target_base_id: int
    target_fingerprint: str
    train_data_ref: str
    data_path: Path
    hyper: dict  # rank, alpha, epochs, lr, seed


def load_inputs(job: RunJob) -> RunInputs:
    from portllm_engine.models import resolve_model_dir
    from registry.artifacts import ArtifactStore

    job.step(0.02, "loading the patch and the target base")
    with job.ctx.session_factory() as s:
        run = s.get(Run, job.run_id)
        patch, target, assistant = run.patch, run.target_base, run.assistant
        if patch is None:
            raise JobFailed(f"Run #{run.id} is a {run.kind} run with no patch to carry; request it again.")
        try:
            patch_dir = artifact_path(patch.artifact_ref)
        except RegistryError as exc:
            raise JobFailed(f"{exc} Register patch #{patch.id} of {assistant.name} again.") from None
        if ArtifactStore.digest_dir(patch_dir) != patch.artifact_digest:
            raise JobFailed(
                f"Patch #{patch.id} is corrupt: its stored files no longer match digest "
                f"{patch.artifact_digest[:12]}; nothing was loaded. Register the patch again from its source."
            )
        inputs = RunInputs(
            run_id=run.id, kind=run.kind, assistant=assistant.name, channel=run.channel,
            requested_by=run.requested_by, patch_id=patch.id, patch_dir=patch_dir,
            patch_provenance=dict(patch.provenance), train_data_ref=patch.train_data_ref,
            origin_dir=resolve_model_dir(patch.origin_base.source_ref),
            target_dir=resolve_model_dir(target.source_ref),
            target_label=target.label, target_version=target.version,
            target_fingerprint=target.fingerprint, target_base_id=target.id,
            suites=[Suite(stage, artifact_path(ref), digest) for stage, ref, digest in (
                (EvalStage.QUICK, assistant.suite_ref, assistant.suite_digest),
                (EvalStage.FULL, assistant.full_suite_ref, assistant.full_suite_digest)) if ref],
            min_accuracy=assistant.min_accuracy, max_regression=assistant.max_regression,
        )
    from portllm_engine.kpi import suite_digest

    for suite in inputs.suites:
        if suite_digest(suite.path) != suite.digest:
            raise JobFailed(f"The {suite.stage} KPI suite of {inputs.assistant} changed since it was registered; "
                            "register it again.")
    return inputs


def check_compatibility(job: RunJob, inputs: RunInputs, patch_dir: Path) -> None:
    from portllm_engine.compat import check

    job.step(0.08, "checking compatibility")
    report = check(patch_dir, inputs.target_dir)
    job.compat_report = report.to_dict()
    if not report.compatible:
        first = report.errors[0]["message"]
        more = f" (+{len(report.errors) - 1} more in the report)" if len(report.errors) > 1 else ""
        raise JobFailed(
            f"Patch #{inputs.patch_id} does not fit {inputs.target_label}: {first}{more}. "
            "Pick a base of the same architecture and tokenizer, or train a new patch for it.",
            job.compat_report,
        )


def measure_drift(job: RunJob, inputs: RunInputs, patch_dir: Path) -> None:
    from portllm_engine.drift import measure_drift as measure
    from portllm_engine.patches import lora_modules

    job.step(0.12, "measuring drift")
    job.drift_report = measure(inputs.origin_dir, inputs.target_dir, sorted(lora_modules(patch_dir))).to_dict()


@dataclass(frozen=True)
class Candidate:
    server: object  # portllm_engine.transplant.PatchServer: the resident target base
    name: str  # the run's patch, attached to it


@contextmanager
def candidate(job: RunJob, inputs: RunInputs, patch_dir: Path, low: float) -> Iterator[Candidate]:
    """The patch attached by name to the resident target base, unmerged, for the whole run. One
    copy of the base serves the base alone and the candidate (PEFT's unmerged LoRA computes
    W·x + scale·B·A·x, which equals the merged W′·x up to float rounding), and it stays pristine
    in the cache for the next run and for answers."""
    job.step(low, "loading the target base")
    server = resident_bases().get(inputs.target_fingerprint, inputs.target_dir, inputs.target_label)
    name = f"run-{inputs.run_id}"
    job.step(low + 0.01, "attaching the patch to the target base")
    server.attach(name, patch_dir)
    try:
        yield Candidate(server, name)
    finally:
        server.detach(name)  # answers attach the patches they serve under their own names


def score(job: RunJob, found: Candidate, suite: Suite, low: float, high: float) -> list[Scored]:
    """Score one stage's suite on the target base alone (the patch switched off), then on the candidate."""
    from portllm_engine.kpi import evaluate, load_suite

    items = load_suite(suite.path)
    on = "" if suite.stage == EvalStage.QUICK else f" on the {suite.stage} suite"
    server, mid = found.server, low + (high - low) / 2
    results = {}
    for subject, patch, start, end, what in ((EvalSubject.TARGET_BASE, None, low, mid, "the target base alone"),
                                             (EvalSubject.CANDIDATE, found.name, mid, high, "the candidate")):
        job.step(start, f"evaluating {what}{on}")
        with server.use(patch) as model:
            results[subject] = evaluate(model, server.tokenizer, items,
                                        progress=job.progress_between(start, end, f"evaluating {what}{on}"))
    on_candidate, on_base = results[EvalSubject.CANDIDATE], results[EvalSubject.TARGET_BASE]
    return [Scored(EvalSubject.CANDIDATE, suite.stage, suite.digest, on_candidate, store_items(on_candidate)),
            Scored(EvalSubject.TARGET_BASE, suite.stage, suite.digest, on_base, store_items(on_base))]


def store_items(result) -> str:
    """Per-item results go to the artifact store; the evaluation row keeps the ref."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "items.json"
        path.write_text(json.dumps(result.items, ensure_ascii=False, sort_keys=True))
        return context.current().store.put_file(path)


@dataclass(frozen=True)
class LiveScore:
    accuracy: float
    correct: list[bool] | None  # per item, when its results are still in the artifact store


def live_score(job: RunJob, inputs: RunInputs, digest: str) -> LiveScore | None:
    """What is live in this channel, scored on the suite with this digest, or None."""
    with job.ctx.session_factory() as s:
        live = services.live_rollout(s, inputs.assistant, inputs.channel)
        if live is None or live.run_id == inputs.run_id:
            return None
        found = next((e for e in live.run.evaluations
                      if e.subject == EvalSubject.CANDIDATE and e.suite_digest == digest), None)
        if found is None:
            # Scores on another suite are not comparable: the gate uses the floor alone.
            log.info("run #%s: live rollout #%s has no score on suite %s", inputs.run_id, live.id, digest[:12])
            return None
        accuracy, items_ref = found.accuracy, found.items_ref
    try:
        items = json.loads(artifact_path(items_ref).read_text()) if items_ref else None
    except (RegistryError, OSError, ValueError):
        items = None  # the accuracy still allows the interval test
    return LiveScore(accuracy, None if items is None else [bool(item["correct"]) for item in items])


def decide(inputs: RunInputs, candidate, live: LiveScore | None):
    """Item by item against live when both were scored on the same items; else the interval."""
    from portllm_core.gate import interval_gate, paired_gate

    mine = [bool(item["correct"]) for item in candidate.items]
    if live is not None and live.correct is not None and len(live.correct) == len(mine):
        return paired_gate(mine, live.correct, inputs.min_accuracy, inputs.max_regression)
    return interval_gate(candidate.accuracy, tuple(candidate.ci95), None if live is None else live.accuracy,
                         inputs.min_accuracy, inputs.max_regression)


def gated(job: RunJob, inputs: RunInputs, patch_dir: Path, low: float, new_patch: NewPatch | None = None) -> Outcome:
    """Score the quick suite and gate; score the full suite only when the quick verdict is
    inconclusive (and the assistant has one), and let it decide."""
    outcome = Outcome(new_patch=new_patch)
    stages = []
    split = low + (0.92 - low) * 0.4 if len(inputs.suites) > 1 else 0.92
    with candidate(job, inputs, patch_dir, low) as found:
        for suite, (start, end) in zip(inputs.suites, ((low + 0.02, split), (split, 0.92))):
            scored = score(job, found, suite, start, end)
            outcome.evaluations += scored
            job.step(end + 0.01, f"computing the gate verdict ({suite.stage} suite)")
            live = live_score(job, inputs, suite.digest)
            decision = decide(inputs, scored[0].result, live)
            stages.append({"stage": suite.stage, "verdict": decision.verdict, "test": decision.test,
                           "explanation": decision.explanation})
            outcome.verdict, outcome.live_accuracy = decision.verdict, None if live is None else live.accuracy
            if decision.verdict != "inconclusive":
                break
    outcome.gate_report = {"stages": stages}
    job.step(0.98, "opening the rollout")
    return outcome


def transplant(job: RunJob) -> Outcome:
    """Check, measure drift, score base and candidate, gate: a rollout awaits approval."""
    inputs = load_inputs(job)
    check_compatibility(job, inputs, inputs.patch_dir)
    measure_drift(job, inputs, inputs.patch_dir)
    return gated(job, inputs, inputs.patch_dir, 0.2)


def eval_only(job: RunJob) -> Outcome:
    """Scores on the quick suite only. No rollout: `eval` answers "how would it do?", and opening
    a rollout would put an approvable candidate in the channel that nobody asked to deploy."""
    inputs = load_inputs(job)
    check_compatibility(job, inputs, inputs.patch_dir)
    measure_drift(job, inputs, inputs.patch_dir)
    with candidate(job, inputs, inputs.patch_dir, 0.2) as found:
        return Outcome(evaluations=score(job, found, inputs.suites[0], 0.22, 0.95))


def retune(job: RunJob) -> Outcome:
    """Fine-tune the patch on the target base, warm-started from its (transplanted) factors;
    the result is a new patch whose parent is the old one, then evaluated like a transplant."""
    from portllm_engine.patches import train_patch

    inputs = load_inputs(job)
    if not inputs.train_data_ref:
        raise JobFailed(
            f"Patch #{inputs.patch_id} of {inputs.assistant} has no registered training data, so it cannot "
            "be re-tuned; register the patch again with its training data."
        )
    check_compatibility(job, inputs, inputs.patch_dir)
    measure_drift(job, inputs, inputs.patch_dir)  # of the patch it carries on
    job.step(0.15, "re-tuning the patch on the target base")
    resident_bases().drop(inputs.target_fingerprint)  # training loads its own copy: hold one at a time
    ref, manifest, size = _trained(job, lambda out: train_patch(
        inputs.target_dir, artifact_path(inputs.train_data_ref), out,
        epochs=job.settings.retune_epochs, seed=int(inputs.patch_provenance.get("seed", 0)),
        init_from=inputs.patch_dir, device=job.settings.device,
        progress=job.progress_between(0.15, 0.45, "re-tuning the patch"),
    ))
    new_patch = NewPatch(
        assistant=inputs.assistant, origin_base=inputs.target_base_id, ref=ref, size_bytes=size,
        manifest=manifest, actor=inputs.requested_by, train_data_ref=inputs.train_data_ref,
        parent_patch=inputs.patch_id, provenance={"retuned_from_patch": inputs.patch_id, "run_id": inputs.run_id},
    )
    return gated(job, inputs, artifact_path(ref), 0.5, new_patch)


def load_train_inputs(job: RunJob) -> TrainInputs:
    from portllm_engine.models import resolve_model_dir

    job.step(0.02, "loading the training data and the target base")
    with job.ctx.session_factory() as s:
        run = s.get(Run, job.run_id)
        if run.kind != RunKind.TRAIN:
            raise JobFailed(f"Run #{run.id} is a {run.kind} run, not a train run; request it again.")
        spec, target = dict(run.spec or {}), run.target_base
        train_ref = spec.get("train_data_ref")
        if not train_ref:
            raise JobFailed(f"Run #{run.id} has no training data in its spec; request the train run again.")
        try:
            data_path = artifact_path(train_ref)
        except RegistryError as exc:
            raise JobFailed(f"{exc} Request the train run again with its training data.") from None
        return TrainInputs(
            run_id=run.id, assistant=run.assistant.name, requested_by=run.requested_by,
            target_dir=resolve_model_dir(target.source_ref), target_label=target.label,
            target_base_id=target.id, target_fingerprint=target.fingerprint, train_data_ref=train_ref, data_path=data_path,
            hyper={key: spec[key] for key in ("rank", "alpha", "epochs", "lr", "seed") if key in spec},
        )


def train(job: RunJob) -> Outcome:
    """Train a new patch on the target base from the run's data; registered as the run's result.
    No evaluation and no rollout: `patch ... onto` proposes it for a channel."""
    from portllm_engine import patches

    inputs = load_train_inputs(job)
    job.step(0.05, f"training the patch on {inputs.target_label}")
    resident_bases().drop(inputs.target_fingerprint)  # training loads its own copy: hold one at a time
    ref, manifest, size = _trained(job, lambda out: patches.train_patch(
        inputs.target_dir, inputs.data_path, out, device=job.settings.device,
        progress=job.progress_between(0.05, 0.9, "training the patch"), **inputs.hyper,
    ))
    job.step(0.96, "registering the patch")
    return Outcome(new_patch=NewPatch(
        assistant=inputs.assistant, origin_base=inputs.target_base_id, ref=ref, size_bytes=size,
        manifest=manifest, actor=inputs.requested_by, train_data_ref=inputs.train_data_ref,
        provenance={"run_id": inputs.run_id},
    ))


def _trained(job: RunJob, train) -> tuple[str, object, int]:
    """Train into a scratch folder on the data volume, store the result; (ref, manifest, size)."""
    scratch = job.settings.scratch_dir
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="patch-", dir=scratch))
    try:
        manifest = train(work / "patch")
        return job.ctx.store.put_dir(work / "patch"), manifest, folder_size(work / "patch")
    finally:
        shutil.rmtree(work, ignore_errors=True)
