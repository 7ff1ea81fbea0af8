"""The management API over HTTP against the ASGI app, lifespan driven explicitly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from flask import Flask

from asyncapp.faces.health import OPEN_ENDPOINTS
from asyncapp.runtime import Runtime
from tests import jobs
from tests.conftest import AUTH, documented_routes, serve, served_api_routes, settled

pytestmark = pytest.mark.timeout(30)

RECORD = "tests.jobs:record"
JOB_FIELDS = {
    "id",
    "name",
    "func",
    "args",
    "kwargs",
    "trigger",
    "misfire_grace_time",
    "max_instances",
    "next_run_time",
}  # Flask-APScheduler's job_to_dict
OUR_FIELDS = {"coalesce", "jitter", "timezone", "paused", "broken"}


@pytest.fixture
def client(served: tuple[httpx.AsyncClient, Runtime]) -> httpx.AsyncClient:
    return served[0]


@pytest.fixture
def runtime(served: tuple[httpx.AsyncClient, Runtime]) -> Runtime:
    return served[1]


async def add(client: httpx.AsyncClient, job_id: str = "j1", **fields: Any) -> dict[str, Any]:
    body = {
        "id": job_id,
        "func": RECORD,
        "kwargs": {"tag": job_id},
        "trigger": "interval",
        "minutes": 10,
    } | fields
    response = await client.post("/scheduler/jobs", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error_message"], str) and isinstance(body["errors"], list)
    assert "Traceback" not in response.text
    return body


async def ended_runs(
    client: httpx.AsyncClient, runtime: Runtime, job_id: str
) -> list[dict[str, Any]]:
    """The runs of ``job_id``, newest first, once every run started here has ended."""
    await settled(runtime)
    runs: list[dict[str, Any]] = (await client.get(f"/scheduler/jobs/{job_id}/runs")).json()["runs"]
    return runs


# -- scheduler ------------------------------------------------------------------------


async def test_scheduler_info(client: httpx.AsyncClient) -> None:
    response = await client.get("/scheduler")
    assert response.status_code == 200
    info = response.json()
    assert {"current_host", "allowed_hosts", "running"} <= set(info)
    assert info["running"] is True and info["state"] == "running"


async def test_scheduler_pause_resume_shutdown_start(client: httpx.AsyncClient) -> None:
    async def state() -> str:
        return (await client.get("/scheduler")).json()["state"]

    for action, expected in [
        ("pause", "paused"),
        ("resume", "running"),
        ("shutdown", "stopped"),
        ("start", "running"),
    ]:
        response = await client.post(f"/scheduler/{action}")
        assert response.status_code == 204, response.text
        assert response.content == b""
        assert await state() == expected
    # Flask-APScheduler clients send {"wait": "False"} to shutdown.
    assert (await client.post("/scheduler/shutdown", json={"wait": "False"})).status_code == 204
    assert_error(await client.post("/scheduler/shutdown", json={"wait": "soon"}), 422)
    assert_error(
        await client.post(
            "/scheduler/shutdown", content=b"{", headers={"Content-Type": "application/json"}
        ),
        400,
    )


async def test_job_routes_work_while_the_scheduler_is_shut_down(
    client: httpx.AsyncClient,
) -> None:
    await add(client, "before")
    assert (await client.post("/scheduler/shutdown")).status_code == 204
    assert [j["id"] for j in (await client.get("/scheduler/jobs")).json()] == ["before"]
    added = await client.post(
        "/scheduler/jobs",
        json={
            "id": "during",
            "func": RECORD,
            "kwargs": {"tag": "x"},
            "trigger": "interval",
            "hours": 1,
        },
    )
    assert added.status_code == 200, added.text
    assert (await client.get("/scheduler/jobs/during")).status_code == 200
    assert (await client.post("/scheduler/start")).status_code == 204
    assert (await client.get("/scheduler")).json()["state"] == "running"
    assert {j["id"] for j in (await client.get("/scheduler/jobs")).json()} == {"before", "during"}


# -- jobs -------------------------------------------------------------------------------


async def test_add_job_flat_form_returns_flask_apscheduler_fields(
    client: httpx.AsyncClient,
) -> None:
    job = await add(client, "poll", minutes=10)
    assert set(job) >= JOB_FIELDS | OUR_FIELDS
    assert job["trigger"] == "interval" and job["minutes"] == 10
    assert job["func"] == RECORD and job["kwargs"] == {"tag": "poll"}
    assert job["paused"] is False and job["broken"] is False
    listed = (await client.get("/scheduler/jobs")).json()
    assert [j["id"] for j in listed] == ["poll"]


async def test_add_job_nested_trigger_and_options(client: httpx.AsyncClient) -> None:
    job = await add(
        client,
        "nightly",
        trigger={"type": "cron", "hour": "3", "minute": 30},
        minutes=None,
        timezone="Europe/Paris",
        coalesce=False,
        max_instances=2,
        paused=True,
    )
    assert (job["trigger"], job["hour"], job["minute"]) == ("cron", "3", "30")
    assert job["timezone"] == "Europe/Paris"
    assert job["coalesce"] is False and job["max_instances"] == 2
    assert job["paused"] is True and job["next_run_time"] is None


async def test_add_job_errors(client: httpx.AsyncClient) -> None:
    await add(client, "dup")
    body = assert_error(
        await client.post("/scheduler/jobs", json={"id": "dup", "func": RECORD}), 409
    )
    assert "dup" in body["error_message"]
    body = assert_error(await client.post("/scheduler/jobs", json={"func": "os:system"}), 422)
    assert body["errors"][0]["field"] == "func" and RECORD in body["errors"][0]["message"]
    body = assert_error(await client.post("/scheduler/jobs", json={"func": "myjobs.poll"}), 422)
    assert body["errors"] == [{"field": "func", "message": "use module:function, e.g. myjobs:poll"}]
    body = assert_error(
        await client.post("/scheduler/jobs", json={"func": RECORD, "color": "red"}), 422
    )
    assert body["errors"] == [{"field": "color", "message": "unknown field"}]
    assert_error(await client.post("/scheduler/jobs"), 422)  # no body
    assert_error(
        await client.post(
            "/scheduler/jobs", content=b"{nope", headers={"Content-Type": "application/json"}
        ),
        400,
    )
    assert_error(
        await client.post(
            "/scheduler/jobs",
            content=b"func=x",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        415,
    )
    assert [j["id"] for j in (await client.get("/scheduler/jobs")).json()] == ["dup"]


@pytest.mark.parametrize(
    "trigger",
    [
        {"trigger": "cron", "day": 31, "month": 2},
        {"trigger": {"type": "cron", "day": "30", "month": "feb"}},
        {"trigger": "cron", "day": 29, "month": 2, "year": "2025-2027"},
        {"trigger": "cron", "hour": 3, "end_date": "2020-01-01T00:00:00Z"},
    ],
)
async def test_a_cron_that_never_fires_is_refused(
    client: httpx.AsyncClient, trigger: dict[str, Any]
) -> None:
    body = {"id": "never", "func": RECORD, "kwargs": {"tag": "x"}} | trigger
    errors = assert_error(await client.post("/scheduler/jobs", json=body), 422)["errors"]
    assert [e["field"] for e in errors] == ["trigger"] and "no fire time" in errors[0]["message"]
    assert (await client.get("/scheduler/jobs")).json() == []
    await add(client, "leap", trigger="cron", day=29, month=2, minutes=None)
    changed = await client.patch("/scheduler/jobs/leap", json=body | {"id": "leap"})
    assert_error(changed, 422)


async def test_healthz_right_after_start_says_the_same_of_this_process_twice(
    make_app: Callable[..., Flask],
) -> None:
    # No heartbeat before the probe: the row still holds what the process said at join.
    app = make_app(
        job_modules="tests.jobs,tests.jobs_declared", heartbeat_interval=60, process_timeout=120
    )
    async with serve(app) as client:
        client.headers.update(AUTH)
        answers = [
            (await client.get("/healthz")).json()["scheduler"],
            (await client.get("/scheduler")).json(),
        ]
    for answer in answers:
        me = answer["process"]
        (listed,) = [p for p in answer["processes"] if p["id"] == me["id"]]
        assert me["state"] == "running" and me["jobs"] == 1
        for key in ("state", "jobs", "broken_jobs", "runs_in_progress", "results_pending"):
            assert listed[key] == me[key], key


async def test_body_without_content_type_is_read_as_json(client: httpx.AsyncClient) -> None:
    # Flask-APScheduler parsed bodies with force=True; scripts may not set the header.
    response = await client.post(
        "/scheduler/jobs",
        content=b'{"id": "raw", "func": "tests.jobs:record", '
        b'"kwargs": {"tag": "raw"}, "trigger": "interval", "hours": 1}',
    )
    assert response.status_code == 200, response.text


async def test_body_over_the_cap_is_413(make_app: Callable[..., Flask]) -> None:
    async with serve(make_app(max_body_bytes=1000)) as client:
        body = {"func": RECORD, "kwargs": {"tag": "x" * 2000}}
        response = await client.post("/scheduler/jobs", json=body, headers=AUTH)
        assert_error(response, 413)
        assert (await client.get("/scheduler/jobs", headers=AUTH)).json() == []


async def test_get_job(client: httpx.AsyncClient) -> None:
    await add(client, "g")
    response = await client.get("/scheduler/jobs/g")
    assert response.status_code == 200 and response.json()["id"] == "g"
    assert_error(await client.get("/scheduler/jobs/missing"), 404)


async def test_update_job(client: httpx.AsyncClient) -> None:
    await add(client, "u")
    response = await client.patch(
        "/scheduler/jobs/u", json={"trigger": "cron", "hour": "4", "name": "renamed"}
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert (job["trigger"], job["hour"], job["name"]) == ("cron", "4", "renamed")
    assert_error(await client.patch("/scheduler/jobs/missing", json={"name": "x"}), 404)
    assert_error(await client.patch("/scheduler/jobs/u", json={"minutes": 5}), 422)
    assert_error(await client.patch("/scheduler/jobs/u", json={"id": "other"}), 422)
    assert_error(await client.patch("/scheduler/jobs/u", json={"func": "os:system"}), 422)
    assert_error(
        await client.patch(
            "/scheduler/jobs/u", content=b"<xml/>", headers={"Content-Type": "text/xml"}
        ),
        415,
    )


async def test_delete_job(client: httpx.AsyncClient) -> None:
    await add(client, "d")
    response = await client.delete("/scheduler/jobs/d")
    assert response.status_code == 204 and response.content == b""
    assert_error(await client.delete("/scheduler/jobs/d"), 404)
    assert_error(await client.get("/scheduler/jobs/d"), 404)


async def test_pause_and_resume_job(client: httpx.AsyncClient) -> None:
    await add(client, "p")
    paused = await client.post("/scheduler/jobs/p/pause")
    assert paused.status_code == 200
    assert paused.json()["paused"] is True and paused.json()["next_run_time"] is None
    resumed = await client.post("/scheduler/jobs/p/resume")
    assert resumed.status_code == 200
    assert resumed.json()["paused"] is False and resumed.json()["next_run_time"]
    assert_error(await client.post("/scheduler/jobs/missing/pause"), 404)
    assert_error(await client.post("/scheduler/jobs/missing/resume"), 404)


# -- run now and history ----------------------------------------------------------------------


async def test_run_fires_coroutine_on_the_server_loop_and_records_it(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await add(client, "now", hours=1, minutes=None)
    response = await client.post("/scheduler/jobs/now/run")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "now" and set(body) >= JOB_FIELDS
    run = body["run"]
    assert run["job_id"] == "now" and run["status"] == "running"
    [entry] = await jobs.wait_fired("now")
    assert entry["loop"] == id(asyncio.get_running_loop())  # in-process: the server loop is ours
    [done] = await ended_runs(client, runtime, "now")
    assert (done["id"], done["status"]) == (run["id"], "success") and done["ended_at"]
    everything = (await client.get("/scheduler/runs")).json()
    assert run["id"] in [r["id"] for r in everything["runs"]]
    assert_error(await client.post("/scheduler/jobs/missing/run"), 404)


async def test_run_does_not_wait_for_the_job(client: httpx.AsyncClient, runtime: Runtime) -> None:
    gate = jobs.gate("slow")
    await add(client, "slow", func="tests.jobs:hold", kwargs={"tag": "slow"})
    response = await client.post("/scheduler/jobs/slow/run")
    assert response.status_code == 200
    await asyncio.wait_for(gate.started.wait(), 5)
    # Still running while the request has answered; a second run exceeds max_instances.
    assert_error(await client.post("/scheduler/jobs/slow/run"), 409)
    gate.release.set()
    [done] = await ended_runs(client, runtime, "slow")
    assert (done["id"], done["status"]) == (response.json()["run"]["id"], "success")


async def test_run_history_paging_and_filter(client: httpx.AsyncClient, runtime: Runtime) -> None:
    await add(client, "ok")
    await add(client, "bad", func="tests.jobs:fail", kwargs={"message": "boom"})
    started = []  # run ids, oldest first; each run ends before the next is asked for
    for job_id in ("ok", "ok", "ok", "bad"):
        response = await client.post(f"/scheduler/jobs/{job_id}/run")
        assert response.status_code == 200, response.text
        started.append(response.json()["run"]["id"])
        await settled(runtime)
    [failed] = await ended_runs(client, runtime, "bad")
    assert failed["status"] == "error" and failed["error_type"].endswith("ValueError")

    newest_first = started[::-1]
    page = (await client.get("/scheduler/runs", params={"limit": 2, "offset": 1})).json()
    assert (page["total"], page["limit"], page["offset"]) == (4, 2, 1)
    assert [r["id"] for r in page["runs"]] == newest_first[1:3]
    assert [r["job_id"] for r in page["runs"]] == ["ok", "ok"]
    last = (await client.get("/scheduler/runs", params={"limit": 2, "offset": 2})).json()
    assert [r["id"] for r in last["runs"]] == newest_first[2:4]
    errors = (await client.get("/scheduler/runs", params={"status": "error"})).json()
    assert [r["id"] for r in errors["runs"]] == [started[3]]
    own = (await client.get("/scheduler/jobs/ok/runs", params={"status": "success"})).json()
    assert own["total"] == 3
    assert [r["id"] for r in own["runs"]] == newest_first[1:]
    for bad in ({"status": "exploded"}, {"limit": 0}, {"limit": "x"}, {"offset": -1}, {"page": 2}):
        assert_error(await client.get("/scheduler/runs", params=bad), 422)
        assert_error(await client.get("/scheduler/jobs/ok/runs", params=bad), 422)


# -- openapi, auth, routing errors ----------------------------------------------------------


async def test_openapi_document_lists_every_route_served(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    async with serve(app) as client:
        response = await client.get("/openapi.json", headers=AUTH)
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    assert RECORD in doc["components"]["schemas"]["JobCreate"]["properties"]["func"]["enum"]
    assert documented_routes(doc) == served_api_routes(app)


def management_requests(app: Flask) -> list[tuple[str, str]]:
    requests = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in OPEN_ENDPOINTS or rule.endpoint == "static":
            continue
        if rule.endpoint.startswith("dashboard."):
            continue  # logged in with a session, not a bearer token: test_dashboard_http.py
        path = rule.rule.replace("<job_id>", "some-job")
        requests.extend((method, path) for method in sorted(rule.methods or ()))
    return requests


async def test_every_management_route_needs_the_token(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    requests = management_requests(app)
    assert len(requests) >= 16 * 2  # each route with HEAD/OPTIONS too
    async with serve(app) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic eDp5"},
            {"Authorization": "Bearer"},
        ):
            for method, path in requests:
                response = await client.request(method, path, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                if method != "HEAD":
                    assert "ASYNCAPP_API_TOKEN" in response.json()["error_message"]
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/scheduler/jobs")).json()["error_message"]
        assert (await client.get("/scheduler/jobs", headers=AUTH)).status_code == 200


async def test_without_a_configured_token_the_api_is_off(make_app: Callable[..., Flask]) -> None:
    app = make_app(api_token="")
    async with serve(app) as client:
        for method, path in management_requests(app):
            response = await client.request(method, path, headers=AUTH)
            assert response.status_code == 403, (method, path)
        body = (await client.get("/scheduler")).json()
        assert "ASYNCAPP_API_TOKEN" in body["error_message"]
        assert (await client.get("/healthz")).status_code == 200


def allowed(response: httpx.Response) -> set[str]:
    return set(response.headers["Allow"].replace(" ", "").split(","))


async def test_routing_errors_under_the_prefix_are_json(client: httpx.AsyncClient) -> None:
    for path in ("/scheduler/nothing/here", "/scheduler/jobs/j1/nothing", "/schedulerx"):
        response = await client.get(path)
        if path == "/schedulerx":  # not under the prefix: Flask's own page
            assert response.status_code == 404
            assert response.headers["content-type"].startswith("text/html")
        else:
            assert assert_error(response, 404)["error_message"].startswith("The requested URL")
    for method, path, methods in [
        ("PUT", "/scheduler/jobs", {"GET", "HEAD", "OPTIONS", "POST"}),
        ("POST", "/scheduler/jobs/j1", {"GET", "HEAD", "OPTIONS", "PATCH", "DELETE"}),
        ("GET", "/scheduler/pause", {"OPTIONS", "POST"}),
        ("DELETE", "/openapi.json", {"GET", "HEAD", "OPTIONS"}),
    ]:
        response = await client.request(method, path)
        assert_error(response, 405)
        assert allowed(response) == methods, (method, path)
    # Outside the API, Flask's own pages are untouched.
    other = await client.get("/not-the-api")
    assert other.status_code == 404 and "text/html" in other.headers["content-type"]


async def test_every_response_says_nosniff(make_app: Callable[..., Flask]) -> None:
    """Browsers must not guess a type: JSON errors, Flask's pages and the adapter's 413 too."""

    async def oversized() -> AsyncIterator[bytes]:
        yield b"x" * 1001

    async with serve(make_app(max_body_bytes=1000)) as client:
        job = {"id": "n", "func": RECORD, "kwargs": {"tag": "n"}, "trigger": "interval", "hours": 1}
        responses = [
            await client.get("/healthz"),
            await client.get("/readyz"),
            await client.get("/scheduler/jobs"),  # 401
            await client.post("/scheduler/jobs", json=job, headers=AUTH),  # 200
            await client.post("/scheduler/pause", headers=AUTH),  # 204
            await client.get("/scheduler/jobs/missing", headers=AUTH),  # 404, JSON
            await client.put("/scheduler/jobs", headers=AUTH),  # 405, JSON
            await client.get("/not-the-api"),  # Flask's HTML 404
            await client.get("/openapi.json", headers=AUTH),
            await client.get("/metrics", headers=AUTH),
            await client.post("/scheduler/jobs", content=b"x" * 1001, headers=AUTH),  # 413
            await client.post("/scheduler/jobs", content=oversized(), headers=AUTH),  # 413
        ]
    statuses = [response.status_code for response in responses]
    assert statuses == [200, 200, 401, 200, 204, 404, 405, 404, 200, 200, 413, 413]
    for response in responses:
        assert response.headers.get_list("X-Content-Type-Options") == ["nosniff"], response


async def test_custom_prefix(make_app: Callable[..., Flask]) -> None:
    async with serve(make_app(api_prefix="/ops/jobs-api")) as client:
        assert (await client.get("/ops/jobs-api/jobs", headers=AUTH)).status_code == 200
        assert (await client.get("/scheduler/jobs", headers=AUTH)).status_code == 404
        doc = (await client.get("/openapi.json", headers=AUTH)).json()
        assert "/ops/jobs-api/jobs/{job_id}" in doc["paths"]
