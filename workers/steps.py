"""The steps of a run: load its inputs, check compatibility, measure drift, evaluate, gate,
re-tune or train. Each takes the RunJob (progress, heartbeat) and plain inputs copied out of
the registry; the engine is imported inside, so importing this module stays light.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from portllm_core import metrics
from portllm_core.flows.catalog import NewPatch, folder_size
from portllm_engine.prompt import PromptFormat
from registry import services
from registry.errors import RegistryError
from registry.models import EvalStage, EvalSubject, Rollout, RolloutState, Run, RunKind
from workers import context
from workers.caches import ResidentBases
from workers.protocol import JobFailed, Outcome, RunJob, Scored
from workers.scoring import Scorer, Subject, Suite, artifact_path

log = logging.getLogger("portllm.steps")

_resident: ResidentBases | None = None


def resident_bases() -> ResidentBases:
    """This process's one cache of loaded bases, shared by gpu runs and answers."""
    global _resident
    if _resident is None:
        s = context.current().settings
        _resident = ResidentBases(s.base_cache_size, s.device)
    return _resident


@dataclass
class RunInputs:
    """What a run needs, copied out of the registry as plain values."""

    run_id: int
    kind: str
    assistant: str
    channel: str
    requested_by: str
    patch_id: int
    patch_ref: str
    patch_digest: str
    patch_dir: Path
    patch_provenance: dict
    train_data_ref: str | None
    origin_dir: Path
    target_dir: Path
    target_label: str
    target_version: str
    target_fingerprint: str
    target_base_id: int
    prompt: PromptFormat  # the assistant's: patches train in it, suites are scored in it, answers use it
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
    prompt: PromptFormat
    hyper: dict  # rank, alpha, epochs, lr, seed


