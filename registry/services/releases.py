"""Releases: a new base version of a family reaches every assistant live on that family.

One release per base, opened in one transaction with the runs it queues, so registering the
base again, or a retried job, finds the release and queues nothing new.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.errors import RegistryError
from registry.models import Assistant, BaseModel, OnRelease, Release, Rollout, RolloutState, Run, RunKind, id_in_range
from registry.services.common import audit
from registry.services.runs import request_run

# The audit trail's actor, and the runs' requester, when a release queues runs: no person asked.
RELEASE_ACTOR = "system:release"


@dataclass(frozen=True)
class Target:
    """An assistant live in a channel on an older base of the released family."""

    assistant: Assistant
    channel: str


def release_targets(s: Session, base: BaseModel) -> list[Target]:
    """Every (assistant, channel) of the base's family with a live rollout on another base."""
    live = s.execute(
        select(Assistant, Rollout.channel)
        .join(Rollout, Rollout.assistant_id == Assistant.id)
        .join(Run, Run.id == Rollout.run_id)
        .where(func.lower(Assistant.family) == base.family.lower(), Rollout.state == RolloutState.LIVE,
               Run.target_base_id != base.id)
        .order_by(Assistant.name, Rollout.channel)
    )
    return [Target(assistant, channel) for assistant, channel in live]


def release_key(release_id: int, assistant_id: int, channel: str) -> str:
    """The idempotency key of a release's run for one assistant and channel (auto, or an accepted offer)."""
    return f"release-{release_id}-assistant-{assistant_id}-{channel}"


def get_release(s: Session, base: BaseModel) -> Release | None:
    return s.scalar(select(Release).where(Release.base_id == base.id))


def earlier_label(s: Session, base: BaseModel) -> BaseModel | None:
    """The base of the same family registered first with the same weights, when `base` is only
    another label for them (`v3-copy` of `v3`); None for new weights."""
    return s.scalar(select(BaseModel).where(
        func.lower(BaseModel.family) == base.family.lower(), BaseModel.fingerprint == base.fingerprint,
        BaseModel.id < base.id).order_by(BaseModel.id))


def open_release(s: Session, base: BaseModel, *, actor: str) -> tuple[Release, list[Run]]:
    """Open the base's release: per its assistants' policy, queue a transplant run per live
    channel (auto) or record an offer (ask). Returns (release, the runs it created now); a
    release opened before returns with no runs. Another label for weights the family already
    has releases nothing: their first label's release carried them."""
    existing = get_release(s, base)
    if existing is not None:
        return existing, []
    first = earlier_label(s, base)
    if first is not None:
        raise RegistryError(f"{base.label} has the same weights as {first.label}: it is another label for them, "
                            f"so it releases nothing (`portllm release show {first.family} {first.version}`).")
    release = Release(base_id=base.id, offers=[], created_by=actor)
    s.add(release)
    s.flush()
    created: list[Run] = []
    offers: list[dict] = []
    for target in release_targets(s, base):
        policy = target.assistant.on_release
        if policy == OnRelease.ASK:
            offers.append({"assistant": target.assistant.name, "channel": target.channel})
        elif policy == OnRelease.AUTO:
            run, new = request_run(
                s, assistant=target.assistant, version=base.version, kind=RunKind.TRANSPLANT,
                idempotency_key=release_key(release.id, target.assistant.id, target.channel),
                requested_by=RELEASE_ACTOR, channel=target.channel, release_id=release.id)
            if new:
                created.append(run)
    release.offers = offers
    s.flush()
    audit(s, actor=actor, action="release.opened", entity_type="release", entity_id=release.id,
          assistant_id=None, base=base.label, runs=[r.id for r in created], offers=offers)
    return release, created


def offered_release(s: Session, release_id: int, assistant: Assistant, channel: str) -> Release:
    """The release that offered `assistant` a run in `channel` (policy `ask`); any other is refused.
    Accepting it is an ordinary run request (portllm_core.flows.runs.accept_offer)."""
    release = s.get(Release, release_id) if id_in_range(release_id) else None
    if release is None:
        raise RegistryError(f"There is no release #{release_id}; `bases` lists the registered bases.")
    if {"assistant": assistant.name, "channel": channel} not in release.offers:
        raise RegistryError(
            f"{release.base.label} offered no run to {assistant.name} here; "
            f"use `patch {assistant.name} onto {release.base.version}` to carry the patch here.")
    return release
