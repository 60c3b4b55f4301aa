"""Explaining why a value does not match its schema: {loc, msg, type} items, with bounded work.

Python's jsonschema explains a rejection well (its errors keep the alternatives an `anyOf`
failed on), but it is slow, and a small body can hold a great many problems: 30,000 wrong
tags are a 60 KB body. So an explanation lists at most MAX_REPORTED_ERRORS problems and then
says how many more there are, and the members of arrays and objects it examines are counted
against EXPLANATION_BUDGET; when that is spent it stops and says that there are more. An array
or object over its `maxItems` or `maxProperties` is reported as too large, without examining
its members. Every step is linear in what it examines.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError
from jsonschema.validators import extend

# Checks `uuid` and (with rfc3339-validator installed) `date-time`, unlike Draft 4.
FORMAT_CHECKER = Draft202012Validator.FORMAT_CHECKER
MAX_MESSAGE_LENGTH = 300
MAX_REPORTED_ERRORS = 50
# Members of arrays and objects one explanation may examine: about a tenth of a second of work
# at most (a member matched against four alternatives of an `anyOf` takes ~70 us).
EXPLANATION_BUDGET = 1_000
TOO_MANY_ERRORS = "too_many_errors"
# The vendor keyword of a schema that words its own rejections: keyword -> message.
MESSAGES_KEYWORD = "x-messages"

Item = dict[str, Any]


class _BudgetSpent(Exception):
    """The explanation examined as many members as it may."""


@dataclass
class _Budget:
    remaining: int

    def spend(self, members: int) -> None:
        self.remaining -= members
        if self.remaining < 0:
            raise _BudgetSpent


# The budget of the explanation running in this context; none outside `explain`.
_budget: ContextVar[_Budget | None] = ContextVar("explanation_budget", default=None)

Keyword = Callable[[Any, Any, Any, dict[str, Any]], Iterator[SchemaError]]
_DRAFT_KEYWORDS: dict[str, Keyword] = Draft202012Validator.VALIDATORS


def _spend(members: int) -> None:
    budget = _budget.get()
    if budget is not None:
        budget.spend(members)


def _too_large(instance: Any, schema: dict[str, Any], size_keyword: str) -> bool:
    # Members of an array or object over its size limit are not worth examining: the size
    # keyword reports it.
    limit = schema.get(size_keyword)
    return isinstance(limit, int) and len(instance) > limit


def _each_item(validator: Any, items: Any, instance: Any, schema: dict[str, Any]) -> Any:
    """`items`, one member at a time, each charged to the budget."""
    if not isinstance(items, dict) or not validator.is_type(instance, "array"):
        yield from _DRAFT_KEYWORDS["items"](validator, items, instance, schema)
        return
    if _too_large(instance, schema, "maxItems"):
        return
    for index in range(len(schema.get("prefixItems", [])), len(instance)):
        _spend(1)
        yield from validator.descend(instance=instance[index], schema=items, path=index)


def _each_extra_property(validator: Any, extra: Any, instance: Any, schema: Any) -> Any:
    """`additionalProperties`, one member at a time in the object's order, each charged."""
    if not isinstance(extra, dict) or not validator.is_type(instance, "object"):
        yield from _DRAFT_KEYWORDS["additionalProperties"](validator, extra, instance, schema)
        return
    if _too_large(instance, schema, "maxProperties"):
        return
    known = schema.get("properties", {})
    patterns = [re.compile(pattern) for pattern in schema.get("patternProperties", {})]
    for name, value in instance.items():
        if name in known or any(pattern.search(name) for pattern in patterns):
            continue
        _spend(1)
        yield from validator.descend(value, extra, path=name)


