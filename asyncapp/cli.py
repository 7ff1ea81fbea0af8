"""``flask --app asyncapp jobs ...``: the job API from a shell.

Commands go straight to the service layer over the database (no HTTP round
trip, no token), through ``ext.offline_service()``: it loads the jobs but never
fires them on schedule, so a CLI process cannot double-run what the server
runs.  A running server picks the changes up within ``ASYNCAPP_SYNC_INTERVAL``.
Input is validated by the same schemas as the HTTP API, and errors are the
same messages, printed on stderr with exit status 1.

``jobs run`` is the exception to "no firing": it runs the job once, in this
process, waits for it and prints the run (recorded in the run history).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from .errors import AsyncAppError, InvalidJob
from .validation import parse_job_create, parse_run_query

T = TypeVar("T")

jobs = AppGroup("jobs", help="List, add, change and run scheduled jobs.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def init_cli(app: Flask) -> None:
    """Register the ``jobs`` command group on ``app.cli``."""
    app.cli.add_command(jobs)


def _call(action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(service)`` in a fresh event loop with an offline service."""
    ext = current_app.extensions["asyncapp"]

    async def main() -> T:
        async with ext.offline_service() as service:
            return await action(service)

    try:
        return asyncio.run(main())
    except InvalidJob as exc:
        detail = "\n".join(f"  {e['field']}: {e['message']}" for e in exc.errors)
        raise click.ClickException(f"invalid job:\n{detail}") from None
    except AsyncAppError as exc:
        raise click.ClickException(str(exc)) from None


def _sync(method: str, *args: Any) -> Callable[[Any], Awaitable[Any]]:
    async def action(service: Any) -> Any:
        return getattr(service, method)(*args)

    return action


def _async(method: str, *args: Any) -> Callable[[Any], Awaitable[Any]]:
    async def action(service: Any) -> Any:
        return await getattr(service, method)(*args)

    return action


@jobs.command("list")
@json_option
def list_jobs(as_json: bool) -> None:
    """List all jobs."""
    found = _call(_sync("list_jobs"))
    if as_json:
        _print_json(found)
    elif not found:
        click.echo("No jobs.")
    else:
        _print_jobs(found)


@jobs.command("show")
@click.argument("job_id")
@json_option
def show(job_id: str, as_json: bool) -> None:
    """Show one job."""
    _print_job(_call(_sync("get_job", job_id)), as_json)


@jobs.command("add", context_settings={"show_default": True})
@click.argument("func")
@click.option("--id", "job_id", help="Job id (generated when omitted).")
@click.option("--name", help="Display name (defaults to the id).")
@click.option("--trigger", type=click.Choice(["date", "interval", "cron"]), default="date")
@click.option(
    "--set",
    "fields",
    multiple=True,
    metavar="FIELD=VALUE",
    help="A trigger or job field, e.g. minutes=10, hour=*/2, timezone=Europe/Paris; "
    "VALUE is read as JSON when it parses, else as text. Repeatable.",
)
@click.option(
    "--arg", "args", multiple=True, metavar="JSON", help="A positional argument. Repeatable."
)
@click.option(
    "--kwarg", "kwargs", multiple=True, metavar="NAME=JSON", help="A keyword argument. Repeatable."
)
@click.option("--paused", is_flag=True, help="Store the job without scheduling it.")
@json_option
def add(
    func: str,
    job_id: str | None,
    name: str | None,
    trigger: str,
    fields: Sequence[str],
    args: Sequence[str],
    kwargs: Sequence[str],
    paused: bool,
    as_json: bool,
) -> None:
    """Add a job calling FUNC, a registered @task as module:name.

    \b
    Example: flask --app asyncapp jobs add myjobs:poll --id poll \\
               --trigger interval --set minutes=10 --kwarg url='"https://example.com"'
    """
    body: dict[str, Any] = {"func": func, "trigger": trigger}
    body.update(_pairs(fields, "--set", lenient=True))
    for key, value in (("id", job_id), ("name", name)):
        if value is not None:
            body[key] = value
    if paused:
        body["paused"] = True
    if args:
        body["args"] = [_json_value(arg, "--arg") for arg in args]
    if kwargs:
        body["kwargs"] = _pairs(kwargs, "--kwarg", lenient=False)

    async def action(service: Any) -> Any:
        return await service.add_job(parse_job_create(body))

    _print_job(_call(action), as_json)


@jobs.command("pause")
@click.argument("job_id")
@json_option
def pause(job_id: str, as_json: bool) -> None:
    """Pause a job: it keeps its settings but does not fire."""
    _print_job(_call(_async("pause_job", job_id)), as_json)


@jobs.command("resume")
@click.argument("job_id")
@json_option
def resume(job_id: str, as_json: bool) -> None:
    """Resume a paused job."""
    _print_job(_call(_async("resume_job", job_id)), as_json)


@jobs.command("remove")
@click.argument("job_id")
def remove(job_id: str) -> None:
    """Remove a job (its run history stays)."""
    _call(_async("delete_job", job_id))
    click.echo(f"Removed {job_id}.")


