"""Collected publish commands are written in the order kombu would have run them."""

from __future__ import annotations

import random
from typing import Any

import pytest
from celery.utils.saferepr import saferepr

from platform_tasks.batch_publish import CommandCollector, _coalesced, quick_saferepr


def test_consecutive_pushes_to_one_list_become_one_push_in_the_same_order() -> None:
    commands: list[tuple[str, tuple[Any, ...]]] = [
        ("lpush", ("default", "m1")),
        ("lpush", ("default", "m2")),
        ("lpush", ("default\x06\x163", "p1")),
        ("publish", ("/0.celeryev/task.sent", "e1")),
        ("lpush", ("default", "m3")),
        ("pexpire", ("default", 1000)),
    ]

    assert list(_coalesced(commands)) == [
        ("lpush", ("default", "m1", "m2")),
        ("lpush", ("default\x06\x163", "p1")),
        ("publish", ("/0.celeryev/task.sent", "e1")),
        ("lpush", ("default", "m3")),
        ("pexpire", ("default", 1000)),
    ]


def test_nothing_collected_writes_nothing() -> None:
    assert list(_coalesced([])) == []


def test_the_collector_refuses_a_channel_that_would_publish_by_itself() -> None:
    with pytest.raises(TypeError, match="Redis channel"):
        CommandCollector().publish(object(), {})


def test_commands_outside_a_publish_are_a_bug() -> None:
    with pytest.raises(RuntimeError, match="outside a publish"):
        CommandCollector().add("lpush", "default", "m1")


TRICKY_STRINGS = ["", "a", "it's", "quote\"d", "back\\slash", "new\nline", "tab\t", "é ü 日本",
                  "'", "''", "a b c " * 30, "x" * 1019, "\x00", "emoji 🎉"]


def _random_value(rng: random.Random, depth: int) -> Any:
    kinds = ["int", "float", "bool", "none", "str"] + (["list", "tuple", "dict"] * 2
                                                        if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, -1, 7, 2**70, -(2**40)])
    if kind == "float":
        return rng.choice([0.0, -0.0, 1.5, 1e16, 1e-7, 3.141592653589793, -2.5e300])
    if kind == "bool":
        return rng.choice([True, False])
    if kind == "none":
        return None
    if kind == "str":
        return rng.choice(TRICKY_STRINGS)
    items = [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == "list":
        return items
    if kind == "tuple":
        return tuple(items)
    return {rng.choice(TRICKY_STRINGS[:9]) + str(n): item for n, item in enumerate(items)}


@pytest.mark.parametrize("maxlevels", [3, 4, 1])
def test_the_quick_repr_is_celerys_saferepr_or_declines(maxlevels: int) -> None:
    rng = random.Random(6)
    answered = 0
    for _ in range(5000):
        value = _random_value(rng, 0)
        quick = quick_saferepr(value, 1024, maxlevels)
        if quick is not None:
            answered += 1
            assert quick == saferepr(value, 1024, maxlevels=maxlevels), value
    if maxlevels >= 3:
        assert answered > 2500  # it answers the common shapes, not only scalars
    else:
        assert answered == 0


@pytest.mark.parametrize("value", [
    [1, 2], (), (1,), [], {}, {"x": 1.5, "y": -4}, ["it's", None, True], {"numbers": [1, 2]},
    [[1, [2]]], {1: "int key"}, {"a": {"b": {"c": 1}}}, ["x" * 1020], [object()],
])
def test_the_quick_repr_on_chosen_shapes(value: Any) -> None:
    quick = quick_saferepr(value, 1024, 3)
    assert quick is None or quick == saferepr(value, 1024, maxlevels=3)
