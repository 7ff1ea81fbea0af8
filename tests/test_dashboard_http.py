"""The dashboard over HTTP, in process: login, session cookie, CSRF, rate limit, headers,
actions, live regions and paging (the browser tests are in test_dashboard.py)."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from flask import Flask
from sqlalchemy import insert as sa_insert

import asyncapp.store.jobs
from asyncapp.app import extension
from asyncapp.faces.dashboard.security import HEADERS, LOGIN_ATTEMPTS, SESSION_COOKIE
from asyncapp.model.run import Run
from asyncapp.store.tables import runs_table
from tests.conftest import AUTH, TOKEN, serve

pytestmark = pytest.mark.timeout(60)

RECORD = "tests.jobs:record"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
async def client(make_app: Callable[..., Flask]) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(make_app()) as client:
        yield client


async def add(client: httpx.AsyncClient, job_id: str, **fields: Any) -> None:
    body = {"id": job_id, "func": RECORD, "kwargs": {"tag": job_id}, "trigger": "interval",
            "hours": 1} | fields  # fmt: skip
    response = await client.post("/scheduler/jobs", json=body, headers=AUTH)
    assert response.status_code == 200, response.text


async def log_in(client: httpx.AsyncClient) -> str:
    """Log in; returns the session's CSRF token, read from a page's form."""
    response = await client.post("/dashboard/login", data={"token": TOKEN})
    assert response.status_code == 303, response.text
    page = await client.get("/dashboard/")
    assert page.status_code == 200
    found = CSRF.search(page.text)
    assert found is not None
    return found.group(1)


async def api_job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/scheduler/jobs/{job_id}", headers=AUTH)
    assert response.status_code == 200
    return response.json()


async def changes(client: httpx.AsyncClient, job_id: str) -> list[tuple[str, str]]:
    response = await client.get(f"/scheduler/jobs/{job_id}/changes", headers=AUTH)
    return [(change["action"], change["source"]) for change in response.json()["changes"]]


async def wait_run(client: httpx.AsyncClient, job_id: str, status: str) -> None:
    """Until a run of ``job_id`` has ``status`` in the database (its result is written
    by the server's recorder, with no event to await from here)."""
    for _ in range(250):
        runs = await client.get(f"/scheduler/jobs/{job_id}/runs", headers=AUTH)
        if any(run["status"] == status for run in runs.json()["runs"]):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {status} run of {job_id}")


def assert_secured(response: httpx.Response) -> None:
    for name, value in HEADERS.items():
        assert response.headers.get(name) == value, (response.request.url, name)


# -- login and session -------------------------------------------------------------


async def test_pages_need_a_login_and_say_where_to_log_in(client: httpx.AsyncClient) -> None:
    response = await client.get("/dashboard/runs?status=error")
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/login?next=/dashboard/runs?status%3Derror"
    live = await client.get("/dashboard/?live=1")
    assert live.status_code == 401 and live.json()["ok"] is False
    post = await client.post("/dashboard/scheduler/pause")
    assert post.status_code == 401
    assert (await client.get("/scheduler", headers=AUTH)).json()["state"] == "running"


async def test_every_dashboard_route_needs_a_login(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    rules = [rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("dashboard.")]
    open_endpoints = {"dashboard.login", "dashboard.logout", "dashboard.static"}
    checked = 0
    async with serve(app) as client:
        for rule in rules:
            if rule.endpoint in open_endpoints:
                continue
            path = rule.rule.replace("<job_id>", "some-job")
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                response = await client.request(method, path, headers=AUTH)  # a token is no login
                expected = 303 if method == "GET" else 401
                assert response.status_code == expected, (method, path)
                if method == "GET":
                    assert response.headers["location"].startswith("/dashboard/login?next=")
                checked += 1
    assert checked >= 11


async def test_login_sets_a_strict_httponly_cookie_and_goes_to_next(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/dashboard/login?next=/dashboard/runs?status%3Derror", data={"token": TOKEN}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/runs?status=error"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite"} <= attributes and "secure" not in attributes
    assert "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
    assert "expires" not in attributes  # a browser-session cookie
    assert TOKEN not in cookie
    assert (await client.get("/dashboard/runs")).status_code == 200


async def test_next_never_leaves_the_dashboard(client: httpx.AsyncClient) -> None:
    for target in ("https://evil.example/", "//evil.example/dashboard/", "/scheduler/jobs"):
        client.cookies.clear()
        response = await client.post(
            "/dashboard/login", params={"next": target}, data={"token": TOKEN}
        )
        assert response.headers["location"] == "/dashboard/", target


async def test_a_next_with_control_characters_or_off_site_is_ignored(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    refused = [
        "/dashboard/\r\nSet-Cookie: forged=1",
        "/dashboard/runs\n",
        "/dashboard/runs\x85",
        "/dashboard/runs\x00",
        "javascript:alert(1)",
        "/\\evil.example/dashboard/",
        "/dashboard/../scheduler/jobs",
        "dashboard/runs",
    ]
    # Logging in (logins are rate limited: one POST), then going to each as a logged-in user.
    posted = await client.post(
        "/dashboard/login", params={"next": refused[0]}, data={"token": TOKEN}
    )
    assert (posted.status_code, posted.headers["location"]) == (303, "/dashboard/")
    assert "forged" not in posted.headers["set-cookie"]
    for target in refused:
        again = await client.get("/dashboard/login", params={"next": target})
        assert (again.status_code, again.headers["location"]) == (303, "/dashboard/"), target
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # A same-site path with other characters is kept, percent-encoded for the header.
    kept = await client.get("/dashboard/login", params={"next": "/dashboard/jobs/ünï code"})
    assert kept.headers["location"] == "/dashboard/jobs/%C3%BCn%C3%AF%20code"


async def test_the_cookie_is_secure_over_https(make_app: Callable[..., Flask]) -> None:
    async with serve(make_app()) as client:
        client.base_url = httpx.URL("https://test")
        response = await client.post("/dashboard/login", data={"token": TOKEN})
        assert response.status_code == 303
        assert "Secure" in response.headers["set-cookie"]


async def test_a_wrong_token_gets_one_message(client: httpx.AsyncClient) -> None:
    response = await client.post("/dashboard/login", data={"token": TOKEN + "x"})
    assert response.status_code == 401
    assert "Wrong token." in response.text
    assert "configured" not in response.text and "set-cookie" not in response.headers
    assert (await client.get("/dashboard/")).status_code == 303


async def test_logout_ends_the_session(client: httpx.AsyncClient) -> None:
    csrf = await log_in(client)
    response = await client.post("/dashboard/logout", data={"csrf_token": csrf})
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/login?out=1"
    assert f"{SESSION_COOKIE}=;" in response.headers["set-cookie"]
    assert (await client.get("/dashboard/")).status_code == 303
    assert "You are logged out." in (await client.get("/dashboard/login?out=1")).text


async def test_without_a_token_the_dashboard_says_how_to_set_one(
    make_app: Callable[..., Flask],
) -> None:
    async with serve(make_app(api_token="")) as client:
        for response in (
            await client.get("/dashboard/"),
            await client.post("/dashboard/login", data={"token": ""}),
        ):
            assert response.status_code == 403
            assert "ASYNCAPP_API_TOKEN" in response.text
            assert "set-cookie" not in response.headers
            assert_secured(response)


async def test_a_new_token_ends_the_sessions_of_the_old_one(
    make_app: Callable[..., Flask],
) -> None:
    async with serve(make_app()) as client:
        await log_in(client)
        cookie = client.cookies[SESSION_COOKIE]
    for secret in (None, "the-apps-own-secret"):
        app = make_app(api_token="another-token-0123456789")
        app.secret_key = secret
        async with serve(app) as client:
            client.cookies.set(SESSION_COOKIE, cookie)
            assert (await client.get("/dashboard/")).status_code == 303


async def test_with_a_secret_key_sessions_are_signed_with_it(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    app.secret_key = "the-apps-own-secret"
    async with serve(app) as client:
        await log_in(client)
        cookie = client.cookies[SESSION_COOKIE]
    other = make_app()
    other.secret_key = "a-different-secret"
    async with serve(other) as client:  # same token, other key: the signature fails
        client.cookies.set(SESSION_COOKIE, cookie)
        assert (await client.get("/dashboard/")).status_code == 303
    same = make_app()
    same.secret_key = "the-apps-own-secret"
    async with serve(same) as client:
        client.cookies.set(SESSION_COOKIE, cookie)
        assert (await client.get("/dashboard/")).status_code == 200


async def test_the_host_apps_session_cookie_is_left_alone(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    app.secret_key = "host-secret"

    @app.get("/mine")
    def mine() -> str:
        from flask import session

        session["visits"] = 1
        return "ok"

    async with serve(app) as client:
        response = await client.get("/mine")
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("session=") and "SameSite" not in cookie
        assert "Path=/dashboard" not in cookie


# -- rate limit ----------------------------------------------------------------------


async def test_login_attempts_are_limited_per_address(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    clock = [1000.0]
    app.extensions["asyncapp_dashboard"].logins.clock = lambda: clock[0]
    async with serve(app) as client:
        for _ in range(LOGIN_ATTEMPTS):
            response = await client.post("/dashboard/login", data={"token": "guess"})
            assert response.status_code == 401
        limited = await client.post("/dashboard/login", data={"token": TOKEN})
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "60"
        assert "Too many login attempts" in limited.text and "set-cookie" not in limited.headers
        assert_secured(limited)
        clock[0] += 60
        assert (await client.post("/dashboard/login", data={"token": TOKEN})).status_code == 303


async def test_the_sixth_correct_login_in_a_minute_succeeds(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    app.extensions["asyncapp_dashboard"].logins.clock = lambda: 1000.0  # one instant
    async with serve(app) as client:
        for _ in range(LOGIN_ATTEMPTS + 1):
            client.cookies.clear()
            response = await client.post("/dashboard/login", data={"token": TOKEN})
            assert response.status_code == 303, response.text
        # Failures still count, and a correct login in between does not reset them.
        for _ in range(LOGIN_ATTEMPTS):
            assert (await client.post("/dashboard/login", data={"token": "x"})).status_code == 401
        client.cookies.clear()
        assert (await client.post("/dashboard/login", data={"token": TOKEN})).status_code == 429


# -- CSRF and actions ----------------------------------------------------------------


async def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    await add(client, "poll")
    csrf = await log_in(client)
    wrong = csrf[:-1] + ("B" if csrf.endswith("A") else "A")  # one character off
    for form in ({"note": "x"}, {"note": "x", "csrf_token": wrong},
                 {"note": "x", "csrf_token": ""}):  # fmt: skip
        response = await client.post("/dashboard/jobs/poll/pause", data=form)
        assert response.status_code == 403
        assert_secured(response)
    for path in ("/dashboard/jobs/poll/run", "/dashboard/jobs/poll/delete",
                 "/dashboard/scheduler/pause", "/dashboard/logout"):  # fmt: skip
        assert (await client.post(path)).status_code == 403, path
    job = await api_job(client, "poll")
    assert job["paused"] is False and job["note"] is None
    assert await changes(client, "poll") == [("add", "api")]
    runs = await client.get("/scheduler/jobs/poll/runs", headers=AUTH)
    assert runs.json()["total"] == 0
    assert (await client.get("/scheduler", headers=AUTH)).json()["state"] == "running"
    assert (await client.get("/dashboard/")).status_code == 200  # still logged in


async def test_actions_go_through_the_service_as_the_dashboard(
    client: httpx.AsyncClient,
) -> None:
    await add(client, "poll")
    csrf = await log_in(client)
    paused = await client.post(
        "/dashboard/jobs/poll/pause", data={"csrf_token": csrf, "note": "upstream down"}
    )
    assert paused.status_code == 303 and paused.headers["location"] == "/dashboard/jobs/poll"
    job = await api_job(client, "poll")
    assert job["paused"] is True and job["note"] == "upstream down"
    page = await client.get("/dashboard/jobs/poll")
    assert "Paused poll (upstream down)." in page.text and "upstream down" in page.text
    resumed = await client.post(
        "/dashboard/jobs/poll/resume",
        data={"csrf_token": csrf},
        headers={"Accept": "application/json"},
    )
    assert resumed.json() == {"ok": True, "message": "Resumed poll."}
    ran = await client.post("/dashboard/jobs/poll/run", data={"csrf_token": csrf})
    assert ran.status_code == 303
    confirm = await client.get("/dashboard/jobs/poll/delete")
    assert confirm.status_code == 200 and "Delete job" in confirm.text
    assert (await api_job(client, "poll"))["id"] == "poll"  # asking is not deleting
    deleted = await client.post("/dashboard/jobs/poll/delete", data={"csrf_token": csrf})
    assert deleted.headers["location"] == "/dashboard/"
    assert (await client.get("/scheduler/jobs/poll", headers=AUTH)).status_code == 404
    history = await client.get("/scheduler/jobs/poll/changes", headers=AUTH)
    recorded = [(c["action"], c["source"], c["client"]) for c in history.json()["changes"]]
    assert recorded[:4] == [
        ("remove", "dashboard", "127.0.0.1"),
        ("run", "dashboard", "127.0.0.1"),
        ("resume", "dashboard", "127.0.0.1"),
        ("pause", "dashboard", "127.0.0.1"),
    ]
    for action, state in (("pause", "paused"), ("resume", "running")):
        response = await client.post(f"/dashboard/scheduler/{action}", data={"csrf_token": csrf})
        assert response.headers["location"] == "/dashboard/processes"
        assert (await client.get("/scheduler", headers=AUTH)).json()["state"] == state


async def test_a_refused_action_says_why_on_the_job_page(client: httpx.AsyncClient) -> None:
    await add(client, "poll")
    csrf = await log_in(client)
    missing = await client.post("/dashboard/jobs/nope/pause", data={"csrf_token": csrf})
    assert missing.status_code == 404 and "no job with id" in missing.text
    as_json = await client.post(
        "/dashboard/jobs/nope/run",
        data={"csrf_token": csrf},
        headers={"Accept": "application/json"},
    )
    assert as_json.status_code == 404 and as_json.json()["ok"] is False
    assert (await client.get("/dashboard/jobs/nope")).status_code == 404


# -- headers ---------------------------------------------------------------------------


async def test_every_dashboard_response_has_the_security_headers(
    client: httpx.AsyncClient,
) -> None:
    await add(client, "poll")
    responses = [
        await client.get("/dashboard/"),
        await client.get("/dashboard/login"),
        await client.post("/dashboard/login", data={"token": "wrong"}),
        await client.get("/dashboard/static/dashboard.css"),
    ]
    await log_in(client)
    responses += [
        await client.get("/dashboard/"),
        await client.get("/dashboard/jobs/poll"),
        await client.get("/dashboard/jobs/poll?live=1"),
        await client.get("/dashboard/jobs/poll/delete"),
        await client.get("/dashboard/runs"),
        await client.get("/dashboard/processes"),
        await client.get("/dashboard/static/dashboard.js"),
        await client.get("/dashboard/no-such-page"),
        await client.put("/dashboard/"),
        await client.post("/dashboard/jobs/poll/pause"),
    ]
    assert [r.status_code for r in responses] == [
        303, 200, 401, 200, 200, 200, 200, 200, 200, 200, 200, 404, 405, 403,
    ]  # fmt: skip
    for response in responses:
        assert_secured(response)
    assert "frame-ancestors 'none'" in HEADERS["Content-Security-Policy"]
    assert "unsafe-inline" not in HEADERS["Content-Security-Policy"]
    assert "Content-Security-Policy" not in (await client.get("/healthz")).headers


async def test_pages_load_nothing_from_elsewhere_and_run_no_inline_script(
    client: httpx.AsyncClient,
) -> None:
    await add(client, "poll")
    await log_in(client)
    for path in ("/dashboard/", "/dashboard/jobs/poll", "/dashboard/runs", "/dashboard/processes"):
        html = (await client.get(path)).text
        assert re.findall(r'(?:src|href)="(?:https?:)?//', html) == [], path
        assert re.findall(r"<script(?![^>]*\bsrc=)", html) == [], path
        assert " style=" not in html and " on" + "click=" not in html, path


# -- pages ---------------------------------------------------------------------------


async def test_live_regions_come_as_json_with_hashes(client: httpx.AsyncClient) -> None:
    await add(client, "poll")
    await log_in(client)
    page = (await client.get("/dashboard/jobs/poll")).text
    live = (await client.get("/dashboard/jobs/poll?live=1")).json()["regions"]
    assert set(live) == {
        "scheduler-banner",
        "job-state",
        "job-actions",
        "job-upcoming",
        "job-runs",
        "job-changes",
    }
    for region, part in live.items():
        assert f'id="{region}" class="live" data-live-hash="{part["hash"]}"' in page
        assert part["html"] in page
    assert 'data-live-url="/dashboard/jobs/poll?live=1"' in page


async def test_the_job_page_shows_settings_upcoming_times_and_history(
    client: httpx.AsyncClient,
) -> None:
    await add(client, "six", trigger="cron", hours=None, minute="0", hour="*/6",
              timezone="Europe/Helsinki", timeout=30, retries=2)  # fmt: skip
    await log_in(client)
    page = (await client.get("/dashboard/jobs/six")).text
    assert "at minute 0 past every 6th hour, Europe/Helsinki" in page
    assert '<th scope="row">Retries</th><td>2</td>' in page
    times = (await client.get("/scheduler/jobs/six/upcoming?count=5", headers=AUTH)).json()
    shown = re.findall(r'<li><time datetime="([^"]+)">', page)
    assert shown == times["times"]
    assert re.search(r'data-action="add">.*?<td class="source">api</td>', page, re.S)


async def test_runs_page_filters_by_status_and_window(client: httpx.AsyncClient) -> None:
    await add(client, "ok")
    await add(client, "bad", func="tests.jobs:fail", kwargs={"message": "it broke"})
    for job_id in ("ok", "bad"):
        await client.post(f"/scheduler/jobs/{job_id}/run", headers=AUTH)
    await wait_run(client, "bad", "error")
    await log_in(client)
    page = (await client.get("/dashboard/runs?status=error&window=1h")).text
    assert "ValueError" in page and "it broke" in page
    assert 'href="/dashboard/jobs/bad"' in page and 'href="/dashboard/jobs/ok"' not in page
    assert "No runs match." in (await client.get("/dashboard/runs?status=timeout")).text


async def test_runs_page_finds_jobs_by_part_of_their_id_and_marks_run_now(
    client: httpx.AsyncClient,
) -> None:
    await add(client, "order_webhook", jitter=1)
    await add(client, "health")
    for job_id in ("order_webhook", "health"):
        await client.post(f"/scheduler/jobs/{job_id}/run", headers=AUTH)
    await wait_run(client, "order_webhook", "success")
    await wait_run(client, "health", "success")
    await log_in(client)
    page = (await client.get("/dashboard/runs?job=WEBHOOK")).text
    assert 'href="/dashboard/jobs/order_webhook"' in page
    assert 'href="/dashboard/jobs/health"' not in page
    job_page = (await client.get("/dashboard/jobs/order_webhook")).text
    assert '<span class="tag manual">run now</span>' in job_page  # started by hand
    assert "incl. up to 1.00 s of jitter" in job_page  # its lateness includes the jitter


async def test_processes_page_names_the_process_that_answered(
    client: httpx.AsyncClient,
) -> None:
    await log_in(client)
    page = (await client.get("/dashboard/processes")).text
    info = (await client.get("/scheduler", headers=AUTH)).json()
    assert f'<code>{info["process"]["node"]}</code> <span class="sub">(answered this page)' in page
    assert "Pause the scheduler" in page


# -- many jobs -----------------------------------------------------------------------


@pytest.mark.timeout(180)
async def test_10000_jobs_are_paged_in_the_database(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    async with serve(app) as client:
        service = extension(app).service()
        spec = {"func": RECORD, "kwargs": {"tag": "x"}, "trigger": {"type": "interval", "hours": 1}}
        made = [service.new_job({**spec, "id": f"job-{n:05d}"}) for n in range(10_000)]

        def insert(conn: Any) -> None:
            for job in made:
                service.store.rows.insert(conn, job, time.time())

        await service.store.db.write(insert)
        await log_in(client)
        loaded = []
        real_load = asyncapp.store.jobs.load
        monkeypatch.setattr(
            asyncapp.store.jobs, "load", lambda row: loaded.append(1) or real_load(row)
        )
        for query, first_row, rows, total in [
            ("", "job-00000", 50, 10_000),
            ("?page=200", "job-09950", 50, 10_000),
            ("?q=JOB-0999", "job-09990", 10, 10),
            ("?state=paused", None, 0, 0),
            ("?state=scheduled&page=3", "job-00100", 50, 10_000),
        ]:
            loaded.clear()
            began = time.perf_counter()
            response = await client.get(f"/dashboard/{query}")
            took = time.perf_counter() - began
            assert response.status_code == 200
            ids = re.findall(r'<tr data-job="([^"]+)">', response.text)
            assert len(ids) == rows, query
            if first_row:
                assert ids[0] == first_row, query
            assert (f"of {total}" if total else "No jobs match.") in response.text
            assert len(loaded) == rows, query  # only the page's rows were read
            assert took < 2.0, (query, took)  # 10,000 rendered rows would take seconds


@pytest.mark.timeout(240)
async def test_10000_jobs_sort_and_page_in_the_database_each_page_under_300_ms(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    async with serve(app) as client:
        service = extension(app).service()
        spec = {"func": RECORD, "kwargs": {"tag": "x"}, "trigger": {"type": "interval", "hours": 1}}
        made = [service.new_job({**spec, "id": f"job-{n:05d}"}) for n in range(10_000)]
        # Every 4th job ran (at n seconds past T0), every 20th failed; every 7th is
        # paused; every 1000th (+1) has lost its function.
        t0 = datetime(2026, 12, 1, tzinfo=UTC)
        paused = {n for n in range(10_000) if n % 7 == 0}
        broken = {n for n in range(10_000) if n % 1000 == 1}
        ran = {n: ("error" if n % 20 == 0 else "success") for n in range(0, 10_000, 4)}

        def insert(conn: Any) -> None:
            for n, job in enumerate(made):
                job = job.changed(next_run_time=None) if n in paused else job
                if n in broken:
                    job = job.changed(func="old:gone")
                service.store.rows.insert(conn, job, time.time())
            conn.execute(
                sa_insert(runs_table),
                [
                    Run(
                        job_id=f"job-{n:05d}",
                        scheduled_for=t0 + timedelta(seconds=n),
                        node="n",
                        status=status,
                        started_at=t0,
                        ended_at=t0,
                    ).row()
                    for n, status in ran.items()
                ],
            )

        await service.store.db.write(insert)
        await log_in(client)
        await client.get("/dashboard/")  # the first page compiles the templates

        def nxt(n: int) -> float:
            moment = made[n].next_run_time
            return math.inf if n in paused or moment is None else moment.timestamp()

        def rank(n: int) -> int:
            if n in broken:
                return 0
            if ran.get(n) == "error":
                return 1
            return 3 if n in paused else 4

        orders: dict[str, Callable[[int], Any]] = {
            "id": lambda n: n,
            "next": lambda n: (nxt(n), n),
            "last": lambda n: (n not in ran, -n if n in ran else 0, n),
            "state": lambda n: (rank(n), nxt(n), n),
        }
        reversed_orders: dict[str, Callable[[int], Any]] = {
            "id": lambda n: -n,
            "next": lambda n: (n in paused, -nxt(n) if n not in paused else 0, -n),
            "last": lambda n: (n not in ran, n if n in ran else 0, -n),
            "state": lambda n: (-rank(n), nxt(n), -n),
        }
        timings = {}
        for sort in orders:
            for reverse, keys in (("", orders), ("&dir=desc", reversed_orders)):
                expected = sorted(range(10_000), key=keys[sort])
                for number in (1, 2, 137, 200):
                    query = f"?sort={sort}{reverse}&page={number}"
                    began = time.perf_counter()
                    response = await client.get(f"/dashboard/{query}")
                    timings[query] = took = time.perf_counter() - began
                    assert response.status_code == 200, query
                    ids = re.findall(r'<tr data-job="([^"]+)">', response.text)
                    page = expected[(number - 1) * 50 : number * 50]
                    assert ids == [f"job-{n:05d}" for n in page], query
                    assert took < 0.3, (query, took)
        print("slowest pages:", sorted(timings.items(), key=lambda item: -item[1])[:3])

        # Counts per state, and a page past the end goes to the last one.
        page = (await client.get("/dashboard/")).text
        for state, count in [("all", 10_000), ("paused", len(paused)),
                             ("broken", len(broken)), ("failing", 500)]:  # fmt: skip
            assert re.search(rf'data-state="{state}"[^>]*>.*?<span class="n">{count}</span>', page)
        beyond = await client.get("/dashboard/?sort=last&page=999")
        assert beyond.status_code == 303
        assert beyond.headers["location"] == "/dashboard/?sort=last&page=200"
        numbers = re.findall(
            r'aria-label="Page (\d+)"', (await client.get(beyond.headers["location"])).text
        )
        assert numbers == ["1", "198", "199"]  # the first, and two before this one
