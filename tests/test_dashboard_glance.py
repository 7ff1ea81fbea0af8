"""The dashboard read as an operator reads it: Debian's Chromium, headless, driven by
Playwright at 1440x900 and 390x844, against a real Hypercorn process with realistic
jobs (failing with a multi-line error, retrying, paused, broken, a cron job in its
own zone, one firing every second).

Each page is saved as a screenshot at both widths under ``tests/artifacts/``
(git-ignored).  The browser fixtures are those of ``test_dashboard.py``.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import AUTH, Server
from tests.test_dashboard import ARTIFACTS, WAIT_MS, add, log_in
from tests.test_dashboard import browser as browser  # the module-scoped fixture, shared

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
WIDTHS = {"desktop": DESKTOP, "phone": PHONE}
ERROR = (
    "upstream answered 502 Bad Gateway after 3 tries against https://api.example.com/v2/orders"
    "?since=2026-12-01T00:00:00Z&limit=500\n"
    "response body: <html><head><title>502</title></head></html>\n"
    "hint: the partner's status page says maintenance until 14:00"
)


@pytest.fixture
def server(hypercorn_server: Callable[..., Server]) -> Server:
    return hypercorn_server(ASYNCAPP_RETRY_BACKOFF="0.05")


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
        yield client


def new_page(browser: Browser, size: dict[str, int]) -> Page:
    context = browser.new_context(
        viewport=size,
        is_mobile=size is PHONE,
        timezone_id="Europe/Helsinki",
        locale="en-GB",
    )
    context.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    return context.new_page()


@pytest.fixture(params=list(WIDTHS))
def width(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def page(browser: Browser, width: str) -> Iterator[Page]:
    page = new_page(browser, WIDTHS[width])
    yield page
    page.context.close()


def wait_runs(api: httpx.Client, job_id: str, count: int, status: str | None = None) -> None:
    """Until ``job_id`` has ``count`` ended runs (with ``status``) in the database: the
    server's recorder writes them, with no event this process could await."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        runs = api.get(f"/scheduler/jobs/{job_id}/runs").json()["runs"]
        done = [run for run in runs if run["ended_at"] and status in (None, run["status"])]
        if len(done) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{job_id}: fewer than {count} ended runs")


def break_job(server_db: Path, job_id: str) -> None:
    """Make ``job_id`` broken as a deploy that dropped its function would: its stored
    function is registered nowhere."""
    with sqlite3.connect(server_db) as conn:
        conn.execute("UPDATE asyncapp_jobs SET func = 'tests.gone:sync' WHERE id = ?", (job_id,))


def operations(api: httpx.Client, tmp_path: Path, *, busy: bool = False) -> None:
    """The jobs an operator meets: failing (twice, by hand), paused, cron in Helsinki,
    broken, plain; with ``busy``, one firing every second too."""
    add(api, "webhook", func="tests.jobs:fail", kwargs={"message": ERROR}, hours=None, minutes=5)
    add(api, "report", trigger="cron", hours=None, minute="0", hour="*/6",
        timezone="Europe/Helsinki")  # fmt: skip
    add(api, "nightly", trigger="cron", hours=None, hour="2", minute="30",
        day_of_week="mon-fri", timezone="America/New_York")  # fmt: skip
    api.post("/scheduler/jobs/nightly/pause", json={"note": "upstream maintenance until 14:00"})
    add(api, "crm_export")
    for n in range(3):
        add(api, f"poll_{n}", minutes=10 + n, hours=None)
    if busy:
        add(api, "heartbeat", func="tests.jobs:mark", hours=None, seconds=1,
            kwargs={"path": str(tmp_path / "beats")})  # fmt: skip
    for _ in range(2):
        assert api.post("/scheduler/jobs/webhook/run").status_code == 200
    wait_runs(api, "webhook", 2, "error")
    break_job(tmp_path / "server.db", "crm_export")


def refreshes(page: Page) -> int:
    return int(page.locator("main").get_attribute("data-live-refreshes") or 0)


def wait_refreshes(page: Page, count: int) -> None:
    """Until the page's script has applied ``count`` more live refreshes (it counts them
    in ``data-live-refreshes``; one every 2 s, so none is skipped between two looks)."""
    target = refreshes(page) + count
    expect(page.locator("main")).to_have_attribute("data-live-refreshes", str(target))


def shot(page: Page, name: str, width: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"glance-{name}-{width}.png"), full_page=True)


