"""The vocabulary shared by the database, the API, the CLI and the dashboard.

Run statuses, missed-run reasons, change sources and actions, scheduler states
and trigger fields are spelled here once; every other module imports them, so
a new status or reason is added in one place and the schemas follow.
"""

from __future__ import annotations

from typing import Final, Literal

#: asyncapp's version: written here only (pyproject.toml reads it, and so do
#: ``asyncapp.__version__``, the heartbeat rows and the OpenAPI document).
VERSION: Final = "0.2.0"

# -- runs ----------------------------------------------------------------------------

RUNNING: Final = "running"
SUCCESS: Final = "success"
ERROR: Final = "error"
TIMEOUT: Final = "timeout"
MISSED: Final = "missed"
INTERRUPTED: Final = "interrupted"  # its own process cut it short (shutdown, cancel_other)
#: Its process stopped responding before recording how it ended (killed, or presumed
#: dead): the run may have finished, failed or been cut short; nobody can tell.
UNKNOWN: Final = "unknown"

RunStatus = Literal[
    "running", "waiting", "success", "error", "timeout", "missed", "interrupted", "unknown"
]
RUN_STATUSES: Final[tuple[RunStatus, ...]] = (
    "running",
    "waiting",
    "success",
    "error",
    "timeout",
    "missed",
    "interrupted",
    "unknown",
)

# Why a scheduled time did not run (``missed`` runs carry one in ``reason``).
COALESCED: Final = "coalesced"  # a later time of the same job ran instead (coalesce)
LATE: Final = "late"  # it could not start within misfire_grace_time
NO_SCHEDULER: Final = "no_scheduler"  # no scheduler process was running at that time
DATABASE_DOWN: Final = "database_unavailable"  # the database could not record a claim
OVERLAP: Final = "overlap"  # max_instances runs of the job were still in progress
SCHEDULER_PAUSED: Final = "scheduler_paused"  # the scheduler was paused or stopped
REMOVED: Final = "removed"  # a waiting run whose job was removed
JOB_PAUSED: Final = "paused"  # a run claimed ahead of its time whose job was paused meanwhile
CHANGED: Final = "changed"  # its job was changed or paused before the due time was claimed
MISSED_REASONS: Final[dict[str, str]] = {
    COALESCED: "coalesced into a later run of the same job",
    LATE: "could not start within misfire_grace_time of its scheduled time",
    NO_SCHEDULER: "no scheduler process was running at its scheduled time",
    DATABASE_DOWN: "the database was unavailable at its scheduled time",
    OVERLAP: "the previous run was still in progress (max_instances reached)",
    SCHEDULER_PAUSED: "the scheduler was paused or stopped at its scheduled time",
    REMOVED: "its job was removed before it could start",
    JOB_PAUSED: "its job was paused after the run was claimed, before its time",
    CHANGED: "its job was paused or rescheduled after this time fell due, before it was claimed",
}

#: A run claimed while another of its job runs, under overlap policy buffer_one.
WAITING: Final = "waiting"

#: Which jobs a listing shows: by their state, or by how their last run ended.
JobFilter = Literal["scheduled", "running", "paused", "failing", "broken"]
JOB_FILTERS: Final[dict[str, str]] = {
    "scheduled": "scheduled (not paused, not broken)",
    "running": "running (a run in progress)",
    "paused": "paused",
    "failing": "failing (last run error or timeout)",
    "broken": "broken (function not registered)",
}
#: How a listing of jobs may be ordered.
JobSort = Literal["id", "next", "last", "state"]
JOB_SORTS: Final[dict[str, str]] = {
    "next": "next run",
    "last": "last run",
    "state": "state",
    "id": "id",
}
FAILING_STATUSES: Final = (ERROR, TIMEOUT)

# -- execution options ---------------------------------------------------------------

OverlapPolicy = Literal["skip", "buffer_one", "allow", "cancel_other"]
SKIP: Final = "skip"  # a run due while one runs is recorded missed (overlap)
BUFFER_ONE: Final = "buffer_one"  # it starts when the running one ends; at most one waits
ALLOW: Final = "allow"  # it runs alongside, up to max_instances
CANCEL_OTHER: Final = "cancel_other"  # the running one is cancelled, then it starts

#: Job options besides the function, trigger and arguments, in API order.
JOB_OPTIONS: Final = (
    "name",
    "misfire_grace_time",
    "max_instances",
    "coalesce",
    "overlap",
    "timeout",
    "retries",
    "rerun_interrupted",
)

# -- changes -------------------------------------------------------------------------

ChangeSource = Literal["api", "cli", "dashboard", "code"]

ADD: Final = "add"
MODIFY: Final = "modify"
PAUSE: Final = "pause"
RESUME: Final = "resume"
REMOVE: Final = "remove"
RUN_NOW: Final = "run"
SCHEDULER: Final = "scheduler"  # a change of the scheduler-wide state

# -- the scheduler -------------------------------------------------------------------

SchedulerState = Literal["running", "paused", "stopped"]
SCHEDULER_RUNNING: Final = "running"
SCHEDULER_PAUSED_STATE: Final = "paused"
SCHEDULER_STOPPED: Final = "stopped"

# -- triggers ------------------------------------------------------------------------

TriggerType = Literal["date", "interval", "cron"]
TRIGGER_TYPES: Final[tuple[TriggerType, ...]] = ("interval", "cron", "date")
INTERVAL_UNITS: Final = ("weeks", "days", "hours", "minutes", "seconds")
SECONDS_PER: Final[dict[str, int]] = {
    "weeks": 604800,
    "days": 86400,
    "hours": 3600,
    "minutes": 60,
    "seconds": 1,
}
#: Each trigger type as messages name it, with its article ("an interval trigger").
TRIGGER_NAMES: Final[dict[str, str]] = {
    "interval": "an interval trigger",
    "cron": "a cron trigger",
    "date": "a date trigger",
}
CRON_FIELDS: Final = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")
COMMON_TRIGGER_FIELDS: Final = ("start_date", "end_date", "timezone", "jitter")
TRIGGER_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "interval": (*INTERVAL_UNITS, *COMMON_TRIGGER_FIELDS),
    "cron": (*CRON_FIELDS, *COMMON_TRIGGER_FIELDS),
    "date": ("run_date", "timezone"),
}

# -- limits --------------------------------------------------------------------------

MAX_ID_LENGTH: Final = 191  # the jobs table's id column
MAX_ERROR_MESSAGE: Final = 2000  # characters of an error message kept in run history
MAX_NOTE_LENGTH: Final = 500
MAX_UPCOMING: Final = 100  # fire times one preview lists
DEFAULT_UPCOMING: Final = 10
