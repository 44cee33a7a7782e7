"""Helpers every service shares: the audit record and the conditional update."""
from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry.errors import DuplicateError
from registry.models import AuditEvent


def audit(
    s: Session,
    *,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: int,
    assistant_id: int | None,
    **details: Any,
) -> AuditEvent:
    event = AuditEvent(
        actor=actor,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        assistant_id=assistant_id,
        details=details,
    )
    s.add(event)
    s.flush()
    return event


def flush_or_duplicate(s: Session, message: str) -> None:
    try:
        s.flush()
    except IntegrityError as exc:
        raise DuplicateError(message) from exc


def conditional_update(s: Session, model, where, **values) -> int:
    """UPDATE ... WHERE <expected state>; the row count says whether this caller won."""
    result = s.execute(
        update(model).where(*where).values(**values),
        execution_options={"synchronize_session": False},
    )
    return result.rowcount
