"""An app exercising Flask's semantics in async and sync views, served by a real
Hypercorn in ``test_views.py``.

Every request records in ``g.hook_on_loop`` whether its ``before_request`` hook
ran on the event loop's thread: async endpoints run there (in a greenlet),
sync endpoints in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import (
    copy_current_request_context,
    current_app,
    g,
    jsonify,
    request,
    session,
    stream_with_context,
)
from flask.views import MethodView

from asyncapp import create_app, http_client
from asyncapp.asgi import to_asgi

flask_app = create_app({"SECRET_KEY": "views-app-secret"})

#: hook names per ``tag`` query argument, in the order the hooks ran.
hooks: dict[str, list[str]] = defaultdict(list)
#: ``/wait`` requests in flight, and the event that lets them finish.
waiting = 0
arrivals = asyncio.Condition()
release = asyncio.Event()
#: opened by ``/stream/open``, awaited by ``/stream`` between its chunks.
stream_gates: dict[str, asyncio.Event] = defaultdict(asyncio.Event)


class Teapot(Exception):
    pass


class AsyncHandled(Exception):
    pass


def on_loop() -> bool:
    """Whether this code runs on the thread of the running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def os_threads() -> int:
    """Threads of this process as the kernel counts them (C threads included)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError("no Threads line in /proc/self/status")


@flask_app.before_request
def before() -> None:
    g.hook_on_loop = on_loop()
    g.tag = request.args.get("tag")
    if g.tag:
        hooks[g.tag].append("before")


@flask_app.after_request
def after(response: Any) -> Any:
    if g.tag:
        hooks[g.tag].append("after")
    return response


@flask_app.teardown_request
def teardown(exc: BaseException | None) -> None:
    # g.get: a copied request context (``/copied``) tears down with a fresh g.
    if g.get("tag"):
        hooks[g.tag].append(f"teardown:{type(exc).__name__ if exc else None}")


@flask_app.get("/threads")
async def threads() -> Any:
    return jsonify(threads=os_threads())


@flask_app.get("/wait")
async def wait() -> Any:
    """In flight until ``/release``."""
    global waiting
    async with arrivals:
        waiting += 1
        arrivals.notify_all()
    await release.wait()
    return jsonify(ok=True)


@flask_app.get("/arrived")
async def arrived() -> Any:
    """Once ``n`` requests wait in ``/wait`` (or after 20 s): how many, and the thread count."""
    n = int(request.args["n"])
    async with arrivals:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrivals.wait_for(lambda: waiting >= n), 20)
        return jsonify(waiting=waiting, threads=os_threads())


@flask_app.post("/release")
async def release_waiting() -> Any:
    release.set()
    return jsonify(ok=True)


@flask_app.get("/hooks")
def hook_log() -> Any:
    return jsonify(hooks.get(request.args["of"], []))


@flask_app.get("/context")
async def context() -> Any:
    """Flask's context objects, and the shared client, after awaits."""
    app_name_before = current_app.name
    upstream = await http_client().get(request.host_url + "healthz")
    await asyncio.sleep(0)
    session["visits"] = session.get("visits", 0) + 1
    return jsonify(
        tag=request.args["tag"],
        g_tag=g.tag,
        app=current_app.name,
        same_app=app_name_before == current_app.name,
        visits=session["visits"],
        upstream=upstream.status_code,
        hook_on_loop=g.hook_on_loop,
    )


@flask_app.get("/teapot")
async def teapot() -> Any:
    await asyncio.sleep(0)
    raise Teapot(request.args["tag"])


@flask_app.errorhandler(Teapot)
def handle_teapot(exc: Teapot) -> Any:
    return jsonify(error=str(exc), tag=g.tag, on_loop=on_loop()), 418


@flask_app.get("/async-handled")
async def async_handled() -> Any:
    await asyncio.sleep(0)
    raise AsyncHandled(request.args["tag"])


@flask_app.errorhandler(AsyncHandled)
async def handle_async(exc: AsyncHandled) -> Any:
    await asyncio.sleep(0)
    return jsonify(error=str(exc), tag=request.args["tag"], hook_on_loop=g.hook_on_loop), 409


@flask_app.get("/stream")
async def stream() -> Any:
    """Streams two lines; awaits ``/stream/open`` between them, inside the generator."""
    await asyncio.sleep(0)
    tag = request.args["tag"]

    def lines() -> Iterator[str]:
        yield f"first {request.args['tag']}\n"
        current_app.ensure_sync(stream_gates[tag].wait)()
        yield f"second {g.tag} on_loop={on_loop()}\n"

    return stream_with_context(lines())


@flask_app.post("/stream/open")
async def open_stream() -> Any:
    stream_gates[request.args["gate"]].set()
    return jsonify(ok=True)


@flask_app.get("/copied")
async def copied() -> Any:
    """A copied request context used by a thread that does not inherit contextvars."""

    @copy_current_request_context
    def work() -> dict[str, Any]:
        return {"tag": request.args["tag"], "visits": session.get("visits"), "on_loop": on_loop()}

    await asyncio.sleep(0)
    result = await asyncio.get_running_loop().run_in_executor(None, work)
    return jsonify(**result, hook_on_loop=g.hook_on_loop)


class Item(MethodView):
    async def get(self, name: str) -> Any:
        await asyncio.sleep(0)
        return jsonify(name=name, method="get", hook_on_loop=g.hook_on_loop)

    def post(self, name: str) -> Any:
        return jsonify(name=name, method="post", hook_on_loop=g.hook_on_loop, on_loop=on_loop())


flask_app.add_url_rule("/items/<name>", view_func=Item.as_view("item"))


@flask_app.get("/sync")
def sync_view() -> Any:
    return jsonify(
        on_loop=on_loop(),
        hook_on_loop=g.hook_on_loop,
        thread=threading.current_thread().name,
    )


@flask_app.get("/sync-awaits")
def sync_awaits() -> Any:
    """A sync view running async code: it runs on the server loop, not a new one."""
    loop = current_app.ensure_sync(_loop_id)()
    return jsonify(on_loop=on_loop(), loop=loop)


@flask_app.get("/loop")
async def loop_id() -> Any:
    return jsonify(loop=await _loop_id())


async def _loop_id() -> int:
    return id(asyncio.get_running_loop())


@flask_app.post("/upload")
async def upload() -> Any:
    data = request.get_data()
    await asyncio.sleep(0)
    return jsonify(length=len(data), hook_on_loop=g.hook_on_loop)


@flask_app.get("/blocking-call")
async def blocking_call() -> Any:
    """Calls an async function synchronously from the coroutine: refused, not deadlocked."""
    try:
        current_app.ensure_sync(_loop_id)()
    except RuntimeError as exc:
        return jsonify(error=str(exc)), 500
    return jsonify(error=None)


app = to_asgi(flask_app)
