"""The recorder of run results: what ``flush`` promises, which tests and shutdown rely on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from asyncapp.engine.recorder import Recorder
from asyncapp.model.run import Run
from asyncapp.store.database import Database
from asyncapp.store.interface import Recorded
from asyncapp.store.sql import SqlStore

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
async def recorder(db_url: str) -> AsyncIterator[Recorder]:
    db = Database(db_url)
    await db.open()
    recorder = Recorder(SqlStore(db), "process")
    recorder.start()
    try:
        yield recorder
    finally:
        await recorder.stop(1)
        await db.close()


def ended_run() -> Run:
    return Run(job_id="j", scheduled_for=datetime.now(UTC), node="n").finish("success")


async def test_flush_waits_for_results_riding_in_a_claims_transaction(
    recorder: Recorder,
) -> None:
    recorder.finish(ended_run())
    batch = recorder.take()  # a claim takes the result into its own transaction
    await asyncio.sleep(0.05)  # the recorder's task wakes for the result and finds none queued

    flushing = asyncio.create_task(recorder.flush(5))
    await asyncio.sleep(0.05)
    assert not flushing.done(), "flush returned before the claim holding the result committed"

    recorder.taken(batch, Recorded())  # the claim committed
    assert await flushing


async def test_flush_waits_for_results_a_failed_claim_gave_back(
    recorder: Recorder,
) -> None:
    recorder.finish(ended_run())
    recorder.untake(recorder.take())  # the claim's transaction failed
    assert await recorder.flush(5)  # then written by the recorder itself
    assert recorder.pending == 0
