"""The distribution users install: ``Flask-AsyncApp``, built as CI builds it (``python -m
build``: an sdist, then a wheel from it), checked by ``twine check --strict``, installed
into a fresh venv, where the README tour's job runs under that venv's Hypercorn."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, TOKEN, free_port, start_server, wait_until
from tests.docrun import blocks

# Building (in an isolated environment) and installing the dependencies take most of it.
pytestmark = pytest.mark.timeout(400)


def run(*command: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    return done.stdout


def test_the_wheel_installs_in_a_fresh_venv_and_runs_the_tours_job(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, REPO)
    [wheel] = dist.glob("*.whl")
    [sdist] = dist.glob("*.tar.gz")
    assert wheel.name.startswith("flask_asyncapp-") and sdist.name.startswith("flask_asyncapp-")
    run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [metadata] = [name for name in names if name.endswith(".dist-info/METADATA")]
        headers = archive.read(metadata).decode()
    assert "Name: Flask-AsyncApp" in headers and "Classifier: Typing :: Typed" in headers
    for shipped in (
        "asyncapp/py.typed",
        "asyncapp/store/migrations/script.py.mako",
        "asyncapp/faces/dashboard/templates/dashboard/base.html",
        "asyncapp/faces/dashboard/static/dashboard.js",
    ):
        assert shipped in names

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "--quiet", wheel)
    work = tmp_path / "project"  # a project of the user's: not this checkout
    work.mkdir()
    where = "import asyncapp; print(asyncapp.__file__)"
    located = run(venv / "bin" / "python", "-c", where, cwd=work)
    assert located.startswith(str(venv)), located

    port = free_port()
    tour = (REPO / "README.md").read_text()
    [myjobs] = [body for lang, body in blocks(tour) if body.startswith("# myjobs.py")]
    (work / "myjobs.py").write_text(myjobs.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
    shutil.copy(REPO / "hypercorn.toml", work / "hypercorn.toml")
    server = start_server(
        {"ASYNCAPP_JOB_MODULES": "myjobs", "ASYNCAPP_API_TOKEN": TOKEN, "PYTHONPATH": str(work)},
        port=port,
        cwd=work,
        python=str(venv / "bin" / "python"),
    )
    try:
        server.wait_for("Running on http://")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        started = httpx.post(f"{server.url}/scheduler/jobs/self_check/run", headers=headers)
        assert started.status_code == 200, started.text

        def succeeded() -> list[Any]:
            url = f"{server.url}/scheduler/jobs/self_check/runs"
            runs = httpx.get(url, headers=headers, timeout=10).json()["runs"]
            return [run for run in runs if run["status"] == "success"]

        wait_until(succeeded, timeout=30, what="a successful run of the tour's self_check")
        server.wait_for("/healthz answered 200 [job=self_check")
    finally:
        assert server.stop() == 0
