"""Three Flask-APScheduler apps, written as that project's README and examples write them,
migrated by changing the import alone, served by a real Hypercorn with a token.

Each app below is the Flask-APScheduler original; :func:`migrate` changes its
import line and nothing else (the test checks the diff), and the server runs
``hypercorn -c hypercorn.toml 'ownapp:scheduler.asgi'`` with ``ASYNCAPP_API_TOKEN``.
"""

from __future__ import annotations

import asyncio
import difflib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask

from asyncapp import JobNotFound
from asyncapp.flask_apscheduler import (
    STATE_PAUSED,
    STATE_RUNNING,
    STATE_STOPPED,
    APScheduler,
)
from tests import jobs as test_jobs
from tests.conftest import AUTH, REPO, TOKEN, Server, app_config, serve, start_server
from tests.test_serving import serve_module

pytestmark = pytest.mark.timeout(90)

ORIGINAL_IMPORT = "from flask_apscheduler import APScheduler"
DROP_IN_IMPORT = "from asyncapp.flask_apscheduler import APScheduler"
SERVE = "ownapp:scheduler.asgi"

# examples/decorated.py: interval and cron jobs declared with @scheduler.task, sync def jobs.
DECORATED = """
from flask import Flask
from flask_apscheduler import APScheduler


class Config:
    SCHEDULER_API_ENABLED = True


scheduler = APScheduler()


# interval examples
@scheduler.task("interval", id="do_job_1", seconds=1, misfire_grace_time=900)
def job1():
    print("Job 1 executed")


# cron examples
@scheduler.task("cron", id="do_job_2", minute="*")
def job2():
    print("Job 2 executed")


@scheduler.task("cron", id="do_job_3", week="*", day_of_week="sun")
def job3():
    print("Job 3 executed")


app = Flask(__name__)
app.config.from_object(Config())
scheduler.init_app(app)
scheduler.start()

if __name__ == "__main__":
    app.run()
"""

# examples/jobs.py: jobs from the config, by reference, with the scheduler's config keys.
FROM_CONFIG = """
from flask import Flask
from flask_apscheduler import APScheduler


class Config:
    SCHEDULER_JOBS = [
        {"id": "job1", "func": "ownapp:job1", "args": (1, 2), "trigger": "interval", "seconds": 1},
        {"id": "nightly", "func": "ownapp:report", "trigger": "cron", "hour": 3},
    ]
    SCHEDULER_API_ENABLED = True
    SCHEDULER_TIMEZONE = "Europe/Helsinki"
    SCHEDULER_JOB_DEFAULTS = {"coalesce": False, "max_instances": 1, "misfire_grace_time": 30}


def job1(a, b):
    print(str(a) + " " + str(b))


def report():
    print("nightly report")


app = Flask(__name__)
app.config.from_object(Config())

scheduler = APScheduler()
scheduler.init_app(app)
scheduler.start()

if __name__ == "__main__":
    app.run()
"""

# A job added, paused, listed and removed from views.
FROM_VIEWS = """
from flask import Flask, jsonify
from flask_apscheduler import APScheduler

app = Flask(__name__)
app.config["SCHEDULER_API_ENABLED"] = True
scheduler = APScheduler()
scheduler.init_app(app)
scheduler.start()


def tick(name):
    print(f"tick {name}")


@app.route("/add/<name>")
def add(name):
    job = scheduler.add_job(
        id=f"tick-{name}", func=tick, args=[name], trigger="interval", seconds=1,
        replace_existing=True,
    )
    return jsonify(id=job.id, next_run_time=str(job.next_run_time))


@app.route("/pause/<name>")
def pause(name):
    scheduler.pause_job(f"tick-{name}")
    return jsonify(jobs=[job.id for job in scheduler.get_jobs()])


@app.route("/remove/<name>")
def remove(name):
    scheduler.remove_job(f"tick-{name}")
    return jsonify(removed=name, left=[job.id for job in scheduler.get_jobs()])


if __name__ == "__main__":
    app.run()
"""


def migrate(source: str) -> str:
    """The migration: the import line, nothing else."""
    migrated = source.replace(ORIGINAL_IMPORT, DROP_IN_IMPORT)
    changed = [
        line
        for line in difflib.unified_diff(source.splitlines(), migrated.splitlines(), lineterm="")
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    ]
    assert changed == [f"-{ORIGINAL_IMPORT}", f"+{DROP_IN_IMPORT}"]
    return migrated


