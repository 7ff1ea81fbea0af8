"""Membership on its own, over a fake store and a fake dispatcher and recorder: what it
learns from a heartbeat or a reaping goes down to the collaborators it was handed
(fencing, runs ended elsewhere, runs taken over from the dead, the share)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from asyncapp.engine.cluster import SERVER, Membership
from asyncapp.model.job import JobDef
from asyncapp.model.run import Run
from asyncapp.settings import Settings
from asyncapp.store.interface import Heartbeat, Process, ProcessRow, Reaped
from tests.unit_parts import GREET, job, registry


def process(process_id: str, role: str = SERVER) -> Process:
    return Process(process_id, "node", "host", 1, role, 0.0, 0.0, "0", {})


class FakeStore:
    """The processes part of the store: answers what a test sets, keeps what it is asked."""

    def __init__(self) -> None:
        self.live: list[Process] = []
        self.gone: set[str] = set()
        self.reaped = Reaped()
        self.registered: list[tuple[str, ProcessRow]] = []
        self.reap_asked: dict[str, Any] = {}

    async def register(self, process_id: str, row: ProcessRow) -> Heartbeat:
        self.registered.append((process_id, row))
        return Heartbeat(1.0, [*self.live, process(process_id)])

    async def refresh(self, process_id: str, row: ProcessRow) -> Heartbeat | None:
        if process_id in self.gone:
            return None
        return Heartbeat(2.0, self.live)

    async def reap(self, process_id: str, **asked: Any) -> Reaped:
        self.reap_asked = {"process_id": process_id, **asked}
        return self.reaped


class FakeRuns:
    """The dispatcher as membership sees it."""

    def __init__(self, run_ids: list[str]) -> None:
        self.running = len(run_ids)
        self.ids = run_ids
        self.fenced: list[str] = []
        self.abandoned: list[str] = []
        self.started: list[tuple[list[Run], JobDef, Callable[..., Any]]] = []

    def run_ids(self) -> list[str]:
        return list(self.ids)

    def start_runs(self, runs: list[Run], job: JobDef, func: Callable[..., Any]) -> None:
        self.started.append((runs, job, func))

    def abandon(self, run_ids: list[str]) -> None:
        self.abandoned.extend(run_ids)

    def fence(self, process_id: str) -> None:
        self.fenced.append(process_id)


class FakeResults:
    """The recorder as membership sees it."""

    def __init__(self, process_id: str, queued: list[str]) -> None:
        self.process_id = process_id
        self.pending = len(queued)
        self._queued = queued

    def queued(self) -> list[str]:
        return list(self._queued)


class FakeFiring:
    """The firing engine as membership sees it."""

    def __init__(self) -> None:
        self.shares: list[tuple[int, int]] = []

    def summary(self) -> dict[str, Any]:
        return {"state": "running", "jobs": 0}

    def reshard(self, share: tuple[int, int]) -> None:
        self.shares.append(share)


def membership(
    store: FakeStore,
    runs: FakeRuns,
    results: FakeResults,
    process_id: str = "p1",
    firing: FakeFiring | None = None,
) -> Membership:
    return Membership(
        store,  # type: ignore[arg-type]
        Settings(),
        process_id=process_id,
        role=SERVER,
        tasks=registry(),
        runs=runs,
        results=results,
        firing=firing,
    )


async def test_a_process_found_presumed_dead_fences_its_runs_and_rejoins_under_a_new_id() -> None:
    store, runs, results = FakeStore(), FakeRuns(["r1"]), FakeResults("p1", [])
    member = membership(store, runs, results)
    await member.join()
    store.gone.add("p1")

    await member.beat()

    assert member.id != "p1"
    assert runs.fenced == [member.id] and results.process_id == member.id
    assert [process_id for process_id, _ in store.registered] == ["p1", member.id]
    row = store.registered[-1][1]
    assert (row["role"], row["pid"] > 0) == (SERVER, True)
    assert '"runs_in_progress": 1' in row["info"]


async def test_each_heartbeat_hands_the_firing_engine_its_share_among_live_servers() -> None:
    store, runs, results = FakeStore(), FakeRuns([]), FakeResults("p2", [])
    store.live = [process("p1"), process("p2"), process("cli-1", role="cli"), process("p3")]
    firing = FakeFiring()
    member = membership(store, runs, results, "p2", firing)

    await member.beat()

    assert firing.shares == [(1, 3)]
    assert member.clock == 2.0 and member.live == store.live


async def test_reaping_stops_runs_ended_elsewhere_and_starts_runs_taken_over() -> None:
    store, runs, results = FakeStore(), FakeRuns(["r1", "r2"]), FakeResults("p1", ["r3"])
    taken = job("greeter", func=GREET, args=["x"])
    rerun = Run(job_id="greeter", scheduled_for=datetime.now(UTC), node="node", attempt=2)
    store.reaped = Reaped(reruns=[(rerun, taken)], ended=["r2"], interrupted=[GREET])
    member = membership(store, runs, results)

    await member.watch()

    assert runs.abandoned == ["r2"]
    assert [(ran, found.id) for ran, found, _ in runs.started] == [([rerun], "greeter")]
    asked = store.reap_asked
    # The runs here: the dispatcher's, and those whose end the recorder still holds.
    assert (asked["process_id"], asked["running_here"]) == ("p1", ["r1", "r2", "r3"])
    assert asked["judge"]() is False  # its own heartbeat is not current yet: judge no one
    assert asked["can_run"](job(func=GREET)) and not asked["can_run"](job(func="gone:func"))
    assert runs.started[0][2].__name__ == "greet"  # the registered function of its job
