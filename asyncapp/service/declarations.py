"""Which process writes the jobs declared in code, while old and new code run side by side.

Each firing process publishes, in its heartbeat row, a fingerprint of the jobs its
code declares (:func:`fingerprint`).  It writes its declarations (adds, changes,
and removes the declared jobs its code no longer declares) only while every live
firing process publishes the same fingerprint (:func:`disagreeing` is empty): at
its start if the cluster agrees then, else at the first heartbeat after the last
process running other declarations has left.  While code with other declarations
runs, nothing declared is written, and every process fires the stored
definitions (a job whose function its code lacks is reported broken, not run).

So a rolling deploy changes the declared jobs once, when the last old process has
stopped, and old and new processes restarted alternately never undo each other.
A process of a release that publishes no fingerprint counts as disagreeing.  The
rule, and why it needs no ordering of releases, is in ``docs/deploy.md``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from asyncapp.store.processes import Process

#: The key of the fingerprint in a process row's ``info``.
INFO_KEY = "declarations"
#: The role of a process that fires jobs (``asyncapp.engine.cluster.SERVER``).
FIRING_ROLE = "server"


def fingerprint(specs: list[dict[str, Any]]) -> str:
    """A short digest of what the code declares: every job's spec, in id order."""
    text = json.dumps(sorted(specs, key=lambda spec: str(spec["id"])), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def disagreeing(live: list[Process], mine: str) -> list[Process]:
    """The live firing processes whose code declares other jobs than ``mine`` says."""
    return [p for p in live if p.role == FIRING_ROLE and p.info.get(INFO_KEY) != mine]
