"""Validation errors of a field's values, read as one error that names the problem.

A field's values are a union (a list, one value, or an object {value: count}) and so is a count (a
number or {"count": c, "items": d}). Pydantic reports every member it tried, each under a label of
its own ("dict[constrained-str,union[union[int,float],CountAndItems]]"): a string count came back as
five errors, four of them about members the client never meant. `readable` keeps what the member the
client sent says (a list whose second value is a number: that value), drops the members' labels
from the location, and where no member took the input at all, says in one line what is accepted and
what came. Only error responses pay for it: pydantic's own way (a callable `Discriminator` per
union) would report the same, but call Python for every count of every request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from service.schemas import Count, FieldValues, ValueCount

Loc = tuple[Any, ...]
Error = dict[str, Any]

FIELD_FORMS = "a list of values, one value, or an object {value: count}"
COUNT_FORMS = 'a number or an object {"count": c, "items": d}'
UNKNOWN_KEY = 'not a key of a count object, which has "count" and, optionally, "items"'


def _member_labels(schema: Any) -> tuple[str, ...]:
    """The labels pydantic puts in an error's location for each member of a union, in its order."""
    try:
        TypeAdapter(schema).validate_python(None)
    except ValidationError as e:
        return tuple(str(err["loc"][0]) for err in e.errors(include_url=False))
    raise AssertionError(f"{schema} accepted None")  # pragma: no cover - a union of non-null members


FIELD_MEMBERS = _member_labels(FieldValues)  # list, one value, object
COUNT_MEMBERS = tuple(dict.fromkeys(_member_labels(ValueCount)))  # number (itself a union of int and float), object
NUMBER_MEMBERS = _member_labels(Count)  # int, float
# a member's own type check: the input was not that member's kind at all
_KIND_MISMATCH = {"list_type", "string_type", "dict_type", "int_type", "float_type"}


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _field_member_at(loc: Loc) -> int | None:
    """Where the label of a field's union member sits in `loc`: after "features" and the field's name."""
    for i in range(len(loc) - 2):
        if loc[i] == "features" and loc[i + 2] in FIELD_MEMBERS:
            return i + 2
    return None


def _union(errors: list[Error], at: int, what: str) -> list[Error]:
    """One union's errors (the member label at loc[at]): those of the members that took the input, the
    label dropped, or one error naming the accepted forms where none did."""
    site = errors[0]["loc"][:at]
    by_member: dict[str, list[Error]] = {}
    for err in errors:
        by_member.setdefault(str(err["loc"][at]), []).append(err)
    taken = [errs for errs in by_member.values() if not _mismatched(errs, at)]
    if not taken:
        got = errors[0].get("input")
        forms = FIELD_FORMS if what == "field" else COUNT_FORMS
        return [
            {
                "loc": site,
                "msg": f"a {what} must be {forms}, got {json_kind(got)}",
                "type": f"{what}_type",
                "input": got,
            }
        ]
    out = [{**e, "loc": site + e["loc"][at + 1 :]} for errs in taken for e in errs]
    if what == "count":  # a count object's unknown key: say which keys it has
        out = [{**e, "msg": UNKNOWN_KEY} if e.get("type") == "extra_forbidden" else e for e in out]
    return out


def _mismatched(errs: list[Error], at: int) -> bool:
    """The member's own kind check failed (for a number, both int's and float's): not that kind at all."""
    return all(
        e.get("type") in _KIND_MISMATCH and e["loc"][at + 1 :] in ((), *((n,) for n in NUMBER_MEMBERS)) for e in errs
    )


def _number(errors: list[Error], at: int) -> list[Error]:
    """A count object's "count" or "items" that neither int nor float took: one error."""
    got = errors[0].get("input")
    return [
        {
            "loc": errors[0]["loc"][:at],
            "msg": f"must be a number, got {json_kind(got)}",
            "type": "number_type",
            "input": got,
        }
    ]


def _collapse(
    errors: list[Error], site_of: Callable[[Loc], int | None], fix: Callable[[list[Error], int], list[Error]]
) -> list[Error]:
    """Each group of errors sharing loc[:at] (at = site_of(loc), None: not in a group) replaced by
    fix(group, at) where its first error was; the other errors unchanged and in place."""
    groups: dict[tuple[Loc, int], list[Error]] = {}
    order: list[tuple[Loc, int] | Error] = []
    for err in errors:
        at = site_of(err["loc"])
        if at is None:
            order.append(err)
            continue
        key = (err["loc"][:at], at)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(err)
    out: list[Error] = []
    for item in order:
        out.extend(fix(groups[item], item[1]) if isinstance(item, tuple) else [item])
    return out


def readable(errors: Sequence[Mapping[str, Any]]) -> list[Error]:
    """`errors` (pydantic's, under any prefix: "body", or "body", "users", 0) with each field's and each
    count's union reported as the problem the client made; every other error unchanged, in place."""
    fields: set[Loc] = set()  # (…, "features", field) of every field with errors

    def field_site(loc: Loc) -> int | None:
        at = _field_member_at(loc)
        if at is not None:
            fields.add(loc[:at])
        return at

    def field_of(loc: Loc) -> int:  # the length of the (…, "features", field) prefix, -1 if none; O(len(loc))
        return next((i + 2 for i in range(len(loc) - 1) if loc[i] == "features" and loc[: i + 2] in fields), -1)

    def count_site(loc: Loc) -> int | None:  # (…, field, value, count member, …)
        n = field_of(loc)
        return n + 1 if n >= 0 and len(loc) > n + 1 and loc[n + 1] in COUNT_MEMBERS else None

    def number_site(loc: Loc) -> int | None:  # (…, field, value, "count" | "items", int | float)
        n = field_of(loc)
        return n + 2 if n >= 0 and len(loc) == n + 3 and loc[n + 2] in NUMBER_MEMBERS else None

    out = [{**e, "loc": tuple(e.get("loc", ()))} for e in errors]
    out = _collapse(out, field_site, lambda g, at: _union(g, at, "field"))
    out = _collapse(out, count_site, lambda g, at: _union(g, at, "count"))
    return _collapse(out, number_site, _number)


def first_problems(errors: Sequence[Mapping[str, Any]], limit: int) -> tuple[list[Error], bool]:
    """`readable` of the errors of the first `limit` problems, and whether any was left out: a response
    listing every violation of a megabyte of bad values would cost the event loop time in proportion. A
    problem is one value of a field (a list element, an object's count; its union errors together),
    a field's value as a whole, or any other error. A field's first value is always read with the
    field, so that what its union reports is never cut in two."""
    seen: set[Any] = set()
    deep: set[Loc] = set()  # fields one of whose values was read
    for at, err in enumerate(errors):
        loc = tuple(err.get("loc", ()))
        key: Any = (loc, at)
        first_value = False
        member = _field_member_at(loc)
        if member is not None:
            field = loc[:member]
            key = field + loc[member + 1 : member + 2]
            if len(loc) > member + 1:
                first_value = field not in deep
                deep.add(field)
        if key not in seen:
            if len(seen) >= limit and not first_value:
                return readable(errors[:at]), True
            seen.add(key)
    return readable(errors), False
