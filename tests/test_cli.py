"""``flask jobs ...`` against a real database, through the offline service."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result
from flask import Flask

from tests import jobs
from tests.conftest import AUTH, Server, wait_until

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def cli(make_app: Callable[..., Flask]) -> Callable[..., Result]:
    jobs.reset()
    runner = make_app().test_cli_runner()

    def invoke(*args: str) -> Result:
        return runner.invoke(args=["jobs", *args])

    return invoke


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def as_json(result: Result) -> Any:
    return json.loads(ok(result))


def test_add_list_show(cli: Callable[..., Result]) -> None:
    out = ok(
        cli(
            "add",
            "tests.jobs:record",
            "--id",
            "poll",
            "--trigger",
            "interval",
            "--set",
            "minutes=10",
            "--kwarg",
            'tag="poll"',
        )
    )
    assert "poll" in out and "tests.jobs:record" in out
    ok(
        cli(
            "add",
            "tests.jobs:record",
            "--id",
            "nightly",
            "--trigger",
            "cron",
            "--set",
            "hour=3",
            "--set",
            "day_of_week=mon-fri",
            "--set",
            "timezone=Europe/Paris",
            "--arg",
            '"nightly"',
        )
    )
    table = ok(cli("list"))
    header, *rows = table.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "FUNC"]
    assert any(r.startswith("poll") and "every 10 minutes" in r and "scheduled" in r for r in rows)
    assert any(r.startswith("nightly") and "Monday through Friday" in r for r in rows)
    listed = as_json(cli("list", "--json"))
    assert {j["id"] for j in listed} == {"poll", "nightly"}
    shown = as_json(cli("show", "nightly", "--json"))
    assert (shown["trigger"], shown["hour"], shown["args"]) == ("cron", "3", ["nightly"])
    assert "timezone" in ok(cli("show", "nightly"))


def test_pause_resume_remove(cli: Callable[..., Result]) -> None:
    ok(
        cli(
            "add",
            "tests.jobs:record",
            "--id",
            "p",
            "--trigger",
            "interval",
            "--set",
            "hours=1",
            "--kwarg",
            'tag="p"',
        )
    )
    assert as_json(cli("pause", "p", "--json"))["paused"] is True
    assert "paused" in ok(cli("list"))
    assert as_json(cli("resume", "p", "--json"))["paused"] is False
    assert "Removed p" in ok(cli("remove", "p"))
    assert "No jobs." in ok(cli("list"))


def test_run_waits_and_records_history(cli: Callable[..., Result]) -> None:
    ok(
        cli(
            "add",
            "tests.jobs:record",
            "--id",
            "r",
            "--trigger",
            "interval",
            "--set",
            "hours=1",
            "--kwarg",
            'tag="r"',
        )
    )
    run = as_json(cli("run", "r", "--json"))
    assert run["status"] == "success" and run["job_id"] == "r"
    assert [entry["tag"] for entry in jobs.fired] == ["r"]
    page = as_json(cli("runs", "r", "--json"))
    assert page["total"] == 1 and page["runs"][0]["id"] == run["id"]
    assert "success" in ok(cli("runs"))
    assert "No runs." in ok(cli("runs", "--status", "error"))


def test_failed_run_exits_non_zero(cli: Callable[..., Result]) -> None:
    ok(
        cli(
            "add",
            "tests.jobs:fail",
            "--id",
            "f",
            "--trigger",
            "interval",
            "--set",
            "hours=1",
            "--kwarg",
            'message="boom"',
        )
    )
    result = cli("run", "f")
    assert result.exit_code == 1
    assert "error" in result.output and "boom" in result.output


def test_errors_are_messages_not_tracebacks(cli: Callable[..., Result]) -> None:
    for args, expected in [
        (("add", "os:system"), "not a registered @task"),
        (("add", "tests.jobs:record", "--trigger", "cron", "--set", "hour=99"), "hour"),
        (("add", "tests.jobs:record", "--trigger", "interval", "--set", "minutes=0"), "interval"),
        (("add", "tests.jobs:record", "--set", "bogus=1"), "bogus: unknown field"),
        (("add", "tests.jobs:record", "--kwarg", "tag=not-json"), "not JSON"),
        (("show", "missing"), "no job with id 'missing'"),
        (("pause", "missing"), "no job"),
        (("run", "missing"), "no job"),
        (("remove", "missing"), "no job"),
        (("runs", "--limit", "0"), "limit"),
    ]:
        result = cli(*args)
        assert result.exit_code != 0, args
        assert expected in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert "No jobs." in ok(cli("list"))


def test_an_unreachable_database_is_one_line_with_the_reason(
    make_app: Callable[..., Flask],
) -> None:
    runner = make_app(database_url="postgresql+psycopg://127.0.0.1:9/x").test_cli_runner()
    result = runner.invoke(args=["jobs", "list"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: the database is unavailable; nothing was changed, try again shortly "
        '(OperationalError: connection failed: connection to server at "127.0.0.1", port 9 '
        "failed: Connection refused)\n"
    )


def test_changes_are_seen_by_a_running_server(
    cli: Callable[..., Result], db_url: str, hypercorn_server: Callable[..., Server]
) -> None:
    """A real server on the CLI's database applies each change: its API and its cache."""
    server = hypercorn_server(ASYNCAPP_DATABASE_URL=db_url)
    api = httpx.Client(base_url=server.url, headers=AUTH, timeout=10)

    def job() -> dict[str, Any] | None:
        response = api.get("/scheduler/jobs/shared")
        return response.json() if response.status_code == 200 else None

    def job_if(paused: bool) -> dict[str, Any] | None:
        found = job()
        return found if found is not None and found["paused"] is paused else None

    def cached() -> int:
        return int(api.get("/scheduler").json()["process"]["jobs"])

    with api:
        assert job() is None and cached() == 0
        ok(cli("add", "tests.jobs:record", "--id", "shared", "--trigger", "interval",
               "--set", "minutes=5", "--kwarg", 'tag="s"'))  # fmt: skip
        wait_until(lambda: cached() == 1, what="the server's cache to hold the job")
        added = job()
        assert added is not None
        assert (added["func"], added["minutes"], added["kwargs"]) == (
            "tests.jobs:record", 5, {"tag": "s"}
        )  # fmt: skip
        assert added["paused"] is False and added["next_run_time"]

        ok(cli("pause", "shared"))
        paused = wait_until(lambda: job_if(paused=True), what="the server to show it paused")
        assert paused["next_run_time"] is None and cached() == 1

        ok(cli("remove", "shared"))
        wait_until(lambda: cached() == 0, what="the server's cache to drop the job")
        assert job() is None


def test_reading_commands_never_write(
    cli: Callable[..., Result], db_url: str, tmp_path: Path
) -> None:
    """With the database file immutable, reads work and a change is refused cleanly."""
    ok(cli("add", "tests.jobs:record", "--id", "r", "--trigger", "interval", "--set", "hours=1",
           "--arg", "\"r\""))  # fmt: skip
    database = Path(db_url.removeprefix("sqlite:///"))
    files = [str(p) for p in (database, Path(f"{database}-wal")) if p.exists()]
    subprocess.run(["chattr", "+i", *files], check=True)
    try:
        assert [j["id"] for j in as_json(cli("list", "--json"))] == ["r"]
        assert as_json(cli("show", "r", "--json"))["id"] == "r"
        assert as_json(cli("runs", "--json"))["total"] == 0
        assert as_json(cli("changes", "r", "--json"))["total"] == 1
        refused = cli("pause", "r")
        assert refused.exit_code == 1 and "database is unavailable" in refused.output
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)
    assert as_json(cli("show", "r", "--json"))["paused"] is False
