"""Command line and environment that start each stack as a real server process."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

STACKS = ("asyncapp", "quart", "seed", "ceiling")
#: Stacks with an event loop, whose loop lag is measured (seed has threads only).
LOOP_STACKS = ("asyncapp", "quart", "ceiling")
#: Stacks whose jobs live in memory: M5 has them add their stored jobs at startup
#: (``BENCH_STORED_JOBS``) instead of storing them through a first process.
MEMORY_STACKS = ("quart", "seed")
#: Listen backlog of every stack: Hypercorn's default (100) and the Flask dev
#: server's (128) would drop SYNs when M3's 1000 clients connect at once, and
#: the kernel would retry them a second or more later, inside the measurement.
BACKLOG = 4096
SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "hypercorn.toml"


@dataclass(frozen=True)
class Launch:
    """How to start one stack: argv and extra environment."""

    argv: list[str]
    env: dict[str, str]


def hypercorn_config(port: int, workdir: Path, shipped: bool) -> Path:
    """A Hypercorn config binding 127.0.0.1:``port``, one worker.

    ``shipped``: the repository's hypercorn.toml (as users run it; asyncapp writes
    its own access log, ``ASYNCAPP_ACCESS_LOG``, on by default)
    with ``bind`` replaced and ``backlog`` set to ``BACKLOG``; otherwise a bare
    config without access log.
    """
    path = workdir / f"hypercorn-{port}.toml"
    bind = f'bind = ["127.0.0.1:{port}"]'
    if shipped:
        text = re.sub(r"(?m)^(bind|backlog)\s*=.*$\n?", "", SHIPPED_CONFIG.read_text())
        text = f"{bind}\nbacklog = {BACKLOG}\n{text}"
    else:
        text = f"{bind}\nworkers = 1\nbacklog = {BACKLOG}\ngraceful_timeout = 5\n"
    path.write_text(text)
    return path


def launch(
    stack: str, port: int, upstream: str, workdir: Path, database: Path, workers: int = 0
) -> Launch:
    """The ``Launch`` of ``stack``; asyncapp keeps its jobs and runs in ``database``.

    ``workers``: Hypercorn's worker processes for asyncapp (0: serve from the main one).
    """
    env = {"BENCH_UPSTREAM": upstream}
    if stack == "seed":
        argv = [sys.executable, "-m", "bench.stacks.seed_app", "--port", str(port)]
        return Launch(argv, env)
    module = {
        "asyncapp": "bench.stacks.asyncapp_app:app",
        "quart": "bench.stacks.quart_app:app",
        "ceiling": "bench.stacks.ceiling_app:app",
    }
    if stack not in module:
        raise ValueError(f"unknown stack {stack!r}; use one of {', '.join(STACKS)}")
    config = hypercorn_config(port, workdir, shipped=stack == "asyncapp")
    argv = [sys.executable, "-m", "hypercorn", "-c", str(config), module[stack]]
    if workers:
        argv[-1:-1] = ["--workers", str(workers)]
    if stack == "asyncapp":
        env |= {
            "ASYNCAPP_DATABASE_URL": f"sqlite:///{database}",
            "ASYNCAPP_JOB_MODULES": "bench.stacks.asyncapp_jobs",
        }
    return Launch(argv, env)
