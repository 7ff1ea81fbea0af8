"""Hostile and random input: a fixed battery (ASGI) and schemathesis (real Hypercorn).

Every bad request must get the 4xx JSON error docs/api.md gives it, create or
change nothing, and leave the server serving; random requests generated from
``/openapi.json`` must never get a 5xx and every response must match the document.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import AUTH, Server

RECORD = "tests.jobs:record"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def client(asgi_client: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    asgi_client.headers.update(AUTH)
    yield asgi_client


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def job(**fields: Any) -> dict[str, Any]:
    return {
        "id": "bad",
        "func": RECORD,
        "kwargs": {"tag": "t"},
        "trigger": "interval",
        "minutes": 1,
    } | fields


# Each hostile body, and the status docs/api.md gives it: 400 not JSON (also NaN, nesting
# too deep, a number too long to parse), 413 too large, 415 not sent as JSON, 422 invalid.
BAD_BODIES: list[tuple[str, dict[str, Any], int]] = [
    ("os:system", {"json": job(func="os:system", args=["touch /tmp/pwned"])}, 422),
    ("builtins:eval", {"json": job(func="builtins:eval", args=["1+1"])}, 422),
    ("subprocess:run", {"json": job(func="subprocess:run", args=[["true"]])}, 422),
    ("cron hour 25", {"json": job(trigger="cron", minutes=None, hour="25")}, 422),
    ("cron step 0", {"json": job(trigger="cron", minutes=None, minute="*/0")}, 422),
    ("cron weekday", {"json": job(trigger="cron", minutes=None, day_of_week="funday")}, 422),
    ("cron garbage", {"json": job(trigger="cron", minutes=None, second="a-b-c")}, 422),
    ("time zone", {"json": job(timezone="Atlantis/Underwater")}, 422),
    ("interval 0", {"json": job(minutes=0)}, 422),
    ("interval negative", {"json": job(minutes=-5)}, 422),
    (
        "interval NaN",
        {
            "content": b'{"func": "tests.jobs:record", "trigger": "interval", "minutes": NaN}',
            "headers": JSON,
        },
        400,
    ),
    ("date", {"json": job(trigger="date", minutes=None, run_date="31/12/2030")}, 422),
    ("10 MB body", {"content": b'{"func": "' + b"x" * 10_000_000 + b'"}', "headers": JSON}, 413),
    ("nested 100,000 deep", {"content": nested(100_000), "headers": JSON}, 400),
    (
        "nested args",
        {
            "content": b'{"func": "tests.jobs:record", "args": ' + nested(500) + b"}",
            "headers": JSON,
        },
        422,
    ),
    (
        "wrong content type",
        {"content": json.dumps(job()).encode(), "headers": {"Content-Type": "text/plain"}},
        415,
    ),
    ("form body", {"data": {"func": RECORD}}, 415),
    ("not an object", {"json": [job()]}, 422),
    ("bad utf-8", {"content": b'{"func": "\xff\xfe"}', "headers": JSON}, 400),
    (
        "lone surrogate id",
        {"content": b'{"id": "\\ud800", "func": "tests.jobs:record"}', "headers": JSON},
        422,
    ),
    ("NUL in id", {"json": job(id="a\x00b")}, 422),
    ("slash in id", {"json": job(id="a/b")}, 422),
    ("very long id", {"json": job(id="x" * 10_000)}, 422),
    (
        "huge number",
        {
            "content": b'{"func": "tests.jobs:record", "max_instances": 1' + b"0" * 5000 + b"}",
            "headers": JSON,
        },
        400,
    ),
    ("unknown field", {"json": job(jobstore="default", executor="processpool")}, 422),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("label", "request_kwargs", "status"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
async def test_bad_job_bodies_get_their_status_and_change_nothing(
    client: httpx.AsyncClient, label: str, request_kwargs: dict[str, Any], status: int
) -> None:
    response = await client.post("/scheduler/jobs", **request_kwargs)
    assert response.status_code == status, (label, response.text[:300])
    body = response.json()
    assert body["error_message"] and isinstance(body["errors"], list)
    assert "Traceback" not in response.text
    assert (await client.get("/scheduler/jobs")).json() == []
    assert (await client.get("/scheduler")).status_code == 200  # still serving

    # The same body as a change of an existing job (the id "bad" its bodies name).
    created = await client.post("/scheduler/jobs", json=job())
    assert created.status_code == 200, created.text
    before = (await client.get("/scheduler/jobs/bad")).json()
    patched = await client.patch("/scheduler/jobs/bad", **request_kwargs)
    assert patched.status_code == status, (label, patched.text[:300])
    assert "Traceback" not in patched.text
    assert (await client.get("/scheduler/jobs/bad")).json() == before
    assert [j["id"] for j in (await client.get("/scheduler/jobs")).json()] == ["bad"]


# Odd ids in paths, and what GET .../runs answers for each: the run history of an id a
# job could have is an empty page (a removed job keeps its history); ids no job can have
# (too long, NUL) are 404, as is an id whose %2F makes a path no route has.  Every other
# route answers 404: no job has any of these ids.
ODD_IDS = {
    "x" * 20_000: 404,
    "%00": 404,
    "%ED%A0%80": 200,
    "%F0%9F%92%A5": 200,
    "..%2F..%2Fetc": 404,
    "<script>": 200,
    "' OR 1=1 --": 200,
}


@pytest.mark.timeout(30)
async def test_odd_ids_in_paths(client: httpx.AsyncClient) -> None:
    for path_id, runs_status in ODD_IDS.items():
        for method, suffix in [
            ("GET", ""),
            ("DELETE", ""),
            ("POST", "/run"),
            ("POST", "/pause"),
            ("GET", "/runs"),
        ]:
            response = await client.request(method, f"/scheduler/jobs/{path_id}{suffix}")
            status = runs_status if suffix == "/runs" else 404
            assert response.status_code == status, (path_id, method, suffix, response.text)
            if status == 404:
                assert len(response.content) < 2000  # a 20 kB id is not echoed back
            else:
                assert response.json()["runs"] == []
    # A valid unicode id round-trips.
    created = await client.post("/scheduler/jobs", json=job(id="zürich-🌍"))
    assert created.status_code == 200, created.text
    fetched = await client.get("/scheduler/jobs/z%C3%BCrich-%F0%9F%8C%8D")
    assert fetched.status_code == 200 and fetched.json()["id"] == "zürich-🌍"


# -- schemathesis over a real Hypercorn ---------------------------------------------------

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Only for bodies: for query strings schemathesis reports false positives when the
# HTTP client drops the invalid part (a None-valued parameter) before sending.
BODY_CHECKS = [*CHECKS, negative_data_rejection]
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}


# Scheduler-wide switches go last and are undone after each operation, so the
# job routes are fuzzed against a running scheduler.
SWITCHES = ("/pause", "/resume", "/start", "/shutdown")


@pytest.mark.timeout(120)
def test_fuzz_every_operation_from_openapi(hypercorn_server: Callable[..., Server]) -> None:
    server = hypercorn_server(ASYNCAPP_MAX_BODY_BYTES="65536", ASYNCAPP_LOG_LEVEL="WARNING")
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=AUTH)
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15  # every route but /openapi.json itself
    operations.sort(key=lambda op: op.path.endswith(SWITCHES))
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
        assert client.post("/scheduler/jobs", json=FUZZ_JOB).status_code == 200
        try:
            for operation in operations:
                for mode, examples in EXAMPLES.items():
                    fuzz(operation, mode, examples)
                assert client.post("/scheduler/start").status_code == 204
                assert client.post("/scheduler/resume").status_code == 204
        except BaseException:
            print(server.output()[-20_000:])  # the server's side of the failure
            raise
        assert client.get("/scheduler").status_code == 200
    assert time.monotonic() - started < 90


def fuzz(operation: schemathesis.APIOperation, mode: GenerationMode, examples: int) -> None:
    complete = (operation.method.upper(), operation.path) in COMPLETE

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case: schemathesis.Case) -> None:
        checks = BODY_CHECKS if operation.body else CHECKS
        if complete:
            # The document says all these routes check: valid data must be accepted,
            # for a job that exists (a random id is a 404 that proves nothing).
            checks = [*checks, positive_data_acceptance]
            if case.path_parameters and "job_id" in case.path_parameters:
                case.path_parameters["job_id"] = FUZZ_JOB["id"]
        case.call_and_validate(headers=AUTH, checks=checks, timeout=10)

    check()


# Operations whose document states every rule the server checks (no state beyond the
# job's existence, no cross-field rules): positive data must be accepted there.
COMPLETE = {
    ("GET", "/scheduler/jobs/{job_id}/upcoming"),
    ("GET", "/scheduler/jobs/{job_id}/runs"),
    ("GET", "/scheduler/jobs/{job_id}/changes"),
    ("POST", "/scheduler/jobs/{job_id}/pause"),
    ("POST", "/scheduler/shutdown"),
    ("GET", "/scheduler/runs"),
}
FUZZ_JOB = {"id": "fuzzed", "func": RECORD, "kwargs": {"tag": "f"}, "trigger": "cron", "hour": 3}


def document_accepts(document: dict[str, Any], schema: dict[str, Any], value: Any) -> bool:
    """Whether ``value`` is valid for ``schema`` (which may refer into ``document``)."""
    root = {**schema, "components": document["components"]}
    return bool(jsonschema_rs.Draft202012Validator(root, validate_formats=True).is_valid(value))


def parameter_schema(document: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    (found,) = [p for p in document["paths"][path]["get"]["parameters"] if p["name"] == name]
    return found["schema"]  # type: ignore[no-any-return]


def body_schema(document: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    return document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]  # type: ignore[no-any-return]


@pytest.mark.timeout(60)
def test_the_document_and_the_server_agree_where_they_drifted(
    hypercorn_server: Callable[..., Server],
) -> None:
    server = hypercorn_server()
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
        document = client.get("/openapi.json").json()
        assert client.post("/scheduler/jobs", json=FUZZ_JOB).status_code == 200
        upcoming = "/scheduler/jobs/{job_id}/upcoming"
        after = parameter_schema(document, upcoming, "after")
        for value in [
            "1899-12-31T23:59:59Z",
            "9001-01-01T00:00:00Z",
            "0001-01-01T00:00:00+00:00",
            "9999-12-31T23:59:59-05:00",
            "1900-01-01T00:00:00Z",
            "2027-03-14T02:30:00.5-04:00",
            "9000-06-01T00:00:00+02:00",
        ]:
            answer = client.get("/scheduler/jobs/fuzzed/upcoming", params={"after": value})
            assert answer.status_code in (200, 422), answer.text
            assert document_accepts(document, after, value) == (answer.status_code == 200), value
        jobs = body_schema(document, "/scheduler/jobs", "post")
        units = dict.fromkeys(["weeks", "days", "hours", "minutes", "seconds"])
        for body in [
            {"func": RECORD, "trigger": {"type": "interval", **units}},
            {"func": RECORD, "trigger": {"type": "interval"}},
            {"func": RECORD, "trigger": "interval", **units},
            {"func": RECORD, "trigger": {"type": "interval", **units}, "minutes": 5},
            {"func": RECORD, "trigger": {"type": "interval", **units | {"hours": 1}}},
        ]:
            answer = client.post("/scheduler/jobs", json={**body, "kwargs": {"tag": "x"}})
            assert answer.status_code in (200, 422), answer.text
            accepted = answer.status_code == 200
            assert document_accepts(document, jobs, {**body, "kwargs": {}}) == accepted, body
        # Optional bodies: none at all is fine; one that is sent must be a JSON object.
        for path in ("/scheduler/jobs/fuzzed/pause", "/scheduler/shutdown"):
            for blank in (b" ", b"\n", b"\t \r\n"):
                answer = client.post(path, content=blank, headers=JSON)
                assert answer.status_code in (400, 422), (path, blank, answer.text)
            assert client.post(path).status_code in (200, 204)
            assert client.post("/scheduler/start").status_code == 204
