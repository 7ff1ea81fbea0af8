"""Logging fits the app's: each line once whatever the app configures, and run tags
on the job's own loggers once the app's handlers format them.

A real Hypercorn process per case, on an app module that configures logging
*after* attaching asyncapp, as an app with ``logging.basicConfig()`` at the end
of its module does (before attaching it was never a problem).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_serving import serve_module

pytestmark = pytest.mark.timeout(60)

APP = """
import logging

from flask import Flask

from asyncapp import AsyncApp, current_run, task
from asyncapp.asgi import to_asgi
from asyncapp.logs import TextFormatter


@task("interval", seconds=1, id="chatty")
async def chatty() -> None:
    logging.getLogger(__name__).warning("from the job's own logger")
    current_run().logger.info("from the run's logger")


app = Flask(__name__)
AsyncApp(app)
asgi_app = to_asgi(app)
{logging_setup}
"""

BASIC = "logging.basicConfig()"
TAGGED = """
handler = logging.StreamHandler()
handler.setFormatter(TextFormatter())
logging.basicConfig(level=logging.INFO, handlers=[handler])
"""


@pytest.mark.parametrize("setup", [BASIC, TAGGED], ids=["basicConfig", "TextFormatter"])
def test_each_line_is_written_once_whatever_the_app_configures(tmp_path: Path, setup: str) -> None:
    server = serve_module(tmp_path, "ownapp:asgi_app", APP.format(logging_setup=setup))
    try:
        server.wait_for("from the run's logger")
        server.wait_for("succeeded in")
    finally:
        assert server.stop() == 0
    lines = server.output().splitlines()
    started = [line for line in lines if "asyncapp started on" in line]
    assert len(started) == 1, server.output()
    ended = [line for line in lines if "succeeded in" in line]
    assert len(ended) == len({line.split(" run ")[1].split()[0] for line in ended})
    own = [line for line in lines if "from the job's own logger" in line]
    assert own, server.output()
    if setup == TAGGED:
        # The job's own logger's lines carry the run's tags, as asyncapp's do.
        assert all("[job=chatty run=" in line and " node=" in line for line in own), own
    else:
        assert own[0] == "WARNING:ownapp:from the job's own logger"
