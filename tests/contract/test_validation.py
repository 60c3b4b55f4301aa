"""Turning JSON Schema errors into {loc, msg, type} items, and strict JSON parsing."""

from __future__ import annotations

from typing import Any

import pytest

from app.contract.explanation import (
    EXPLANATION_BUDGET,
    MAX_MESSAGE_LENGTH,
    MAX_REPORTED_ERRORS,
    TOO_MANY_ERRORS,
    error_items,
)
from app.contract.validation import (
    CompiledSchema,
    RequestValidationError,
    depth_error,
    nests_deeper_than,
    parse_json_body,
    validator_for,
)

NULLABLE_NAME = {
    "type": "object",
    "properties": {"name": {"type": ["string", "null"], "pattern": "^[^\\x00]*$"}},
}
INPUTS = {
    "type": "object",
    "additionalProperties": {
        "type": "array",
        "items": {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"input_type": {"const": "task_run"}, "id": {"type": "string"}},
                    "required": ["id"],
                },
                {
                    "type": "object",
                    "properties": {
                        "input_type": {"const": "parameter"},
                        "name": {"type": "string"},
                    },
                    "required": ["name"],
                },
            ]
        },
    },
}
LABELS = {
    "anyOf": [
        {
            "type": "object",
            "additionalProperties": {
                "anyOf": [{"type": "boolean"}, {"type": "integer"}, {"type": "string"}]
            },
        },
        {"type": "null"},
    ]
}
CLOSED = {
    "type": "object",
    "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}


def items_for(schema: dict[str, Any], instance: Any) -> list[dict[str, Any]]:
    return error_items(validator_for(schema).iter_errors(instance), prefix=["body"])


def test_valid_instances_have_no_items() -> None:
    assert items_for(NULLABLE_NAME, {"name": None}) == []
    assert items_for(INPUTS, {"x": [{"input_type": "parameter", "name": "p"}]}) == []


def test_a_nullable_field_reports_both_types() -> None:
    assert items_for(NULLABLE_NAME, {"name": 5}) == [
        {"loc": ["body", "name"], "msg": "5 is not of type 'string', 'null'", "type": "type"}
    ]


def test_the_branch_the_value_meant_is_reported() -> None:
    instance = {"x": [{"input_type": "parameter", "name": 7}]}

    assert items_for(INPUTS, instance) == [
        {"loc": ["body", "x", 0, "name"], "msg": "7 is not of type 'string'", "type": "type"}
    ]


def test_a_value_of_no_allowed_type_lists_the_types() -> None:
    assert items_for(LABELS, {"a": [1]}) == [
        {
            "loc": ["body", "a"],
            "msg": "[1] is not of type 'boolean', 'integer', 'string'",
            "type": "type",
        }
    ]


def test_missing_and_extra_keys_get_one_item_each() -> None:
    assert items_for(CLOSED, {"c": 1, "d": 2}) == [
        {"loc": ["body", "a"], "msg": "Field required", "type": "missing"},
        {"loc": ["body", "b"], "msg": "Field required", "type": "missing"},
        {"loc": ["body", "c"], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"},
        {"loc": ["body", "d"], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"},
    ]


def test_long_messages_are_shortened() -> None:
    [item] = items_for({"type": "integer"}, "x" * 1000)

    assert len(item["msg"]) == MAX_MESSAGE_LENGTH
    assert item["msg"].endswith("…")


def test_validators_are_compiled_once_per_schema() -> None:
    schema = {"type": "string"}

    assert validator_for(schema) is validator_for(schema)
    assert validator_for(schema) is not validator_for({"type": "string"})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", None),
        (b'{"a": [1, 2.5, "\\u00e9", "\\ud83d\\ude00"]}', {"a": [1, 2.5, "é", "😀"]}),
        (b"123456789012345678901234567890", 123456789012345678901234567890),
    ],
)
def test_json_parsing_keeps_values_exact(raw: bytes, expected: Any) -> None:
    assert parse_json_body(raw, encoding="utf-8") == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"NaN", "NaN is not valid JSON"),
        (b"[Infinity]", "Infinity is not valid JSON"),
        (b"1e400", "too large"),
        (b'["\\udc00"]', "lone UTF-16 surrogate"),
        (b'{"a": 1', "Expecting"),
        (b"\xc3\x28", "not valid utf-8"),
    ],
)
def test_json_parsing_refuses_what_cannot_be_stored(raw: bytes, reason: str) -> None:
    with pytest.raises(RequestValidationError) as raised:
        parse_json_body(raw, encoding="utf-8")

    [item] = raised.value.errors
    assert item["type"] == "json_invalid"
    assert reason in item["ctx"]["error"]


def test_an_unknown_charset_is_a_json_error() -> None:
    with pytest.raises(RequestValidationError):
        parse_json_body(b"{}", encoding="no-such-charset")


