"""The docs match the code: every setting and every module is in the README's tables, and
every example of docs/api.md runs as printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from asyncapp.settings import Settings
from tests.conftest import REPO, free_port
from tests.docrun import Reader, blocks


def test_readme_documents_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [
        f"ASYNCAPP_{name.upper()}"
        for name in Settings.model_fields
        if f"| `ASYNCAPP_{name.upper()}` |" not in readme
    ]
    assert missing == []


def test_readme_layout_names_every_module() -> None:
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    package = REPO / "asyncapp"
    modules = sorted(
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if path.name != "__init__.py" and "migrations" not in path.parts
    )
    assert [name for name in modules if f"`{name}`" not in layout] == []


def test_readme_starts_with_the_two_commands() -> None:
    commands = [
        line.strip()
        for line in (REPO / "README.md").read_text().splitlines()
        if line.startswith("    python3 -m venv")
    ]
    assert commands[:2] == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && "
        ".venv/bin/hypercorn -c hypercorn.toml asyncapp.asgi:app",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest",
    ]
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[1] in ci, ".ci/run must call the README's test command"


@pytest.mark.timeout(180)
def test_every_example_of_docs_api_runs_as_printed(tmp_path: Path) -> None:
    """docs/api.md's examples, in order, on a server with the README tour's jobs."""
    reader = Reader(tmp_path, free_port())
    try:
        for language, body in blocks((REPO / "README.md").read_text()):
            if language == "python":
                reader.python(body)  # myjobs.py, which the examples use
        for language, body in blocks((REPO / "docs" / "api.md").read_text()):
            if language == "sh":
                reader.shell(body)
        ran = [r for r in reader.responses if r.request.url.path.endswith("/upcoming")]
        assert ran and ran[0].json()["times"][0] == "2027-03-15T09:00:00+01:00"
        assert len(reader.outputs) >= 10  # the CLI lines ran too
    finally:
        reader.close()


def test_the_version_is_written_once_and_the_changelog_releases_it() -> None:
    import re
    import tomllib
    from importlib import metadata

    import asyncapp
    from asyncapp.constants import VERSION

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "asyncapp.constants.VERSION"
    assert asyncapp.__version__ == VERSION
    (distribution, *_) = metadata.packages_distributions()["asyncapp"]
    assert metadata.version(distribution) == VERSION  # the installed metadata reads it
    written = [
        path.relative_to(REPO).as_posix()
        for path in (REPO / "asyncapp").rglob("*.py")
        if f'"{VERSION}"' in path.read_text()
    ]
    assert written == ["asyncapp/constants.py"]
    changelog = (REPO / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", changelog, re.M)
    assert changelog.startswith("# Changelog") and "\n## [Unreleased]\n" in changelog
    assert releases[0] == VERSION and releases[-1] == "0.1.0"
    for section in ("Added", "Changed", "Fixed"):
        assert f"\n### {section}\n" in changelog
    # Versions the docs show are this one.
    shown = re.findall(r'"version": "(\d+\.\d+\.\d+)"', (REPO / "docs" / "api.md").read_text())
    assert shown and set(shown) == {VERSION}


@pytest.mark.timeout(120)
def test_every_example_of_docs_python_runs_as_printed(tmp_path: Path) -> None:
    """docs/python.md: an app steering jobs from its views, then a script, on one server."""
    reader = Reader(tmp_path, free_port())
    try:
        for language, body in blocks((REPO / "docs" / "python.md").read_text()):
            if language == "python":
                reader.python(body)
            elif language == "sh":
                reader.shell(body)
        added, refreshed, paused = (response.json() for response in reader.responses)
        assert added["id"] == "prices" and added["next_run_time"].endswith("+00:00")
        assert refreshed["status"] == "running"
        assert paused == {"paused": True, "note": "supplier maintenance"}
        report = reader.outputs[-1].splitlines()
        assert report[0] == "prices paused supplier maintenance"
        assert report[1].startswith("next: 20")
        assert report[2] == "runs: 1"  # the refresh above
    finally:
        reader.close()


@pytest.mark.timeout(180)
def test_every_example_of_docs_migrating_runs_as_printed(tmp_path: Path) -> None:
    """docs/migrating.md: each "after" served by a real Hypercorn with its API calls; the
    Flask-APScheduler "before" differs from its "after" by the import alone; the bare
    APScheduler "before" runs (its scheduler starts with the job)."""
    text = (REPO / "docs" / "migrating.md").read_text()
    python = [body for language, body in blocks(text) if language == "python"]
    before = next(body for body in python if body.startswith("# Before, with Flask-APScheduler"))
    after = next(body for body in python if body.startswith("# report_app.py"))
    changed = [
        (old, new)
        for old, new in zip(before.splitlines()[1:], after.splitlines()[1:], strict=True)
        if old != new
    ]
    assert changed == [
        (
            "from flask_apscheduler import APScheduler",
            "from asyncapp.flask_apscheduler import APScheduler",
        )
    ]
    reader = Reader(tmp_path, free_port())
    try:
        for language, body in blocks(text):
            if language == "python":
                reader.python(body)
            elif language == "sh":
                reader.shell(body)
        paths = [response.request.url.path for response in reader.responses]
        by_path = dict(zip(paths, reader.responses, strict=True))
        listed = by_path["/scheduler/jobs"].json()
        assert sorted(job["id"] for job in listed) == ["nightly", "refresh"]
        assert by_path["/scheduler/jobs/nightly/pause"].json()["note"] == "month end"
        assert by_path["/scheduler/jobs/check_upstream/run"].json()["run"]["status"] == "running"
        assert by_path["/scheduler/jobs/sync-orders/run"].json()["run"]["job_id"] == "sync-orders"
        digest = by_path["/scheduler/jobs/daily-digest/upcoming"].json()["times"]
        assert all(moment[11:19] == "07:00:00" for moment in digest)
    finally:
        reader.close()
    ran = subprocess.run(
        [
            sys.executable,
            "-c",
            "import before_monitor as m; print([j.id for j in m.scheduler.get_jobs()]); "
            "m.scheduler.shutdown(wait=False)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "['check_upstream']"
