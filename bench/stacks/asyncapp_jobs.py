"""The asyncapp stack's job functions (``ASYNCAPP_JOB_MODULES=bench.stacks.asyncapp_jobs``)."""

from __future__ import annotations

from asyncapp import http_client, task


@task
async def call(url: str) -> None:
    """The job of M1, M2 and M5: GET ``url`` through the shared client."""
    await http_client().get(url)


@task
async def idle() -> None:
    """M5's stored jobs: due in 2100, so they only weigh on storage and scheduling."""
