"""The reusable encoder writes what ``json.JSONEncoder`` writes, and refuses what it refuses."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from platform_tasks.json_encoding import reusable_encoder

VALUES: list[Any] = [
    [[1, 2], {}],
    [[1.5, -4, 10**20, 0.1], {"x": None, "flag": True, "off": False}],
    {"nested": {"list": [1, [2, [3]]], "é": "ünïcode ☃", "quote": 'a "b" \\ c'}},
    ["tab\tnewline\ncontrol\x01", ""],
    (1, 2),
    {1: "int key", 2.5: "float key", None: "none key", False: "bool key"},
    42,
    3.25,
    None,
    "plain string",
]


@pytest.mark.parametrize("value", VALUES, ids=lambda value: type(value).__name__)
@pytest.mark.parametrize("allow_nan", [True, False])
def test_the_output_is_json_encoders(value: Any, allow_nan: bool) -> None:
    assert reusable_encoder(allow_nan=allow_nan)(value) == \
        json.JSONEncoder(allow_nan=allow_nan).encode(value)


class Text(str):
    """A str subclass, as enums and other libraries' string types are."""


class Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


def test_the_fallback_encodes_what_json_cannot_as_json_encoder_does() -> None:
    def fallback(value: Any) -> Any:
        return sorted(value) if isinstance(value, set) else repr(value)

    value = [{3, 1, 2}, {"when": Opaque()}, Text("subclass"), b"bytes"]
    assert reusable_encoder(fallback)(value) == \
        json.JSONEncoder(default=fallback).encode(value)
    assert reusable_encoder(fallback)(Text("top level")) == '"top level"'


def test_without_a_fallback_other_types_are_refused_as_json_refuses_them() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        reusable_encoder()([{1, 2}])


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_nan_and_infinities_are_refused_when_not_allowed(number: float) -> None:
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        reusable_encoder(allow_nan=False)([number])
    assert reusable_encoder(allow_nan=True)([number]) == json.dumps([number])


def test_a_value_that_contains_itself_raises_recursion_error() -> None:
    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises(RecursionError):
        reusable_encoder()(circular)


def test_one_encoder_serves_call_after_call() -> None:
    encode = reusable_encoder(allow_nan=False)
    first = encode([[1], {"a": 1}])
    with pytest.raises(ValueError, match="Out of range"):
        encode([math.nan])
    assert encode([[1], {"a": 1}]) == first
