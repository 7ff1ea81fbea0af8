"""``flask --app asyncapp jobs ...``: the job API from a shell.

Commands go straight to the service layer over the database (no HTTP round
trip, no token), with the same validation and the same messages as the HTTP
API; errors are printed on stderr with exit status 1.  A change is committed
before the command says it succeeded, and every running server applies it
within a second (``ASYNCAPP_SYNC_INTERVAL``; at once on PostgreSQL).  Commands
that only read (``list``, ``show``, ``upcoming``, ``runs``, ``changes``) never
write, not even a schema upgrade.

The CLI needs the server's settings: the same ``ASYNCAPP_DATABASE_URL`` and
``ASYNCAPP_JOB_MODULES`` (and working directory, for the default SQLite file
and for importing your modules); without the job modules, jobs whose functions
it cannot import are shown as broken.

``jobs run`` runs the job once, in this process (claimed like any run, so it
counts towards the job's max_instances cluster-wide), waits for it and prints
the run.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

import click
from flask import Flask
from flask.cli import AppGroup

from asyncapp.constants import DEFAULT_UPCOMING, RUN_STATUSES, TRIGGER_TYPES
from asyncapp.errors import AsyncAppError, DatabaseUnavailable, InvalidJob
from asyncapp.faces.host import host, run_here
from asyncapp.faces.humanize import describe_trigger, trigger_spec
from asyncapp.model.change import Actor
from asyncapp.service.jobs import JobService
from asyncapp.service.validation import (
    parse_job_create,
    parse_job_update,
    parse_run_query,
    parse_upcoming_query,
)

T = TypeVar("T")

jobs = AppGroup("jobs", help="List, add, change and run scheduled jobs.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
set_option = click.option(
    "--set",
    "fields",
    multiple=True,
    metavar="FIELD=VALUE",
    help="A trigger or job field, e.g. minutes=10, hour=*/2, timezone=Europe/Paris; "
    "VALUE is read as JSON when it parses, else as text. Repeatable.",
)
arg_option = click.option(
    "--arg", "args", multiple=True, metavar="JSON", help="A positional argument. Repeatable."
)
kwarg_option = click.option(
    "--kwarg", "kwargs", multiple=True, metavar="NAME=JSON", help="A keyword argument. Repeatable."
)


def init_cli(app: Flask) -> None:
    """Register the ``jobs`` command group on ``app.cli``."""
    app.cli.add_command(jobs)


def _actor() -> Actor:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor("cli", f"{user}@{socket.gethostname()}")


def _call(action: Callable[[JobService], Awaitable[T]], *, writes: bool = False) -> T:
    """Run ``action(service)`` in a fresh event loop with a service over the database."""
    ext = host()

    async def main() -> T:
        async with ext.offline_service(writes=writes) as service:
            return await action(service)

    return _run(main())


def _run(coro: Awaitable[T]) -> T:
    try:
        result: T = asyncio.run(cast(Any, coro))
        return result
    except InvalidJob as exc:
        detail = "\n".join(f"  {e['field']}: {e['message']}" for e in exc.errors)
        raise click.ClickException(f"invalid job:\n{detail}") from None
    except DatabaseUnavailable as exc:
        # An operator runs the CLI: the driver's reason (host, file) helps and is not leaked.
        raise click.ClickException(f"{exc} ({exc.detail})" if exc.detail else str(exc)) from None
    except AsyncAppError as exc:
        raise click.ClickException(str(exc)) from None


@jobs.command("list")
@json_option
def list_jobs(as_json: bool) -> None:
    """List all jobs."""
    found = _call(lambda service: service.list_jobs())
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
    _print_job(_call(lambda service: service.get_job(job_id)), as_json)


@jobs.command("upcoming")
@click.argument("job_id")
@click.option("--count", default=DEFAULT_UPCOMING, show_default=True, help="How many (1-100).")
@click.option("--after", metavar="ISO", help="List times after this ISO 8601 time with offset.")
@json_option
def upcoming(job_id: str, count: int, after: str | None, as_json: bool) -> None:
    """Show a job's next fire times, as the scheduler computes them (paused jobs too).

    \b
    Example: flask --app asyncapp jobs upcoming nightly --count 3 --after 2026-11-01T00:00:00Z
    """
    query = {"count": str(count)} | ({"after": after} if after is not None else {})

    async def action(service: JobService) -> dict[str, Any]:
        checked = parse_upcoming_query(query)
        return await service.upcoming(job_id, checked.count, checked.after)

    found = _call(action)
    if as_json:
        _print_json(found)
    elif not found["times"]:
        click.echo("No upcoming times.")
    else:
        for moment in found["times"]:
            click.echo(moment)


@jobs.command("add", context_settings={"show_default": True})
@click.argument("func")
@click.option("--id", "job_id", help="Job id (generated when omitted).")
@click.option("--name", help="Display name (defaults to the id).")
@click.option("--trigger", type=click.Choice(TRIGGER_TYPES), default="date")
@set_option
@arg_option
@kwarg_option
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
    _arguments(body, args, kwargs)
    actor = _actor()

    async def action(service: JobService) -> dict[str, Any]:
        return await service.add_job(parse_job_create(body), actor)

    _print_job(_call(action, writes=True), as_json)


@jobs.command("modify")
@click.argument("job_id")
@click.option("--name", help="New display name.")
@click.option("--trigger", type=click.Choice(TRIGGER_TYPES), help="Replace the trigger.")
@set_option
@arg_option
@kwarg_option
@json_option
def modify(
    job_id: str,
    name: str | None,
    trigger: str | None,
    fields: Sequence[str],
    args: Sequence[str],
    kwargs: Sequence[str],
    as_json: bool,
) -> None:
    """Change a job: --trigger with --set replaces its trigger; --arg/--kwarg its arguments.

    \b
    Example: flask --app asyncapp jobs modify poll --trigger interval --set minutes=5
    """
    body: dict[str, Any] = _pairs(fields, "--set", lenient=True)
    if trigger is not None:
        body["trigger"] = trigger
    if name is not None:
        body["name"] = name
    _arguments(body, args, kwargs)
    if not body:
        raise click.UsageError("nothing to change: give --name, --trigger, --set, --arg or --kwarg")
    actor = _actor()

    async def action(service: JobService) -> dict[str, Any]:
        return await service.update_job(job_id, parse_job_update(job_id, body), actor)

    _print_job(_call(action, writes=True), as_json)


@jobs.command("pause")
@click.argument("job_id")
@click.option("--note", help="Why it is paused; shown with the job and in its history.")
@json_option
def pause(job_id: str, note: str | None, as_json: bool) -> None:
    """Pause a job: it keeps its settings but does not fire."""
    actor = _actor()
    _print_job(_call(lambda service: service.pause_job(job_id, actor, note), writes=True), as_json)


@jobs.command("resume")
@click.argument("job_id")
@json_option
def resume(job_id: str, as_json: bool) -> None:
    """Resume a paused job."""
    actor = _actor()
    _print_job(_call(lambda service: service.resume_job(job_id, actor), writes=True), as_json)


@jobs.command("remove")
@click.argument("job_id")
def remove(job_id: str) -> None:
    """Remove a job (its run history stays)."""
    actor = _actor()
    _call(lambda service: service.delete_job(job_id, actor), writes=True)
    click.echo(f"Removed {job_id}.")


@jobs.command("run")
@click.argument("job_id")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for the run.")
@json_option
def run(job_id: str, timeout: float, as_json: bool) -> None:
    """Run a job once now, in this process, and print how it went."""
    record = _run(run_here(host(), job_id, _actor(), timeout))
    if as_json:
        _print_json(record)
    else:
        _print_runs([record])
    if record["status"] != "success":
        raise SystemExit(1)


@jobs.command("runs")
@click.argument("job_id", required=False)
@click.option("--status", type=click.Choice(RUN_STATUSES))
@click.option("--limit", default=20, show_default=True)
@click.option("--offset", default=0, show_default=True)
@json_option
def runs(job_id: str | None, status: str | None, limit: int, offset: int, as_json: bool) -> None:
    """Show run history, newest first, of one job or of all."""
    query = {"limit": str(limit), "offset": str(offset)} | ({"status": status} if status else {})

    async def action(service: JobService) -> dict[str, Any]:
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


@jobs.command("changes")
@click.argument("job_id")
@click.option("--limit", default=20, show_default=True)
@json_option
def changes(job_id: str, limit: int, as_json: bool) -> None:
    """Show who changed a job, when, from where and what, newest first."""
    page = _call(lambda service: service.job_changes(job_id, limit, 0))
    if as_json:
        _print_json(page)
        return
    if not page["changes"]:
        click.echo("No changes.")
        return
    rows = [
        [
            _when(change["at"]),
            change["action"],
            change["source"],
            change["client"] or "-",
            _shorten(json.dumps(change["detail"], ensure_ascii=False), 60),
        ]
        for change in page["changes"]
    ]
    _table(["AT", "ACTION", "SOURCE", "CLIENT", "WHAT"], rows)


def _arguments(body: dict[str, Any], args: Sequence[str], kwargs: Sequence[str]) -> None:
    if args:
        body["args"] = [_json_value(arg, "--arg") for arg in args]
    if kwargs:
        body["kwargs"] = _pairs(kwargs, "--kwarg", lenient=False)


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
            describe_trigger(trigger_spec(job)),
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
            _shorten(
                ": ".join(
                    filter(None, [r.get("reason") or r.get("error_type"), r.get("error_message")])
                ),
                60,
            ),
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
