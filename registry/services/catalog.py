"""Bases, assistants (gate, approvers) and patches: what exists and who may decide."""
from __future__ import annotations

import difflib
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.errors import DuplicateError, NotApprover, RegistryError, UnknownAssistant, UnknownBase, UnknownPatch
from registry.models import Assistant, BaseModel, OnRelease, Patch, Rollout, Run, id_in_range
from registry.services.common import audit, flush_or_duplicate


def register_base(
    s: Session,
    *,
    family: str,
    version: str,
    source_ref: str,
    fingerprint: str,
    signature: dict[str, Any],
    tokenizer_fingerprint: str,
    actor: str,
    description: str = "",
    forced_architecture: str | None = None,
) -> BaseModel:
    """`forced_architecture`: how its architecture differs from its family's, when it was registered
    anyway (kept in the audit trail)."""
    family, version = family.strip(), version.strip()
    existing = _find_base(s, family, version)
    if existing is not None:
        raise DuplicateError(
            f"{existing.label} is already registered (fingerprint {existing.fingerprint[:12]}); "
            "pick another version label."
        )
    base = BaseModel(
        family=family,
        version=version,
        source_ref=source_ref,
        fingerprint=fingerprint,
        signature=signature,
        tokenizer_fingerprint=tokenizer_fingerprint,
        description=description,
        registered_by=actor,
    )
    s.add(base)
    flush_or_duplicate(s, f"{family}/{version} is already registered; pick another version label.")
    audit(s, actor=actor, action="base.registered", entity_type="base", entity_id=base.id,
          assistant_id=None, family=family, version=version, fingerprint=fingerprint,
          source_ref=source_ref, **({"forced_architecture": forced_architecture} if forced_architecture else {}))
    return base


def _find_base(s: Session, family: str, version: str) -> BaseModel | None:
    return s.scalar(
        select(BaseModel).where(
            func.lower(BaseModel.family) == family.strip().lower(),
            func.lower(BaseModel.version) == version.strip().lower(),
        )
    )


def get_base(s: Session, family: str, version: str) -> BaseModel:
    """The registered base `family/version` (case-insensitive), or UnknownBase with suggestions."""
    base = _find_base(s, family, version)
    if base is None:
        known = list(s.scalars(
            select(BaseModel.version)
            .where(func.lower(BaseModel.family) == family.strip().lower())
            .order_by(BaseModel.created_at, BaseModel.id)
        ))
        raise UnknownBase(family, version, _close(version, known), known)
    return base


def list_bases(s: Session, family: str | None = None) -> list[BaseModel]:
    query = select(BaseModel).order_by(BaseModel.family, BaseModel.created_at, BaseModel.id)
    if family is not None:
        query = query.where(func.lower(BaseModel.family) == family.strip().lower())
    return list(s.scalars(query))


def _close(word: str, known: list[str]) -> list[str]:
    lowered = {k.lower(): k for k in known}
    return [lowered[m] for m in difflib.get_close_matches(word.strip().lower(), list(lowered), n=3, cutoff=0.6)]


_ASSISTANT_FIELDS = frozenset(
    {"family", "suite_ref", "suite_digest", "full_suite_ref", "full_suite_digest", "min_accuracy",
     "max_regression", "approvers", "admins", "requesters", "four_eyes", "system_prompt", "prompt_format", "owner",
     "on_release",
     "guard_min_ratings", "guard_min_satisfaction"}
)


def _check_thresholds(min_accuracy: float, max_regression: float) -> None:
    for name, value in (("min accuracy", min_accuracy), ("max regression", max_regression)):
        if not 0.0 <= value <= 1.0:
            raise RegistryError(f"The {name} must be between 0 and 1 (got {value}).")


def _check_policy(on_release: str, guard_min_ratings: int | None, guard_min_satisfaction: float | None) -> None:
    if on_release not in OnRelease.__members__.values():
        raise RegistryError(f"On release, an assistant does one of {', '.join(OnRelease)}, not '{on_release}'.")
    if (guard_min_ratings is None) != (guard_min_satisfaction is None):
        raise RegistryError("The live guard needs both a minimum number of ratings and a minimum satisfaction.")
    if guard_min_ratings is not None and (guard_min_ratings < 1 or not 0.0 <= guard_min_satisfaction <= 1.0):
        raise RegistryError("The live guard needs at least 1 rating and a satisfaction between 0 and 1 "
                            f"(got {guard_min_ratings}:{guard_min_satisfaction}).")


