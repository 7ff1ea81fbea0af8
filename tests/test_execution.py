"""How runs execute: errors, timeouts, a blocked loop named by the watchdog, retries,
the per-process cap, def jobs in their own threads, logs, metrics, limits and pruning."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from asyncapp.runtime import Runtime
from tests import jobs
from tests.conftest import AUTH, serve, settled

NOW: dict[str, Any] = {"trigger": "date"}  # run_date omitted: now


@pytest.fixture
async def app_and_client(
    make_app: Callable[..., Flask],
) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    jobs.reset()
    app = make_app(retry_backoff=0.05, loop_lag_threshold=0.1)
    async with serve(app) as client:
        yield app.extensions["asyncapp"].runtime, client


async def add(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/scheduler/jobs", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def runs_of(client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/scheduler/jobs/{job_id}/runs", headers=AUTH)
    return response.json()["runs"]  # type: ignore[no-any-return]


async def test_a_raising_job_is_recorded_and_logged_once_with_its_traceback(
    app_and_client: tuple[Runtime, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    runtime, client = app_and_client
    caplog.set_level(logging.INFO, logger="asyncapp")
    await add(client, id="bad", func="tests.jobs:fail", args=["boom"], **NOW)
    await add(client, id="good", func="tests.jobs:record", args=["good"], **NOW)
    await jobs.wait_fired("fail:boom")
    await jobs.wait_fired("good")
    await settled(runtime)
    (bad,) = await runs_of(client, "bad")
    assert (bad["status"], bad["error_type"], bad["error_message"]) == (
        "error",
        "ValueError",
        "boom",
    )
    assert (await runs_of(client, "good"))[0]["status"] == "success"
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1
    assert failures[0].exc_info is not None and "ValueError: boom" in caplog.text


async def test_a_hanging_job_is_cancelled_at_its_timeout(
    app_and_client: tuple[Runtime, httpx.AsyncClient],
) -> None:
    runtime, client = app_and_client
    gate = jobs.gate("hang")
    await add(client, id="hang", func="tests.jobs:hold", args=["hang"], timeout=1, **NOW)
    await gate.started.wait()
    await settled(runtime)
    (run,) = await runs_of(client, "hang")
    assert run["status"] == "timeout"
    assert run["error_type"] == "asyncapp.errors.JobTimeout"
    took = datetime.fromisoformat(run["ended_at"]) - datetime.fromisoformat(run["started_at"])
    assert timedelta(seconds=1) <= took < timedelta(seconds=2)
    assert not gate.release.is_set() and "hang" not in [e["tag"] for e in jobs.fired]


async def test_a_def_job_past_its_timeout_is_recorded_though_its_thread_goes_on(
    app_and_client: tuple[Runtime, httpx.AsyncClient],
) -> None:
    runtime, client = app_and_client
    await add(
        client, id="slow", func="tests.jobs:sync_hold", args=["slow", 1.5], timeout=0.5, **NOW
    )
    await jobs.wait_fired("slow:start")
    await settled(runtime)
    (run,) = await runs_of(client, "slow")
    assert run["status"] == "timeout"
    threads = [entry["thread"] for entry in jobs.fired if entry["tag"] == "slow:start"]
    assert threads[0] != threading.get_ident()  # in a thread, not on the loop
    await jobs.wait_fired("slow")  # the thread could not be stopped; it finishes later


class ReportCounter(logging.Handler):
    """Sets :attr:`enough` once ``count`` records have been emitted (from any thread)."""

    def __init__(self, count: int) -> None:
        super().__init__(logging.WARNING)
        self.count = count
        self.enough = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.count -= 1
        if self.count <= 0:
            self.enough.set()


async def test_a_blocking_job_is_named_by_the_watchdog_and_a_healthy_job_keeps_time(
    app_and_client: tuple[Runtime, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    runtime, client = app_and_client
    caplog.set_level(logging.WARNING, logger="asyncapp.watchdog")
    start = (datetime.now(UTC) + timedelta(seconds=0.5)).isoformat()
    healthy = {"trigger": "interval", "seconds": 0.5, "start_date": start}
    await add(client, id="healthy", func="tests.jobs:record", args=["healthy"], **healthy)
    blocker = {"trigger": "interval", "seconds": 1, "start_date": start}
    await add(client, id="blocker", func="tests.jobs:block", args=["blocked", 0.5], **blocker)
    reports = ReportCounter(3)
    logging.getLogger("asyncapp.watchdog").addHandler(reports)
    try:
        await jobs.wait_fired("blocked", 3, timeout=15)
        await jobs.wait_fired("healthy", 6, timeout=15)
        await client.post("/scheduler/pause", headers=AUTH)
        await settled(runtime)
        # The watchdog's thread reports a hold once the loop runs again, a tick later.
        assert await asyncio.to_thread(reports.enough.wait, 5), "the watchdog said too little"
    finally:
        logging.getLogger("asyncapp.watchdog").removeHandler(reports)
    warnings = [r.getMessage() for r in caplog.records if r.name == "asyncapp.watchdog"]
    assert all("by job blocker run " in w for w in warnings), warnings
    assert all("time.sleep(seconds)" in w and "jobs.py" in w for w in warnings), warnings
    assert runtime.watchdog.held >= 3
    healthy_runs = await runs_of(client, "healthy")
    assert healthy_runs and all(r["status"] == "success" for r in healthy_runs)


async def test_a_failing_job_is_retried_with_growing_delays_until_it_succeeds(
    app_and_client: tuple[Runtime, httpx.AsyncClient],
) -> None:
    runtime, client = app_and_client
    await add(client, id="flaky", func="tests.jobs:flaky", args=["flaky", 2], retries=3, **NOW)
    (done,) = await jobs.wait_fired("flaky")
    await settled(runtime)
    (run,) = await runs_of(client, "flaky")
    assert (run["status"], run["attempt"]) == ("success", 3)
    earlier = run["attempts"]
    assert [(a["attempt"], a["status"], a["error_type"]) for a in earlier] == [
        (1, "error", "ConnectionError"),
        (2, "error", "ConnectionError"),
    ]
    began = jobs.attempts["flaky"]
    first, second = began[1] - began[0], began[2] - began[1]
    assert 0.025 <= first <= 0.2 and 0.05 <= second <= 0.3  # backoff 0.05 s, then 0.1 s
    assert second >= first
    assert done["attempt"] == 3 and done["key"] == f"flaky@{run['scheduled_for']}"


async def test_each_attempt_has_its_own_start_as_the_job_saw_it(
    app_and_client: tuple[Runtime, httpx.AsyncClient], tmp_path: Path
) -> None:
    runtime, client = app_and_client
    stamps = tmp_path / "stamps"
    body = {"id": "st", "func": "tests.jobs:stamped_flaky", "retries": 3}
    await add(client, args=[str(stamps), 3], **body, **NOW)
    await jobs.wait_fired("stamped", 4)
    await settled(runtime)
    (run,) = await runs_of(client, "st")
    seen = [float(line.split()[1]) for line in stamps.read_text().splitlines()]
    assert run["status"] == "success" and run["attempt"] == len(seen) == 4
    attempts = run["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    for attempt, stamp in zip(attempts, seen, strict=False):
        started, ended = (
            datetime.fromisoformat(attempt[k]).timestamp() for k in ("started_at", "ended_at")
        )
        # The job began within its attempt, as the attempt's row says.
        assert started <= stamp <= ended, (attempt, stamp)
    for before, after in itertools.pairwise(attempts):
        assert datetime.fromisoformat(after["started_at"]) > datetime.fromisoformat(
            before["ended_at"]
        )
    # The run keeps its first start, and its end is the last attempt's.
    assert run["started_at"] == attempts[0]["started_at"]
    assert datetime.fromisoformat(run["ended_at"]).timestamp() >= seen[-1]


async def test_a_jobs_error_message_is_one_line_in_any_handler(
    app_and_client: tuple[Runtime, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    # caplog's handler is not asyncapp's: the message itself must already be escaped.
    runtime, client = app_and_client
    caplog.set_level(logging.WARNING, logger="asyncapp")
    forged = "boom\n2026-12-03 00:00:00,000 ERROR asyncapp.run: FORGED"
    await add(client, id="liar", func="tests.jobs:fail", args=[forged], retries=1, **NOW)
    await jobs.wait_fired(f"fail:{forged}", 2)
    await settled(runtime)
    retried = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retried and all("\n" not in message for message in retried), retried
    assert "boom\\n2026-12-03" in retried[0]


async def test_retries_spent_end_the_run_with_the_last_attempts_status(
    app_and_client: tuple[Runtime, httpx.AsyncClient],
) -> None:
    runtime, client = app_and_client
    await add(client, id="down", func="tests.jobs:flaky", args=["down", 10], retries=1, **NOW)
    await jobs.wait_fired("down:attempt", 2)
    await settled(runtime)
    (run,) = await runs_of(client, "down")
    assert (run["status"], run["attempt"], len(run["attempts"])) == ("error", 2, 1)
    assert len(jobs.attempts["down"]) == 2


async def test_the_cap_on_running_jobs_queues_the_rest(make_app: Callable[..., Flask]) -> None:
    jobs.reset()
    app = make_app(max_running=5)
    async with serve(app) as client:
        runtime = app.extensions["asyncapp"].runtime
        at = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        for i in range(50):
            body = {"id": f"c{i}", "func": "tests.jobs:crowd", "args": ["crowd", 0.1],
                    "trigger": "date", "run_date": at}  # fmt: skip
            assert (await client.post("/scheduler/jobs", json=body, headers=AUTH)).is_success
        await jobs.wait_fired("crowd", 50, timeout=30)
        await settled(runtime)
        page = (await client.get("/scheduler/runs?limit=100", headers=AUTH)).json()
    assert jobs.running_now["peak"] == 5
    lateness = sorted(
        (datetime.fromisoformat(r["started_at"]) - datetime.fromisoformat(r["scheduled_for"]))
        for r in page["runs"]
    )
    assert lateness[-1] >= timedelta(seconds=0.8)  # the last ones waited about 9 turns


async def test_metrics_parse_and_move(app_and_client: tuple[Runtime, httpx.AsyncClient]) -> None:
    runtime, client = app_and_client

    async def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = await client.get("/metrics", headers=AUTH)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    assert (await client.get("/metrics")).status_code == 401
    before = await samples()
    await add(client, id="counted", func="tests.jobs:record", args=["counted"], **NOW)
    await jobs.wait_fired("counted")
    await settled(runtime)
    after = await samples()
    key = ("asyncapp_runs_total", (("func", "tests.jobs:record"), ("status", "success")))
    assert after[key] == before.get(key, 0) + 1
    assert after[("asyncapp_database_up", ())] == 1
    assert after[("asyncapp_live_processes", ())] >= 1
    assert any(name == "asyncapp_event_loop_lag_seconds_count" for name, _ in after)
    lateness = ("asyncapp_run_start_lateness_seconds_count", (("func", "tests.jobs:record"),))
    assert after[lateness] == before.get(lateness, 0) + 1


async def test_metrics_can_be_open_to_a_scraper(make_app: Callable[..., Flask]) -> None:
    async with serve(make_app(metrics_public=True)) as client:
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/scheduler/jobs")).status_code == 401


async def test_log_lines_of_a_run_carry_its_job_run_time_and_node(
    make_app: Callable[..., Flask], capsys: pytest.CaptureFixture[str]
) -> None:
    """With no logging configured by the app, asyncapp's handler tags the lines."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        for style in ("text", "json"):
            jobs.reset()
            asyncapp_logger = logging.getLogger("asyncapp")
            for handler in list(asyncapp_logger.handlers):
                asyncapp_logger.removeHandler(handler)
            app = make_app(log_format=style)
            async with serve(app) as client:
                await add(client, id=f"logged-{style}", func="tests.jobs:record",
                          args=[style], **NOW)  # fmt: skip
                await jobs.wait_fired(style)
                await settled(app.extensions["asyncapp"].runtime)
            lines = [line for line in capsys.readouterr().err.splitlines() if "succeeded" in line]
            assert len(lines) == 1, lines
            if style == "text":
                assert f"[job=logged-{style} run=" in lines[0] and " scheduled=20" in lines[0]
                assert " node=" in lines[0]
            else:
                entry = json.loads(lines[0])
                assert entry["job_id"] == f"logged-{style}" and entry["level"] == "INFO"
                assert entry["scheduled_for"].startswith("20") and entry["run_id"]
    finally:
        root.handlers[:] = saved
        for handler in list(logging.getLogger("asyncapp").handlers):
            logging.getLogger("asyncapp").removeHandler(handler)


