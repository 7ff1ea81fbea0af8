"""The public names of the package are a contract."""

from __future__ import annotations

import asyncapp


def test_public_names_are_pinned() -> None:
    assert sorted(asyncapp.__all__) == [
        "AsyncApp",
        "AsyncAppError",
        "InvalidJob",
        "JobBusy",
        "JobExists",
        "JobNotFound",
        "NotRunning",
        "RunContext",
        "Settings",
        "SettingsError",
        "UnknownFunction",
        "__version__",
        "create_app",
        "current_run",
        "http_client",
        "task",
    ]
    for name in asyncapp.__all__:
        assert hasattr(asyncapp, name)


def test_asgi_entry_points_exist() -> None:
    from asyncapp.asgi import app, to_asgi

    assert callable(to_asgi) and callable(app)
