"""The answers given to requests sent with an ``Idempotency-Key``.

A client that did not hear an answer (a timeout, a lost connection, a 503 sent
after the commit) retries with the same key and gets the first answer again,
because the answer is written in the same transaction as the change it
reports.  Rows are kept :data:`KEEP_SECONDS`, as long as clients are expected
to retry, then pruned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from asyncapp.store.tables import requests_table

#: How long a key's answer is kept (a day, as Stripe keeps its keys).
KEEP_SECONDS = 86400.0


@dataclass(frozen=True)
class Answer:
    """A stored answer: the fingerprint of the request that got it, its status and body."""

    fingerprint: str
    status: int
    body: dict[str, Any]


def find(conn: Connection, scope: str, key: str) -> Answer | None:
    row = conn.execute(
        select(requests_table).where(requests_table.c.scope == scope, requests_table.c.key == key)
    ).first()
    if row is None:
        return None
    return Answer(row.fingerprint, row.status, json.loads(row.body))


def save(conn: Connection, scope: str, key: str, answer: Answer, now: float) -> None:
    conn.execute(
        insert(requests_table).values(
            scope=scope,
            key=key,
            fingerprint=answer.fingerprint,
            status=answer.status,
            body=json.dumps(answer.body, sort_keys=True, default=str),
            created_at=now,
        )
    )


def prune(conn: Connection, before: float) -> int:
    """Forget answers given before ``before`` (epoch seconds); returns how many."""
    result = conn.execute(delete(requests_table).where(requests_table.c.created_at < before))
    return max(result.rowcount or 0, 0)
