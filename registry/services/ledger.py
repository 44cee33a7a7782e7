"""The evaluation ledger: find a score by its key, record a computed one, list and forget.

A score's key is everything that can change its number: the model's weights (fingerprint), the
patch's weights (digest, or none), the suite (digest), the prompt format the suite's questions
were put in (its digest) and the scoring settings (dtype, device
kind, scorer version). Two runs that computed the same missing score at once both try to record
it; the unique key keeps the first, and the second uses that one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry.models import BASE_ALONE, Score, utcnow
from registry.services.common import audit


@dataclass(frozen=True)
class ScoreKey:
    model_fingerprint: str
    patch_digest: str  # BASE_ALONE for the base alone
    suite_digest: str
    prompt_digest: str  # the prompt format: kind, template, system prompt
    dtype: str
    device_kind: str
    scorer_version: int

    def short(self) -> str:
        patch = self.patch_digest[:12] or "base alone"
        return (f"model {self.model_fingerprint[:12]}, patch {patch}, suite {self.suite_digest[:12]}, "
                f"prompt {self.prompt_digest[:12]}, "
                f"{self.dtype} on {self.device_kind}, scorer v{self.scorer_version}")


def find_score(s: Session, key: ScoreKey) -> Score | None:
    """The ledger's entry for this key, or None when it was never computed (or was forgotten)."""
    return s.scalar(select(Score).filter_by(**asdict(key), forgotten_at=None))


def record_score(s: Session, key: ScoreKey, *, run_id: int, computed_by: str, n: int, accuracy: float,
                 ci_low: float, ci_high: float, metrics: dict[str, Any], items_ref: str | None,
                 duration_s: float, prompt_format: str) -> tuple[Score, bool]:
    """Record a computed score: (the entry, True), or (the entry another run recorded first, False)."""
    try:
        with s.begin_nested():
            score = Score(**asdict(key), run_id=run_id, computed_by=computed_by, n=n, accuracy=accuracy,
                          ci_low=ci_low, ci_high=ci_high, metrics=metrics, items_ref=items_ref,
                          duration_s=duration_s, prompt_format=prompt_format)
            s.add(score)
            s.flush()
    except IntegrityError:
        first = find_score(s, key)
        if first is None:  # the conflict was something else than the key
            raise
        return first, False
    return score, True


def list_scores(s: Session, limit: int = 100) -> list[Score]:
    """The newest entries first, forgotten ones left out."""
    return list(s.scalars(select(Score).where(Score.forgotten_at.is_(None)).order_by(Score.id.desc()).limit(limit)))


def forget_scores(s: Session, *, actor: str, model_fingerprint: str | None = None,
                  suite_digest: str | None = None) -> int:
    """Forget every entry of a model or a suite (fixed in place): later runs compute them again.
    The entries stay for the evaluations that used them. Returns how many were forgotten."""
    if model_fingerprint is None and suite_digest is None:
        raise ValueError("forget_scores needs a model fingerprint or a suite digest")
    query = select(Score.id).where(Score.forgotten_at.is_(None))
    if model_fingerprint is not None:
        query = query.where(Score.model_fingerprint == model_fingerprint)
    if suite_digest is not None:
        query = query.where(Score.suite_digest == suite_digest)
    ids = list(s.scalars(query))
    if ids:
        s.execute(update(Score).where(Score.id.in_(ids)).values(forgotten_at=utcnow())
                  .execution_options(synchronize_session=False))
    for score_id in ids:
        audit(s, actor=actor, action="score.forgotten", entity_type="score", entity_id=score_id, assistant_id=None)
    return len(ids)


__all__ = ["BASE_ALONE", "ScoreKey", "find_score", "record_score", "list_scores", "forget_scores"]
