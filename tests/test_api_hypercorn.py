"""The management API through a real Hypercorn process, over a socket."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import AUTH, TOKEN, Server, wait_until

pytestmark = pytest.mark.timeout(60)

WRONG = "wrong-token-that-must-not-be-logged"


def wait_run(client: httpx.Client, job_id: str) -> dict[str, object]:
    """The job's newest run once it ended: the server's rows, polled (another process)."""

    def ended() -> dict[str, object] | None:
        runs = client.get(f"/scheduler/jobs/{job_id}/runs").json()["runs"]
        return runs[0] if runs and runs[0]["status"] != "running" else None

    run: dict[str, object] = wait_until(ended, timeout=10, what=f"the run of {job_id} to end")
    return run


def test_jobs_run_and_history_over_a_socket(hypercorn_server: Callable[..., Server]) -> None:
    server = hypercorn_server()
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
        assert client.get("/scheduler").json()["state"] == "running"
        body = {
            "id": "net",
            "func": "tests.jobs:record",
            "kwargs": {"tag": "net"},
            "trigger": "interval",
            "hours": 1,
        }
        created = client.post("/scheduler/jobs", json=body)
        assert created.status_code == 200, created.text
        ran = client.post("/scheduler/jobs/net/run")
        assert ran.status_code == 200 and ran.json()["run"]["status"] == "running"
        assert wait_run(client, "net")["status"] == "success"
        assert client.post("/scheduler/jobs/net/pause").json()["paused"] is True
        assert client.delete("/scheduler/jobs/net").status_code == 204
        document = client.get("/openapi.json")
        assert document.json()["openapi"].startswith("3.1")
        assert document.headers["X-Content-Type-Options"] == "nosniff"


def test_auth_and_bad_input_over_a_socket(hypercorn_server: Callable[..., Server]) -> None:
    server = hypercorn_server(ASYNCAPP_MAX_BODY_BYTES="65536")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/scheduler/jobs").status_code == 401
        assert (
            client.get("/scheduler/jobs", headers={"Authorization": f"Bearer {WRONG}"}).status_code
            == 401
        )
        assert client.get("/healthz").status_code == 200
        client.headers.update(AUTH)

        huge = client.post(
            "/scheduler/jobs",
            content=b"x" * 10_000_000,
            headers={"Content-Type": "application/json"},
        )
        assert huge.status_code == 413
        deep = b"[" * 100_000 + b"]" * 100_000
        assert (
            client.post(
                "/scheduler/jobs",
                content=deep[:30000] + deep[-30000:],
                headers={"Content-Type": "application/json"},
            ).status_code
            == 400
        )
        assert (
            client.post(
                "/scheduler/jobs", content=b"a=b", headers={"Content-Type": "text/plain"}
            ).status_code
            == 415
        )
        evil = client.post(
            "/scheduler/jobs",
            json={"id": "evil", "func": "os:system", "args": ["touch /tmp/pwned"]},
        )
        assert evil.status_code == 422
        assert "tests.jobs:record" in evil.json()["error_message"]

        assert client.get("/scheduler").status_code == 200  # still serving
        assert client.get("/scheduler/jobs").json() == []
    assert server.stop() == 0
    # Neither the real token nor a guessed one reaches the logs.
    assert TOKEN not in server.output() and WRONG not in server.output()


def test_each_request_is_one_access_line_in_asyncapps_log_format(
    hypercorn_server: Callable[..., Server],
) -> None:
    server = hypercorn_server()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        answer = client.get("/healthz?probe=access")
        refused = client.get("/scheduler/jobs")
    line = server.wait_for('"GET /healthz?probe=access 1.1"')
    assert " INFO asyncapp.access: 127.0.0.1:" in line
    assert f'"GET /healthz?probe=access 1.1" 200 {len(answer.content)} ' in line
    assert line.rstrip().endswith("s")
    refused_line = server.wait_for('"GET /scheduler/jobs 1.1"')
    assert f" 401 {len(refused.content)} " in refused_line
    # Hypercorn's own access log stays off: one line per request, not two.
    assert server.stop() == 0 and server.ended.wait(10)
    assert server.output().count('"GET /healthz') == 1


def test_access_lines_follow_the_json_format_and_the_setting_turns_them_off(
    hypercorn_server: Callable[..., Server],
) -> None:
    as_json = hypercorn_server(ASYNCAPP_LOG_FORMAT="json")
    quiet = hypercorn_server(ASYNCAPP_ACCESS_LOG="false")
    for server in (as_json, quiet):
        assert httpx.get(f"{server.url}/healthz?probe=json", timeout=10).status_code == 200
    entry = json.loads(as_json.wait_for("/healthz?probe=json"))
    assert entry["logger"] == "asyncapp.access" and entry["level"] == "INFO"
    assert '"GET /healthz?probe=json 1.1" 200 ' in entry["message"]
    assert quiet.stop() == 0 and quiet.ended.wait(10)
    assert "/healthz?probe=json" not in quiet.output()
    assert "asyncapp.access" not in quiet.output()


#: Ids the API refuses (422), each for a reason of the id grammar in docs/api.md.
REFUSED_IDS = {
    "dot segment": ".",
    "dot-dot segment": "..",
    "only dots": "...",
    "blank": " ",
    "blank tab": "\t",
    "empty": "",
    "C0 control": "a\x1bb",
    "newline": "a\nb",
    "DEL": "a\x7fb",
    "C1 control (NEL)": "a\x85b",
    "right-to-left override": "invoice\u202efdp.exe",
    "left-to-right mark": "a\u200eb",
    "right-to-left mark": "a\u200fb",
    "bidi isolate": "a\u2066b\u2069",
    "line separator": "a\u2028b",
    "paragraph separator": "a\u2029b",
    "zero-width space": "a\u200bb",
    "slash": "a/b",
    "backslash": "a\\b",
    "too long": "x" * 192,
}
#: Ids the API takes, and that every route then reaches through an ordinary client.
ACCEPTED_IDS = ["a.b", ".hidden", "...x", "job 1", "ünïcode-日本", "100%", "q?x#y", "x" * 191]


def test_ids_outside_the_grammar_are_refused_over_a_socket(
    hypercorn_server: Callable[..., Server],
) -> None:
    server = hypercorn_server()
    body = {"func": "tests.jobs:record", "kwargs": {"tag": "t"}, "trigger": "interval", "hours": 1}
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
        for reason, job_id in REFUSED_IDS.items():
            response = client.post("/scheduler/jobs", json={"id": job_id, **body})
            assert response.status_code == 422, (reason, response.text)
            assert [error["field"] for error in response.json()["errors"]] == ["id"], reason
        assert client.get("/scheduler/jobs").json() == []
        for job_id in ACCEPTED_IDS:
            created = client.post("/scheduler/jobs", json={"id": job_id, **body})
            assert created.status_code == 200, (job_id, created.text)
            path = "/scheduler/jobs/" + quote(job_id, safe="")
            assert client.get(path).json()["id"] == job_id
            assert client.post(path + "/pause").json()["paused"] is True
            assert client.delete(path).status_code == 204, job_id
        assert client.get("/scheduler/jobs").json() == []


#: A line a client or a job tries to slip into the log.
FORGED = "2026-12-03 00:00:00,000 ERROR asyncapp.run: FORGED"
#: Ways to end a line: LF, CR LF, CR, NEL, the line and paragraph separators (URL-encoded).
BREAKS = ["%0A", "%0D%0A", "%0D", "%C2%85", "%E2%80%A8", "%E2%80%A9", "%0B", "%0C", "%1E"]
SECRET = "s3cr3t-value-that-must-not-be-logged"
SECRET_PARAMS = ["token", "api_key", "access_token", "Password", "client_secret", "auth", "key"]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_lines_cannot_be_forged_and_query_credentials_are_not_logged(
    hypercorn_server: Callable[..., Server], log_format: str
) -> None:
    server = hypercorn_server(ASYNCAPP_LOG_FORMAT=log_format)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for brk in BREAKS:
            assert client.get(f"/healthz/{brk}{quote(FORGED)}").status_code == 404
            assert client.get(f"/healthz?probe={brk}{quote(FORGED)}").status_code == 200
        client.headers.update(AUTH)
        job = {"func": "tests.jobs:fail", "trigger": "date"}
        for index, brk in enumerate(["\n", "\r\n", "\u2028", "\x85"]):
            body = {"id": f"forger{index}", "args": [f"boom{brk}{FORGED}"]} | job
            assert client.post("/scheduler/jobs", json=body).status_code == 200
            assert wait_run(client, f"forger{index}")["status"] == "error"
        for name in SECRET_PARAMS:
            client.get(f"/scheduler/jobs?{name}={SECRET}&page=1")
        answer = client.get("/healthz", params={"probe": "kept"})
        assert answer.status_code == 200
    assert server.stop() == 0 and server.ended.wait(10)
    output = server.output()
    # splitlines() breaks at every line boundary Unicode knows (NEL, U+2028...), as
    # strict log readers do: none may start a forged record.
    lines = output.splitlines()
    assert not [line for line in lines if line.lstrip().startswith(FORGED[:23])]
    forged = [line for line in lines if "FORGED" in line]
    assert len(forged) >= 2 * len(BREAKS) + 4  # they were logged, each on its own line
    if log_format == "json":
        for line in forged:
            entry = json.loads(line)
            assert entry["logger"].startswith("asyncapp")
    else:
        access = [line for line in forged if " INFO asyncapp.access: " in line]
        assert len(access) == 2 * len(BREAKS)
        assert any(f"/healthz/\\n{FORGED}" in line for line in access)
    # Credential-looking query parameters are redacted; the rest of the query stays.
    assert SECRET not in output
    for name in SECRET_PARAMS:
        assert f"{name}=[redacted]&page=1" in output, name
    assert "/healthz?probe=kept" in output
