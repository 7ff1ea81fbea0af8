"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright,
against a real Hypercorn process (``hypercorn_server``) with ``tests.jobs`` as job module.

Screenshots of the jobs page and a job page are saved under ``tests/artifacts/``
(git-ignored).  Without ``/usr/bin/chromium`` these tests skip locally and
fail in CI.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from asyncapp.faces.dashboard.security import SESSION_COOKIE
from asyncapp.faces.humanize import format_utc
from tests.conftest import AUTH, REPO, TOKEN, Server, need

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

CHROMIUM = Path("/usr/bin/chromium")
# Offline machine: without the background-networking flags Chromium keeps trying to
# reach its update and sync services.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "tests" / "artifacts"
WAIT_MS = 15_000  # live regions refresh every 2 s; a loaded 2-core machine may be slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        need("Chromium at /usr/bin/chromium", "install it with: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, timezone_id="Europe/Helsinki", locale="en-GB"
    )
    context.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def server(hypercorn_server: Callable[..., Server]) -> Server:
    return hypercorn_server()


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
        yield client


def add(api: httpx.Client, job_id: str, **fields: Any) -> dict[str, Any]:
    body = {"id": job_id, "func": "tests.jobs:record", "kwargs": {"tag": job_id},
            "trigger": "interval", "hours": 1} | fields  # fmt: skip
    response = api.post("/scheduler/jobs", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def log_in(page: Page, server: Server) -> None:
    page.goto(server.url + "/dashboard/")
    expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_log_in_see_a_job_pause_it_with_a_note_and_see_it_in_the_history(
    page: Page, server: Server, api: httpx.Client
) -> None:
    job = add(api, "poll")
    log_in(page, server)

    row = page.locator("tr[data-job='poll']")
    expect(row).to_contain_text("every 1 hour")
    next_run = row.locator(f"time[datetime='{job['next_run_time']}']")
    expect(next_run).to_contain_text(format_utc(job["next_run_time"]))
    expect(next_run.locator(".local")).to_contain_text("Europe/Helsinki")  # the script's
    expect(row.locator(".state")).to_have_text("scheduled")

    row.get_by_role("link", name="poll").click()
    expect(page.get_by_role("heading", name="Job poll")).to_be_visible()
    page.get_by_label("Note (optional)").fill("upstream maintenance")
    page.get_by_role("button", name="Pause").click()

    state = page.locator("#job-state .job-state")
    expect(state).to_contain_text("paused")
    expect(state).to_contain_text("upstream maintenance")
    expect(page.locator("#flash")).to_have_text("Paused poll (upstream maintenance).")
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    over_api = api.get("/scheduler/jobs/poll").json()
    assert over_api["paused"] is True and over_api["next_run_time"] is None
    assert over_api["note"] == "upstream maintenance"

    pause = page.locator("#job-changes tr[data-action='pause']")
    expect(pause.locator(".source")).to_have_text("dashboard")
    expect(pause).to_contain_text("upstream maintenance")
    latest = api.get("/scheduler/jobs/poll/changes").json()["changes"][0]
    assert (latest["action"], latest["source"], latest["client"]) == (
        "pause",
        "dashboard",
        "127.0.0.1",
    )


def test_run_now_and_the_run_appears_without_reloading(
    page: Page, server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    add(api, "slow", func="tests.jobs:mark", kwargs={"path": str(tmp_path / "m"), "seconds": 1})
    log_in(page, server)
    page.goto(server.url + "/dashboard/jobs/slow")
    expect(page.locator("#job-runs")).to_contain_text("No runs yet.")
    page.evaluate("window.stillTheSamePage = true")

    page.get_by_role("button", name="Run now").click()
    expect(page.locator("#flash")).to_have_text("Started a run of slow.")
    runs = page.locator("#job-runs tbody tr")
    expect(runs).to_have_count(1)
    expect(runs.first.locator(".status")).to_have_text("success")
    expect(page.locator("#job-runs figure.chart")).to_be_visible()

    # A run started elsewhere shows up too: the page asks the server by itself.
    assert api.post("/scheduler/jobs/slow/run").status_code == 200
    expect(runs).to_have_count(2)
    expect(page.locator("#job-changes tr[data-action='run'] .source")).to_have_text(
        ["api", "dashboard"]
    )
    assert page.evaluate("window.stillTheSamePage") is True  # never reloaded


def test_a_failing_job_shows_its_error_and_a_missed_run_its_reason(
    page: Page, server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    add(api, "webhook", func="tests.jobs:fail", kwargs={"message": "upstream answered 502"},
        hours=None, minutes=5)  # fmt: skip
    # Overlap "skip": a 2.5 s body every second leaves the times in between missed.
    add(api, "sync_crm", func="tests.jobs:mark", hours=None, seconds=1,
        kwargs={"path": str(tmp_path / "m"), "seconds": 2.5})  # fmt: skip
    add(api, "report", trigger="cron", hours=None, minute="0", hour="*/6",
        timezone="Europe/Helsinki")  # fmt: skip
    add(api, "nightly", trigger="cron", hours=None, hour="2", minute="30",
        day_of_week="mon-fri", timezone="America/New_York")  # fmt: skip
    api.post("/scheduler/jobs/nightly/pause", json={"note": "upstream maintenance until 14:00"})
    assert api.post("/scheduler/jobs/webhook/run").status_code == 200
    log_in(page, server)

    page.goto(server.url + "/dashboard/jobs/webhook")
    failed = page.locator("#job-runs tbody tr").first
    expect(failed.locator(".status")).to_have_text("error")
    expect(failed.locator(".detail")).to_contain_text("ValueError: upstream answered 502")

    page.goto(server.url + "/dashboard/runs?status=missed")
    missed = page.locator("tbody tr[data-status='missed']").first
    expect(missed).to_contain_text("sync_crm")
    expect(missed.locator(".reason")).to_have_text(
        "overlap: the previous run was still in progress (max_instances reached)"
    )

    page.goto(server.url + "/dashboard/?state=failing")
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tr[data-job='webhook']")).to_contain_text("error")

    page.goto(server.url + "/dashboard/")
    expect(page.locator("tr[data-job='sync_crm']")).to_contain_text("missed")
    screenshot(page, "dashboard-jobs.png")
    page.goto(server.url + "/dashboard/jobs/sync_crm")
    expect(page.locator("#job-runs tr[data-status='success']").first).to_be_visible()
    expect(page.locator("#job-runs .reason").first).to_contain_text("overlap")
    screenshot(page, "dashboard-job.png")


def test_a_wrong_token_is_refused_and_logins_are_rate_limited(page: Page, server: Server) -> None:
    page.goto(server.url + "/dashboard/login")
    for attempt in range(5):
        page.get_by_label("API token").fill(f"wrong-{attempt}")
        with page.expect_response(lambda r: r.request.method == "POST") as answer:
            page.get_by_role("button", name="Log in").click()
        assert answer.value.status == 401
        expect(page.locator("#login-error")).to_have_text("Wrong token.")
        expect(page.get_by_role("navigation", name="Dashboard")).to_have_count(0)

    page.get_by_label("API token").fill(TOKEN)  # right, but too late
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Log in").click()
    assert answer.value.status == 429
    assert 0 < int(answer.value.headers["retry-after"]) <= 60
    expect(page.locator("#login-error")).to_contain_text("Too many login attempts")
    page.goto(server.url + "/dashboard/")
    expect(page).to_have_url(re.compile(r"/dashboard/login"))


def test_log_out(page: Page, server: Server) -> None:
    log_in(page, server)
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_text("You are logged out.")).to_be_visible()
    assert SESSION_COOKIE not in {cookie["name"] for cookie in page.context.cookies()}
    page.goto(server.url + "/dashboard/processes")
    expect(page).to_have_url(re.compile(r"/dashboard/login\?next=/dashboard/processes"))


EVIL_PAGE = """<!doctype html><title>prize</title>
<form method="post" action="{url}/dashboard/jobs/poll/pause">
<input name="note" value="forged"></form>
<script>document.forms[0].submit()</script>"""


def test_a_cross_site_post_is_refused_and_changes_nothing(
    page: Page, server: Server, api: httpx.Client
) -> None:
    add(api, "poll")
    log_in(page, server)
    cookie = next(c for c in page.context.cookies() if c["name"] == SESSION_COOKIE)
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"

    # The session cookie without the form's CSRF token: refused.
    forged = httpx.post(
        server.url + "/dashboard/jobs/poll/pause",
        data={"note": "forged"},
        cookies={SESSION_COOKIE: cookie["value"]},
        headers={"Origin": "http://localhost:9"},
    )
    assert forged.status_code == 403

    # A page of another site that posts the form from the logged-in browser: the
    # Strict cookie stays home, so the dashboard sees no login.
    evil = EVIL_PAGE.format(url=server.url)
    page.route(
        "http://localhost:9/prize",
        lambda route: route.fulfill(content_type="text/html", body=evil),
    )
    with page.expect_response(lambda r: r.url.endswith("/pause")) as answer:
        page.goto("http://localhost:9/prize")
    assert answer.value.status == 401

    job = api.get("/scheduler/jobs/poll").json()
    assert job["paused"] is False and job["note"] is None
    history = api.get("/scheduler/jobs/poll/changes").json()["changes"]
    assert [change["action"] for change in history] == ["add"]


def test_phone_width_and_keyboard_only(browser: Browser, server: Server, api: httpx.Client) -> None:
    add(api, "poll", kwargs={"tag": "a fairly long argument " * 4})
    context = browser.new_context(viewport={"width": 390, "height": 800}, is_mobile=True)
    try:
        page = context.new_page()
        log_in(page, server)
        page.goto(server.url + "/dashboard/jobs/poll")
        expect(page.get_by_role("heading", name="Job poll")).to_be_visible()
        # Wide tables scroll in their own box; the page itself does not.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

        page.keyboard.press("Tab")
        expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
        run_now = page.get_by_role("button", name="Run now")
        for _ in range(15):
            page.keyboard.press("Tab")
            if run_now.evaluate("button => button === document.activeElement"):
                break
        expect(run_now).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#job-runs tbody tr")).to_have_count(1)
    finally:
        context.close()
