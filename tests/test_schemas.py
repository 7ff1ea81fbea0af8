"""Request schemas, their validation and the OpenAPI document, without a running app."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from asyncapp import create_app
from asyncapp.errors import InvalidJob
from asyncapp.faces.api import OPERATIONS
from asyncapp.faces.openapi import build_document
from asyncapp.model.triggers import build_trigger
from asyncapp.service.schemas import JobCreate, check_json_value
from asyncapp.service.validation import (
    field_errors,
    parse_job_create,
    parse_job_update,
    parse_run_query,
    parse_shutdown,
)
from tests.conftest import app_config, documented_routes, served_api_routes

pytestmark = pytest.mark.timeout(10)


def errors_of(data: Any, parse: Any = parse_job_create) -> list[dict[str, str]]:
    with pytest.raises(InvalidJob) as caught:
        parse(data)
    return caught.value.errors


def fields_of(data: Any) -> set[str]:
    return {e["field"] for e in errors_of(data)}


def test_flat_interval_becomes_a_normalized_spec() -> None:
    spec = parse_job_create(
        {
            "id": "poll",
            "func": "mod:poll",
            "trigger": "interval",
            "minutes": 10,
            "kwargs": {"url": "x"},
        }
    )
    assert spec["id"] == "poll"
    assert spec["name"] == "poll"  # Flask-APScheduler names a job after its id
    assert spec["kwargs"] == {"url": "x"}
    assert spec["trigger"] == {
        "type": "interval",
        "weeks": 0,
        "days": 0,
        "hours": 0,
        "minutes": 10,
        "seconds": 0,
        "start_date": None,
        "end_date": None,
        "timezone": None,
        "jitter": None,
    }


def test_nested_trigger_form_is_accepted() -> None:
    spec = parse_job_create(
        {"func": "m:f", "trigger": {"type": "cron", "hour": "*/2", "minute": 5}}
    )
    assert spec["trigger"]["type"] == "cron"
    assert spec["trigger"]["hour"] == "*/2"
    assert spec["trigger"]["minute"] == "5"


def test_omitted_trigger_is_a_date_now_and_options_are_left_to_the_service() -> None:
    spec = parse_job_create({"func": "m:f"})
    assert spec["trigger"]["type"] == "date"
    assert spec["trigger"]["run_date"]
    assert "misfire_grace_time" not in spec and "coalesce" not in spec


def test_cron_with_time_zone_and_dates() -> None:
    spec = parse_job_create(
        {
            "func": "m:f",
            "trigger": "cron",
            "day_of_week": "mon-fri",
            "hour": 9,
            "timezone": "Europe/Paris",
            "start_date": "2030-01-01T00:00:00Z",
            "jitter": 5,
        }
    )
    assert spec["trigger"]["timezone"] == "Europe/Paris"
    assert spec["trigger"]["start_date"] == "2030-01-01T00:00:00+00:00"
    assert spec["trigger"]["jitter"] == 5


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"func": "m:f", "trigger": "cron", "hour": "99"}, "trigger.hour"),
        ({"func": "m:f", "trigger": "cron", "minute": "*/0"}, "trigger.minute"),
        ({"func": "m:f", "trigger": "cron", "day_of_week": "mon-xyz"}, "trigger.day_of_week"),
        ({"func": "m:f", "trigger": "cron", "hour": ""}, "hour"),
        ({"func": "m:f", "trigger": "interval"}, "trigger"),
        ({"func": "m:f", "trigger": "interval", "minutes": 0}, "trigger"),
        ({"func": "m:f", "trigger": "interval", "seconds": -1}, "seconds"),
        ({"func": "m:f", "trigger": "interval", "weeks": 1e300}, "trigger"),
        ({"func": "m:f", "trigger": "interval", "minutes": "10"}, "minutes"),
        ({"func": "m:f", "timezone": "Mars/Olympus"}, "timezone"),
        ({"func": "m:f", "timezone": "../../etc/passwd"}, "timezone"),
        ({"func": "m:f", "run_date": "tomorrow"}, "run_date"),
        ({"func": "m:f", "run_date": "0001-01-01T00:00:00"}, "run_date"),
        ({"func": "m:f", "trigger": "bogus"}, "trigger"),
        ({"func": "m:f", "trigger": "cron", "minutes": 3}, "minutes"),
        ({"func": "m:f", "trigger": "date", "hour": "3"}, "hour"),
        ({"func": "m:f", "jobstore": "default"}, "jobstore"),
        ({"func": "m:f", "trigger": {"type": "cron", "x": 1}}, "trigger.x"),
        ({"func": "os.system"}, "func"),
        ({"func": 5}, "func"),
        ({"func": "m:f", "id": "a/b"}, "id"),
        ({"func": "m:f", "id": "x" * 192}, "id"),
        ({"func": "m:f", "id": "\ud800"}, "id"),
        ({"func": "m:f", "max_instances": True}, "max_instances"),
        ({"func": "m:f", "max_instances": 0}, "max_instances"),
        ({"func": "m:f", "args": "not a list"}, "args"),
        ({"func": "m:f", "args": [float("nan")]}, "args"),
        ({"func": "m:f", "kwargs": {"k": "a\x00b"}}, "kwargs"),
        ({"func": "m:f", "name": "n\x00"}, "name"),
        (
            {
                "func": "m:f",
                "trigger": "interval",
                "seconds": 5,
                "start_date": "2030-01-02T00:00:00",
                "end_date": "2030-01-01T00:00:00",
            },
            "end_date",
        ),
    ],
)
def test_bad_fields_are_named(body: dict[str, Any], field: str) -> None:
    assert field in fields_of(body)


FUNC_FORM = "use module:function, e.g. myjobs:poll"
ID_FORM = (
    "must be printable text with a character other than '.' and spaces, "
    "without '/', '\\', control, zero-width or bidirectional characters"
)


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"func": "myjobs.poll"}, [{"field": "func", "message": FUNC_FORM}]),
        ({"func": "myjobs:"}, [{"field": "func", "message": FUNC_FORM}]),
        ({"func": "m:f", "id": "a/b"}, [{"field": "id", "message": ID_FORM}]),
        ({"func": "m:f", "id": "tab\there"}, [{"field": "id", "message": ID_FORM}]),
    ],
)
def test_a_value_not_in_the_accepted_form_is_told_the_form(
    body: dict[str, Any], errors: list[dict[str, str]]
) -> None:
    assert errors_of(body) == errors


def test_an_update_with_a_func_not_in_the_form_is_told_the_form() -> None:
    errors = errors_of({"func": "myjobs.poll"}, lambda d: parse_job_update("j", d))
    assert errors == [{"field": "func", "message": FUNC_FORM}]


def test_a_pattern_without_a_message_of_its_own_does_not_quote_the_pattern() -> None:
    class Coded(BaseModel):
        code: str = Field(pattern=r"^[A-Z]{3}$")

    with pytest.raises(ValidationError) as caught:
        Coded.model_validate({"code": "x"})
    assert field_errors(caught.value) == [
        {"field": "code", "message": "is not in the accepted form"}
    ]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            {"func": "m:f", "trigger": "interval", "minutes": 1, "hour": "3"},
            {"field": "hour", "message": "does not apply to an interval trigger"},
        ),
        (
            {"func": "m:f", "trigger": "cron", "minutes": 1},
            {"field": "minutes", "message": "does not apply to a cron trigger"},
        ),
        (
            {"func": "m:f", "trigger": "date", "minutes": 1},
            {"field": "minutes", "message": "does not apply to a date trigger"},
        ),
    ],
)
def test_a_field_of_another_trigger_type_is_named_with_its_article(
    body: dict[str, Any], error: dict[str, str]
) -> None:
    assert errors_of(body) == [error]


def test_the_core_names_an_unknown_trigger_field_with_its_article() -> None:
    with pytest.raises(InvalidJob) as caught:
        build_trigger({"type": "interval", "seconds": 5, "hour": "3"}, UTC)
    assert caught.value.errors == [
        {"field": "trigger.hour", "message": "unknown field for an interval trigger"}
    ]


def test_func_is_required_and_body_must_be_an_object() -> None:
    assert "func" in fields_of({})
    assert fields_of([1, 2]) == {"body"}
    assert fields_of(None) == {"body"}


def test_error_messages_do_not_echo_unknown_input() -> None:
    errors = errors_of({"func": "m:f", "secret_field": "s3cr3t-value"})
    assert errors == [{"field": "secret_field", "message": "unknown field"}]


def test_deep_json_is_rejected_without_recursion() -> None:
    deep: Any = 1
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ValueError, match="nested deeper"):
        check_json_value(deep)
    assert "args" in fields_of({"func": "m:f", "args": [deep]})


def test_update_returns_only_what_changes() -> None:
    assert parse_job_update("j", {"name": "new"}) == {"name": "new"}
    changes = parse_job_update("j", {"trigger": "interval", "seconds": 30})
    assert changes["trigger"]["seconds"] == 30
    assert parse_job_update("j", {"id": "j", "max_instances": 2}) == {"max_instances": 2}


def test_update_rules() -> None:
    errors = errors_of({"minutes": 5}, lambda d: parse_job_update("j", d))
    assert errors == [{"field": "minutes", "message": 'needs "trigger" in the same request'}]
    errors = errors_of({"id": "other"}, lambda d: parse_job_update("j", d))
    assert errors[0]["field"] == "id"


def test_run_query() -> None:
    query = parse_run_query({"status": "error", "limit": "10", "offset": "5"})
    assert (query.status, query.limit, query.offset) == ("error", 10, 5)
    assert parse_run_query({}).limit == 50
    for bad in (
        {"status": "exploded"},
        {"limit": "0"},
        {"limit": "abc"},
        {"offset": "-1"},
        {"page": "2"},
    ):
        with pytest.raises(InvalidJob):
            parse_run_query(bad)


def test_shutdown_accepts_flask_apscheduler_wait_strings() -> None:
    assert parse_shutdown({}) is True
    assert parse_shutdown({"wait": "False"}) is False
    assert parse_shutdown({"wait": False}) is False
    for bad in ({"wait": "maybe"}, None, []):
        with pytest.raises(InvalidJob):
            parse_shutdown(bad)


def test_openapi_document_comes_from_the_models() -> None:
    doc = build_document(OPERATIONS, prefix="/scheduler", version="1", functions=["m:f", "m:g"])
    assert doc["openapi"] == "3.1.0"
    schemas = doc["components"]["schemas"]
    assert schemas["JobCreate"]["additionalProperties"] is False
    assert schemas["JobCreate"]["properties"]["func"]["enum"] == ["m:f", "m:g"]
    assert set(schemas["JobCreate"]["properties"]) == set(JobCreate.model_fields)
    post = doc["paths"]["/scheduler/jobs"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobCreate"
    }
    assert {"200", "401", "403", "409", "413", "415", "422"} <= set(post["responses"])
    assert "404" in doc["paths"]["/scheduler/jobs/{job_id}"]["delete"]["responses"]
    params = doc["paths"]["/scheduler/runs"]["get"]["parameters"]
    assert {p["name"] for p in params} == {"status", "limit", "offset"}
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_the_document_describes_exactly_the_routes_flask_serves(db_url: str) -> None:
    app = create_app(app_config(db_url, api_prefix="/api"))  # routed, not started
    doc = build_document(OPERATIONS, prefix="/api", version="1", functions=[])
    served = served_api_routes(app)
    assert documented_routes(doc) == served
    assert len(served) == 19 and ("POST", "/api/jobs/{job_id}/run") in served
    assert ("GET", "/api/jobs/{job_id}/upcoming") in served
    assert ("GET", "/openapi.json") in served and ("GET", "/metrics") in served
    assert "enum" not in doc["components"]["schemas"]["JobCreate"]["properties"]["func"]
