"""What a long-running process keeps is bounded: change history, idempotency answers,
and its own memory of outages and pauses."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from asyncapp.constants import DATABASE_DOWN, LATE, SCHEDULER_PAUSED
from asyncapp.store.claims import Reasons
from asyncapp.store.tables import changes_table, requests_table
from tests.conftest import AUTH, serve, settled

pytestmark = pytest.mark.timeout(30)

JOB = {"func": "tests.jobs:record", "args": ["x"], "trigger": "interval", "hours": 1}


async def test_pruning_forgets_old_changes_and_old_idempotency_answers(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(history_days=7)
    async with serve(app) as client:
        runtime = app.extensions["asyncapp"].runtime
        for index in range(5):
            body = {**JOB, "id": f"j{index}"}
            headers = {**AUTH, "Idempotency-Key": f"key-{index}"}
            assert (await client.post("/scheduler/jobs", json=body, headers=headers)).is_success
        old = datetime.now(UTC) - timedelta(days=8)

        def age(conn: Connection) -> None:
            # The first three changes and answers were made eight days ago.
            conn.execute(
                update(changes_table).where(changes_table.c.job_id.in_(["j0", "j1", "j2"]))
                .values(at=old)
            )  # fmt: skip
            conn.execute(
                update(requests_table).where(requests_table.c.key.in_(["key-0", "key-1"]))
                .values(created_at=time.time() - 2 * 86400)
            )  # fmt: skip

        await runtime.store.db.write(age)
        await runtime.prune()

        def left(conn: Connection) -> tuple[list[str], int]:
            jobs = conn.execute(select(changes_table.c.job_id).order_by(changes_table.c.id))
            answers = conn.execute(select(func.count()).select_from(requests_table))
            return list(jobs.scalars()), int(answers.scalar_one())

        changes, answers = await runtime.store.db.read(left)
    assert changes == ["j3", "j4"]
    assert answers == 3


def test_a_process_remembers_only_its_latest_outages_and_pauses() -> None:
    start = datetime(2027, 1, 1, tzinfo=UTC)
    reasons = Reasons(started_at=start)
    for hour in range(Reasons.WINDOWS_KEPT + 50):
        begin = start + timedelta(hours=hour)
        reasons.outages.append((begin, begin + timedelta(minutes=10)))
        reasons.pauses.append((begin + timedelta(minutes=20), begin + timedelta(minutes=30)))
    assert len(reasons.outages) == len(reasons.pauses) == Reasons.WINDOWS_KEPT
    latest = start + timedelta(hours=Reasons.WINDOWS_KEPT + 49)
    assert reasons.late(latest + timedelta(minutes=5)) == DATABASE_DOWN
    assert reasons.late(latest + timedelta(minutes=25)) == SCHEDULER_PAUSED
    assert reasons.late(latest + timedelta(minutes=40)) == LATE


async def test_later_prunes_visit_only_the_jobs_that_ran_since(
    make_app: Callable[..., Flask],
) -> None:
    from asyncapp.model.run import Run
    from asyncapp.store.tables import runs_table
    from tests import jobs

    jobs.reset()
    app = make_app(history_per_job=2, history_days=0)
    async with serve(app) as client:
        runtime = app.extensions["asyncapp"].runtime
        now = datetime.now(UTC)
        old = [
            Run(job_id=job_id, scheduled_for=now - timedelta(hours=i), node="n", status="success")
            for job_id in ("idle", "ran")
            for i in range(1, 5)
        ]
        await runtime.store.db.write(
            lambda conn: conn.execute(runs_table.insert(), [r.row() for r in old])
        )
        body = {"id": "ran", "func": "tests.jobs:record", "args": ["ran"], "trigger": "date"}
        assert (await client.post("/scheduler/jobs", json=body, headers=AUTH)).is_success
        await jobs.wait_fired("ran")
        await settled(runtime)
        touched = runtime.dispatcher.touched()
        assert touched == {"ran"}
        assert runtime.dispatcher.touched() == set(), "taken once"
        # Only the job that ran is visited: "idle" keeps its 4 runs until a full pass.
        assert await runtime.prune(touched) == 3

        def count(conn: Connection) -> dict[str, int]:
            rows = conn.execute(
                select(runs_table.c.job_id, func.count()).group_by(runs_table.c.job_id)
            )
            return {job_id: int(n) for job_id, n in rows}

        assert await runtime.store.db.read(count) == {"idle": 4, "ran": 2}
        assert await runtime.prune() == 2
        assert await runtime.store.db.read(count) == {"idle": 2, "ran": 2}
