"""``@task`` and the registry of functions that jobs may call.

A job names its function by reference (``"module:function"``).  Only functions
registered here can be referenced, so neither an API caller nor a row in the
database can make the scheduler import and call anything else (``os:system``).

The registry is process-wide because decorators run at import time, before
any app exists; the runtime imports ``ASYNCAPP_JOB_MODULES`` and then reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from asyncapp.constants import TRIGGER_TYPES
from asyncapp.errors import UnknownFunction
from asyncapp.model.triggers import Spec, spec_from_args

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Schedule:
    """A schedule declared in code with ``@task(trigger, ...)``; upserted at startup."""

    job_id: str
    trigger: Spec
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Called with the settings at startup; False leaves the job unscheduled.
    enabled: Callable[[Any], bool] | None = None

    def declaration(self, ref: str) -> dict[str, Any]:
        """What the code says, as JSON; a change of it is applied at the next start."""
        return {
            "func": ref,
            "trigger": self.trigger,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "options": dict(self.options),
        }


@dataclass(frozen=True)
class Task:
    ref: str
    func: Callable[..., Any]
    schedule: Schedule | None = None


class Registry:
    """Registered job functions by reference."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def add(self, func: Callable[..., Any], schedule_args: dict[str, Any] | None) -> Task:
        ref = reference(func)
        schedule = _schedule(ref, **schedule_args) if schedule_args is not None else None
        entry = Task(ref=ref, func=func, schedule=schedule)
        self._tasks[ref] = entry
        return entry

    def resolve(self, ref: str) -> Task:
        """The task registered as ``ref``; raises :class:`UnknownFunction` otherwise."""
        try:
            return self._tasks[ref]
        except (KeyError, TypeError):
            raise UnknownFunction(ref, self._tasks) from None

    def __contains__(self, ref: object) -> bool:
        return ref in self._tasks

    def refs(self) -> list[str]:
        return sorted(self._tasks)

    def scheduled(self) -> list[Task]:
        """Tasks that declare a schedule in code, ordered by job id."""
        found = [t for t in self._tasks.values() if t.schedule is not None]
        return sorted(found, key=lambda t: t.schedule.job_id if t.schedule else "")


registry = Registry()


def reference(func: Callable[..., Any]) -> str:
    """``module:qualname`` of a module-level function (APScheduler's textual reference)."""
    qualname = getattr(func, "__qualname__", None)
    module = getattr(func, "__module__", None)
    if not callable(func) or not qualname or not module or "<" in qualname:
        raise TypeError(
            f"@task needs a module-level function so it can be referenced by name; got {func!r}"
        )
    return f"{module}:{qualname}"


@overload
def task(func: F, /) -> F: ...
@overload
def task(trigger: str | None = None, /, **options: Any) -> Callable[[F], F]: ...
def task(target: Any = None, /, **options: Any) -> Any:
    """Register a job function; with a trigger, also schedule it at startup.

    ``@task`` (bare) makes ``async def poll(...)`` schedulable as ``"module:poll"``.
    ``@task("interval", hours=1, id="hourly_task")`` also schedules it when the app
    starts; other keywords are the trigger's fields plus ``id``, ``name``, ``args``,
    ``kwargs``, the job options (``misfire_grace_time``, ``max_instances``,
    ``coalesce``, ``overlap``, ``timeout``, ``retries``, ``rerun_interrupted``; see
    ``docs/api.md``) and ``enabled`` (a function of the settings; False leaves
    the job unscheduled).
    Sync ``def`` functions are accepted and run in a worker thread.
    """
    if callable(target):
        registry.add(target, None)
        return target
    if target is not None and target not in TRIGGER_TYPES:
        raise ValueError(f"unknown trigger {target!r}; use one of {', '.join(TRIGGER_TYPES)}")
    if target is None and options:
        raise TypeError("@task options need a trigger, e.g. @task('interval', minutes=5)")

    def decorate(func: F) -> F:
        registry.add(func, {"trigger": target, **options} if target else None)
        return func

    return decorate


def _schedule(
    ref: str,
    *,
    trigger: str,
    id: str | None = None,
    name: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    misfire_grace_time: int | None = None,
    max_instances: int | None = None,
    coalesce: bool | None = None,
    overlap: str | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    rerun_interrupted: bool | None = None,
    enabled: Callable[[Any], bool] | None = None,
    **trigger_args: Any,
) -> Schedule:
    options = {
        key: value
        for key, value in (
            ("name", name),
            ("misfire_grace_time", misfire_grace_time),
            ("max_instances", max_instances),
            ("coalesce", coalesce),
            ("overlap", overlap),
            ("timeout", timeout),
            ("retries", retries),
            ("rerun_interrupted", rerun_interrupted),
        )
        if value is not None
    }
    return Schedule(
        job_id=id or ref,
        trigger=spec_from_args(trigger, **trigger_args),
        args=tuple(args),
        kwargs=dict(kwargs or {}),
        options=options,
        enabled=enabled,
    )