@jobs.command("run")
@click.argument("job_id")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for the run.")
@json_option
def run(job_id: str, timeout: float, as_json: bool) -> None:
    """Run a job once now, in this process, and print how it went."""

    async def action(service: Any) -> dict[str, Any]:
        started = await service.run_job(job_id)
        return await _wait_for_run(service, started, deadline=timeout)

    record = _call(action)
    if as_json:
        _print_json(record)
    else:
        _print_runs([record])
    if record["status"] not in ("success", "running"):
        raise SystemExit(1)


async def _wait_for_run(
    service: Any, started: dict[str, Any], *, deadline: float
) -> dict[str, Any]:
    """Poll the run history until the run ends or ``deadline`` seconds pass."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while True:
        page = await service.list_runs(started["job_id"], None, 50, 0)
        record = next((r for r in page["runs"] if r["id"] == started["id"]), started)
        if record["status"] != "running" or loop.time() >= give_up:
            return record
        await asyncio.sleep(0.05)


@jobs.command("runs")
@click.argument("job_id", required=False)
@click.option(
    "--status",
    type=click.Choice(["success", "error", "timeout", "missed", "interrupted", "running"]),
)
@click.option("--limit", default=20, show_default=True)
@click.option("--offset", default=0, show_default=True)
@json_option
def runs(job_id: str | None, status: str | None, limit: int, offset: int, as_json: bool) -> None:
    """Show run history, newest first, of one job or of all."""
    query = {"limit": str(limit), "offset": str(offset)} | ({"status": status} if status else {})

    async def action(service: Any) -> Any:
        checked = parse_run_query(query)
        return await service.list_runs(job_id, checked.status, checked.limit, checked.offset)

    page = _call(action)
    if as_json:
        _print_json(page)
        return
    if not page["runs"]:
        click.echo("No runs.")
        return
    _print_runs(page["runs"])
    shown = offset + len(page["runs"])
    click.echo(f"{offset + 1}-{shown} of {page['total']}")


# -- parsing and printing ---------------------------------------------------------


def _json_value(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not JSON (quote strings: '\"text\"')", param_hint=option
        ) from None


def _pairs(items: Sequence[str], option: str, *, lenient: bool) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint=option)
        if lenient:
            # Cron expressions and zone names are text; numbers and booleans are JSON.
            try:
                result[key] = json.loads(text)
            except ValueError:
                result[key] = text
        else:
            result[key] = _json_value(text, option)
    return result


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _print_job(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(job)
        return
    width = max(len(key) for key in job)
    for key, value in job.items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        click.echo(f"{key:<{width}}  {shown}")


def _print_jobs(found: list[dict[str, Any]]) -> None:
    rows = [
        [
            job["id"],
            job.get("name") or "",
            job["func"],
            _describe_trigger(job),
            _when(job.get("next_run_time")),
            _state(job),
        ]
        for job in found
    ]
    _table(["ID", "NAME", "FUNC", "TRIGGER", "NEXT RUN", "STATE"], rows)


def _print_runs(found: list[dict[str, Any]]) -> None:
    rows = [
        [
            r["id"][:12],
            r["job_id"],
            r["status"],
            _when(r.get("started_at")),
            _took(r),
            _shorten(": ".join(filter(None, [r.get("error_type"), r.get("error_message")])), 60),
        ]
        for r in found
    ]
    _table(["RUN", "JOB", "STATUS", "STARTED", "TOOK", "ERROR"], rows)


def _when(iso: str | None) -> str:
    """A table-friendly time: second precision, zone kept."""
    if not iso:
        return "-"
    moment = datetime.fromisoformat(iso)
    return moment.strftime("%Y-%m-%d %H:%M:%S ") + (moment.strftime("%Z") or "local")


def _took(run: dict[str, Any]) -> str:
    if not run.get("started_at") or not run.get("ended_at"):
        return "-"
    seconds = (
        datetime.fromisoformat(run["ended_at"]) - datetime.fromisoformat(run["started_at"])
    ).total_seconds()
    return f"{seconds:.3f}s"


def _describe_trigger(job: dict[str, Any]) -> str:
    kind = job.get("trigger", "?")
    if kind == "interval":
        units = [("weeks", "w"), ("days", "d"), ("hours", "h"), ("minutes", "m"), ("seconds", "s")]
        every = " ".join(f"{job[key]}{unit}" for key, unit in units if job.get(key))
        return f"every {every}"
    if kind == "cron":
        names = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")
        return "cron " + " ".join(f"{key}={job[key]}" for key in names if job.get(key) is not None)
    if kind == "date":
        return f"once at {job.get('run_date')}"
    return str(kind)


def _state(job: dict[str, Any]) -> str:
    if job.get("broken"):
        return "broken"
    return "paused" if job.get("paused") else "scheduled"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [headers, *cells]) for i in range(len(headers))]
    for row in [headers, *cells]:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
