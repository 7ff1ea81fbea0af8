"""Settings: one typed object built from ``ASYNCAPP_*`` environment variables.

Values given to ``create_app(config)`` or found in the Flask config under the same
``ASYNCAPP_*`` names override the environment.  Every value is cast and checked
once, at startup; a bad value raises :class:`~asyncapp.errors.SettingsError`
naming the variable, so a typo stops the server instead of surfacing at 3 a.m.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from asyncapp.errors import SettingsError

ENV_PREFIX = "ASYNCAPP_"
SUPPORTED_DATABASES = ("sqlite", "postgresql")

CommaList = Annotated[list[str], NoDecode]


def default_database_url() -> str:
    """A SQLite file under ``./instance/`` of the working directory."""
    return f"sqlite:///{Path('instance').resolve() / 'asyncapp.db'}"


class Settings(BaseSettings):
    """asyncapp's configuration; field ``x`` is read from ``ASYNCAPP_X``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    database_url: str = Field(
        default_factory=default_database_url,
        description="SQLAlchemy URL of the job store and run history.",
    )
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token required by the management API."
    )
    job_modules: CommaList = Field(
        default=[],
        description="Comma-separated modules imported at startup to register @task functions; "
        "their @task(trigger) jobs are scheduled. Unset, the extension picks them: "
        "asyncapp.examples for the default app (create_app()), the Flask app's own "
        "package for AsyncApp(app).",
    )
    timezone: str = Field(default="UTC", description="Scheduler time zone (IANA name).")
    api_prefix: str = Field(default="/scheduler", description="URL prefix of the management API.")
    shutdown_grace: float = Field(
        default=20.0,
        ge=0,
        description="Seconds running jobs may finish after shutdown begins; then they are "
        "cancelled and recorded as interrupted. Keep below Hypercorn's shutdown_timeout.",
    )
    worker_threads: int = Field(
        default=128,
        ge=1,
        description="Threads serving sync Flask views concurrently (async views hold none "
        "while they await).",
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1, description="Largest request body accepted; larger gets 413."
    )
    misfire_grace_time: int = Field(
        default=60,
        ge=1,
        description="Default seconds a run may start late before it is recorded as missed.",
    )
    coalesce: bool = Field(
        default=True, description="Default: run a job once when several runs were missed."
    )
    job_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Default seconds a run may take before it is cancelled and recorded as "
        "timeout; empty means no limit.",
    )
    job_retries: int = Field(
        default=0, ge=0, le=100, description="Default further attempts after a failed attempt."
    )
    retry_backoff: float = Field(
        default=1.0,
        gt=0,
        description="Seconds before the first retry (between half and all of it, at random); "
        "each next one waits twice as long, up to ASYNCAPP_RETRY_BACKOFF_MAX.",
    )
    retry_backoff_max: float = Field(
        default=300.0, gt=0, description="Longest wait between two attempts, in seconds."
    )
    max_running: int = Field(
        default=5000,
        ge=1,
        description="Runs at once in this process; more wait their turn (it shows as lateness).",
    )
    claim_lead: float = Field(
        default=0.1,
        ge=0,
        le=5,
        description="Seconds ahead of its time that a scheduled run is claimed, so that it "
        "starts on time instead of after the claim's commit; 0 claims at the time.",
    )
    job_threads: int = Field(
        default=16, ge=1, description="Threads running plain def jobs (not the request threads)."
    )
    http_timeout: float = Field(
        default=10.0, gt=0, description="Default timeout in seconds of the shared HTTP client."
    )
    http_max_connections: int = Field(
        default=1000, ge=1, description="Connection limit of the shared HTTP client."
    )
    http_metric_hosts: int = Field(
        default=100,
        ge=1,
        description="Distinct hosts counted by name in asyncapp_http_client_requests; "
        "requests to further hosts count as host 'other'.",
    )
    sync_interval: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="Seconds between checks for changes made by other processes "
        "(on PostgreSQL they also arrive at once through LISTEN/NOTIFY).",
    )
    heartbeat_interval: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Seconds between this process's heartbeats in the database.",
    )
    process_timeout: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds without a heartbeat after which a process counts as dead and its "
        "runs in progress are marked unknown. Keep it several heartbeat intervals long.",
    )
    node_name: str = Field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}",
        min_length=1,
        description="Name of this process in logs and run history.",
    )
    uptime_urls: CommaList = Field(
        default=[],
        description="Comma-separated URLs for the example uptime check; empty turns it off.",
    )
    log_level: str = Field(default="INFO", description="Level of the asyncapp loggers.")
    access_log: bool = Field(
        default=True,
        description="Log one line per HTTP request (client, request line, status, bytes, "
        "seconds) through the asyncapp.access logger, in the log format of the other lines.",
    )
    debug: bool = Field(
        default=False,
        description="Print the traceback of a startup or shutdown failure; without it the "
        "failure is one log line saying what to fix, and the exit code is non-zero.",
    )
    loop_lag_threshold: float = Field(
        default=0.1,
        gt=0,
        description="Seconds the event loop may be held before a warning names what held it.",
    )
    metrics_public: bool = Field(
        default=False, description="Serve /metrics without the API token (for a scraper)."
    )
    history_days: float = Field(
        default=30,
        ge=0,
        description="Days of run history kept; older runs are deleted (0 keeps them all).",
    )
    history_per_job: int = Field(
        default=1000,
        ge=0,
        description="Runs kept per job, newest first; older ones are deleted (0: no limit).",
    )
    max_jobs: int = Field(
        default=10_000, ge=1, description="Jobs the database may hold; more are refused (422)."
    )
    max_args_bytes: int = Field(
        default=65_536,
        ge=1,
        description="Largest JSON size of a job's args and kwargs together; larger is refused.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text: lines tagged with job, run, scheduled time and node; json: one JSON "
        "object per line.",
    )

    @field_validator("job_modules", "uptime_urls", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("uptime_urls")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return value

    @field_validator("job_timeout", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a valid SQLAlchemy URL") from None
        if url.get_backend_name() not in SUPPORTED_DATABASES:
            raise ValueError(
                f"unsupported database {url.get_backend_name()!r}; "
                f"use one of {', '.join(SUPPORTED_DATABASES)}"
            )
        return value

    @field_validator("api_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value.startswith("/") or value.endswith("/") or len(value) < 2:
            raise ValueError("must start with '/' and not end with '/', e.g. /scheduler")
        return value

    @field_validator("node_name")
    @classmethod
    def _check_node(cls, value: str) -> str:
        if "\x00" in value or len(value) > 200:
            raise ValueError("must be at most 200 characters, without NUL")
        return value

    @model_validator(mode="after")
    def _check_timeout(self) -> Settings:
        if self.process_timeout < 2 * self.heartbeat_interval:
            raise ValueError(
                "ASYNCAPP_PROCESS_TIMEOUT must be at least twice ASYNCAPP_HEARTBEAT_INTERVAL"
            )
        return self

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def debug_from_environment() -> bool:
    """``ASYNCAPP_DEBUG`` alone, to report settings that failed to load as a whole.

    False when unset or not a boolean (then it is among the reported problems).
    """
    try:
        return TypeAdapter(bool).validate_python(os.environ.get(f"{ENV_PREFIX}DEBUG", False))
    except ValidationError:
        return False


def load_settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build settings from the environment, then ``overrides`` keyed ``ASYNCAPP_*``.

    Keys of ``overrides`` without the prefix are ignored (a Flask config holds
    other things too); unknown ``ASYNCAPP_*`` keys, there or in the
    environment, are errors.

    :raises SettingsError: naming every bad variable and why.
    """
    values = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in (overrides or {}).items()
        if key.startswith(ENV_PREFIX)
    }
    # A typo in a variable name must not silently fall back to a default.
    problems = [
        f"{name}: unknown setting"
        for name in sorted(os.environ)
        if name.startswith(ENV_PREFIX)
        and name[len(ENV_PREFIX) :].lower() not in Settings.model_fields
    ]
    if problems:
        raise SettingsError(problems)
    try:
        return Settings(**values)
    except ValidationError as exc:
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            if not error["loc"]:  # a check across settings names them itself
                problems.append(message)
                continue
            if error["type"] == "extra_forbidden":
                message = "unknown setting"
            problems.append(f"{ENV_PREFIX}{str(error['loc'][0]).upper()}: {message}")
        raise SettingsError(problems) from None