async def test_limits_on_jobs_and_argument_size_are_clear_422s(
    make_app: Callable[..., Flask],
) -> None:
    async with serve(make_app(max_jobs=2, max_args_bytes=100)) as client:
        big = {"id": "big", "func": "tests.jobs:record", "args": ["x" * 200]}
        response = await client.post("/scheduler/jobs", json=big, headers=AUTH)
        assert response.status_code == 422
        assert "ASYNCAPP_MAX_ARGS_BYTES" in response.json()["errors"][0]["message"]
        for i in range(2):
            body = {"id": f"j{i}", "func": "tests.jobs:record", "args": ["x"], "hours": 1,
                    "trigger": "interval"}  # fmt: skip
            assert (await client.post("/scheduler/jobs", json=body, headers=AUTH)).is_success
        body["id"] = "j2"
        response = await client.post("/scheduler/jobs", json=body, headers=AUTH)
        assert response.status_code == 422
        assert "ASYNCAPP_MAX_JOBS" in response.json()["errors"][0]["message"]


async def test_pruning_keeps_the_newest_runs_and_those_in_progress(
    make_app: Callable[..., Flask],
) -> None:
    from asyncapp.model.run import Run
    from asyncapp.store.tables import runs_table

    app = make_app(history_per_job=3, history_days=7)
    async with serve(app) as client:
        runtime = app.extensions["asyncapp"].runtime
        now = datetime.now(UTC)
        rows = [
            Run(job_id="a", scheduled_for=now - timedelta(hours=i), node="n", status="success")
            for i in range(6)
        ]
        rows.append(Run(job_id="a", scheduled_for=now - timedelta(days=30), node="n"))  # running
        rows.append(
            Run(job_id="b", scheduled_for=now - timedelta(days=8), node="n", status="success")
        )
        rows.append(Run(job_id="b", scheduled_for=now, node="n", status="success"))
        await runtime.store.db.write(
            lambda conn: conn.execute(runs_table.insert(), [r.row() for r in rows])
        )
        assert await runtime.prune() == 4
        page = (await client.get("/scheduler/runs?limit=100", headers=AUTH)).json()
    kept = sorted((r["job_id"], r["status"], r["scheduled_for"]) for r in page["runs"])
    assert [k[:2] for k in kept] == [("a", "running")] + [("a", "success")] * 3 + [("b", "success")]
    assert asyncio.iscoroutinefunction(runtime.prune)


