"""Serving mistakes fail loudly, and ``AsyncApp(app)`` schedules the app's own jobs.

Each test runs a real Hypercorn process on an app module written to a temporary
directory, as a user's project would hold it (a top-level module, not a package
of the test suite).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import AUTH, REPO, TOKEN, Server, start_server

pytestmark = pytest.mark.timeout(60)

OWN_APP = """
from flask import Flask

from asyncapp import AsyncApp, task
from asyncapp.asgi import to_asgi

app = Flask(__name__)


@task("interval", hours=1, id="own_declared")
async def own_declared() -> None:
    pass


AsyncApp(app)
asgi_app = to_asgi(app)
"""


def serve_module(tmp_path: Path, app: str, source: str, **env: str) -> Server:
    """A Hypercorn process serving ``app`` of ``ownapp.py`` (``source``) from ``tmp_path``."""
    (tmp_path / "ownapp.py").write_text(source)
    shutil.copy(REPO / "hypercorn.toml", tmp_path / "hypercorn.toml")
    server = start_server(
        {
            "ASYNCAPP_API_TOKEN": TOKEN,
            "ASYNCAPP_DATABASE_URL": f"sqlite:///{tmp_path / 'own.db'}",
            "PYTHONPATH": f"{tmp_path}:{REPO}",
            **env,
        },
        app=app,
        cwd=tmp_path,
    )
    server.wait_for("Running on http://")
    return server


def test_an_app_served_as_wsgi_says_the_scheduler_does_not_run_there(tmp_path: Path) -> None:
    # ``hypercorn ownapp:app`` serves the bare Flask app as WSGI, as gunicorn or
    # ``flask run`` would: no lifespan, so no scheduler.
    server = serve_module(tmp_path, "ownapp:app", OWN_APP)
    try:
        health = httpx.get(f"{server.url}/healthz", timeout=10)
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        api = httpx.get(f"{server.url}/scheduler/jobs", headers=AUTH, timeout=10)
    finally:
        server.stop()
    assert health.status_code == 503
    assert health.json()["status"] == "not_running"
    assert ready.status_code == 503 and ready.json()["ready"] is False
    assert api.status_code == 503
    for answer in (health.json()["problems"][0], ready.json()["problems"][0]):
        assert "WSGI server (flask run, gunicorn)" in answer
    assert "hypercorn -c hypercorn.toml" in api.json()["error_message"]
    said = [line for line in server.output().splitlines() if "does not run in this process" in line]
    assert len(said) == 1, server.output()
    assert "Traceback" not in server.output()


def test_asyncapp_on_an_own_app_schedules_its_declared_jobs_and_not_the_examples(
    tmp_path: Path,
) -> None:
    server = serve_module(tmp_path, "ownapp:asgi_app", OWN_APP)
    try:
        jobs = httpx.get(f"{server.url}/scheduler/jobs", headers=AUTH, timeout=10).json()
        health = httpx.get(f"{server.url}/healthz", timeout=10)
    finally:
        server.stop()
    assert [job["id"] for job in jobs] == ["own_declared"]
    assert jobs[0]["func"] == "ownapp:own_declared"
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert "does not run in this process" not in server.output()


def test_the_default_app_still_runs_the_examples(tmp_path: Path) -> None:
    server = serve_module(tmp_path, "asyncapp.asgi:app", "")
    try:
        jobs = httpx.get(f"{server.url}/scheduler/jobs", headers=AUTH, timeout=10).json()
    finally:
        server.stop()
    assert [job["id"] for job in jobs] == ["hourly_task"]
