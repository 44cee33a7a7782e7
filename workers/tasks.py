"""The Celery tasks: thin shims that take ids and plain values and run the steps.

Names come from the task contract (portllm_core.tasks); the run protocol is workers.protocol,
the steps workers.steps.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from celery import Task
from celery.exceptions import TimeLimitExceeded

from portllm_core import metrics, tasks as contract
from portllm_engine.prompt import user_turn
from registry import services
from registry.db import session_scope
from registry.errors import InvalidTransition, RegistryError
from registry.models import Rollout, RunStatus
from workers import context, serving
from workers.celery_app import app
from workers.protocol import run_task, worker_name
from workers.serving.backend import Served, ServingBackend
from workers import steps
from workers.sweeper import sweep_once

log = logging.getLogger("portllm.tasks")


class RunTask(Task):
    """A task that works on one run (its first argument)."""

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        """Past its hard time limit Celery kills the pool process and calls this in the main one.

        The run ends `failed` here, once: left `running`, the sweeper would take the silence for
        a dead worker and start it again, each attempt hitting the same limit.
        """
        if isinstance(exc, TimeLimitExceeded) and args:
            fail_over_time(args[0], exc.args[0] if exc.args else self.time_limit)


def fail_over_time(run_id: int, limit_s: float) -> None:
    ctx = context.current()
    error = (f"Run #{run_id} exceeded the time limit of {limit_s:.0f} s and was stopped; raise "
             "PORTLLM_JOB_TIME_LIMIT_S (below PORTLLM_VISIBILITY_TIMEOUT_S) or use a smaller suite, "
             "then request it again.")
    try:
        with session_scope(ctx.session_factory) as s:
            metrics.run_finished(services.finish_run(s, run_id, status=RunStatus.FAILED, error=error,
                                                     actor="system:time-limit"))
    except InvalidTransition:  # it ended in the meantime
        return
    log.warning("run #%s exceeded the time limit of %.0f s", run_id, limit_s)
    ctx.notifier.run_changed(run_id, final=True)


@app.task(name=contract.TRANSPLANT_AND_EVALUATE, bind=True, base=RunTask)
def transplant_and_evaluate(self: Task, run_id: int) -> str:
    return run_task(self, run_id, steps.transplant)


@app.task(name=contract.EVAL_ONLY, bind=True, base=RunTask)
def eval_only(self: Task, run_id: int) -> str:
    return run_task(self, run_id, steps.eval_only)


@app.task(name=contract.RETUNE, bind=True, base=RunTask)
def retune(self: Task, run_id: int) -> str:
    return run_task(self, run_id, steps.retune)


@app.task(name=contract.TRAIN_PATCH, bind=True, base=RunTask)
def train_patch(self: Task, run_id: int) -> str:
    return run_task(self, run_id, steps.train)


@app.task(name=contract.SCORE_LIVE, bind=True)
def score_live(self: Task, rollout_id: int) -> str:
    """Live on the full suite, ahead of the next release (low priority on the gpu queue)."""
    return steps.score_live(rollout_id, worker_name(self))


@app.task(name=contract.ANSWER_QUESTION)
def answer_question(assistant: str, channel: str, question: str, user: str, reply_to: dict) -> str:
    """Answer with the live patched model of `assistant` in `channel`, streamed to `reply_to`."""
    ctx = context.current()
    timer = metrics.AnswerTimer(assistant, channel)
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
    reply_to = {**reply_to, "answer_id": record_answer(ctx, served.rollout_id, user, question)}
    try:
        chunks = timer.stream(serving_backend(ctx).answer(served, user_turn(question)))
        return notifier.answer_stream(reply_to, never_silent(chunks, f"({assistant} has no answer to that.)"))
    except Exception as exc:  # the asker gets a reason, the log gets the details
        timer.failed()
        log.exception("answer for %s in %s failed", assistant, channel)
        return notifier.answer_stream(reply_to, [f"Sorry, {assistant} could not answer: {str(exc)[:200]}"])


@app.task(name=contract.WARM_ANSWERS)
def warm_answers(assistant: str, channel: str) -> str:
    """A rollout went live: load its base (or start its engine) and its patch before the first question."""
    ctx = context.current()
    try:
        served = live_patch_for(ctx, assistant, channel)
    except RegistryError as exc:
        return f"not warmed: {exc}"
    if served is None:
        return "nothing live"
    started = time.monotonic()
    try:
        serving_backend(ctx).warm(served)
    except Exception:  # the first answer tries again and tells the asker
        log.exception("warming %s in %s on %s failed", assistant, channel, served.label)
        return "failed"
    log.info("%s in %s is ready to answer on %s (%.1f s)", assistant, channel, served.label,
             time.monotonic() - started)
    return "warm"


def serving_backend(ctx) -> ServingBackend:
    return serving.backend(ctx.settings,
                           on_local_fallback=lambda served, reason: report_local_fallback(ctx, served, reason))


def report_local_fallback(ctx, served: Served, reason: str) -> None:
    """On the rollout's record, so `status` can say its answers come from the local backend."""
    with session_scope(ctx.session_factory) as s:
        services.record_served_locally(s, served.rollout_id, reason)


def never_silent(chunks: Iterator[str], fallback: str) -> Iterator[str]:
    """Pass the chunks on; if they add up to nothing visible, say so rather than post nothing."""
    said = False
    for chunk in chunks:
        said = said or bool(chunk.strip())
        yield chunk
    if not said:
        yield fallback


def record_answer(ctx, rollout_id: int, user: str, question: str) -> int:
    """The answer's row, before it is generated: ratings of it count for the rollout that answers."""
    with session_scope(ctx.session_factory) as s:
        return services.record_answer(s, s.get(Rollout, rollout_id), asked_by=user, question=question).id


def live_patch_for(ctx, assistant: str, channel: str) -> Served | None:
    """What answers for `assistant` in `channel`: the live rollout's patch on its base; None if nothing is live."""
    from portllm_engine.models import resolve_model_dir

    with ctx.session_factory() as s:
        found = services.get_assistant(s, assistant)
        live = services.live_rollout(s, assistant, channel)
        if live is None:
            return None
        patch, base = live.run.candidate_patch, live.run.target_base
        return Served(found.name, f"patch-{patch.id}", steps.artifact_path(patch.artifact_ref), base.fingerprint,
                      resolve_model_dir(base.source_ref), base.label, steps.prompt_of(found), live.id)


@app.task(name=contract.ANNOUNCE_RELEASE)
def announce_release(release_id: int) -> str:
    """Post a new release's summary (operations channel) and its offer cards (policy `ask`)."""
    context.current().notifier.release_changed(release_id, announce=True)
    return "announced"


@app.task(name=contract.SWEEP)
def sweep() -> dict:
    report = sweep_once(context.current())
    return {"requeued": report.requeued, "retried": report.retried, "failed": report.failed}