def _charging_all_members(name: str, size_keyword: str) -> Keyword:
    """A keyword the document does not use (yet), its members charged all at once."""
    keyword = _DRAFT_KEYWORDS[name]

    def check(validator: Any, value: Any, instance: Any, schema: dict[str, Any]) -> Any:
        if isinstance(instance, list | dict):
            if _too_large(instance, schema, size_keyword):
                return
            _spend(len(instance))
        yield from keyword(validator, value, instance, schema)

    return check


def _size_limit(kind: str, noun: str) -> Keyword:
    """maxItems or maxProperties, saying the sizes rather than showing the whole value."""

    def check(validator: Any, limit: Any, instance: Any, _schema: dict[str, Any]) -> Any:
        if validator.is_type(instance, kind) and len(instance) > limit:
            yield SchemaError(f"{len(instance)} {noun}, more than the {limit} allowed")

    return check


ExplainingValidator: Any = extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    {
        "items": _each_item,
        "additionalProperties": _each_extra_property,
        **{
            name: _charging_all_members(name, size_keyword)
            for name, size_keyword in (
                ("prefixItems", "maxItems"),
                ("contains", "maxItems"),
                ("unevaluatedItems", "maxItems"),
                ("patternProperties", "maxProperties"),
                ("propertyNames", "maxProperties"),
                ("unevaluatedProperties", "maxProperties"),
            )
        },
        "maxItems": _size_limit("array", "items"),
        "maxProperties": _size_limit("object", "properties"),
    },
)


def explainer_for(schema: dict[str, Any]) -> Any:
    """A jsonschema validator of `schema` whose explanations stay within their budget."""
    return ExplainingValidator(schema, format_checker=FORMAT_CHECKER)


@dataclass(frozen=True)
class Explanation:
    """The problems found, and whether the budget ran out before all were looked for."""

    items: list[Item]
    unfinished: bool


def explain(validator: Any, instance: Any, *, prefix: list[str | int]) -> Explanation:
    """The problems of `instance`, at most MAX_REPORTED_ERRORS of them, then a count of the rest.

    Items are deduplicated, in the order of their `loc`.
    """
    items = _Collected(prefix)
    token = _budget.set(_Budget(EXPLANATION_BUDGET))
    try:
        for error in validator.iter_errors(instance):
            items.add_all(_error_items(error, prefix=prefix))
    except _BudgetSpent:
        items.unfinished = True
    finally:
        _budget.reset(token)
    return items.report()


class _Collected:
    """The first items, and how many came after them."""

    def __init__(self, prefix: list[str | int]) -> None:
        self.prefix = prefix
        self.kept: list[Item] = []
        self.seen: set[tuple[Any, ...]] = set()
        self.more = 0
        self.unfinished = False

    def add_all(self, items: Iterable[Item]) -> None:
        for item in items:
            key = (tuple(item["loc"]), item["msg"], item["type"])
            if key in self.seen:
                continue
            self.seen.add(key)
            if len(self.kept) < MAX_REPORTED_ERRORS:
                self.kept.append(item)
            else:
                self.more += 1

    def report(self) -> Explanation:
        report = sorted(self.kept, key=lambda item: [_sort_key(part) for part in item["loc"]])
        if report and (self.more or self.unfinished):
            report.append(summary(self.more, counted_all=not self.unfinished, loc=self.prefix))
        return Explanation(report, self.unfinished)


def _sort_key(part: str | int) -> tuple[int, int, str]:
    return (0, part, "") if isinstance(part, int) else (1, 0, str(part))


def summary(more: int, *, counted_all: bool, loc: list[str | int]) -> Item:
    """The last item of a cut-short explanation: how many problems were not listed."""
    if counted_all:
        message = f"{more} more error(s) not listed"
    elif more:
        message = f"at least {more} more error(s) not listed; the rest was not examined"
    else:
        message = "the rest was not examined and may hold more errors"
    return {"loc": loc, "msg": message, "type": TOO_MANY_ERRORS}


