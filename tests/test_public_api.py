"""The public names of the package are a contract: asyncapp, asyncapp.asgi, asyncapp.errors."""

from __future__ import annotations

import inspect
import re

from flask import Flask

import asyncapp
import asyncapp.asgi
from asyncapp import errors
from asyncapp.app import AsyncApp
from tests.conftest import app_config


def test_public_names_are_pinned() -> None:
    assert sorted(asyncapp.__all__) == [
        "AsyncApp",
        "AsyncAppError",
        "InvalidJob",
        "Job",
        "JobBusy",
        "JobExists",
        "JobNotFound",
        "JobRun",
        "Jobs",
        "KeyReused",
        "NotRunning",
        "RunContext",
        "Settings",
        "SettingsError",
        "SyncJobs",
        "UnknownFunction",
        "__version__",
        "aiohttp_session",
        "create_app",
        "current_run",
        "http_client",
        "jobs",
        "sync_jobs",
        "task",
    ]
    for name in asyncapp.__all__:
        assert hasattr(asyncapp, name)
    for name in asyncapp.__all__:
        if hasattr(errors, name):
            assert getattr(asyncapp, name) is getattr(errors, name)


def test_asgi_entry_points_are_pinned(db_url: str) -> None:
    assert asyncapp.asgi.__all__ == ["AsgiApp", "app", "to_asgi"]
    # Which ``app`` a clean environment gives is in test_lifespan (a fresh interpreter).
    assert isinstance(asyncapp.asgi.app, asyncapp.asgi.AsgiApp | asyncapp.asgi.FailedApp)
    assert list(inspect.signature(asyncapp.asgi.to_asgi).parameters) == ["flask_app"]

    flask_app = asyncapp.create_app(app_config(db_url))
    wrapped = asyncapp.asgi.to_asgi(flask_app)
    assert type(wrapped) is asyncapp.asgi.AsgiApp
    assert wrapped.flask_app is flask_app and wrapped.ext is flask_app.extensions["asyncapp"]

    own = Flask("own")
    own.config.update(app_config(db_url))
    attached = asyncapp.asgi.to_asgi(own)  # attaches asyncapp to an app without it
    assert isinstance(own.extensions["asyncapp"], AsyncApp) and attached.ext.app is own


#: The exception classes of asyncapp.errors and their bases, as its docstring draws them.
HIERARCHY = {
    "AsyncAppError": (Exception,),
    "SettingsError": (errors.AsyncAppError, ValueError),
    "InvalidJob": (errors.AsyncAppError, ValueError),
    "JobExists": (errors.AsyncAppError, ValueError),
    "JobNotFound": (errors.AsyncAppError, LookupError),
    "UnknownFunction": (errors.AsyncAppError, LookupError),
    "JobBusy": (errors.AsyncAppError, RuntimeError),
    "KeyReused": (errors.AsyncAppError, ValueError),
    "NotRunning": (errors.AsyncAppError, RuntimeError),
    "DatabaseUnavailable": (errors.AsyncAppError, ConnectionError),
    "JobTimeout": (TimeoutError,),
}


def test_the_exception_hierarchy_is_pinned() -> None:
    defined = {
        name: value.__bases__
        for name, value in vars(errors).items()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    }
    assert defined == HIERARCHY


def test_the_docstring_draws_the_hierarchy() -> None:
    assert errors.__doc__ is not None
    assert re.search(r"^    AsyncAppError$", errors.__doc__, re.MULTILINE)
    drawn = re.findall(r"^    [├└]── (\w+)\((\w+)\)", errors.__doc__, re.MULTILINE)
    assert drawn == [
        (name, bases[1].__name__)
        for name, bases in HIERARCHY.items()
        if name != "AsyncAppError" and errors.AsyncAppError in bases
    ]
