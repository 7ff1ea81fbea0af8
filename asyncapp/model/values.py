"""Plain values shared by the model and the store: times in UTC, text safe to store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def storable(value: str, limit: int) -> str: ...


@overload
def storable(value: str | None, limit: int) -> str | None: ...


def storable(value: str | None, limit: int) -> str | None:
    """``value`` made safe to store as text: no NUL, no lone surrogates, at most ``limit`` chars.

    Error messages come from job code and may carry anything; PostgreSQL
    rejects NUL and no driver can encode a lone surrogate.  Both are written
    as escapes instead, so the text stays readable and the write succeeds.
    """
    if value is None:
        return None
    cleaned = value.replace("\x00", "\\x00")
    try:
        cleaned.encode("utf-8")
    except UnicodeEncodeError:
        cleaned = cleaned.encode("utf-8", "backslashreplace").decode("utf-8")
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything we store is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def from_epoch(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)