def test_error_types_are_named_as_users_import_them() -> None:
    import httpx

    from asyncapp.model.run import qualified_name

    assert qualified_name(ValueError("x")) == "ValueError"
    assert qualified_name(httpx.ConnectError("x")) == "httpx.ConnectError"
    assert qualified_name(httpx.ReadTimeout("x")) == "httpx.ReadTimeout"


async def test_the_watchdog_names_a_request_that_blocks_the_loop(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    import time

    caplog.set_level(logging.WARNING, logger="asyncapp.watchdog")
    app = make_app(loop_lag_threshold=0.1)

    @app.get("/blocking")
    async def blocking() -> str:
        time.sleep(0.4)  # the mistake the watchdog is for
        return "done"

    async with serve(app) as client:
        assert (await client.get("/blocking")).text == "done"
        runtime = app.extensions["asyncapp"].runtime
        await asyncio.to_thread(lambda: time.sleep(0.3))  # its report comes when the loop is free
        assert runtime.watchdog.held >= 1
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "asyncapp.watchdog"]
    assert "by request GET /blocking" in warning and "time.sleep(0.4)" in warning


def test_watchdog_names_a_frame_that_has_no_line_number_yet() -> None:
    from types import SimpleNamespace

    from asyncapp.watchdog import _where

    def culprit() -> None: ...

    # What the watchdog's thread can read from the loop thread's current frame.
    frame = SimpleNamespace(f_code=culprit.__code__, f_lineno=None, f_back=None)
    assert _where(frame).endswith(":? in culprit")  # type: ignore[arg-type]
