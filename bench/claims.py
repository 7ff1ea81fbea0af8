"""What deciding "who fires a run" costs per run: asyncapp's claims against a lease queue.

When several processes share a database, asyncapp lets every process fire
every due job and claim each (job, scheduled time) with
``INSERT ... ON CONFLICT DO NOTHING`` in a transaction that locks the job rows
(:func:`asyncapp.store.claims.claim`); the alternative it did not build is a leader
holding a lease that enqueues one row per due run, taken by workers with
``FOR UPDATE SKIP LOCKED``.  This measures, on this machine, in real separate
processes (spawn context, one :class:`~asyncapp.store.database.Database` each, a barrier
so racing processes start together), on a fresh database per measurement:

- **A1 / A100**: one process claims N due keys (N jobs, one due time each)
  with the real ``claim()`` in batches of 1 and of 100.
- **B**: two processes race for the same N keys, batches of 100, both in the
  same order, each trying every key.  Every key must be won exactly once:
  ``asyncapp_runs`` holds N rows and the wins the processes report add up to N.
- **C**: two processes with the preference asyncapp used before shares and
  the sweep: each claims the keys it prefers (``crc32(job id) % 2 == its
  index``) at once, then the others once :data:`SPREAD_DELAY` has passed since
  the start; those late claims should all lose.  (asyncapp now claims only
  its share, the first half of C; late times are swept after 1 s instead,
  :mod:`asyncapp.engine.sweep`.)
- **D** (PostgreSQL only): the lease design, built here minimally: a leader
  process checks its lease (holder and fencing epoch, ``FOR SHARE``) and
  inserts N run rows into a queue table in batches of 100, one transaction per
  batch; two worker processes take rows with ``UPDATE ... WHERE id IN (SELECT
  ... FOR UPDATE SKIP LOCKED) RETURNING id`` in batches of 100 (polling every
  1 ms while the queue is empty and the leader is not done) and mark each
  batch done with one UPDATE.

Reading the table (medians over ``--repeats``; each repeat runs every row):

- ``wall ms``: from the barrier's release to the last process done (D: from
  the leader's first insert to the last row marked done).  ``keys/s`` and
  ``us/key`` are N over it and it over N.
- ``won ms``: when every key had its winner: C, the end of the slower
  preferred pass; D, the last row taken (before marking it done).
- ``stmts/run``, ``txns/run``: SQL statements executed (each parameter set of
  an executemany counted; BEGIN, COMMIT and the pool's pre-ping on
  PostgreSQL not counted) and commits, by all processes together, per key.
- ``cpu us/run``: client CPU time of all processes together per key (the
  database server's CPU is not included).
- ``wins``: each process's wins, per repeat; ``wasted``: attempts that did not
  win (C: the late claims); ``once``: exactly-once held in every repeat.

Ratios are computed within each repeat, then the median is taken: the machine
is small and shared.  The failover figures at the end are design values from
the code and the lease design's usual settings, not measurements.

    .venv/bin/python -m bench.claims [--jobs 2000] [--repeats 3] [--databases sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import multiprocessing
import os
import queue
import tempfile
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    MetaData,
    String,
    Table,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.interfaces import ExecuteStyle

from asyncapp.model.job import JobDef
from asyncapp.store.claims import Due, Reasons, claim
from asyncapp.store.database import Database
from asyncapp.store.jobs import JobStore
from asyncapp.store.tables import runs_table
from bench.stats import median

SPAWN = multiprocessing.get_context("spawn")
PG_ADMIN_URL = "postgresql://127.0.0.1:5432/test"
RESULTS = Path(__file__).resolve().parent / "results" / "claims.json"
#: The bench jobs' interval: the next scheduled time after the one claimed.
INTERVAL = timedelta(seconds=60)
#: Batch size of A100, B, C and D (the Dispatcher's docstring quotes batches of 100).
BATCH = 100
#: How long a D worker sleeps when the queue is empty and the leader is not done
#: (a stand-in for LISTEN/NOTIFY; real lease designs poll every second or so).
POLL = 0.001
#: Seconds a measurement may take before its processes are stopped.
TIMEOUT = 300.0

#: The lease design's usual lease time to live and renewal slack (design values).
LEASE_TTL = 10.0
LEASE_SLACK = 1.0


def job_body() -> None:
    """The bench jobs' function; never called: the bench only claims."""


