"""Small builders for registry tests: a family of bases, an assistant with approvers, a patch."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import count

from sqlalchemy.orm import Session

from registry import services as sv
from registry.models import RAW_PROMPT_DIGEST, Patch, Rollout, Run

ASSISTANT = "support-assistant"
APPROVERS = ["alice", "bob"]
ADMINS = ["carol"]
_keys = count(1)


@dataclass
class Seeded:
    assistant: str
    patch_id: int


def seed(s: Session, versions: tuple[str, ...] = ("v1", "v2", "v3")) -> Seeded:
    for version in versions:
        sv.register_base(
            s, family="demo", version=version, source_ref=f"demo/{version}",
            fingerprint=(version * 32)[:64], signature={"model_type": "llama", "digest": "sig"},
            tokenizer_fingerprint="tok" * 8, actor="eng",
        )
    sv.create_assistant(
        s, name=ASSISTANT, family="demo", suite_ref="sha256:" + "5" * 64, suite_digest="5" * 64,
        min_accuracy=0.6, max_regression=0.05, approvers=APPROVERS, admins=ADMINS, actor="eng",
    )
    patch = register_patch(s, origin_base=versions[0])
    return Seeded(ASSISTANT, patch.id)


def register_patch(s: Session, *, origin_base: str, parent_patch: int | None = None) -> Patch:
    return sv.register_patch(
        s, assistant=ASSISTANT, origin_base=origin_base, artifact_ref="sha256:" + "1" * 64,
        artifact_digest="1" * 64, rank=8, alpha=16.0, target_modules=["q_proj", "v_proj"],
        size_bytes=1234, provenance={"dataset_digest": "d" * 64, "seed": 0, "epochs": 3},
        train_data_ref="sha256:" + "2" * 64, parent_patch=parent_patch, actor="eng",
    )


def record_scored(s: Session, run_id: int, *, subject: str, accuracy: float, n: int = 100,
                  suite_digest: str = "5" * 64, ci: tuple[float, float] | None = None, stage: str = "quick"):
    """What a worker records for one subject: its ledger score (a distinct key per run and subject),
    then the run's evaluation pointing at it."""
    low, high = ci or (max(accuracy - 0.08, 0.0), min(accuracy + 0.08, 1.0))
    key = sv.ScoreKey(f"run-{run_id}", subject, suite_digest, RAW_PROMPT_DIGEST, "float32", "cpu", 1)
    score, _ = sv.record_score(s, key, run_id=run_id, computed_by="worker-1", n=n, accuracy=accuracy, ci_low=low,
                               ci_high=high, metrics={"exact_match": accuracy}, items_ref=None, duration_s=1.5, prompt_format="raw")
    return sv.record_evaluation(s, run_id, subject=subject, stage=stage, score_id=score.id, computed=True)


def finished_run(
    s: Session, version: str, *, channel: str = "support", kind: str = "transplant",
    accuracy: float = 0.9, patch_id: int | None = None, drift: float = 0.1,
    result_patch_id: int | None = None,
) -> Run:
    """A run that went queued -> running -> evaluated -> succeeded."""
    run, _ = sv.request_run(
        s, assistant=ASSISTANT, version=version, kind=kind, idempotency_key=f"key-{next(_keys)}",
        requested_by="dave", channel=channel, patch_id=patch_id,
    )
    sv.claim_run(s, run.id, "worker-1")
    for subject, acc in (("target_base", 0.2), ("candidate", accuracy)):
        record_scored(s, run.id, subject=subject, accuracy=acc)
    return sv.finish_run(
        s, run.id, status="succeeded", compat_report={"compatible": True, "errors": [], "warnings": []},
        drift_report={"overall": drift, "modules": {"q_proj": drift}}, result_patch_id=result_patch_id,
    )


def proposed(s: Session, version: str, *, verdict: str = "pass", channel: str = "support") -> Rollout:
    run = finished_run(s, version, channel=channel)
    return sv.open_rollout(s, run.id, verdict=verdict, live_accuracy=sv.live_accuracy(s, ASSISTANT, channel))


def live(s: Session, version: str, *, channel: str = "support") -> Rollout:
    rollout = proposed(s, version, channel=channel)
    return sv.decide_rollout(s, rollout.run_id, approve=True, user="alice")
