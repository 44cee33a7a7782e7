"""Helpers every service shares: the audit record and the conditional update."""
from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry.errors import DuplicateError, RegistryError
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


def insert_unless_exists(s: Session, model, values: dict[str, Any], *, key: str, returning):
    """INSERT … ON CONFLICT (key) DO NOTHING RETURNING `returning`: None when the key existed.

    Race-safe without a savepoint: of concurrent inserts of one key exactly one returns it.
    """
    dialect = s.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert is None:
        raise RegistryError(f"The registry supports SQLite and PostgreSQL, not {dialect}.")
    statement = insert(model).values(**values).on_conflict_do_nothing(index_elements=[key]).returning(returning)
    return s.scalar(statement)
