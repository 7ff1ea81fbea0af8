"""Settings: ASYNCAPP_* environment, create_app overrides, and loud failures naming the variable."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from asyncapp import SettingsError, create_app
from asyncapp.asgi import to_asgi
from asyncapp.settings import Settings, load_settings
from tests.conftest import StartupFailed, lifespan


def settings_of(config: dict[str, object] | None = None) -> Settings:
    return create_app(config).extensions["asyncapp"].settings  # type: ignore[no-any-return]


def settings_error(config: dict[str, object] | None = None) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        create_app(config)
    return caught.value


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)
    with pytest.raises(ValueError, match="ASYNCAPP_TIMEZONE"):
        create_app({"ASYNCAPP_TIMEZONE": "Nowhere/Land"})


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCAPP_TIMEZONE", "Europe/Paris")
    monkeypatch.setenv("ASYNCAPP_DATABASE_URL", "postgresql+psycopg://db.example/jobs")
    monkeypatch.setenv("ASYNCAPP_API_TOKEN", "from-env")
    monkeypatch.setenv("ASYNCAPP_SHUTDOWN_GRACE", "7.5")
    monkeypatch.setenv("ASYNCAPP_WORKER_THREADS", "9")
    monkeypatch.setenv("ASYNCAPP_COALESCE", "false")

    settings = settings_of()

    assert settings.timezone == "Europe/Paris"
    assert str(settings.zone) == "Europe/Paris"
    assert settings.database_url == "postgresql+psycopg://db.example/jobs"
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == "from-env"
    assert settings.shutdown_grace == 7.5
    assert settings.worker_threads == 9
    assert settings.coalesce is False


def test_defaults_without_environment() -> None:
    settings = settings_of()

    assert settings.timezone == "UTC"
    assert settings.job_modules == ["asyncapp.examples"]
    assert settings.uptime_urls == []
    assert settings.api_token is None
    assert settings.database_url.startswith("sqlite:///")
    assert settings.database_url.endswith("/instance/asyncapp.db")


def test_create_app_config_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCAPP_TIMEZONE", "Europe/Paris")
    monkeypatch.setenv("ASYNCAPP_WORKER_THREADS", "9")
    monkeypatch.setenv("ASYNCAPP_JOB_MODULES", "from.env")

    settings = settings_of(
        {
            "ASYNCAPP_TIMEZONE": "America/New_York",
            "ASYNCAPP_JOB_MODULES": "from.config",
            "SECRET_KEY": "not ours",  # other Flask config is left alone
        }
    )

    assert settings.timezone == "America/New_York"
    assert settings.job_modules == ["from.config"]
    assert settings.worker_threads == 9  # not overridden: the environment still counts


def test_comma_separated_lists_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCAPP_JOB_MODULES", " tests.jobs, tests.jobs_declared ,,")
    monkeypatch.setenv("ASYNCAPP_UPTIME_URLS", "https://a.example/health,http://b.example")

    settings = settings_of()

    assert settings.job_modules == ["tests.jobs", "tests.jobs_declared"]
    assert settings.uptime_urls == ["https://a.example/health", "http://b.example"]


def test_comma_separated_lists_from_config_as_text_or_list() -> None:
    assert settings_of({"ASYNCAPP_JOB_MODULES": "a.b,c"}).job_modules == ["a.b", "c"]
    assert settings_of({"ASYNCAPP_JOB_MODULES": ["a.b", "c"]}).job_modules == ["a.b", "c"]
    assert settings_of({"ASYNCAPP_UPTIME_URLS": ""}).uptime_urls == []


def test_bad_uptime_url_names_the_variable() -> None:
    error = settings_error({"ASYNCAPP_UPTIME_URLS": "https://ok.example,ftp://nope"})
    assert "ASYNCAPP_UPTIME_URLS" in str(error)
    assert "ftp://nope" in str(error)


def test_bad_time_zone_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCAPP_TIMEZONE", "Mars/Olympus")
    error = settings_error()
    assert error.problems == ["ASYNCAPP_TIMEZONE: unknown time zone 'Mars/Olympus'"]


def test_malformed_database_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCAPP_DATABASE_URL", "not a url at all")
    error = settings_error()
    assert len(error.problems) == 1
    assert error.problems[0].startswith("ASYNCAPP_DATABASE_URL: ")
    assert "not a valid SQLAlchemy URL" in error.problems[0]


def test_unsupported_database_names_the_variable() -> None:
    error = settings_error({"ASYNCAPP_DATABASE_URL": "mysql+pymysql://u:p@db/jobs"})
    assert len(error.problems) == 1
    assert error.problems[0].startswith("ASYNCAPP_DATABASE_URL: ")
    assert "unsupported database 'mysql'" in error.problems[0]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ASYNCAPP_SHUTDOWN_GRACE", "-1"),
        ("ASYNCAPP_WORKER_THREADS", "0"),
        ("ASYNCAPP_MAX_BODY_BYTES", "0"),
        ("ASYNCAPP_SYNC_INTERVAL", "0"),
        ("ASYNCAPP_WORKER_THREADS", "many"),
    ],
)
def test_out_of_range_or_non_numeric_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    error = settings_error()
    assert [problem.split(":")[0] for problem in error.problems] == [name]


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCAPP_SHUTDOWN_GRACE", "-1")
    monkeypatch.setenv("ASYNCAPP_TIMEZONE", "Mars/Olympus")
    error = settings_error()
    named = sorted(problem.split(":")[0] for problem in error.problems)
    assert named == ["ASYNCAPP_SHUTDOWN_GRACE", "ASYNCAPP_TIMEZONE"]


def test_unknown_asyncapp_key_in_config_is_an_error() -> None:
    error = settings_error({"ASYNCAPP_TIMEZON": "UTC"})
    assert error.problems == ["ASYNCAPP_TIMEZON: unknown setting"]


async def test_job_module_that_cannot_be_imported_fails_startup(
    make_app: Callable[..., Flask],
) -> None:
    asgi_app = to_asgi(make_app(job_modules="tests.jobs,tests.no_such_module"))

    with pytest.raises(StartupFailed) as caught:
        async with lifespan(asgi_app):
            pytest.fail("startup should have failed")

    message = str(caught.value)
    assert "ASYNCAPP_JOB_MODULES" in message
    assert "tests.no_such_module" in message
    assert not asgi_app.ext.runtime.started


def test_unknown_variable_in_the_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCAPP_TIMEZON", "Europe/Paris")
    with pytest.raises(SettingsError, match="ASYNCAPP_TIMEZON: unknown setting"):
        load_settings()
