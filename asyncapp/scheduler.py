"""APScheduler wiring: our job store and executor on an AsyncIOScheduler.

The scheduler runs in UTC unless ``ASYNCAPP_TIMEZONE`` says otherwise; cron
triggers carry their own time zone (DESIGN.md Fact 8).  ``misfire_grace_time``
defaults to a minute, not APScheduler's 1 s, which silently dropped 450 of 500
jobs due at one instant (issue #4).
"""

from __future__ import annotations

from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_PAUSED, STATE_RUNNING, BaseScheduler

from .execution import JobExecutor
from .settings import Settings
from .store import JobStore

STATE_NAMES = {STATE_RUNNING: "running", STATE_PAUSED: "paused"}


class Scheduler(AsyncIOScheduler):
    """An AsyncIOScheduler whose ``shutdown`` takes effect before it returns.

    AsyncIOScheduler defers shutdown with ``call_soon_threadsafe``; asyncapp
    always calls it on the loop, and its shutdown sequence needs it done.
    """

    _stopped = False

    def shutdown(self, wait: bool = False) -> None:
        if not self.running:
            raise SchedulerNotRunningError
        BaseScheduler.shutdown(self, wait=False)
        self._stop_timer()

    def halt(self, stopped: bool) -> None:
        """Stop firing, as ``paused`` or as ``stopped`` (the management API's shutdown)."""
        if self.running:
            self.pause()
        self._stopped = stopped

    def resume(self) -> None:
        self._stopped = False
        super().resume()

    @property
    def state_name(self) -> str:
        """``running``, ``paused`` or ``stopped``."""
        if self._stopped:
            return "stopped"
        return STATE_NAMES.get(self.state, "stopped")


def build_scheduler(settings: Settings, store: JobStore, executor: JobExecutor) -> Scheduler:
    return Scheduler(
        jobstores={"default": store},
        executors={"default": executor},
        job_defaults={
            "misfire_grace_time": settings.misfire_grace_time,
            "coalesce": settings.coalesce,
            "max_instances": 1,
        },
        timezone=settings.zone,
    )
