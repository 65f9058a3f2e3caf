"""Values as raw SQL gives them back, made what the ORM would give: for the statements written by hand
(chat.turn.rows, chat.search). SQLite hands back UUIDs and times as text, PostgreSQL as objects."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from django.utils.dateparse import parse_datetime


def to_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def to_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    parsed = parse_datetime(value)  # SQLite keeps naive UTC text
    return parsed.replace(tzinfo=UTC) if parsed is not None and parsed.tzinfo is None else parsed
