"""``/healthz`` and ``/readyz``: liveness and readiness, answered without a token."""

from __future__ import annotations

import asyncio
from typing import Any

from flask import Blueprint, jsonify

from asyncapp.errors import DatabaseUnavailable
from asyncapp.faces.host import host

#: Endpoints that answer without a token: liveness and readiness probes.
OPEN_ENDPOINTS = frozenset({"asyncapp_health.healthz", "asyncapp_health.readyz"})
READY_TIMEOUT = 2.0


def health_blueprint() -> Blueprint:
    health = Blueprint("asyncapp_health", __name__)

    @health.get("/healthz")
    async def healthz() -> Any:
        """Liveness: the process answers; what it and the cluster were doing at the last
        heartbeat.  It reads no database, so it answers fast under load and during outages."""
        runtime = host().runtime
        return jsonify(status="ok", node=runtime.settings.node_name, scheduler=runtime.health())

    @health.get("/readyz")
    async def readyz() -> Any:
        """Readiness: the database answers and this process fires; 503 and why otherwise."""
        runtime = host().runtime
        problems = runtime.problems()
        # A database already known to be down is reported as such, without another wait.
        if runtime.started and runtime.store.down_since is None:
            try:
                async with asyncio.timeout(READY_TIMEOUT):
                    await runtime.ping()
            except (DatabaseUnavailable, TimeoutError):
                problems.append("the database is unavailable")
        status = 503 if problems else 200
        return jsonify(ready=not problems, problems=problems), status

    return health
