"""The default app's jobs: an hourly task that logs the time, and an uptime check.

The hourly task is the usual first example of APScheduler in Flask (a
``BackgroundScheduler`` thread calling a plain function); here it is a coroutine
on the server loop, and each run is recorded in the run history.

``ASYNCAPP_JOB_MODULES`` defaults to this module; set it to your own modules
to replace these examples.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import httpx

from asyncapp.engine.runner import current_run
from asyncapp.http import http_client
from asyncapp.model.tasks import task


@task("interval", hours=1, id="hourly_task")
async def hourly_task() -> None:
    """Log the time, every hour."""
    now = datetime.now(UTC).strftime("%A, %d. %B %Y %I:%M:%S %p %Z")
    current_run().logger.info("Task execution time: %s", now)


class UptimeCheckFailed(Exception):
    def __init__(self, failures: list[str]) -> None:
        super().__init__("; ".join(failures))


@task(
    "interval",
    seconds=60,
    id="uptime_check",
    enabled=lambda settings: bool(settings.uptime_urls),
)
async def uptime_check() -> None:
    """GET every ``ASYNCAPP_UPTIME_URLS`` URL concurrently; log status code and latency.

    Fails the run (status ``error`` in the run history) when any URL is down
    or answers 5xx, so an operator can alert on it.
    """
    run = current_run()
    client = http_client()
    results = await asyncio.gather(*(_check(client, url) for url in run.settings.uptime_urls))
    failures = [problem for problem in results if problem is not None]
    if failures:
        raise UptimeCheckFailed(failures)


async def _check(client: httpx.AsyncClient, url: str) -> str | None:
    logger = current_run().logger
    started = time.perf_counter()
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        logger.warning("uptime %s: down (%s)", url, type(exc).__name__)
        return f"{url}: {type(exc).__name__}"
    latency_ms = (time.perf_counter() - started) * 1000
    logger.info("uptime %s: %d in %.0f ms", url, response.status_code, latency_ms)
    return f"{url}: HTTP {response.status_code}" if response.status_code >= 500 else None