def api(server: Server, method: str, path: str) -> httpx.Response:
    return httpx.request(method, f"{server.url}{path}", headers=AUTH, timeout=10)


def test_decorated_interval_and_cron_jobs_run_after_changing_the_import(tmp_path: Path) -> None:
    server = serve_module(tmp_path, SERVE, migrate(DECORATED))
    try:
        server.wait_for("Job 1 executed")
        listed = api(server, "GET", "/scheduler/jobs").json()
        upcoming = api(server, "GET", "/scheduler/jobs/do_job_2/upcoming?count=2").json()
        runs = api(server, "GET", "/scheduler/jobs/do_job_1/runs").json()["runs"]
    finally:
        assert server.stop() == 0
    by_id = {job["id"]: job for job in listed}
    assert sorted(by_id) == ["do_job_1", "do_job_2", "do_job_3"]
    assert by_id["do_job_1"]["trigger"] == "interval" and by_id["do_job_1"]["seconds"] == 1
    assert by_id["do_job_1"]["misfire_grace_time"] == 900
    assert by_id["do_job_2"]["trigger"] == "cron" and by_id["do_job_2"]["minute"] == "*"
    assert by_id["do_job_3"]["day_of_week"] == "sun"
    first, second = upcoming["times"]
    assert first.endswith(":00+00:00") and second.endswith(":00+00:00")
    assert any(run["status"] == "success" for run in runs)


def test_jobs_from_the_config_keep_their_settings_after_changing_the_import(
    tmp_path: Path,
) -> None:
    server = serve_module(tmp_path, SERVE, migrate(FROM_CONFIG))
    try:
        server.wait_for("1 2")
        job1 = api(server, "GET", "/scheduler/jobs/job1").json()
        nightly = api(server, "GET", "/scheduler/jobs/nightly/upcoming?count=1").json()
    finally:
        assert server.stop() == 0
    assert job1["func"] == "ownapp:job1" and job1["args"] == [1, 2]
    assert (job1["coalesce"], job1["misfire_grace_time"], job1["max_instances"]) == (False, 30, 1)
    # SCHEDULER_TIMEZONE is the scheduler's zone: 03:00 in Helsinki.
    assert nightly["times"][0].endswith("T03:00:00+02:00")


def test_a_job_added_from_a_view_is_steered_by_views_and_the_api(tmp_path: Path) -> None:
    server = serve_module(tmp_path, SERVE, migrate(FROM_VIEWS))
    try:
        added = httpx.get(f"{server.url}/add/a", timeout=10).json()
        assert added["id"] == "tick-a" and added["next_run_time"].startswith("20")
        server.wait_for("tick a")
        paused = httpx.get(f"{server.url}/pause/a", timeout=10).json()
        assert paused == {"jobs": ["tick-a"]}
        assert api(server, "GET", "/scheduler/jobs/tick-a").json()["paused"] is True
        # Flask-APScheduler's REST API, now with the token.
        assert api(server, "POST", "/scheduler/jobs/tick-a/resume").json()["paused"] is False
        assert httpx.get(f"{server.url}/scheduler/jobs", timeout=10).status_code == 401
        again = httpx.get(f"{server.url}/add/a", timeout=10)  # replace_existing=True
        assert again.status_code == 200, again.text
        removed = httpx.get(f"{server.url}/remove/a", timeout=10).json()
        changes = api(server, "GET", "/scheduler/jobs/tick-a/changes").json()["changes"]
    finally:
        assert server.stop() == 0
    assert removed == {"removed": "a", "left": []}
    sources = [(change["action"], change["source"]) for change in reversed(changes)]
    assert sources == [
        ("add", "code"),
        ("pause", "code"),
        ("resume", "api"),
        ("remove", "code"),
        ("add", "code"),
        ("remove", "code"),
    ]