# -- what processes report ------------------------------------------------------------


@dataclass
class Report:
    """What one process did, in its own monotonic clock (system-wide on Linux)."""

    name: str
    start: float
    end: float
    #: C: end of the preferred pass; D: the worker's last take.
    first: float
    won: int
    tried: int
    statements: int
    commits: int
    cpu: float
    #: Statements executed, by their first word (SELECT, INSERT, UPDATE, ...).
    verbs: dict[str, int] = field(default_factory=dict)
    #: C: wins of the late pass (keys another process preferred).
    late_won: int = 0
    #: D: takes that found the queue empty.
    empty: int = 0


@dataclass
class Result:
    """One measurement: one scenario on one database in one repeat."""

    scenario: str
    database: str
    keys: int
    wall: float
    #: When every key had its winner (C, D), else ``wall``.
    won_at: float
    wins: list[int]
    tried: int
    rows: int
    statements: int
    commits: int
    cpu: float
    verbs: dict[str, int] = field(default_factory=dict)
    late_won: int = 0
    empty: int = 0

    @property
    def once(self) -> bool:
        return self.rows == self.keys and sum(self.wins) == self.keys

    @property
    def wasted(self) -> int:
        return self.tried - sum(self.wins)


class Statements:
    """Counts the statements (each parameter set of an executemany) and commits of an engine."""

    def __init__(self, engine: Engine) -> None:
        self.verbs: Counter[str] = Counter()
        self.commits = 0
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    @property
    def statements(self) -> int:
        return sum(self.verbs.values())

    def reset(self) -> None:
        self.verbs.clear()
        self.commits = 0

    def _statement(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        verb = statement.split(None, 1)[0].upper()
        if verb == "BEGIN":
            return  # SQLite's BEGIN IMMEDIATE, from asyncapp's "begin" hook
        # An executemany runs once per parameter set; SQLAlchemy's "insertmanyvalues"
        # batches arrive here flagged executemany too, but each is one statement.
        many = executemany and context.execute_style is ExecuteStyle.EXECUTEMANY
        self.verbs[verb] += len(parameters) if many else 1

    def _commit(self, conn: Connection) -> None:
        self.commits += 1


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextlib.contextmanager
def opened(url: str, *, migrate: bool = False) -> Iterator[Database]:
    db = Database(url)
    asyncio.run(db.open(migrate=migrate))
    try:
        yield db
    finally:
        asyncio.run(db.close())


# -- the claim design: processes ------------------------------------------------------


@dataclass(frozen=True)
class ClaimTask:
    url: str
    name: str
    #: Job ids claimed at once, in this order.
    keys: list[str]
    #: Job ids claimed once ``delay`` has passed since the start (C).
    late: list[str]
    batch: int
    due_at: float
    delay: float = 0.0


def claim_worker(task: ClaimTask, barrier: Any, out: Any) -> None:
    """One process claiming ``task``'s keys with asyncapp's ``claim()``; puts a :class:`Report`."""
    with opened(task.url) as db:
        assert db.engine is not None
        counter = Statements(db.engine)
        when = datetime.fromtimestamp(task.due_at, UTC)
        reasons = Reasons(started_at=when - timedelta(hours=1))

        def attempt(ids: Sequence[str]) -> int:
            batch = [
                Due(job_id, 1, [when], when + INTERVAL, coalesce=True, misfire_grace_time=None)
                for job_id in ids
            ]
            outcomes = db.write_now(
                lambda conn: claim(
                    db, conn, batch, node=task.name, process_id=task.name, reasons=reasons
                )
            )
            return sum(len(outcome.won) for outcome in outcomes)

        attempt([])  # connect and warm up outside the measurement
        counter.reset()
        barrier.wait(timeout=TIMEOUT)
        start, cpu = time.monotonic(), time.process_time()
        won = sum(attempt(ids) for ids in chunks(task.keys, task.batch))
        first = time.monotonic()
        late_won = 0
        if task.late:
            pause = start + task.delay - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            late_won = sum(attempt(ids) for ids in chunks(task.late, task.batch))
        end = time.monotonic()
        out.put(
            Report(
                name=task.name,
                start=start,
                end=end,
                first=first,
                won=won + late_won,
                tried=len(task.keys) + len(task.late),
                statements=counter.statements,
                commits=counter.commits,
                cpu=time.process_time() - cpu,
                verbs=dict(counter.verbs),
                late_won=late_won,
            )
        )


# -- the lease design: tables and processes -------------------------------------------

lease_metadata = MetaData()
lease_table = Table(
    "bench_lease",
    lease_metadata,
    Column("name", String(40), primary_key=True),
    Column("holder", String(40), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("expires_at", postgresql.DOUBLE_PRECISION, nullable=False),
)
queue_table = Table(
    "bench_queue",
    lease_metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("job_id", String(200), nullable=False),
    Column("scheduled_for", DateTime(timezone=True), nullable=False),
    Column("taken_by", String(40), nullable=True),
    Column("taken_at", DateTime(timezone=True), nullable=True),
    Column("done_at", DateTime(timezone=True), nullable=True),
    # A deposed leader that inserts again must not double a run.
    Index("uq_bench_queue_job_time", "job_id", "scheduled_for", unique=True),
    Index("ix_bench_queue_free", "id", postgresql_where=text("taken_by IS NULL")),
)
LEASE = "scheduler"
TAKE = text(
    "UPDATE bench_queue SET taken_by = :me, taken_at = now() WHERE id IN ("
    "SELECT id FROM bench_queue WHERE taken_by IS NULL ORDER BY id LIMIT :n "
    "FOR UPDATE SKIP LOCKED) RETURNING id"
)


@dataclass(frozen=True)
class LeaseTask:
    url: str
    name: str
    #: "leader" inserts ``keys``; "worker" takes and finishes rows.
    role: str
    keys: list[str]
    batch: int
    due_at: float
    epoch: int = 1


class LostLease(RuntimeError):
    pass


def lease_worker(task: LeaseTask, barrier: Any, out: Any, leader_done: Any) -> None:
    """The leader or one worker of the lease design; puts a :class:`Report`."""
    with opened(task.url) as db:
        assert db.engine is not None
        counter = Statements(db.engine)
        db.write_now(lambda conn: conn.execute(select(func.count()).select_from(queue_table)))
        counter.reset()
        barrier.wait(timeout=TIMEOUT)
        start, cpu = time.monotonic(), time.process_time()
        if task.role == "leader":
            won, empty, first = _lead(db, task), 0, time.monotonic()
            leader_done.set()
        else:
            won, empty, first = _work(db, task, leader_done)
        end = time.monotonic()
        out.put(
            Report(
                name=task.name,
                start=start,
                end=end,
                first=first,
                won=won,
                tried=won,
                statements=counter.statements,
                commits=counter.commits,
                cpu=time.process_time() - cpu,
                verbs=dict(counter.verbs),
                empty=empty,
            )
        )


def _lead(db: Database, task: LeaseTask) -> int:
    """Insert one queue row per key, a batch per transaction, each fenced by the lease."""
    when = datetime.fromtimestamp(task.due_at, UTC)
    fence = (
        select(lease_table.c.epoch)
        .where(
            lease_table.c.name == LEASE,
            lease_table.c.holder == task.name,
            lease_table.c.epoch == task.epoch,
            lease_table.c.expires_at > func.extract("epoch", func.clock_timestamp()),
        )
        .with_for_update(read=True)
    )

    def enqueue(conn: Connection, ids: Sequence[str]) -> None:
        if conn.execute(fence).first() is None:
            raise LostLease(f"{task.name} no longer holds the lease at epoch {task.epoch}")
        rows = [{"job_id": job_id, "scheduled_for": when} for job_id in ids]
        conn.execute(
            postgresql.insert(queue_table)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["job_id", "scheduled_for"])
        )

    for ids in chunks(task.keys, task.batch):
        db.write_now(functools.partial(enqueue, ids=ids))
    return 0


def _work(db: Database, task: LeaseTask, leader_done: Any) -> tuple[int, int, float]:
    """Take and finish rows until the leader is done and the queue is empty."""

    def take(conn: Connection) -> list[int]:
        return list(conn.execute(TAKE, {"me": task.name, "n": task.batch}).scalars())

    def finish(conn: Connection, ids: list[int]) -> None:
        conn.execute(
            update(queue_table).where(queue_table.c.id.in_(ids)).values(done_at=func.now())
        )

    taken = empty = 0
    last_take = time.monotonic()
    while True:
        finished = leader_done.is_set()
        ids = db.write_now(take)
        if not ids:
            if finished:
                return taken, empty, last_take
            empty += 1
            time.sleep(POLL)
            continue
        last_take = time.monotonic()
        taken += len(ids)
        # The runs would run here; then they are recorded as done, one UPDATE per batch.
        db.write_now(functools.partial(finish, ids=ids))


# -- running processes ----------------------------------------------------------------


def run_processes(target: Callable[..., None], tasks: Sequence[Any], *extra: Any) -> list[Report]:
    """Start one spawned process per task, released together by a barrier; their reports."""
    barrier = SPAWN.Barrier(len(tasks))
    out = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=target, args=(task, barrier, out, *extra), name=task.name)
        for task in tasks
    ]
    for process in processes:
        process.start()
    reports: list[Report] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(reports) < len(processes):
            try:
                reports.append(out.get(timeout=0.5))
            except queue.Empty:
                failed = [p.name for p in processes if p.exitcode not in (None, 0)]
                if failed:
                    raise RuntimeError(f"bench process(es) {', '.join(failed)} failed") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"bench processes took over {TIMEOUT:.0f} s") from None
        for process in processes:
            process.join(timeout=60)
        failed = [p.name for p in processes if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"bench process(es) {', '.join(failed)} failed")
    finally:
        barrier.abort()
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
    return sorted(reports, key=lambda report: report.name)