def create_assistant(
    s: Session,
    *,
    name: str,
    family: str,
    suite_ref: str,
    suite_digest: str,
    full_suite_ref: str | None = None,
    full_suite_digest: str | None = None,
    min_accuracy: float = 0.5,
    max_regression: float = 0.05,
    approvers: list[str] | None = None,
    admins: list[str] | None = None,
    requesters: list[str] | None = None,
    four_eyes: bool = False,
    system_prompt: str = "",
    prompt_format: str = "chat",
    owner: str = "",
    on_release: str = OnRelease.AUTO,
    guard_min_ratings: int | None = None,
    guard_min_satisfaction: float | None = None,
    actor: str,
) -> Assistant:
    name = name.strip()
    _check_thresholds(min_accuracy, max_regression)
    _check_policy(on_release, guard_min_ratings, guard_min_satisfaction)
    if s.scalar(select(Assistant.id).where(func.lower(Assistant.name) == name.lower())) is not None:
        raise DuplicateError(f"An assistant named {name} already exists; pick another name.")
    assistant = Assistant(
        name=name,
        family=family.strip(),
        suite_ref=suite_ref,
        suite_digest=suite_digest,
        full_suite_ref=full_suite_ref,
        full_suite_digest=full_suite_digest,
        min_accuracy=min_accuracy,
        max_regression=max_regression,
        approvers=list(approvers or []),
        admins=list(admins or []),
        requesters=list(requesters or []),
        four_eyes=four_eyes,
        system_prompt=system_prompt,
        prompt_format=prompt_format,
        owner=owner,
        on_release=str(on_release),
        guard_min_ratings=guard_min_ratings,
        guard_min_satisfaction=guard_min_satisfaction,
        created_by=actor,
    )
    s.add(assistant)
    flush_or_duplicate(s, f"An assistant named {name} already exists; pick another name.")
    audit(s, actor=actor, action="assistant.created", entity_type="assistant",
          entity_id=assistant.id, assistant_id=assistant.id, name=name, family=assistant.family,
          min_accuracy=min_accuracy, max_regression=max_regression,
          approvers=assistant.approvers, admins=assistant.admins, requesters=assistant.requesters,
          four_eyes=four_eyes, on_release=assistant.on_release,
          live_guard=[guard_min_ratings, guard_min_satisfaction])
    return assistant


def get_assistant(s: Session, name: str) -> Assistant:
    """The assistant called `name` (case-insensitive), or UnknownAssistant with close matches."""
    assistant = s.scalar(select(Assistant).where(func.lower(Assistant.name) == name.strip().lower()))
    if assistant is None:
        known = list(s.scalars(select(Assistant.name).order_by(Assistant.name)))
        raise UnknownAssistant(name, _close(name, known), known)
    return assistant


def resolve_assistant(s: Session, assistant: str | Assistant) -> Assistant:
    return assistant if isinstance(assistant, Assistant) else get_assistant(s, assistant)


def list_assistants(s: Session) -> list[Assistant]:
    return list(s.scalars(select(Assistant).order_by(Assistant.name)))


def update_assistant(s: Session, name: str, /, *, actor: str, **fields: Any) -> Assistant:
    """Change any of family, suite_ref, suite_digest, min_accuracy, max_regression, approvers,
    admins, requesters, four_eyes, system_prompt, owner; the audit event records old and new values."""
    unknown = sorted(set(fields) - _ASSISTANT_FIELDS)
    if unknown:
        raise RegistryError(
            f"Cannot change {', '.join(unknown)} of an assistant; "
            f"changeable: {', '.join(sorted(_ASSISTANT_FIELDS))}."
        )
    assistant = get_assistant(s, name)
    _check_thresholds(
        fields.get("min_accuracy", assistant.min_accuracy),
        fields.get("max_regression", assistant.max_regression),
    )
    _check_policy(
        fields.get("on_release", assistant.on_release),
        fields.get("guard_min_ratings", assistant.guard_min_ratings),
        fields.get("guard_min_satisfaction", assistant.guard_min_satisfaction),
    )
    changes = {}
    for field, value in fields.items():
        if isinstance(value, (list, tuple)):
            value = list(value)
        old = getattr(assistant, field)
        if old != value:
            changes[field] = [old, value]
            setattr(assistant, field, value)
    if changes:
        s.flush()
        audit(s, actor=actor, action="assistant.updated", entity_type="assistant",
              entity_id=assistant.id, assistant_id=assistant.id, changes=changes)
    return assistant


CONSOLE_ACTOR_PREFIX = "console:"


