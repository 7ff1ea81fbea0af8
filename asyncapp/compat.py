"""Every private internal of a third-party library that asyncapp relies on, in one place.

Each entry names what is used, where, and the versions it was read from.
An upgrade that removes or renames one fails ``tests/test_compat.py`` (which
calls :func:`missing`) with the entry's name, instead of breaking somewhere
at run time.  Code elsewhere reaches these internals only through this
module, or, for a method it overrides, names the entry here in a comment.

- ``apscheduler.schedulers.base.BaseScheduler._process_jobs`` (APScheduler
  3.11.2-3.11.3, pinned ``<4``): the method the scheduler's timer calls at
  each wakeup; :class:`asyncapp.engine.scheduler.Scheduler` overrides it.
- ``AsyncIOScheduler._stop_timer`` (same): cancels the pending wakeup;
  :func:`stop_timer`.
- ``apscheduler.triggers.base.BaseTrigger._apply_jitter`` (same): the
  trigger's own jitter; :func:`apply_jitter`.
- ``asyncio.tasks._current_tasks`` (CPython 3.11-3.13): the dict that
  ``asyncio.current_task`` reads, read by the watchdog's thread, where
  ``current_task`` cannot be called; :func:`current_tasks`.
- ``aiohttp.TCPConnector._wait_for_available_connection`` (aiohttp
  3.10.11-3.14): where a request waits for a free connection;
  :mod:`asyncapp.http` overrides it to count the wait.
- ``httpx.AsyncClient._cookies`` (httpx 0.28-0.29): the client's cookie jar
  attribute; :mod:`asyncapp.http` replaces it so no cookie is shared
  between jobs.
- ``httpx.AsyncClient._merge_url`` (httpx 0.23-0.29): where a request's URL
  is joined to ``base_url``; :mod:`asyncapp.http` caches what it returns.
- ``asgiref.sync.SyncToAsync.threadlocal`` attributes ``main_event_loop`` and
  ``main_event_loop_pid`` (asgiref 3.8-3.13): set in the threads of
  :mod:`asyncapp.web.adapter`'s pool so Flask's ``async_to_sync`` finds the
  server loop, as asgiref's own ``SyncToAsync`` sets them.
- ``asgiref.wsgi.WsgiToAsgiInstance`` attributes ``scope``,
  ``build_environ``, ``start_response``, ``sync_send``, ``response_start``,
  ``response_content_length`` (asgiref 3.8-3.13): reused by
  :mod:`asyncapp.web.adapter` to build the WSGI environ and collect the
  response exactly as asgiref does.
- Hypercorn's worker arguments (Hypercorn 0.18, ``hypercorn/run.py``
  ``_populate``): each worker of ``hypercorn -w N`` is a ``multiprocessing``
  process started with ``kwargs={"config", "shutdown_event", "sockets"}``,
  read back in the worker from ``multiprocessing.current_process()._kwargs``;
  :func:`hypercorn_shutdown_event`.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
from datetime import datetime
from typing import Any

import aiohttp
import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from asgiref.sync import SyncToAsync
from asgiref.wsgi import WsgiToAsgiInstance
from hypercorn import run as hypercorn_run


def current_tasks() -> dict[asyncio.AbstractEventLoop, asyncio.Task[Any]]:
    """The task each loop runs now (read-only; safe to read from another thread)."""
    found: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] = asyncio.tasks._current_tasks  # type: ignore[attr-defined]
    return found


def stop_timer(scheduler: AsyncIOScheduler) -> None:
    """Cancel the scheduler's pending wakeup."""
    scheduler._stop_timer()


def apply_jitter(
    trigger: BaseTrigger, fire_time: datetime, jitter: float | None, now: datetime
) -> datetime:
    """``fire_time`` moved by up to ``jitter`` seconds, as APScheduler's triggers do it."""
    moved: datetime = trigger._apply_jitter(fire_time, jitter, now)
    return moved


def hypercorn_shutdown_event() -> Any | None:
    """In a worker of ``hypercorn -w N``, the event its parent sets to stop every worker
    gracefully (a ``multiprocessing`` event: ``is_set()``, ``set()``); None elsewhere."""
    if multiprocessing.parent_process() is None:
        return None
    kwargs = getattr(multiprocessing.current_process(), "_kwargs", None)
    event = kwargs.get("shutdown_event") if isinstance(kwargs, dict) else None
    return event if callable(getattr(event, "set", None)) else None


def missing() -> list[str]:
    """The internals above that the installed libraries no longer have (empty when all hold)."""
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(200)))
    instance = WsgiToAsgiInstance(lambda environ, start_response: [])
    instance.start_response("200 OK", [("Content-Length", "2")])
    process = multiprocessing.get_context("spawn").Process(target=print, kwargs={"end": ""})
    checks = {
        "hypercorn run._populate shutdown_event": '"shutdown_event"'
        in inspect.getsource(hypercorn_run._populate),
        "BaseProcess._kwargs": getattr(process, "_kwargs", None) == {"end": ""},
        "BaseScheduler._process_jobs": callable(getattr(BaseScheduler, "_process_jobs", None)),
        "AsyncIOScheduler._stop_timer": callable(getattr(AsyncIOScheduler, "_stop_timer", None)),
        "BaseTrigger._apply_jitter": callable(getattr(BaseTrigger, "_apply_jitter", None)),
        "asyncio.tasks._current_tasks": isinstance(
            getattr(asyncio.tasks, "_current_tasks", None), dict
        ),
        "aiohttp.TCPConnector._wait_for_available_connection": callable(
            getattr(aiohttp.TCPConnector, "_wait_for_available_connection", None)
        ),
        "httpx.AsyncClient._cookies": isinstance(getattr(client, "_cookies", None), httpx.Cookies),
        "httpx.AsyncClient._merge_url": callable(getattr(client, "_merge_url", None)),
        "SyncToAsync.threadlocal": hasattr(SyncToAsync, "threadlocal"),
        "WsgiToAsgiInstance.build_environ": callable(getattr(instance, "build_environ", None)),
        "WsgiToAsgiInstance.response_start": isinstance(
            getattr(instance, "response_start", None), dict
        ),
        "WsgiToAsgiInstance.response_content_length": getattr(
            instance, "response_content_length", None
        )
        == 2,
    }
    return [name for name, present in checks.items() if not present]
