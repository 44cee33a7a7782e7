"""The audit trail, filtered for people and tests."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.models import AuditEvent
from registry.services.catalog import get_assistant


def audit_events(
    s: Session, *, assistant: str | None = None, entity_type: str | None = None,
    entity_id: int | None = None, action: str | None = None,
) -> list[AuditEvent]:
    """Audit events, oldest first, filtered by any of the given fields."""
    query = select(AuditEvent).order_by(AuditEvent.at, AuditEvent.id)
    if assistant is not None:
        query = query.where(AuditEvent.assistant_id == get_assistant(s, assistant).id)
    if entity_type is not None:
        query = query.where(AuditEvent.entity_type == entity_type)
    if entity_id is not None:
        query = query.where(AuditEvent.entity_id == entity_id)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    return list(s.scalars(query))