def prompt_of(assistant) -> PromptFormat:
    """How an assistant's questions are put to its model: trained, scored and served alike."""
    return PromptFormat(assistant.prompt_format, assistant.system_prompt or "")


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
            requested_by=run.requested_by, patch_id=patch.id, patch_ref=patch.artifact_ref,
            patch_digest=patch.artifact_digest, patch_dir=patch_dir,
            patch_provenance=dict(patch.provenance), train_data_ref=patch.train_data_ref,
            origin_dir=resolve_model_dir(patch.origin_base.source_ref),
            target_dir=resolve_model_dir(target.source_ref),
            target_label=target.label, target_version=target.version,
            target_fingerprint=target.fingerprint, target_base_id=target.id,
            prompt=prompt_of(assistant),
            suites=[Suite(stage, artifact_path(ref), digest, prompt_of(assistant)) for stage, ref, digest in (
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
        n = len(report.errors)
        more = f" ({n} problems in the compatibility report)" if n > 1 else ""
        raise JobFailed(
            f"Patch #{inputs.patch_id} does not fit {inputs.target_label}: {report.summary().reason}{more}. "
            "Pick a base of the same architecture and tokenizer, or train a new patch for it.",
            job.compat_report,
        )


def measure_drift(job: RunJob, inputs: RunInputs, patch_dir: Path) -> None:
    from portllm_engine.drift import measure_drift as measure
    from portllm_engine.patches import lora_modules

    job.step(0.12, "measuring drift")
    job.drift_report = measure(inputs.origin_dir, inputs.target_dir, sorted(lora_modules(patch_dir))).to_dict()


def target_subjects(inputs: RunInputs, patch_ref: str, patch_digest: str) -> tuple[Subject, Subject]:
    """The candidate (the patch on the target base) and the target base alone."""
    on_target = dict(fingerprint=inputs.target_fingerprint, base_dir=inputs.target_dir, label=inputs.target_label)
    return (Subject(EvalSubject.CANDIDATE, patch_ref=patch_ref, patch_digest=patch_digest, **on_target),
            Subject(EvalSubject.TARGET_BASE, **on_target))


def live_subject(job: RunJob, inputs: RunInputs) -> Subject | None:
    """What is live in the run's channel, or None when nothing is."""
    with job.ctx.session_factory() as s:
        live = services.live_rollout(s, inputs.assistant, inputs.channel)
        return None if live is None or live.run_id == inputs.run_id else subject_of(live)


def subject_of(live: Rollout) -> Subject:
    """A live rollout as a subject to score: its run's candidate patch on that run's base."""
    from portllm_engine.models import resolve_model_dir

    patch, base = live.run.candidate_patch, live.run.target_base
    return Subject(EvalSubject.LIVE, base.fingerprint, resolve_model_dir(base.source_ref), base.label,
                   patch.artifact_ref, patch.artifact_digest)


def decide(inputs: RunInputs, candidate: Scored, live: Scored | None):
    """Against live, item by item, whenever something is live; the floor alone only where nothing is."""
    from portllm_core.gate import interval_gate, paired_gate, with_group_floors

    if live is not None and live.correct is not None and candidate.correct is not None:
        decision = paired_gate(candidate.correct, live.correct, inputs.min_accuracy, inputs.max_regression)
    else:
        decision = interval_gate(candidate.accuracy, candidate.ci95, None if live is None else live.accuracy,
                                 inputs.min_accuracy, inputs.max_regression)
    return with_group_floors(decision, candidate.groups, inputs.min_accuracy)


def gated(job: RunJob, inputs: RunInputs, patch_ref: str, patch_digest: str, low: float,
          new_patch: NewPatch | None = None) -> Outcome:
    """Score the quick suite and gate; score the full suite only when the quick verdict is
    inconclusive (and the assistant has one), and let it decide. Every stage compares the
    candidate with live on the same suite while something is live: from the ledger, or scored."""
    outcome = Outcome(new_patch=new_patch)
    stages = []
    live = live_subject(job, inputs)
    subjects = [*target_subjects(inputs, patch_ref, patch_digest), *([live] if live else [])]
    whats = {EvalSubject.CANDIDATE: "the candidate", EvalSubject.TARGET_BASE: "the target base alone",
             EvalSubject.LIVE: f"live ({live.label})" if live else ""}
    split = low + (0.92 - low) * 0.4 if len(inputs.suites) > 1 else 0.92
    with Scorer(job, resident_bases()) as scorer:
        for stage, (suite, (start, end)) in enumerate(zip(inputs.suites, ((low, split), (split, 0.92)))):
            width = (end - start) / len(subjects)
            # The full stage starts with the base the quick stage ended on: no base is loaded twice.
            order = subjects if stage % 2 == 0 else subjects[::-1]
            scored = {subject.kind: scorer.score(subject, suite, start + i * width, start + (i + 1) * width,
                                                 whats[subject.kind])
                      for i, subject in enumerate(order)}
            outcome.evaluations += scored.values()
            job.step(end + 0.01, f"computing the gate verdict ({suite.stage} suite)")
            on_live = scored.get(EvalSubject.LIVE)
            decision = decide(inputs, scored[EvalSubject.CANDIDATE], on_live)
            stages.append({"stage": suite.stage, "verdict": decision.verdict, "test": decision.test,
                           "explanation": decision.explanation})
            outcome.verdict, outcome.live_accuracy = decision.verdict, None if on_live is None else on_live.accuracy
            if decision.verdict != "inconclusive":
                break
    outcome.gate_report = {"stages": stages}
    job.step(0.98, "opening the rollout")
    return outcome


class LiveReference:
    """A rollout that just went live, scored on its assistant's full suite in the background so
    that the next release finds live's score in the ledger. Not a run: progress goes to the log.
    Its ledger entry names the live rollout's run, whose candidate it scores."""

    def __init__(self, ctx, rollout_id: int, run_id: int, worker: str) -> None:
        self.ctx, self.settings = ctx, ctx.settings
        self.rollout_id, self.run_id, self.worker = rollout_id, run_id, worker

    def step(self, progress: float, text: str) -> None:
        log.info("live rollout #%s: %s", self.rollout_id, text)

    def progress_between(self, low: float, high: float, text: str):
        return lambda fraction, detail="": None


def score_live(rollout_id: int, worker: str) -> str:
    """Score what is live on its assistant's full suite, unless the ledger already has it."""
    ctx = context.current()
    with ctx.session_factory() as s:
        rollout = s.get(Rollout, rollout_id)
        if rollout is None or rollout.state != RolloutState.LIVE or not rollout.assistant.full_suite_ref:
            return "nothing to score"
        job = LiveReference(ctx, rollout_id, rollout.run_id, worker)
        subject, assistant = subject_of(rollout), rollout.assistant
        suite = Suite(EvalStage.FULL, artifact_path(assistant.full_suite_ref), assistant.full_suite_digest,
                      prompt_of(assistant))
        name = assistant.name
    with Scorer(job, resident_bases()) as scorer:
        scored = scorer.score(subject, suite, 0.0, 1.0, f"live ({subject.label})")
    metrics.evaluations_used(name, [scored.computed])
    return "computed" if scored.computed else "in the ledger"


def transplant(job: RunJob) -> Outcome:
    """Check, measure drift, score base and candidate, gate: a rollout awaits approval."""
    inputs = load_inputs(job)
    check_compatibility(job, inputs, inputs.patch_dir)
    measure_drift(job, inputs, inputs.patch_dir)
    return gated(job, inputs, inputs.patch_ref, inputs.patch_digest, 0.2)


def eval_only(job: RunJob) -> Outcome:
    """Scores on the quick suite only. No rollout: `eval` answers "how would it do?", and opening
    a rollout would put an approvable candidate in the channel that nobody asked to deploy."""
    inputs = load_inputs(job)
    check_compatibility(job, inputs, inputs.patch_dir)
    measure_drift(job, inputs, inputs.patch_dir)
    quick = inputs.suites[0]
    candidate, base = target_subjects(inputs, inputs.patch_ref, inputs.patch_digest)
    with Scorer(job, resident_bases()) as scorer:
        return Outcome(evaluations=[scorer.score(candidate, quick, 0.2, 0.58, "the candidate"),
                                    scorer.score(base, quick, 0.58, 0.95, "the target base alone")])


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
        prompt_format=inputs.prompt.kind, system_prompt=inputs.prompt.system_prompt,
        progress=job.progress_between(0.15, 0.45, "re-tuning the patch"),
    ))
    new_patch = NewPatch(
        assistant=inputs.assistant, origin_base=inputs.target_base_id, ref=ref, size_bytes=size,
        manifest=manifest, actor=inputs.requested_by, train_data_ref=inputs.train_data_ref,
        parent_patch=inputs.patch_id, provenance={"retuned_from_patch": inputs.patch_id, "run_id": inputs.run_id},
    )
    return gated(job, inputs, ref, ref.removeprefix("sha256:"), 0.5, new_patch)


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
            prompt=prompt_of(run.assistant),
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
        prompt_format=inputs.prompt.kind, system_prompt=inputs.prompt.system_prompt,
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