def error_items(errors: Iterable[SchemaError], *, prefix: list[str | int]) -> list[Item]:
    """Every item of `errors`, deduplicated, in the order of their `loc` (no bounds)."""
    items: list[Item] = []
    seen: set[tuple[Any, ...]] = set()
    for error in errors:
        for item in _error_items(error, prefix=prefix):
            key = (tuple(item["loc"]), item["msg"], item["type"])
            if key not in seen:
                seen.add(key)
                items.append(item)
    return sorted(items, key=lambda item: [_sort_key(part) for part in item["loc"]])


def _error_items(error: SchemaError, *, prefix: list[str | int]) -> Iterator[Item]:
    for cause in _causes(error):
        yield from _items(cause, prefix=prefix)


def _causes(error: SchemaError) -> Iterator[SchemaError]:
    """The errors that explain `error`: inside `anyOf`, those of the branch the value meant.

    A branch that only failed because the value has another type (the `null` branch of a
    nullable field, say) is not what the client meant. Of the other branches, the one with
    the fewest and deepest errors is; when every branch failed on the type alone, the
    `anyOf` error itself is the clearest.
    """
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        yield error
        return
    branches: dict[Any, list[SchemaError]] = {}
    for sub_error in error.context:
        branches.setdefault(sub_error.schema_path[0], []).append(sub_error)
    meant = [
        branch
        for branch in branches.values()
        if not all(e.validator == "type" and not e.relative_path for e in branch)
    ]
    if not meant:
        yield error
        return
    best = min(meant, key=lambda branch: (len(branch), -max(len(e.path) for e in branch)))
    for sub_error in best:
        yield from _causes(sub_error)


def _items(error: SchemaError, *, prefix: list[str | int]) -> list[Item]:
    items = _plain_items(error, prefix=prefix)
    message = _own_message(error)
    if message is not None:
        for item in items:
            item["msg"] = message
    return items


def _own_message(error: SchemaError) -> str | None:
    """The message the schema gives for failing this keyword (`x-messages`), if any.

    Some rejections have words of Prefect's, or need to say why the service refuses them.
    """
    schema: Any = error.schema
    messages = schema.get(MESSAGES_KEYWORD) if isinstance(schema, dict) else None
    if isinstance(messages, dict) and isinstance(messages.get(error.validator), str):
        return shorten(messages[error.validator])
    return None


def _plain_items(error: SchemaError, *, prefix: list[str | int]) -> list[Item]:
    loc: list[str | int] = [*prefix, *error.absolute_path]
    instance: Any = error.instance
    if error.validator == "required":
        required: list[str] = list(error.validator_value)  # type: ignore[arg-type]
        return [
            {"loc": [*loc, name], "msg": "Field required", "type": "missing"}
            for name in required
            if name not in instance
        ]
    if error.validator == "additionalProperties":
        schema: Any = error.schema
        known = schema.get("properties", {})
        return [
            {
                "loc": [*loc, name],
                "msg": "Extra inputs are not permitted",
                "type": "extra_forbidden",
            }
            for name in instance
            if name not in known
        ]
    if error.validator in ("anyOf", "oneOf"):
        return [{"loc": loc, "msg": _type_message(error), "type": "type"}]
    return [{"loc": loc, "msg": shorten(error.message), "type": str(error.validator)}]


def _type_message(error: SchemaError) -> str:
    """The message for an anyOf whose branches all wanted another type than the value's."""
    expected: list[str] = []
    for sub_error in error.context or ():
        wanted: Any = sub_error.validator_value
        for name in wanted if isinstance(wanted, list) else [wanted]:
            if name not in expected:
                expected.append(name)
    return shorten(f"{error.instance!r} is not of type {', '.join(map(repr, expected))}")


def shorten(message: str) -> str:
    """`message`, cut to MAX_MESSAGE_LENGTH characters."""
    if len(message) <= MAX_MESSAGE_LENGTH:
        return message
    return message[: MAX_MESSAGE_LENGTH - 1] + "…"
