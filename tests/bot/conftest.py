"""A small registered world for the bot's tests, and a reader for the real broker."""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import pytest
from kombu import Connection

from portllm_core.settings import Settings
from portllm_core.tasks import TaskQueue
from registry import services
from registry.db import session_scope
from tests.registry.helpers import record_scored

ASSISTANT = "support-assistant"
FAMILY = "demo"
APPROVER = "UAPPROVER1"
ADMIN = "UADMIN1"
OUTSIDER = "UOUTSIDER1"
CHANNEL = "CSUPPORT1"


@dataclass
class World:
    session_factory: object
    broker_url: str
    queue: TaskQueue

    def messages(self, queue_name: str) -> list[tuple[str, list]]:
        return broker_messages(self.broker_url, queue_name)


def broker_messages(broker_url: str, queue_name: str) -> list[tuple[str, list]]:
    """(task name, args) of every message waiting in `queue_name`, consumed with kombu."""
    got = []
    with Connection(broker_url) as conn:
        simple = conn.SimpleQueue(queue_name)
        try:
            while True:
                try:
                    message = simple.get(block=True, timeout=0.2)
                except simple.Empty:
                    break
                body = message.body
                if isinstance(body, (bytes, str)) and message.content_encoding == "binary":
                    body = json.loads(base64.b64decode(body))
                args = body[0] if isinstance(body, list) else message.decode()[0]
                got.append((message.headers["task"], args))
                message.ack()
        finally:
            simple.close()
    return got


def register_world(session_factory) -> None:
    with session_scope(session_factory) as s:
        for version in ("v1", "v2", "v3"):
            services.register_base(
                s, family=FAMILY, version=version, source_ref=f"/models/{version}",
                fingerprint=(version * 32)[:64], signature={"model_type": "llama"},
                tokenizer_fingerprint="t" * 64, actor="setup")
        services.create_assistant(
            s, name=ASSISTANT, family=FAMILY, suite_ref="suite", suite_digest="d" * 64,
            min_accuracy=0.5, max_regression=0.05, approvers=[APPROVER, "alice"], admins=[ADMIN], actor="setup")
        services.register_patch(
            s, assistant=ASSISTANT, origin_base="v1", artifact_ref="sha256:" + "a" * 64,
            artifact_digest="a" * 64, rank=8, alpha=16, target_modules=["q_proj", "v_proj"], size_bytes=1000,
            provenance={"dataset_digest": "b" * 64, "epochs": 3, "seed": 0}, train_data_ref="sha256:" + "c" * 64,
            actor="setup")


def finish_as_worker(session_factory, run_id: int, *, accuracy: float = 0.76, verdict: str = "pass",
                     live_accuracy: float | None = None) -> None:
    """What a worker records for a transplant run: evaluations, reports, verdict, rollout."""
    with session_scope(session_factory) as s:
        services.claim_run(s, run_id, "test-worker")
        services.report_progress(s, run_id, 0.5, "evaluating")
        for subject, acc in (("candidate", accuracy), ("target_base", 0.17)):
            record_scored(s, run_id, subject=subject, accuracy=acc, n=50, suite_digest="d" * 64,
                          ci=(max(0.0, acc - 0.1), min(1.0, acc + 0.1)))
        services.open_rollout(s, run_id, verdict=verdict, live_accuracy=live_accuracy)
        services.finish_run(s, run_id, status="succeeded",
                            compat_report={"compatible": True, "errors": [], "warnings": []},
                            drift_report={"overall": 0.28, "modules": {"layers.0.q_proj": 0.31, "layers.1.v_proj": 0.2}})


def queue_run(session_factory, *, key: str, version: str = "v2", channel: str = CHANNEL) -> int:
    with session_scope(session_factory) as s:
        run, _ = services.request_run(s, assistant=ASSISTANT, version=version, idempotency_key=key,
                                      requested_by=APPROVER, channel=channel)
        return run.id


def awaiting_run(session_factory, *, key: str, version: str = "v2", channel: str = CHANNEL,
                 verdict: str = "pass") -> int:
    run_id = queue_run(session_factory, key=key, version=version, channel=channel)
    finish_as_worker(session_factory, run_id, verdict=verdict)
    return run_id


def live_run(session_factory, *, key: str, version: str = "v1", channel: str = CHANNEL) -> int:
    run_id = awaiting_run(session_factory, key=key, version=version, channel=channel)
    with session_scope(session_factory) as s:
        services.decide_rollout(s, run_id, approve=True, user=APPROVER)
    return run_id


@pytest.fixture
def world(session_factory, data_dir) -> World:
    register_world(session_factory)
    broker_url = f"sqla+sqlite:///{data_dir / 'queue.db'}"
    return World(session_factory, broker_url, TaskQueue(Settings(broker_url=broker_url)))
