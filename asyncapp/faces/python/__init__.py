"""The Python API for jobs: what views, jobs and scripts call, typed.

:mod:`.values` holds what it returns, :mod:`.jobs` the async calls, :mod:`.sync`
the same without ``await``.

Async first (:data:`jobs`, a :class:`Jobs`), and the same calls without
``await`` for sync views, plain ``def`` jobs and scripts (:data:`sync_jobs`, a
:class:`SyncJobs`)::

    from asyncapp import jobs, sync_jobs

    job = await jobs.add(poll, "interval", minutes=5, id="poll", args=["https://example.org"])
    await jobs.pause("poll", note="upstream down")
    sync_jobs.resume("poll")                      # in a sync view or a script

It is a face over the one :class:`~asyncapp.service.jobs.JobService`, as the
HTTP API, the CLI and the dashboard are: input goes through the API's
validation (:mod:`asyncapp.service.validation`), errors are the exceptions of
:mod:`asyncapp.errors` (``InvalidJob`` with per-field ``errors``,
``JobNotFound``, ``JobExists``, ``UnknownFunction``...), every change is
committed before the call returns and recorded in the job's change history
with ``source: "code"``.

Which app: the one given (``Jobs(app)``), else ``flask.current_app`` (views and
jobs run in the app context).  Where the work happens:

- in a process whose runtime runs (under Hypercorn), on its service, on its
  loop: changes reach the scheduler at once; ``run_now`` starts a run and
  returns it without waiting;
- elsewhere (a script, a shell), on a service over the database alone, opened
  for the call; every running server applies the change within a second, as
  it does a CLI command's.  ``run_now`` there runs the job in this process
  (claimed like any run) and waits for it, as ``flask jobs run`` does.

The sync form, on a thread without an event loop, hands the call to the
server loop when the runtime runs (a sync view's or a ``def`` job's thread),
else runs it with :func:`asyncio.run`.  In an async view, called synchronously
in the sync parts of an async view's request (hooks and helpers Flask calls
in the request's greenlet), it suspends the greenlet (``Flask.async_to_sync``,
overridden by asyncapp's adapter).  In an ``async def`` body, on the loop's
own thread, waiting would block the loop: it raises ``RuntimeError`` saying to
await :data:`jobs` instead.
"""

from __future__ import annotations

from asyncapp.faces.python.jobs import Jobs
from asyncapp.faces.python.sync import SyncJobs
from asyncapp.faces.python.values import Job, JobRun, func_ref

__all__ = ["Job", "JobRun", "Jobs", "SyncJobs", "func_ref", "jobs", "sync_jobs"]

#: The jobs of the current app, async: ``await jobs.add(...)``.
jobs = Jobs()
#: The jobs of the current app, sync: ``sync_jobs.add(...)``.
sync_jobs = SyncJobs()