def test_keys_that_cannot_apply_stop_startup_with_one_line(tmp_path: Path) -> None:
    source = migrate(DECORATED).replace(
        "    SCHEDULER_API_ENABLED = True",
        "    SCHEDULER_API_ENABLED = True\n"
        "    SCHEDULER_JOBSTORES = {'default': {'type': 'sqlalchemy', 'url': 'sqlite:///old.db'}}\n"
        "    SCHEDULER_EXECUTORS = {'default': {'type': 'threadpool', 'max_workers': 20}}",
    )
    (tmp_path / "ownapp.py").write_text(source)
    shutil.copy(REPO / "hypercorn.toml", tmp_path / "hypercorn.toml")
    server = start_server(
        {
            "ASYNCAPP_API_TOKEN": TOKEN,
            "ASYNCAPP_DATABASE_URL": f"sqlite:///{tmp_path / 'own.db'}",
            "PYTHONPATH": f"{tmp_path}:{REPO}",
        },
        app=SERVE,
        cwd=tmp_path,
    )
    code, output = server.exited()
    assert code == 1
    [line] = [line for line in output.splitlines() if "startup failed" in line]
    assert "SCHEDULER_JOBSTORES: asyncapp keeps jobs as JSON" in line
    assert "set ASYNCAPP_DATABASE_URL" in line and "SCHEDULER_EXECUTORS:" in line
    assert "Traceback" not in output
    assert not (tmp_path / "old.db").exists(), "nothing was written to the old store"


async def test_flask_apschedulers_calls_steer_jobs_through_the_service(db_url: str) -> None:
    """The calls a Flask-APScheduler app makes once running, from a thread as a sync view
    makes them; each is committed, visible to the API and recorded with source 'code'."""
    test_jobs.reset()
    app = Flask("dropin_app")
    app.config.update(app_config(db_url), SCHEDULER_API_ENABLED=True)
    scheduler = APScheduler(app=app)

    def call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return asyncio.to_thread(method, *args, **kwargs)

    async with serve(app) as client:
        assert scheduler.running and scheduler.state == STATE_RUNNING
        added = await call(
            scheduler.add_job, "dj", test_jobs.record, trigger="interval", hours=1, args=["dj"]
        )
        assert added.id == "dj" and added.next_run_time is not None
        moved = await call(scheduler.reschedule_job, "dj", trigger="cron", hour=4)
        assert moved.trigger["type"] == "cron" and moved.trigger["hour"] == "4"
        changed = await call(scheduler.modify_job, "dj", args=["other"])
        assert changed.args == ("other",)
        assert (await call(scheduler.pause_job, "dj")).paused
        assert not (await call(scheduler.resume_job, "dj")).paused
        await call(scheduler.pause)
        assert scheduler.state == STATE_PAUSED
        await call(scheduler.resume)
        await call(scheduler.shutdown)
        assert scheduler.state == STATE_STOPPED and not scheduler.running
        await call(scheduler.start)
        assert scheduler.state == STATE_RUNNING
        run = await call(scheduler.run_job, "dj")
        assert run.job_id == "dj"
        await test_jobs.wait_fired("other")
        assert await call(scheduler.get_job, "missing") is None
        with pytest.raises(JobNotFound):
            await call(scheduler.remove_job, "missing")
        assert [job.id for job in await call(scheduler.get_jobs)] == ["dj"]
        await call(scheduler.remove_all_jobs)
        assert await call(scheduler.get_jobs) == []
        history = await client.get("/scheduler/jobs/dj/changes", headers=AUTH)
    actions = [(c["action"], c["source"]) for c in reversed(history.json()["changes"])]
    assert actions == [
        ("add", "code"),
        ("modify", "code"),
        ("modify", "code"),
        ("pause", "code"),
        ("resume", "code"),
        ("run", "code"),
        ("remove", "code"),
    ]


async def test_the_api_is_served_only_when_enabled_as_in_flask_apscheduler(db_url: str) -> None:
    off, on = Flask("api_off"), Flask("api_on")
    off.config.update(app_config(db_url))
    on.config.update(app_config(db_url), SCHEDULER_API_PREFIX="/jobs-api")
    APScheduler(app=off)
    enabled = APScheduler()
    enabled.api_enabled = True  # as its README shows, instead of SCHEDULER_API_ENABLED
    enabled.init_app(on)
    async with serve(off) as client:
        assert (await client.get("/scheduler/jobs", headers=AUTH)).status_code == 404
    async with serve(on) as client:
        assert (await client.get("/jobs-api/jobs", headers=AUTH)).json() == []
