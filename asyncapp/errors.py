"""Every exception asyncapp raises on purpose.

Each message is built here and is safe to show to an API client or an
operator: it names the job, function or setting, never internal state.

    AsyncAppError
    ├── SettingsError(ValueError)      a bad ASYNCAPP_* value; startup stops
    ├── InvalidJob(ValueError)         a job definition that cannot be scheduled
    ├── JobExists(ValueError)          an id that is already taken
    ├── JobNotFound(LookupError)       an id that is not there
    ├── UnknownFunction(LookupError)   a func reference that is not a registered @task
    ├── JobBusy(RuntimeError)          a run was asked for while max_instances runs are going
    ├── KeyReused(ValueError)          an Idempotency-Key sent again with another request
    ├── NotRunning(RuntimeError)       asyncapp's runtime is not started in this process
    └── DatabaseUnavailable(ConnectionError)
                                       the database did not answer or refused a write;
                                       nothing was applied (the API answers 503)

    JobTimeout(TimeoutError)           a job's attempt outlived its ``timeout`` (the run
                                       history's error_type ``asyncapp.errors.JobTimeout``)
"""

from __future__ import annotations

from collections.abc import Iterable


class AsyncAppError(Exception):
    """Base class of asyncapp's own errors."""


class SettingsError(AsyncAppError, ValueError):
    """One or more ``ASYNCAPP_*`` settings are invalid."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid settings: " + "; ".join(self.problems))


class InvalidJob(AsyncAppError, ValueError):
    """A job definition is invalid; ``errors`` lists ``{"field", "message"}`` items."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        super().__init__(f"invalid job: {detail}")


class JobExists(AsyncAppError, ValueError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"a job with id {job_id!r} already exists")


class JobNotFound(AsyncAppError, LookupError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")

    def __str__(self) -> str:
        # LookupError's str() would repr the args tuple.
        return str(self.args[0])


class UnknownFunction(AsyncAppError, LookupError):
    """``func`` does not name a registered ``@task`` function."""

    def __init__(self, ref: object, known: Iterable[str]) -> None:
        self.ref = ref
        self.known = sorted(known)
        listed = ", ".join(self.known) if self.known else "none are registered"
        super().__init__(f"{ref!r} is not a registered @task function; registered: {listed}")

    def __str__(self) -> str:
        return str(self.args[0])


class JobBusy(AsyncAppError, RuntimeError):
    def __init__(self, job_id: str, max_instances: int) -> None:
        self.job_id = job_id
        super().__init__(
            f"job {job_id!r} already has {max_instances} run(s) in progress (its max_instances)"
        )


class KeyReused(AsyncAppError, ValueError):
    """An ``Idempotency-Key`` came again with a request other than the one it first came with."""

    def __init__(self) -> None:
        super().__init__(
            "this Idempotency-Key was first sent with another request; use a new key for a "
            "new request"
        )


class NotRunning(AsyncAppError, RuntimeError):
    """Something needs asyncapp's runtime (scheduler, shared client) but it is not started."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} is only available while the asyncapp runtime is running "
            "(inside jobs and views of a started app)"
        )


class DatabaseUnavailable(AsyncAppError, ConnectionError):
    """The database could not be reached or refused the transaction; nothing was applied.

    ``detail`` is the driver's one-line reason, for logs only: it may name hosts
    and files, so it is never shown to API clients.  ``busy``: a lock wait timed
    out (another transaction holds the row, or SQLite's write lock); the database
    answers, so it is not an outage.
    """

    #: Seconds a client should wait before retrying (the API's Retry-After).
    retry_after = 5

    def __init__(self, detail: str = "", *, busy: bool = False) -> None:
        self.detail = detail
        self.busy = busy
        if busy:
            self.retry_after = 1
        super().__init__("the database is unavailable; nothing was changed, try again shortly")


class JobTimeout(TimeoutError):
    """An attempt of a job took longer than the job's ``timeout``.

    Not an :class:`AsyncAppError`: it is raised into, and recorded for, a job's
    run, never at a caller of asyncapp.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the attempt took longer than its timeout of {seconds:g} s")
