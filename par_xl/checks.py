"""Type and finiteness of a dataclass's values against its annotations, wherever they come from.

A configuration's values reach par-xl from flags (absl parses their types), from files a user
may edit (`config.json`, `metadata.json`) and from Python. `bad_field` checks any of them the
same way before a value is used: an `int` field holds an integer (not a bool, not 3.5), a
`float` field a finite number (an integer is fine; NaN and infinity are not: JSON's `NaN` and
absl's `--max_lr=inf` parse), a `bool` field true or false, `str | None` a string or null,
`tuple[int, ...]` a list of integers. Ranges are each configuration's own `validate`.
"""

import dataclasses
import math
import types
import typing
from typing import NamedTuple

# The largest integer any count, size or step may take: TensorFlow's int32 shapes and sizes.
INT_MAX = 2**31 - 1


class BadField(NamedTuple):
    """A field whose value does not have its annotated type: `value` is `expected`'s opposite."""

    name: str
    value: object
    expected: str


def expected_type(kind) -> str:
    """`kind` (an annotation) in words, as messages say it: "an integer", "a finite number"..."""
    if isinstance(kind, types.UnionType):
        return " or ".join("null" if k is type(None) else expected_type(k) for k in kind.__args__)
    if typing.get_origin(kind) is tuple:
        return f"a list of {_plural(typing.get_args(kind)[0])}"
    return {int: "an integer", float: "a finite number", bool: "true or false",
            str: "a string"}.get(kind, getattr(kind, "__name__", str(kind)))  # fmt: skip


def _plural(kind):
    return {int: "integers", float: "finite numbers", str: "strings"}.get(kind, str(kind))


def has_type(value, kind) -> bool:
    """Whether `value` is of the annotation `kind` (see the module docstring)."""
    if isinstance(kind, types.UnionType):
        return any(has_type(value, k) for k in kind.__args__)
    if kind is type(None):
        return value is None
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return isinstance(value, tuple | list) and all(has_type(v, item) for v in value)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and math.isfinite(value)
    return isinstance(value, kind)


def bad_field(instance) -> BadField | None:
    """The first field of the dataclass `instance` whose value is not of its annotated type."""
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if not has_type(value, field.type):
            return BadField(field.name, value, expected_type(field.type))
    return None