# -- fresh databases --------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(kind: str, scratch: Path) -> Iterator[str]:
    """The URL of an empty database: a new SQLite file under ``scratch``, or a new schema."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(dir=scratch, prefix=".claims-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'jobs.db'}"
        return
    schema = f"bench_claims_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield f"postgresql+psycopg://127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def job_ids(count: int) -> list[str]:
    return [f"bench-{index:05d}" for index in range(count)]


def prepare(url: str, count: int, *, lease: bool = False) -> float:
    """Migrate, store ``count`` jobs due one second ago; returns their due time (epoch s)."""
    due = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    seconds = int(INTERVAL.total_seconds())
    trigger = {"type": "interval", "seconds": seconds, "start_date": due.isoformat()}
    jobs = [
        JobDef(
            id=job_id,
            func=f"{__name__}:job_body",
            trigger=dict(trigger),
            version=1,
            next_run_time=due,
        )
        for job_id in job_ids(count)
    ]
    with opened(url, migrate=True) as db:
        store = JobStore(db)

        def setup(conn: Connection) -> None:
            for job in jobs:
                store.insert(conn, job, time.time())
            if lease:
                lease_metadata.create_all(conn)
                conn.execute(
                    lease_table.insert().values(
                        name=LEASE, holder="leader", epoch=1, expires_at=time.time() + LEASE_TTL
                    )
                )

        db.write_now(setup)
        if db.is_postgres:
            tables = "asyncapp_jobs, asyncapp_runs" + (", bench_queue" if lease else "")
            db.write_now(lambda conn: conn.execute(text(f"ANALYZE {tables}")))
    return due.timestamp()


def count_rows(url: str, table: Table, *where: Any) -> int:
    with opened(url) as db:
        return int(
            db.read_now(
                lambda conn: conn.execute(
                    select(func.count()).select_from(table).where(*where)
                ).scalar_one()
            )
        )


# -- the measurements -------------------------------------------------------------------


#: Seconds before row C claims the keys another process prefers (the delay asyncapp's
#: dispatcher used before shares and the sweep replaced it).
SPREAD_DELAY = 0.25


def prefers(job_id: str, index: int, count: int) -> bool:
    """asyncapp's share (``asyncapp.engine.cache.owns``): the job's hash over the live
    processes."""
    return zlib.crc32(job_id.encode()) % count == index


def measure_claims(
    scenario: str, kind: str, scratch: Path, count: int, *, batch: int, processes: int, prefer: bool
) -> Result:
    with fresh_database(kind, scratch) as url:
        due_at = prepare(url, count)
        keys = job_ids(count)
        tasks = []
        for index in range(processes):
            mine = [k for k in keys if prefers(k, index, processes)] if prefer else keys
            others = [k for k in keys if not prefers(k, index, processes)] if prefer else []
            delay = SPREAD_DELAY if prefer else 0.0
            tasks.append(ClaimTask(url, f"p{index}", mine, others, batch, due_at, delay))
        reports = run_processes(claim_worker, tasks)
        rows = count_rows(url, runs_table)
    start = min(report.start for report in reports)
    end = max(report.end for report in reports)
    won_at = max(report.first for report in reports) if prefer else end
    return _result(scenario, kind, count, reports, end - start, won_at - start, rows)


def measure_lease(kind: str, scratch: Path, count: int, *, batch: int, workers: int) -> Result:
    with fresh_database(kind, scratch) as url:
        due_at = prepare(url, count, lease=True)
        keys = job_ids(count)
        tasks = [LeaseTask(url, "leader", "leader", keys, batch, due_at)]
        tasks += [
            LeaseTask(url, f"w{index}", "worker", [], batch, due_at) for index in range(workers)
        ]
        reports = run_processes(lease_worker, tasks, SPAWN.Event())
        rows = count_rows(url, queue_table, queue_table.c.done_at.is_not(None))
    leader = next(report for report in reports if report.name == "leader")
    work = [report for report in reports if report.name != "leader"]
    end = max(report.end for report in work)
    taken = max(report.first for report in work)
    return _result("D", kind, count, reports, end - leader.start, taken - leader.start, rows, work)


def _result(
    scenario: str,
    kind: str,
    count: int,
    reports: list[Report],
    wall: float,
    won_at: float,
    rows: int,
    winners: list[Report] | None = None,
) -> Result:
    winners = reports if winners is None else winners
    return Result(
        scenario=scenario,
        database=kind,
        keys=count,
        wall=wall,
        won_at=won_at,
        wins=[report.won for report in winners],
        tried=sum(report.tried for report in winners),
        rows=rows,
        statements=sum(report.statements for report in reports),
        commits=sum(report.commits for report in reports),
        cpu=sum(report.cpu for report in reports),
        verbs=dict(sum((Counter(report.verbs) for report in reports), Counter())),
        late_won=sum(report.late_won for report in reports),
        empty=sum(report.empty for report in reports),
    )


#: The claim scenarios: (batch size, processes, preference).
CLAIM_PLANS = {"A1": (1, 1, False), "A100": (BATCH, 1, False), "B": (BATCH, 2, False)}
CLAIM_PLANS["C"] = (BATCH, 2, True)


def one_repeat(databases: Sequence[str], scratch: Path, count: int) -> list[Result]:
    """Every scenario once on every database, each on a fresh database."""
    results: list[Result] = []
    for kind in databases:
        for name, (batch, processes, prefer) in CLAIM_PLANS.items():
            results.append(
                measure_claims(
                    name, kind, scratch, count, batch=batch, processes=processes, prefer=prefer
                )
            )
            progress(results[-1])
        if kind == "postgresql":
            results.append(measure_lease(kind, scratch, count, batch=BATCH, workers=2))
            progress(results[-1])
    return results


def progress(result: Result) -> None:
    print(
        f"  {result.database:<10} {result.scenario:<4} {result.wall * 1000:8.1f} ms"
        f"  wins {result.wins}  {'ok' if result.once else 'NOT EXACTLY ONCE'}",
        flush=True,
    )


# -- the table ----------------------------------------------------------------------------

SCENARIOS = {
    "A1": "A  1 process, batches of 1",
    "A100": "A  1 process, batches of 100",
    "B": "B  2 processes race, same keys",
    "C": "C  2 processes, preference",
    "D": "D  lease: leader + 2 workers",
}


def _runs(repeats: list[list[Result]], scenario: str, kind: str) -> list[Result]:
    return [r for repeat in repeats for r in repeat if (r.scenario, r.database) == (scenario, kind)]


def _wins(runs: list[Result]) -> str:
    text = "  ".join("/".join(str(wins) for wins in r.wins) for r in runs)
    if runs[0].scenario == "C":
        text += f"  (late wins {'/'.join(str(r.late_won) for r in runs)})"
    if runs[0].scenario == "D":
        text += f"  (empty polls {'/'.join(str(r.empty) for r in runs)})"
    return text


#: The table's columns: header, width, the figure from one scenario's runs.
COLUMNS: list[tuple[str, int, Callable[[list[Result]], str]]] = [
    ("wall ms", 8, lambda runs: f"{median([r.wall for r in runs]) * 1e3:.1f}"),
    ("keys/s", 7, lambda runs: f"{median([r.keys / r.wall for r in runs]):.0f}"),
    ("us/key", 7, lambda runs: f"{median([r.wall / r.keys for r in runs]) * 1e6:.1f}"),
    ("won ms", 7, lambda runs: f"{median([r.won_at for r in runs]) * 1e3:.1f}"),
    ("stmts/run", 9, lambda runs: f"{median([r.statements / r.keys for r in runs]):.2f}"),
    ("txns/run", 8, lambda runs: f"{median([r.commits / r.keys for r in runs]):.3f}"),
    ("cpu us/run", 10, lambda runs: f"{median([r.cpu / r.keys for r in runs]) * 1e6:.0f}"),
    ("wasted", 6, lambda runs: f"{median([r.wasted for r in runs]):.0f}"),
    ("once", 4, lambda runs: f"{sum(r.once for r in runs)}/{len(runs)}"),
]


def table(repeats: list[list[Result]], databases: Sequence[str]) -> str:
    """One line per scenario and database: medians over repeats, then the per-repeat wins."""
    label_width = max(len(label) for label in SCENARIOS.values())
    header = f"{'scenario':<{label_width}} {'database':<10} " + " ".join(
        f"{name:>{width}}" for name, width, _ in COLUMNS
    )
    header += "  wins per process, per repeat"
    lines = [header, "-" * len(header)]
    for kind in databases:
        for scenario, label in SCENARIOS.items():
            runs = _runs(repeats, scenario, kind)
            if runs:
                figures = " ".join(f"{figure(runs):>{width}}" for _, width, figure in COLUMNS)
                lines.append(f"{label:<{label_width}} {kind:<10} {figures}  {_wins(runs)}")
    return "\n".join(lines)


def breakdown(repeats: list[list[Result]], databases: Sequence[str]) -> str:
    """Statements per run by kind (all processes together), medians over repeats."""
    lines = []
    for kind in databases:
        for scenario in SCENARIOS:
            runs = _runs(repeats, scenario, kind)
            if not runs:
                continue
            verbs = sorted({verb for r in runs for verb in r.verbs})
            figures = "  ".join(
                f"{verb} {median([r.verbs.get(verb, 0) / r.keys for r in runs]):.3f}"
                for verb in verbs
            )
            commits = median([r.commits / r.keys for r in runs])
            lines.append(f"  {kind:<10} {scenario:<4}  {figures}  |  COMMIT {commits:.3f}")
    return "\n".join(lines)


def ratios(repeats: list[list[Result]], databases: Sequence[str]) -> str:
    """Same-repeat ratios of wall times (won ms where named), medians over repeats."""
    pairs = [
        ("A1 / A100   us per key, batch 1 against batch 100", "A1", "wall", "A100", "wall"),
        ("B / A100    race of 2 against 1 process", "B", "wall", "A100", "wall"),
        ("C / A100    preference, all won", "C", "won_at", "A100", "wall"),
        ("C / A100    preference, both done (incl. delay)", "C", "wall", "A100", "wall"),
        ("D / C       lease against claims, all taken/won", "D", "won_at", "C", "won_at"),
        ("D / C       lease (all done) against claims (all won)", "D", "wall", "C", "won_at"),
    ]
    lines = []
    for kind in databases:
        for label, top, top_field, bottom, bottom_field in pairs:
            values = []
            for repeat in repeats:
                found = {r.scenario: r for r in repeat if r.database == kind}
                if top in found and bottom in found:
                    values.append(
                        getattr(found[top], top_field) / getattr(found[bottom], bottom_field)
                    )
            if values:
                spread = ", ".join(f"{v:.2f}" for v in values)
                lines.append(f"  {kind:<10} {label:<54} {median(values):6.2f}   ({spread})")
    return "\n".join(lines)


def design_values() -> str:
    return "\n".join(
        [
            "Failover, design values (not measured):",
            f"  claim design: a job whose preferred process died is claimed by the others "
            f"after SPREAD_DELAY = {SPREAD_DELAY:.2f} s",
            f"  lease design: runs stop until the lease expires and is taken over: "
            f"TTL + renewal slack = {LEASE_TTL:.0f} s + {LEASE_SLACK:.0f} s "
            f"= {LEASE_TTL + LEASE_SLACK:.0f} s (typical TTL {LEASE_TTL:.0f} s)",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="due (job, time) keys, N")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--out", type=Path, default=RESULTS, help="raw results as JSON")
    args = parser.parse_args(argv)
    databases = [name.strip() for name in args.databases.split(",") if name.strip()]
    unknown = set(databases) - {"sqlite", "postgresql"}
    if unknown:
        parser.error(f"unknown database(s): {', '.join(sorted(unknown))}")
    # The working directory, not /tmp: the SQLite file should sit on the disk a
    # deployment's ./instance/ would, where a commit costs what it costs there.
    scratch = Path.cwd()
    print(
        f"claims bench: N={args.jobs}, {args.repeats} repeats, {', '.join(databases)}; "
        f"SQLite files under {scratch}; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    repeats: list[list[Result]] = []
    for number in range(1, args.repeats + 1):
        print(f"repeat {number}/{args.repeats}", flush=True)
        repeats.append(one_repeat(databases, scratch, args.jobs))
    print()
    print(f"Medians over {args.repeats} repeats, N = {args.jobs} keys, batches of {BATCH} in B-D:")
    print(table(repeats, databases))
    print()
    print("Statements per run by kind, all processes together (median over repeats):")
    print(breakdown(repeats, databases))
    print()
    print("Ratios of wall times within each repeat, median (per repeat):")
    print(ratios(repeats, databases))
    print()
    print(design_values())
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "jobs": args.jobs,
                "repeats": [[asdict(result) for result in repeat] for repeat in repeats],
                "design": {"spread_delay_s": SPREAD_DELAY, "lease_ttl_s": LEASE_TTL},
            },
            indent=1,
        )
    )
    ok = all(result.once for repeat in repeats for result in repeat)
    if not ok:
        print("FAIL: a key was not won exactly once")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
