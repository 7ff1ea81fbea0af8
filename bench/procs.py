"""Starting, watching and killing the processes under test, each pinned to a CPU."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
SERVER_CPU = 0
LOAD_CPU = 1
ALL_CPUS = "0,1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_tools() -> None:
    """Exit with an install hint if ``taskset`` or ``wrk`` is missing."""
    missing = [tool for tool in ("taskset", "wrk") if shutil.which(tool) is None]
    if missing:
        sys.exit(
            f"missing {', '.join(missing)}: install with "
            "`apt-get update && apt-get install -y wrk util-linux`"
        )


def raise_open_files_limit(wanted: int = 65536) -> int:
    """Raise the soft limit on open files to ``wanted`` (or the hard limit, if lower).

    Every process started afterwards inherits it: at 1000 clients wrk holds
    1000 sockets and the stack 1000 inbound plus its upstream connections,
    past the common default of 1024. Returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(soft, target)


@dataclass
class Proc:
    """A child process started in its own process group, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the process's combined stdout/stderr."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, wait up to ``timeout`` s for its leader, then
        SIGKILL the group: a Hypercorn worker can outlive its supervisor."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(5.0)


def start(
    name: str,
    cmd: Sequence[str],
    cpu: int | str,
    logdir: Path,
    env: Mapping[str, str] | None = None,
) -> Proc:
    """Start ``cmd`` pinned to ``cpu`` (a CPU, or a list such as ``"0,1"``) in a new
    session, logging to ``logdir/name.log``."""
    log = logdir / f"{name}.log"
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
    with log.open("ab") as out:
        popen = subprocess.Popen(
            ["taskset", "-c", str(cpu), *cmd],
            cwd=REPO,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, popen, log, time.monotonic())


@contextlib.contextmanager
def running(
    name: str,
    cmd: Sequence[str],
    cpu: int | str,
    logdir: Path,
    env: Mapping[str, str] | None = None,
) -> Iterator[Proc]:
    """``start`` as a context manager that always kills the process group on exit."""
    proc = start(name, cmd, cpu, logdir, env)
    try:
        yield proc
    finally:
        proc.stop()


def wait_ready(proc: Proc, url: str, timeout: float = 60.0) -> float:
    """Poll ``url`` until it answers 200; seconds from process start to that answer.

    Raises RuntimeError (with the log tail) if the process dies or ``timeout`` passes.
    """
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return time.monotonic() - proc.started
            time.sleep(0.02)
    raise RuntimeError(f"{proc.name} not ready after {timeout} s:\n{proc.tail()}")


def wait_workers(proc: Proc, url: str, workers: int, timeout: float = 60.0) -> None:
    """Poll asyncapp's ``/healthz`` until ``workers`` processes heartbeat in its database."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                found = client.get(url).json()["scheduler"]["processes"]
                if len(found) >= workers:
                    return
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name}: {workers} workers not up after {timeout} s:\n{proc.tail()}")


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from /proc."""
    pids, todo = [], [pid]
    for _ in range(1000):
        if not todo:
            break
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in task.read_text().split())
    return pids


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """Peak resident memory (VmHWM) of the tree under ``pid``, in MB: (largest, sum).

    Under Hypercorn the largest process is the worker holding the app; the sum adds
    the supervisor and helpers.
    """
    peaks = []
    for child in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024.0)
    return (max(peaks, default=0.0), sum(peaks))


def workers(pid: int) -> list[int]:
    """The Hypercorn worker processes under the supervisor ``pid`` (multiprocessing's
    spawned children; not its resource tracker)."""
    found = []
    for child in _tree(pid)[1:]:
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if any(b"spawn_main" in arg for arg in argv) and not any(
                b"resource_tracker" in arg for arg in argv
            ):
                found.append(child)
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (all its threads), in seconds,
    from ``/proc/<pid>/stat``; NaN if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    # The command name (field 2) may hold spaces; the fields after its ")" are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