def person(user: str) -> str:
    """Who a user is, however written: `@alice`, `alice`, `<@U123>`, `<@U123|alice>` and case all
    match. The one key every comparison of people goes by (roles, four-eyes, ratings, quotas).

    `console:alice` is alice typing in the operators' console: the audit trail keeps the prefix,
    roles go by the name (an operator on the server could change the roles anyway).
    """
    key = user.strip().removeprefix(CONSOLE_ACTOR_PREFIX)
    if key.startswith("<@") and key.endswith(">"):
        key = key[2:-1].split("|")[0]
    return key.lstrip("@").lower()


def same_user(a: str, b: str) -> bool:
    return person(a) == person(b)


def is_approver(assistant: Assistant, user: str) -> bool:
    """Approvers and admins may approve, reject and roll back."""
    return person(user) in {person(u) for u in [*assistant.approvers, *assistant.admins]}


def is_admin(assistant: Assistant, user: str) -> bool:
    return person(user) in {person(u) for u in assistant.admins}


def require_approver(assistant: Assistant, user: str) -> None:
    if not is_approver(assistant, user):
        raise NotApprover(user, assistant.name, assistant.approvers or assistant.admins)


def resolve_base(s: Session, assistant: Assistant, ref: str | int | BaseModel) -> BaseModel:
    """A base given as a model, an id, `family/version`, or a version of the assistant's family."""
    if isinstance(ref, BaseModel):
        return ref
    if isinstance(ref, int):
        base = s.get(BaseModel, ref)
        if base is None:
            raise UnknownBase(assistant.family, f"#{ref}")
        return base
    family, _, version = ref.strip().rpartition("/")
    return get_base(s, family or assistant.family, version)


def register_patch(
    s: Session,
    *,
    assistant: str | Assistant,
    origin_base: str | int | BaseModel,
    artifact_ref: str,
    artifact_digest: str,
    rank: int,
    alpha: float,
    target_modules: list[str],
    size_bytes: int,
    provenance: dict[str, Any],
    train_data_ref: str | None = None,
    parent_patch: int | Patch | None = None,
    use_rslora: bool = False,
    actor: str,
) -> Patch:
    """Register a patch. `origin_base` is a version of the assistant's family (or `family/version`)."""
    owner = resolve_assistant(s, assistant)
    base = resolve_base(s, owner, origin_base)
    parent_id = parent_patch.id if isinstance(parent_patch, Patch) else parent_patch
    if parent_id is not None and (not id_in_range(parent_id) or s.get(Patch, parent_id) is None):
        raise UnknownPatch(f"There is no patch #{parent_id} to derive from.")
    patch = Patch(
        assistant_id=owner.id,
        origin_base_id=base.id,
        parent_patch_id=parent_id,
        artifact_ref=artifact_ref,
        artifact_digest=artifact_digest,
        rank=rank,
        alpha=alpha,
        use_rslora=use_rslora,
        target_modules=list(target_modules),
        size_bytes=size_bytes,
        provenance=provenance,
        train_data_ref=train_data_ref,
        created_by=actor,
    )
    s.add(patch)
    s.flush()
    audit(s, actor=actor, action="patch.registered", entity_type="patch", entity_id=patch.id,
          assistant_id=owner.id, origin_base=base.label, artifact_ref=artifact_ref,
          parent_patch_id=parent_id, rank=rank, alpha=alpha)
    return patch


def get_patch(s: Session, patch_id: int) -> Patch:
    patch = s.get(Patch, patch_id) if id_in_range(patch_id) else None
    if patch is None:
        raise UnknownPatch(f"There is no patch #{patch_id}.")
    return patch


def current_patch(s: Session, assistant: str | Assistant) -> Patch:
    """The patch new runs carry: the assistant's newest, except re-tune results that never went
    live. A re-tune is a candidate until someone approves it; until then it must not replace the
    patch the team approved (a later `patch … onto v4` would otherwise carry an unapproved one)."""
    owner = resolve_assistant(s, assistant)
    ever_live = select(Run.result_patch_id).join(Rollout, Rollout.run_id == Run.id).where(
        Run.result_patch_id.is_not(None), Rollout.live_since.is_not(None)
    )
    patch = s.scalar(
        select(Patch).where(Patch.assistant_id == owner.id,
                            Patch.parent_patch_id.is_(None) | Patch.id.in_(ever_live))
        .order_by(Patch.created_at.desc(), Patch.id.desc()).limit(1)
    )
    if patch is None:
        raise UnknownPatch(f"{owner.name} has no patch yet; register one first.")
    return patch
