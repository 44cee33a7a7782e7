from __future__ import annotations

import io
import json
import threading
import time

from portllm_cli.console import run_console
from portllm_core.settings import Settings
from registry.models import Run, RunStatus
from tests.bot.conftest import ASSISTANT, broker_messages, finish_as_worker, live_run


def console(world, data_dir, text: str, user: str = "alice") -> tuple[int, str]:
    out = io.StringIO()
    code = run_console("#support", user, stdin=io.StringIO(text), out=out,
                       settings=Settings(data_dir=data_dir), session_factory=world.session_factory,
                       enqueue=world.queue, poll_s=0.05, wait_s=20)
    return code, out.getvalue()


def in_background(target) -> threading.Thread:
    errors = []

    def run():
        try:
            target()
        except Exception as exc:  # surfaced by the test through the console's output instead
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.errors = errors
    thread.start()
    return thread


def test_reads_run_in_order_and_exit_zero(world, data_dir):
    code, out = console(world, data_dir, "help\n\n  BASES  \nassistants\nstatus\n")
    assert code == 0
    assert out.index("PortLLM commands") < out.index("v3") < out.index(ASSISTANT) < out.index("nothing is live yet")


def test_a_refused_command_makes_the_exit_code_non_zero_and_the_rest_still_runs(world, data_dir):
    code, out = console(world, data_dir, "pacth support-assistant onto v2\nstatus supprt-assistant\nbases\n")
    assert code == 1
    assert "Try `patch <assistant> onto <version>`" in out
    assert "Did you mean: support-assistant" in out
    assert "v2" in out.split("Did you mean")[1]


def test_patch_waits_for_the_run_then_approve_puts_it_live(world, data_dir):
    def worker():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with world.session_factory() as s:
                run = s.query(Run).filter_by(status=RunStatus.QUEUED).first()
            if run is not None:
                time.sleep(0.2)
                finish_as_worker(world.session_factory, run.id)
                return
            time.sleep(0.05)

    thread = in_background(worker)
    code, out = console(world, data_dir, "patch support-assistant onto v2\napprove 1\nstatus\n")
    thread.join(5)
    assert not thread.errors
    assert code == 0, out
    assert "Run #1 queued" in out
    card = out.split("Run #1 queued")[1]
    assert "candidate" in card and "76.0%" in card and "target base alone" in card and "drift 0.280" in card
    assert "awaiting approval: `approve 1`" in card
    assert "Run #1 approved" in out and out.index("awaiting approval") < out.index("Run #1 approved")
    assert world.messages("gpu") == [("portllm.transplant_and_evaluate", [1])]


def test_ask_prints_the_streamed_answer_for_its_own_request(world, data_dir):
    live_run(world.session_factory, key="k-live", channel="#support")
    outbox = Settings(data_dir=data_dir).outbox_path
    outbox.parent.mkdir(parents=True)

    def notifier():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for _task, args in broker_messages(world.broker_url, "serve"):
                reply_to = args[4]
                other = {**reply_to, "request_id": "someone-else"}
                with outbox.open("a") as f:
                    for record in ({"type": "answer_chunk", "reply_to": other, "text": "WRONG "},
                                   {"type": "answer_chunk", "reply_to": reply_to, "text": "Hold the power "},
                                   {"type": "answer_chunk", "reply_to": reply_to, "text": "button 10 s."},
                                   {"type": "answer_done", "reply_to": reply_to, "text": ""}):
                        f.write(json.dumps(record) + "\n")
                        f.flush()
                return
            time.sleep(0.05)

    thread = in_background(notifier)
    code, out = console(world, data_dir, f"ask {ASSISTANT} how do I reset the X200?\n")
    thread.join(5)
    assert code == 0 and not thread.errors
    assert "Hold the power button 10 s." in out and "WRONG" not in out


def test_the_console_acts_as_a_console_user_in_the_audit_trail(world, data_dir):
    from registry.models import AuditEvent
    from tests.bot.conftest import APPROVER, awaiting_run

    run_id = awaiting_run(world.session_factory, key="k-console", channel="#support")
    code, out = console(world, data_dir, f"approve {run_id}\n", user=APPROVER)
    assert code == 0, out
    with world.session_factory() as s:
        [approved] = s.query(AuditEvent).filter_by(action="rollout.approved").all()
    assert approved.actor == f"console:{APPROVER}"  # never indistinguishable from the Slack user