def fits(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


# -- errors in view ------------------------------------------------------------------


def test_a_failing_jobs_error_is_in_view_and_opens_to_its_full_text(
    page: Page, width: str, server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    operations(api, tmp_path)
    log_in(page, server)
    page.goto(server.url + "/dashboard/jobs/webhook")
    failed = page.locator("#job-runs tbody tr[data-status='error']").first
    summary = failed.locator("details.error summary")
    expect(summary).to_contain_text("ValueError: upstream answered 502 Bad Gateway")
    expect(failed.locator(".tag.manual")).to_have_text("run now")

    # In view without scrolling sideways: neither the page nor the table's box scrolls.
    assert fits(page)
    box = summary.bounding_box()
    assert (
        box is not None and box["x"] >= 0 and box["x"] + box["width"] <= page.viewport_size["width"]
    )
    wrap = page.locator("#job-runs .table-wrap")
    assert wrap.evaluate("box => box.scrollWidth <= box.clientWidth")
    if width == "desktop":  # ... down to a 1280 px screen
        page.set_viewport_size({"width": 1280, "height": 900})
        assert fits(page)
        assert wrap.evaluate("box => box.scrollWidth <= box.clientWidth")
    full = failed.locator("pre.full")
    expect(full).to_be_hidden()  # one line per run, not the whole text on every row

    summary.click()
    expect(full).to_be_visible()
    assert full.inner_text() == "ValueError: " + ERROR  # newlines kept
    assert full.evaluate("pre => pre.getBoundingClientRect().height") > 40  # several lines
    shot(page, "job", width)

    # The jobs list: when the last run was, its error in one line, failing since.
    page.goto(server.url + "/dashboard/")
    row = page.locator("tr[data-job='webhook']")
    expect(row.locator(".last .excerpt")).to_contain_text("error: ValueError: upstream answered")
    expect(row.locator(".last time .rel").first).to_have_text(re.compile(r"\d+ s ago|now"))
    expect(row.locator(".failing-since time")).to_have_count(1)
    assert fits(page)
    shot(page, "jobs", width)


def test_a_failed_runs_bar_is_hatched_and_the_chart_legible(
    page: Page, width: str, server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    add(api, "webhook", func="tests.jobs:fail", kwargs={"message": "boom"}, hours=None, minutes=5)
    assert api.post("/scheduler/jobs/webhook/run").status_code == 200
    wait_runs(api, "webhook", 1, "error")
    log_in(page, server)
    page.goto(server.url + "/dashboard/jobs/webhook")
    bar = page.locator("#job-runs .chart rect.bar.failed").first
    expect(bar).to_be_attached()
    assert bar.evaluate("bar => getComputedStyle(bar).fill") == 'url("#hatch")'
    title = page.locator("#job-runs .chart-title").first
    assert title.evaluate("t => t.getBoundingClientRect().height") >= 10  # px on screen


# -- live updates that keep what the reader has --------------------------------------


def test_live_refreshes_keep_the_row_under_the_pointer_focus_open_sections_and_scroll(
    browser: Browser, server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    operations(api, tmp_path, busy=True)
    add(api, "flaky", func="tests.jobs:fail", kwargs={"message": "try again"}, hours=None,
        seconds=2, retries=1)  # fmt: skip
    for n in range(40):
        add(api, f"feed_{n:02d}", minutes=20 + n, hours=None)
    wait_runs(api, "flaky", 1, "error")
    page = new_page(browser, DESKTOP)
    try:
        log_in(page, server)
        # The jobs list by next run: "heartbeat" and "flaky" move at every refresh.
        page.evaluate("window.scrollTo(0, 100)")
        scrolled = page.evaluate("window.scrollY")
        assert scrolled > 0
        row = page.locator("tbody tr").first  # the next to fire: it changes every second
        box = row.bounding_box()
        assert box is not None
        point = [box["x"] + 20, box["y"] + box["height"] / 2]
        page.mouse.move(*point)
        under = row.get_attribute("data-job")
        for _ in range(3):
            wait_refreshes(page, 1)
            at_pointer = page.evaluate(
                "([x, y]) => document.elementFromPoint(x, y).closest('tr').dataset.job", point
            )
            assert at_pointer == under
            assert page.evaluate("window.scrollY") == scrolled
        page.mouse.move(5, 5)  # off the table: what waited shows now
        wait_refreshes(page, 1)

        # A job page: an opened attempts section and the focus survive new runs.
        page.goto(server.url + "/dashboard/jobs/flaky")
        page.mouse.move(2, 2)
        attempts = page.locator("#job-runs details.attempts").first
        expect(attempts).to_be_attached()
        key = attempts.get_attribute("data-key")
        attempts.locator("summary").click()
        attempts.locator("summary").focus()
        page.mouse.move(2, 2)
        page.evaluate("window.scrollTo(0, 250)")
        scrolled = page.evaluate("window.scrollY")
        first_run = page.locator("#job-runs tbody tr").first.get_attribute("data-run")
        for _ in range(3):
            wait_refreshes(page, 1)
            opened = page.locator(f"#job-runs details[data-key='{key}']")
            expect(opened).to_have_attribute("open", "")
            assert page.evaluate("document.activeElement.closest('details')?.dataset.key") == key
            assert page.evaluate("window.scrollY") == scrolled
        # ... and the runs did change meanwhile: the region was redrawn, not left alone.
        expect(page.locator("#job-runs tbody tr").first).not_to_have_attribute(
            "data-run", first_run or ""
        )
        live = page.locator(".live-bar")
        expect(live).to_contain_text("updated")

        # Held by the reader: no more refreshes, and it says so.
        page.get_by_role("button", name="Hold updates").click()
        expect(live).to_have_attribute("data-state", "paused")
        held = refreshes(page)
        page.wait_for_timeout(2500)  # a refresh would have come by now: asserting absence
        assert refreshes(page) == held
        page.get_by_role("button", name="Continue updates").click()
        wait_refreshes(page, 1)

        # The session ends: the page says so and links to the login.
        page.context.clear_cookies()
        expect(live).to_have_attribute("data-state", "ended")
        expect(live.get_by_role("link", name="Log in again")).to_have_attribute(
            "href", "/dashboard/login?next=%2Fdashboard%2Fjobs%2Fflaky"
        )
    finally:
        page.context.close()


def test_a_server_that_does_not_answer_shows_as_not_updating(
    browser: Browser, server: Server, api: httpx.Client
) -> None:
    add(api, "poll")
    page = new_page(browser, DESKTOP)
    try:
        log_in(page, server)
        wait_refreshes(page, 1)
        server.process.kill()
        server.process.wait()
        live = page.locator(".live-bar")
        expect(live).to_have_attribute("data-state", "stale")
        expect(live).to_contain_text("Not updating")
    finally:
        page.context.close()


# -- state no one can miss -----------------------------------------------------------


def test_the_paused_scheduler_banner_appears_and_clears(
    page: Page, width: str, server: Server, api: httpx.Client
) -> None:
    add(api, "poll")
    log_in(page, server)
    page.goto(server.url + "/dashboard/processes")
    expect(page.locator(".banner")).to_have_count(0)
    page.get_by_role("link", name="Pause the scheduler…").click()
    expect(page.get_by_role("heading", name="Pause the scheduler?")).to_be_visible()
    assert api.get("/scheduler").json()["state"] == "running"  # nothing done yet
    page.get_by_role("button", name="Pause the scheduler").click()

    banner = page.locator("#scheduler-banner .banner")
    expect(banner).to_contain_text("The scheduler is paused in every process")
    expect(banner).to_contain_text("from the dashboard at 127.0.0.1")
    assert api.get("/scheduler").json()["state"] == "paused"
    page.goto(server.url + "/dashboard/")
    expect(banner).to_be_visible()
    held = page.locator("tr[data-job='poll'] .next .held")
    expect(held).to_have_text("held: scheduler paused")  # its next run will not happen
    shot(page, "jobs-scheduler-paused", width)

    assert api.post("/scheduler/resume").status_code == 204
    expect(banner).to_have_count(0)  # cleared by the live refresh, no reload
    expect(held).to_have_count(0)


def test_a_broken_job_shows_no_next_times_and_says_what_to_do(
    page: Page, width: str, server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    add(api, "crm_export", trigger="cron", hours=None, minute="*/5")
    break_job(tmp_path / "server.db", "crm_export")
    log_in(page, server)
    row = page.locator("tr[data-job='crm_export']")
    expect(row.locator(".state")).to_have_text("broken")
    expect(row.locator(".next time")).to_have_count(0)
    page.goto(server.url + "/dashboard/jobs/crm_export")
    expect(page.locator("#job-state .next-run")).to_have_text("none while broken")
    expect(page.locator("#job-upcoming time")).to_have_count(0)
    expect(page.locator("#job-upcoming")).to_contain_text("a broken job does not fire")
    expect(page.locator(".broken-help")).to_contain_text("Deploy the code that defines it")
    expect(page.locator(".broken-help")).to_contain_text("or delete the job")


def test_a_cron_jobs_times_show_in_its_own_zone(
    page: Page, server: Server, api: httpx.Client
) -> None:
    add(api, "report", trigger="cron", hours=None, minute="0", hour="9",
        timezone="Europe/Helsinki")  # fmt: skip
    log_in(page, server)
    page.goto(server.url + "/dashboard/jobs/report")
    times = page.locator("#job-upcoming li .zone")
    expect(times).to_have_count(5)
    expect(times.first).to_contain_text("09:00:00 Europe/Helsinki")


def test_counts_per_state_match_the_api(
    page: Page, server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    operations(api, tmp_path)
    jobs = api.get("/scheduler/jobs").json()
    last = {
        job["id"]: (api.get(f"/scheduler/jobs/{job['id']}/runs?limit=1").json()["runs"] or [{}])[0]
        for job in jobs
    }
    expected = {
        "all": len(jobs),
        "scheduled": sum(1 for j in jobs if j["next_run_time"] and not j["broken"]),
        "running": sum(1 for j in jobs if last[j["id"]].get("status") == "running"),
        "paused": sum(1 for j in jobs if j["next_run_time"] is None),
        "failing": sum(1 for j in jobs if last[j["id"]].get("status") in ("error", "timeout")),
        "broken": sum(1 for j in jobs if j["broken"]),
    }
    assert expected["broken"] == 1 and expected["failing"] == 1 and expected["paused"] == 1
    log_in(page, server)
    counts = page.get_by_role("navigation", name="Jobs by state")
    for state, number in expected.items():
        link = counts.locator(f"a[data-state='{state}']")
        expect(link.locator(".n")).to_have_text(str(number))
    counts.locator("a[data-state='failing']").click()
    expect(page.locator("tbody tr")).to_have_count(expected["failing"])
    expect(counts.locator("a[data-state='failing']")).to_have_attribute("aria-current", "page")


# -- phones, every page, the keyboard -------------------------------------------------


def test_every_page_at_both_widths(
    page: Page, width: str, server: Server, api: httpx.Client, tmp_path: Path
) -> None:
    operations(api, tmp_path)
    log_in(page, server)
    for name, path in [
        ("jobs", "/dashboard/"),
        ("job-failing", "/dashboard/jobs/webhook"),
        ("job-cron", "/dashboard/jobs/report"),
        ("job-broken", "/dashboard/jobs/crm_export"),
        ("runs", "/dashboard/runs"),
        ("processes", "/dashboard/processes"),
        ("confirm-pause", "/dashboard/scheduler/pause"),
        ("confirm-delete", "/dashboard/jobs/poll_0/delete"),
    ]:
        page.goto(server.url + path)
        expect(page.locator("h1")).to_be_visible()
        assert fits(page), name
        shot(page, name, width)
    if width == "phone":
        page.goto(server.url + "/dashboard/")
        # Cards: id, state, next and last of a job in the first screen, not a wide table.
        card = page.locator("tr[data-job='webhook']")
        for part in ("th", ".state", ".next", ".last"):
            box = card.locator(part).bounding_box()
            assert box is not None and box["x"] + box["width"] <= PHONE["width"], part
        expect(card.locator("td.wide").first).to_be_hidden()  # the function, left out
        # The filters fold behind one control.
        expect(page.get_by_label("Job id contains")).to_be_hidden()
        page.get_by_text("Filter and sort").click()
        expect(page.get_by_label("Job id contains")).to_be_visible()


def test_focus_returns_after_an_action_and_the_ring_contrasts(
    browser: Browser, server: Server, api: httpx.Client
) -> None:
    add(api, "poll")
    page = new_page(browser, DESKTOP)
    try:
        log_in(page, server)
        page.goto(server.url + "/dashboard/jobs/poll")
        run_now = page.get_by_role("button", name="Run now")
        run_now.focus()
        page.keyboard.press("Enter")
        expect(page.locator("#flash")).to_have_text("Started a run of poll.")
        expect(run_now).to_be_focused()  # still there: the focus goes back to it

        pause = page.get_by_role("button", name="Pause", exact=True)
        pause.focus()
        page.keyboard.press("Enter")
        expect(page.locator("#flash")).to_have_text("Paused poll.")
        expect(page.locator("#flash")).to_be_focused()  # its control is gone: the message

        page.keyboard.press("Tab")
        ring = page.evaluate("getComputedStyle(document.activeElement).outlineColor")
        assert contrast(ring, "rgb(255, 255, 255)") >= 3, ring
    finally:
        page.context.close()


def contrast(first: str, second: str) -> float:
    """WCAG contrast ratio of two ``rgb(r, g, b)`` colours."""

    def luminance(colour: str) -> float:
        parts = [int(part) for part in colour[colour.index("(") + 1 : -1].split(",")[:3]]
        linear = [
            (c / 255) / 12.92 if c / 255 <= 0.03928 else ((c / 255 + 0.055) / 1.055) ** 2.4
            for c in parts
        ]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted([luminance(first), luminance(second)], reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_the_sixth_correct_login_in_a_minute_succeeds(browser: Browser, server: Server) -> None:
    page = new_page(browser, DESKTOP)
    try:
        for _ in range(6):  # one more than the failures allowed a minute
            with page.expect_response(lambda r: r.request.method == "POST") as answer:
                log_in(page, server)
            assert answer.value.status == 303
            page.get_by_role("button", name="Log out").click()
            expect(page.get_by_text("You are logged out.")).to_be_visible()
    finally:
        page.context.close()
