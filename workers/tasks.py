"""The Celery tasks. They take ids and plain values, read the rest from the registry, and are
idempotent: a redelivered task for a finished run does nothing, a run already running on a live
worker is not started twice, and a run whose worker died is claimed again.

Every result of a run (evaluations, a re-tuned patch, the rollout, the final status) is written
in one transaction at the end, and only while this worker still owns the run, so a run killed
and retried any number of times ends with exactly one set of results.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from celery import Task
from sqlalchemy import update

from registry import services
from registry.db import session_scope
from registry.errors import RegistryError
from registry.models import Run, RunKind, RunStatus, utcnow
from workers import context
from workers.caches import BaseCache, ServerCache
from workers.celery_app import app
from workers.sweeper import requeue_if_stale, sweep_once

log = logging.getLogger("portllm.tasks")

FINAL = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class JobFailed(Exception):
    """Ends the run `failed`; the message is for the people who asked for it."""

    def __init__(self, message: str, compat_report: dict | None = None) -> None:
        super().__init__(message)
        self.compat_report = compat_report


class RunTakenOver(Exception):
    """The run is no longer ours (cancelled, or retried elsewhere after this worker was presumed
    dead): stop without writing anything."""


# Per-process caches, built on first use in each worker process.
_bases: BaseCache | None = None
_servers: ServerCache | None = None


def base_cache() -> BaseCache:
    global _bases
    if _bases is None:
        s = context.current().settings
        _bases = BaseCache(s.base_cache_size, s.device)
    return _bases


def server_cache() -> ServerCache:
    global _servers
    if _servers is None:
        s = context.current().settings
        _servers = ServerCache(s.base_cache_size, s.device)
    return _servers


def artifact_path(ref: str) -> Path:
    """Artifacts are registered as `sha256:` refs into the store; plain paths are allowed for suites."""
    if ref.startswith("sha256:"):
        return context.current().artifacts.path(ref)
    return Path(ref).expanduser()


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
    patch: dict  # rank, alpha, target_modules, provenance, train_data_ref, assistant/base ids
    origin_dir: Path
    target_dir: Path
    target_label: str
    target_version: str
    target_fingerprint: str
    target_base_id: int
    suite_path: Path
    suite_digest: str
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
    train_data_ref: str
    data_path: Path
    hyper: dict  # rank, alpha, epochs, lr, seed


@dataclass
class Outcome:
    evaluations: list[tuple[str, object, str | None]] = field(default_factory=list)  # subject, EvalResult, items_ref
    verdict: str | None = None
    live_accuracy: float | None = None
    new_patch: dict | None = None  # a re-tune's or train run's patch, registered with the results


class RunJob:
    """One attempt at a run by this worker: claim, progress, heartbeat, and the final write."""

    def __init__(self, run_id: int, worker: str) -> None:
        self.ctx = context.current()
        self.settings = self.ctx.settings
        self.run_id = run_id
        self.worker = worker
        self.compat_report: dict | None = None
        self.drift_report: dict | None = None
        self._taken_over = threading.Event()
        self._last_progress = 0.0

    # -- claim ---------------------------------------------------------------------------
    def claim(self) -> bool:
        with session_scope(self.ctx.session_factory) as s:
            if services.claim_run(s, self.run_id, self.worker) is not None:
                return True
            run = s.get(Run, self.run_id)
            if run is None:
                log.warning("run #%s does not exist; nothing to do", self.run_id)
            elif run.status in FINAL:
                log.info("run #%s is already %s; nothing to do", self.run_id, run.status)
            elif run.status == RunStatus.RUNNING and requeue_if_stale(s, run, self.settings):
                s.expire(run)
                # Its worker died: take it over now rather than wait for the sweeper.
                if services.claim_run(s, self.run_id, self.worker) is not None:
                    log.info("run #%s: took over from a worker that stopped responding", self.run_id)
                    return True
            else:
                log.info("run #%s is %s on %s; not starting it twice", self.run_id, run.status, run.worker)
        return False

    # -- progress ------------------------------------------------------------------------
    def step(self, progress: float, text: str) -> None:
        """A new step: recorded, shown to people, and a place where a taken-over run stops."""
        if self._taken_over.is_set():
            raise RunTakenOver()
        with session_scope(self.ctx.session_factory) as s:
            run = services.report_progress(s, self.run_id, progress, text)
            if run.status != RunStatus.RUNNING or run.worker != self.worker:
                self._taken_over.set()
                raise RunTakenOver()
        self._last_progress = time.monotonic()
        self.ctx.notifier.run_changed(self.run_id)
        self._pause_for_tests(text)

    def progress_between(self, low: float, high: float, text: str) -> Callable[[float, str], None]:
        """A progress callback for a long engine call, mapped onto [low, high] of the run."""

        def report(fraction: float, detail: str = "") -> None:
            if time.monotonic() - self._last_progress >= 1.0:  # at most one write a second
                self.step(low + (high - low) * min(max(fraction, 0.0), 1.0), f"{text} {detail}".strip())

        return report

    def _pause_for_tests(self, text: str) -> None:
        # Tests only: PORTLLM_TEST_PAUSE_AT="merging" holds the run at that step (heart still
        # beating) so a test can kill the worker there. Unset in every real deployment.
        pause_at = os.environ.get("PORTLLM_TEST_PAUSE_AT")
        if pause_at and text.startswith(pause_at):
            log.warning("PORTLLM_TEST_PAUSE_AT: run #%s holds at '%s'", self.run_id, text)
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and not self._taken_over.is_set():
                time.sleep(0.2)

    # -- heartbeat -----------------------------------------------------------------------
    @contextmanager
    def heartbeating(self) -> Iterator[None]:
        """Beat every few seconds while the run is worked on, from a thread: long engine calls
        (loading, merging, one big batch) report no progress but must not look dead."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.settings.heartbeat_interval_s):
                try:
                    if not self._touch():
                        self._taken_over.set()
                        return
                except Exception:  # a missed beat is retried; the limit allows several
                    log.warning("heartbeat of run #%s failed", self.run_id, exc_info=True)

        thread = threading.Thread(target=beat, name=f"heartbeat-{self.run_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _touch(self, session=None) -> bool:
        """Heartbeat, only while the run is still ours; False once another worker took it over."""
        stmt = (
            update(Run)
            .where(Run.id == self.run_id, Run.status == RunStatus.RUNNING, Run.worker == self.worker)
            .values(heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if session is not None:
            return session.execute(stmt).rowcount == 1
        with session_scope(self.ctx.session_factory) as s:
            return s.execute(stmt).rowcount == 1

    # -- endings -------------------------------------------------------------------------
    def succeed(self, inputs: RunInputs | TrainInputs, outcome: Outcome) -> None:
        with session_scope(self.ctx.session_factory) as s:
            if not self._touch(s):  # also takes the row's write lock until the commit
                raise RunTakenOver()
            result_patch_id = None
            if outcome.new_patch is not None:
                result_patch_id = services.register_patch(s, **outcome.new_patch).id
            for subject, result, items_ref in outcome.evaluations:
                services.record_evaluation(
                    s, self.run_id, subject=subject, suite_digest=inputs.suite_digest, n=result.n,
                    accuracy=result.accuracy, ci_low=result.ci95[0], ci_high=result.ci95[1],
                    metrics=result.metrics, items_ref=items_ref, duration_s=result.duration_s,
                )
            if outcome.verdict is not None:
                services.open_rollout(s, self.run_id, verdict=outcome.verdict, live_accuracy=outcome.live_accuracy)
            services.finish_run(s, self.run_id, status=RunStatus.SUCCEEDED, compat_report=self.compat_report,
                                drift_report=self.drift_report, result_patch_id=result_patch_id)

    def fail(self, message: str, compat_report: dict | None = None) -> None:
        with session_scope(self.ctx.session_factory) as s:
            if not self._touch(s):
                raise RunTakenOver()
            services.finish_run(s, self.run_id, status=RunStatus.FAILED, error=message,
                                compat_report=compat_report or self.compat_report,
                                drift_report=self.drift_report)


def worker_name(task: Task) -> str:
    return f"{task.request.hostname or 'worker'}/{os.getpid()}"


def run_task(task: Task, run_id: int, body: Callable[[RunJob, RunInputs | TrainInputs], Outcome],
             load: Callable[[RunJob], RunInputs | TrainInputs] | None = None) -> str:
    """Claim the run, load its inputs (`load_inputs` unless given), do `body`, and end the run
    succeeded or failed (never left running)."""
    job = RunJob(run_id, worker_name(task))
    if not job.claim():
        return "skipped"
    job.ctx.notifier.run_changed(run_id)
    try:
        try:
            with job.heartbeating():
                inputs = (load or load_inputs)(job)
                job.succeed(inputs, body(job, inputs))
            result = "succeeded"
        except JobFailed as exc:
            job.fail(str(exc), exc.compat_report)
            result = "failed"
        except (RegistryError, _engine_error()) as exc:
            job.fail(f"{exc}")
            result = "failed"
        except RunTakenOver:
            raise
        except Exception as exc:
            log.exception("run #%s failed", run_id)
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            job.fail(f"Unexpected {type(exc).__name__}: {first} (the worker log has the details); "
                     "fix the cause, then request the run again.")
            result = "failed"
    except RunTakenOver:
        log.warning("run #%s was cancelled or taken over by another worker; this attempt stops", run_id)
        return "taken over"
    job.ctx.notifier.run_changed(run_id, final=True)
    return result


def _engine_error() -> type[Exception]:
    from portllm_engine.errors import EngineError

    return EngineError


# -- the steps --------------------------------------------------------------------------------
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
            patch={
                "assistant_id": patch.assistant_id, "rank": patch.rank, "alpha": patch.alpha,
                "target_modules": list(patch.target_modules), "provenance": dict(patch.provenance),
                "train_data_ref": patch.train_data_ref,
            },
            origin_dir=resolve_model_dir(patch.origin_base.source_ref),
            target_dir=resolve_model_dir(target.source_ref),
            target_label=target.label, target_version=target.version,
            target_fingerprint=target.fingerprint, target_base_id=target.id,
            suite_path=artifact_path(assistant.suite_ref), suite_digest=assistant.suite_digest,
            min_accuracy=assistant.min_accuracy, max_regression=assistant.max_regression,
        )
    from portllm_engine.kpi import suite_digest

    if suite_digest(inputs.suite_path) != inputs.suite_digest:
        raise JobFailed(f"The KPI suite of {inputs.assistant} changed since it was registered; register it again.")
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


def evaluate_candidate_and_base(job: RunJob, inputs: RunInputs, patch_dir: Path, low: float) -> list:
    """Merge the patch into a copy of the cached target base; score it and the base alone."""
    from portllm_engine.kpi import evaluate, load_suite
    from portllm_engine.transplant import merge_into

    items = load_suite(inputs.suite_path)
    job.step(low, "merging the patch into the target base")
    base, tokenizer = base_cache().get(inputs.target_fingerprint, inputs.target_dir, inputs.target_label)
    candidate = merge_into(copy.deepcopy(base), patch_dir)
    mid = low + (0.92 - low) / 2
    job.step(low + 0.02, "evaluating the candidate")
    on_candidate = evaluate(candidate, tokenizer, items, progress=job.progress_between(low + 0.02, mid, "evaluating the candidate"))
    del candidate
    job.step(mid, "evaluating the target base alone")
    on_base = evaluate(base, tokenizer, items, progress=job.progress_between(mid, 0.92, "evaluating the target base alone"))
    return [("candidate", on_candidate, store_items(on_candidate)), ("target_base", on_base, store_items(on_base))]


def store_items(result) -> str:
    """Per-item results go to the artifact store; the evaluation row keeps the ref."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "items.json"
        path.write_text(json.dumps(result.items, ensure_ascii=False, sort_keys=True))
        return context.current().artifacts.put_file(path)


def live_accuracy(job: RunJob, inputs: RunInputs) -> float | None:
    """The candidate accuracy of what is live in this channel, if it was scored on the same suite."""
    job.step(0.93, "reading the live rollout's KPI")
    with job.ctx.session_factory() as s:
        live = services.live_rollout(s, inputs.assistant, inputs.channel)
        if live is None or live.run_id == inputs.run_id:
            return None
        evaluation = live.run.evaluation("candidate")
        if evaluation is None or evaluation.suite_digest != inputs.suite_digest:
            # Scores on another suite are not comparable: the gate falls back to min accuracy.
            log.info("run #%s: live rollout #%s has no score on the current suite", inputs.run_id, live.id)
            return None
        return evaluation.accuracy


def gate(job: RunJob, inputs: RunInputs, outcome: Outcome) -> None:
    from registry.gate import gate_verdict

    outcome.live_accuracy = live_accuracy(job, inputs)
    job.step(0.96, "computing the gate verdict")
    candidate = outcome.evaluations[0][1]
    outcome.verdict = gate_verdict(candidate.accuracy, tuple(candidate.ci95), outcome.live_accuracy,
                                   inputs.min_accuracy, inputs.max_regression)
    job.step(0.98, "opening the rollout")


def transplant_body(job: RunJob, inputs: RunInputs) -> Outcome:
    check_compatibility(job, inputs, inputs.patch_dir)
    measure_drift(job, inputs, inputs.patch_dir)
    outcome = Outcome(evaluations=evaluate_candidate_and_base(job, inputs, inputs.patch_dir, 0.2))
    gate(job, inputs, outcome)
    return outcome


def eval_body(job: RunJob, inputs: RunInputs) -> Outcome:
    """Scores only. No rollout: `eval` answers "how would it do?", and opening a rollout would
    put an approvable candidate in the channel that nobody asked to deploy (use `patch ... onto`)."""
    check_compatibility(job, inputs, inputs.patch_dir)
    measure_drift(job, inputs, inputs.patch_dir)
    return Outcome(evaluations=evaluate_candidate_and_base(job, inputs, inputs.patch_dir, 0.2))


def retune_body(job: RunJob, inputs: RunInputs) -> Outcome:
    """Fine-tune the patch on the target base, warm-started from its (transplanted) factors;
    the result is a new patch whose parent is the old one, then evaluated like a transplant."""
    from portllm_engine.patches import train_patch
    from registry.artifacts import ArtifactStore

    train_ref = inputs.patch["train_data_ref"]
    if not train_ref:
        raise JobFailed(
            f"Patch #{inputs.patch_id} of {inputs.assistant} has no registered training data, so it cannot "
            "be re-tuned; register the patch again with its training data."
        )
    check_compatibility(job, inputs, inputs.patch_dir)
    measure_drift(job, inputs, inputs.patch_dir)
    provenance = inputs.patch["provenance"]
    job.step(0.15, "re-tuning the patch on the target base")
    work = Path(tempfile.mkdtemp(prefix="retune-", dir=_scratch_dir()))
    try:
        manifest = train_patch(
            inputs.target_dir, artifact_path(train_ref), work / "patch",
            epochs=job.settings.retune_epochs, seed=int(provenance.get("seed", 0)),
            init_from=inputs.patch_dir, device=job.settings.device,
            progress=job.progress_between(0.15, 0.45, "re-tuning the patch"),
        )
        ref = job.ctx.artifacts.put_dir(work / "patch")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    new_dir = artifact_path(ref)
    new_patch = {
        "assistant": inputs.assistant, "origin_base": inputs.target_base_id, "artifact_ref": ref,
        "artifact_digest": ArtifactStore.digest_dir(new_dir), "rank": manifest.rank, "alpha": manifest.alpha,
        "target_modules": list(manifest.target_modules),
        "size_bytes": sum(p.stat().st_size for p in new_dir.rglob("*") if p.is_file()),
        "provenance": {**manifest.provenance, "retuned_from_patch": inputs.patch_id, "run_id": inputs.run_id},
        "train_data_ref": train_ref, "parent_patch": inputs.patch_id, "actor": inputs.requested_by,
    }
    outcome = Outcome(evaluations=evaluate_candidate_and_base(job, inputs, new_dir, 0.5), new_patch=new_patch)
    gate(job, inputs, outcome)
    return outcome


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
            target_base_id=target.id, train_data_ref=train_ref, data_path=data_path,
            hyper={key: spec[key] for key in ("rank", "alpha", "epochs", "lr", "seed") if key in spec},
        )


def train_body(job: RunJob, inputs: TrainInputs) -> Outcome:
    """Train a new patch on the target base from the run's data; registered as the run's result.
    No evaluation and no rollout: `patch ... onto` proposes it for a channel."""
    from portllm_engine import patches
    from registry.artifacts import ArtifactStore

    job.step(0.05, f"training the patch on {inputs.target_label}")
    work = Path(tempfile.mkdtemp(prefix="train-", dir=_scratch_dir()))
    try:
        manifest = patches.train_patch(
            inputs.target_dir, inputs.data_path, work / "patch", device=job.settings.device,
            progress=job.progress_between(0.05, 0.9, "training the patch"), **inputs.hyper,
        )
        job.step(0.92, "storing the patch")
        ref = job.ctx.artifacts.put_dir(work / "patch")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    new_dir = artifact_path(ref)
    job.step(0.96, "registering the patch")
    return Outcome(new_patch={
        "assistant": inputs.assistant, "origin_base": inputs.target_base_id, "artifact_ref": ref,
        "artifact_digest": ArtifactStore.digest_dir(new_dir), "rank": manifest.rank, "alpha": manifest.alpha,
        "use_rslora": manifest.use_rslora, "target_modules": list(manifest.target_modules),
        "size_bytes": sum(p.stat().st_size for p in new_dir.rglob("*") if p.is_file()),
        "provenance": {**manifest.provenance, "dataset_sha256": inputs.train_data_ref.removeprefix("sha256:"),
                       "run_id": inputs.run_id},
        "train_data_ref": inputs.train_data_ref, "actor": inputs.requested_by,
    })


def _scratch_dir() -> Path:
    path = context.current().settings.data_dir / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- the tasks ----------------------------------------------------------------------------
@app.task(name="portllm.transplant_and_evaluate", bind=True)
def transplant_and_evaluate(self: Task, run_id: int) -> str:
    return run_task(self, run_id, transplant_body)


@app.task(name="portllm.eval_only", bind=True)
def eval_only(self: Task, run_id: int) -> str:
    return run_task(self, run_id, eval_body)


@app.task(name="portllm.retune", bind=True)
def retune(self: Task, run_id: int) -> str:
    return run_task(self, run_id, retune_body)


@app.task(name="portllm.train_patch", bind=True)
def train_patch(self: Task, run_id: int) -> str:
    return run_task(self, run_id, train_body, load=load_train_inputs)


@app.task(name="portllm.answer_question")
def answer_question(assistant: str, channel: str, question: str, user: str, reply_to: dict) -> str:
    """Answer with the live patched model of `assistant` in `channel`, streamed to `reply_to`."""
    ctx = context.current()
    notifier = ctx.answer_notifier(reply_to)
    try:
        served = live_patch_for(ctx, assistant, channel)
    except RegistryError as exc:
        return notifier.answer_stream(reply_to, [str(exc)])
    if served is None:
        return notifier.answer_stream(reply_to, [
            f"{assistant} is not live in {channel} yet: nothing has been approved here. "
            f"Ask for `patch {assistant} onto <version>`, then an approver approves it."
        ])
    name, patch_dir, fingerprint, base_dir, label, system_prompt = served
    try:
        server = server_cache().get(fingerprint, base_dir, label)
        if server.patches.get(name) != patch_dir:
            server.attach(name, patch_dir)
        chunks = server.generate(name, question, system_prompt=system_prompt or None)
        return notifier.answer_stream(reply_to, never_silent(chunks, f"({assistant} has no answer to that.)"))
    except Exception as exc:  # the asker gets a reason, the log gets the details
        log.exception("answer for %s in %s failed", assistant, channel)
        return notifier.answer_stream(reply_to, [f"Sorry, {assistant} could not answer: {str(exc)[:200]}"])


def never_silent(chunks: Iterator[str], fallback: str) -> Iterator[str]:
    """Pass the chunks on; if they add up to nothing visible, say so rather than post nothing."""
    said = False
    for chunk in chunks:
        said = said or bool(chunk.strip())
        yield chunk
    if not said:
        yield fallback


def live_patch_for(ctx, assistant: str, channel: str):
    """(adapter name, patch dir, base fingerprint, base dir, label, system prompt) of what is live."""
    from portllm_engine.models import resolve_model_dir

    with ctx.session_factory() as s:
        found = services.get_assistant(s, assistant)
        live = services.live_rollout(s, assistant, channel)
        if live is None:
            return None
        run = live.run
        patch = run.result_patch or run.patch
        base = run.target_base
        return (f"patch-{patch.id}", artifact_path(patch.artifact_ref), base.fingerprint,
                resolve_model_dir(base.source_ref), base.label, found.system_prompt)


@app.task(name="portllm.sweep")
def sweep() -> dict:
    report = sweep_once(context.current())
    return {"requeued": report.requeued, "retried": report.retried, "failed": report.failed}