@pytest.mark.parametrize(
    ("schema", "instance", "valid"),
    [
        ({"type": "string", "format": "uuid"}, "6b4fcd44-7f42-4d07-9a7c-5ac6a1f4c1b2", True),
        ({"type": "string", "format": "uuid"}, "6B4FCD44-7F42-4D07-9A7C-5AC6A1F4C1B2", True),
        ({"type": "string", "format": "uuid"}, "6b4fcd447f424d079a7c5ac6a1f4c1b2", False),
        # Python's jsonschema accepts these two; the contract's reading does not.
        ({"type": "string", "format": "uuid"}, "\uff16b4fcd44-7f42-4d07-9a7c-5ac6a1f4c1b2", False),
        ({"type": "string", "format": "uuid"}, "6b4fcd44-7f42-4d07-9a7c-5ac6a1f4c1b\n", False),
        ({"type": "string", "format": "date-time"}, "2020-01-01T00:00:00+02:00", True),
        ({"type": "string", "format": "date-time"}, "2020-01-01t00:00:00z", True),
        ({"type": "string", "format": "date-time"}, "2020-01-01T00:00:00", False),
        ({"type": "string", "format": "date-time"}, "2019-02-29T00:00:00Z", False),
        ({"type": "string", "format": "date-time"}, "2020-01-01T00:00:00Z\n", False),
        ({"type": "string", "pattern": "^[^\\x00]*$"}, "a\x00b", False),
        ({"type": "string", "pattern": "^[0-9]+$"}, "1\n", False),
        ({"type": "integer"}, 5.0, True),
        ({"type": "integer"}, True, False),
        ({"type": "integer"}, 123456789012345678901234567890, True),
    ],
)
def test_the_deciding_validator_reads_the_contract_strictly(
    schema: dict[str, Any], instance: Any, valid: bool
) -> None:
    errors = CompiledSchema(schema).errors(instance, prefix=["body"])

    assert (errors == []) is valid
    for item in errors:
        assert item["loc"][0] == "body"
        assert item["type"] in ("format", "pattern", "type")


TAGS = {
    "type": "object",
    "properties": {"tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2000}},
}


def test_an_explanation_lists_fifty_problems_and_counts_the_rest() -> None:
    errors = CompiledSchema(TAGS).errors({"tags": [1] * 900}, prefix=["body"])

    assert len(errors) == MAX_REPORTED_ERRORS + 1
    assert errors[:2] == [
        {"loc": ["body", "tags", 0], "msg": "1 is not of type 'string'", "type": "type"},
        {"loc": ["body", "tags", 1], "msg": "1 is not of type 'string'", "type": "type"},
    ]
    assert errors[-1] == {
        "loc": ["body"],
        "msg": "850 more error(s) not listed",
        "type": TOO_MANY_ERRORS,
    }


def test_an_explanation_stops_when_its_budget_is_spent() -> None:
    tags = [1] * (EXPLANATION_BUDGET + 500)

    errors = CompiledSchema(TAGS).errors({"tags": tags}, prefix=["body"])

    assert len(errors) == MAX_REPORTED_ERRORS + 1
    assert errors[-1]["type"] == TOO_MANY_ERRORS
    assert errors[-1]["msg"] == (
        f"at least {EXPLANATION_BUDGET - MAX_REPORTED_ERRORS} more error(s) not listed;"
        " the rest was not examined"
    )


def test_valid_members_past_the_budget_still_give_the_first_problem() -> None:
    tags = ["a"] * (EXPLANATION_BUDGET + 10) + [1]

    errors = CompiledSchema(TAGS).errors({"tags": tags}, prefix=["body"])

    assert errors[0]["loc"] == ["body", "tags", EXPLANATION_BUDGET + 10]
    assert errors[-1]["type"] == TOO_MANY_ERRORS


def test_a_list_over_its_size_limit_is_reported_without_its_members() -> None:
    schema = {"type": "array", "items": {"type": "string"}, "maxItems": 3}

    assert CompiledSchema(schema).errors([1] * 30_000, prefix=["body"]) == [
        {"loc": ["body"], "msg": "30000 items, more than the 3 allowed", "type": "maxItems"}
    ]


@pytest.mark.parametrize(
    ("value", "deepest"),
    [(1, 0), ([], 1), ({"a": [1]}, 2), ([[], [[{}]]], 4), ({"a": 1, "b": {"c": {"d": []}}}, 4)],
)
def test_nesting_depth_is_counted_in_levels_of_containers(value: Any, deepest: int) -> None:
    assert not nests_deeper_than(value, deepest)
    assert deepest == 0 or nests_deeper_than(value, deepest - 1)


def test_a_body_deeper_than_its_limit_is_refused_before_it_is_validated() -> None:
    raw = b"[" * 65 + b"]" * 65

    with pytest.raises(RequestValidationError) as raised:
        parse_json_body(raw, encoding="utf-8", max_depth=64)

    assert raised.value.errors == [depth_error(64)]
    assert parse_json_body(b"[" * 64 + b"]" * 64, encoding="utf-8", max_depth=64) is not None


def test_a_body_deeper_than_the_parser_goes_is_a_depth_error() -> None:
    raw = b"[" * 100_000 + b"]" * 100_000

    with pytest.raises(RequestValidationError) as raised:
        parse_json_body(raw, encoding="utf-8", max_depth=64)

    assert raised.value.errors == [depth_error(64)]
    assert raised.value.request_body is None
