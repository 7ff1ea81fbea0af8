"""Logging: every line about a run says which job, which run, when it was due, where.

:class:`RunFilter` adds the run being executed (from :func:`current_run`'s
context variable) to every log record made inside it, whoever logs: asyncapp,
the job's own ``logging.getLogger(__name__)``, httpx (see :func:`configure`
for who writes which lines).  The default text format appends them::

    2026-11-26 10:21:05,320 INFO myjobs: fetched 12 rows [job=poll run=9f0c3a...
    scheduled=2026-11-26T10:21:05+00:00 node=web-1:4242]     (one line)

``ASYNCAPP_LOG_FORMAT=json`` writes one JSON object per line instead, with the
same fields as keys, for log shippers.  Written here rather than with a
library: the JSON is seven fields and an exception text, and the run fields
come from our own context variable either way.

One record, one line: messages carry values that clients and jobs control
(request paths, job ids, pause notes, error messages), so both formats escape
the characters that end a line or disguise text (C0 and C1 controls, the line
and paragraph separators, bidirectional marks) wherever such a value can
appear: a CR or LF in a request path cannot start a line of its own that
looks like asyncapp's.  :func:`escape` is the rule; the access line applies it
to its values itself, so it holds under an application's own handlers too.
"""

from __future__ import annotations

import contextvars
import json
import logging
import traceback
from datetime import UTC, datetime
from typing import Any

#: What :func:`escape` writes for each character it escapes.
_ESCAPES: dict[int, str] = {
    code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))
} | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
_ESCAPES |= {
    code: f"\\u{code:04x}"
    for code in (0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}
#: The characters JSON leaves raw that :func:`escape` escapes, as JSON escapes.
_JSON_ESCAPES = {code: f"\\u{code:04x}" for code in _ESCAPES if code >= 0x7F}


def escape(text: str) -> str:
    """``text`` on one line, readable: CR, LF and tab as ``\\r \\n \\t``, other C0 and C1
    controls as ``\\xNN``, the line and paragraph separators (U+2028/9) and the
    bidirectional marks, embeddings and isolates as ``\\uNNNN``."""
    return text.translate(_ESCAPES)


#: Fields added to records made inside a run.
RUN_FIELDS = ("job_id", "run_id", "scheduled_for", "node")

#: Set for the duration of a run by the executor: its tags.
run_tags: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("asyncapp_log_tags")


class RunFilter(logging.Filter):
    """Adds the current run's job id, run id, scheduled time and node to records."""

    def filter(self, record: logging.LogRecord) -> bool:
        tags = run_tags.get(None)
        if tags is not None:
            for key, value in tags.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """``%(asctime)s %(levelname)s %(name)s: %(message)s``, then ``[job=... run=...
    scheduled=... node=...]`` inside a run, the message escaped (:func:`escape`); a
    traceback follows on its own lines, its exceptions' messages escaped."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        line = f"{record.asctime} {record.levelname} {record.name}: {escape(record.message)}"
        run_id = getattr(record, "run_id", None)
        if run_id is not None:
            job = getattr(record, "job_id", "-")
            scheduled = getattr(record, "scheduled_for", "-")
            node = getattr(record, "node", "-")
            line += escape(f" [job={job} run={run_id} scheduled={scheduled} node={node}]")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line

    def formatException(self, ei: Any) -> str:
        """The traceback, each exception's message (and notes) escaped onto one line."""
        if ei[1] is None:
            return super().formatException(ei)
        chunks = []
        for chunk in traceback.TracebackException(*ei).format():
            # Frames and the chain's headers are the interpreter's text; the rest is
            # what the exceptions say, which a job or a client may have written.
            if chunk.startswith((" ", "\n", "Traceback (most recent call last):")):
                chunks.append(chunk)
            else:
                chunks.append(escape(chunk.removesuffix("\n")) + "\n")
        return "".join(chunks).removesuffix("\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, run fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in RUN_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # JSON escapes C0 controls; C1 controls, U+2028/9 and bidirectional marks it
        # leaves raw, and line-splitting readers (Python's splitlines) break on some.
        return json.dumps(entry, ensure_ascii=False, default=str).translate(_JSON_ESCAPES)


class FallbackHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """asyncapp's handler on the ``asyncapp`` logger: writes a line only when no
    handler of the application will.

    Decided per line, not once at startup, so an app that configures logging
    after attaching asyncapp (``logging.basicConfig()`` below ``AsyncApp(app)``)
    gets each line once, from its own handlers, and not a second time from here.
    Each line also hands the run tags to the root logger's handlers, however
    late they were added.
    """

    def handle(self, record: logging.LogRecord) -> bool:
        root = logging.getLogger()
        if root.handlers:
            _tag_handlers(root.handlers)
            if logging.getLogger("asyncapp").propagate:
                return False
        return super().handle(record)


def configure(level: str, style: str) -> None:
    """Write asyncapp's lines (``asyncapp.*`` loggers, and ``current_run().logger``) with
    run tags, in ``style`` (``text`` or ``json``), unless the application writes them.

    - While the root logger has no handler, asyncapp's :class:`FallbackHandler`
      on the ``asyncapp`` logger writes asyncapp's lines, tagged, in
      :class:`TextFormatter` or :class:`JsonFormatter` form.  The job's own
      loggers then have no handler (Python prints only their warnings, bare).
    - Once the application configures the root logger (``basicConfig``,
      ``dictConfig``), before or after attaching asyncapp, its handlers alone
      write asyncapp's lines, in its format: each line appears once.  Those
      handlers get :class:`RunFilter` (at the latest with asyncapp's next line,
      e.g. ``asyncapp started``), so every record made inside a run, by any
      logger (asyncapp's, the job's own ``logging.getLogger(__name__)``,
      httpx), carries ``job_id``, ``run_id``, ``scheduled_for`` and ``node``;
      to show them, give those handlers ``TextFormatter()`` or ``JsonFormatter()``.
    - The handler is on ``asyncapp``, not the root, so the application's own
      ``logging.basicConfig`` keeps working (it does nothing once the root has
      a handler).
    """
    root = logging.getLogger()
    _tag_handlers(root.handlers)
    logger = logging.getLogger("asyncapp")
    logger.setLevel(level)
    formatter = JsonFormatter() if style == "json" else TextFormatter()
    for handler in logger.handlers:
        if isinstance(handler, FallbackHandler):
            handler.setFormatter(formatter)
            return
    handler = FallbackHandler()
    handler.setFormatter(formatter)
    handler.addFilter(_run_filter)
    logger.addHandler(handler)


_run_filter = RunFilter()


def _tag_handlers(handlers: list[logging.Handler]) -> None:
    for handler in handlers:
        if not any(isinstance(f, RunFilter) for f in handler.filters):
            handler.addFilter(_run_filter)
