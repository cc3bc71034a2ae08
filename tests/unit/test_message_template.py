"""The pieces of the bulk enqueue's message template that need no broker.

That a rendered message is kombu's, byte for byte, is tested against a real broker in
``tests/integration/test_enqueue_many.py``.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest

from platform_tasks import headers
from platform_tasks.message_template import (
    MessageTemplate,
    compact_size,
    encode_arguments,
    random_uuid4s,
)


def test_random_ids_are_version_4_uuids_as_str_writes_them() -> None:
    ids = random_uuid4s(500)

    assert len(set(ids)) == 500
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_no_ids_asked_for_none_made() -> None:
    assert random_uuid4s(0) == []


def test_arguments_are_kombus_json_and_the_limit_counts_the_compact_form() -> None:
    args: list[Any] = [1, "é"]
    kwargs: dict[str, Any] = {"k": [True, None]}

    assert encode_arguments(args, kwargs) == '[[1, "\\u00e9"], {"k": [true, null]}]'
    assert compact_size(args, kwargs) == len('[[1,"\\u00e9"],{"k":[true,null]}]')


@pytest.mark.parametrize("bad", [math.nan, math.inf, object(), b"bytes"])
def test_what_plain_json_cannot_carry_is_refused(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        encode_arguments([bad], {})


def _message(**header_changes: Any) -> dict[str, Any]:
    message_headers = {
        "lang": "py", "task": "t", "id": "i", "eta": None, "root_id": "i",
        "argsrepr": "()", "kwargsrepr": "{}", headers.CORRELATION_ID: "i",
        headers.ENQUEUED_AT: 1.5,
    }
    message_headers.update(header_changes)
    return {
        "body": "e30=", "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {k: v for k, v in message_headers.items() if v is not _GONE},
        "properties": {"correlation_id": "i", "delivery_tag": "d", "priority": 0},
    }


_GONE = object()


def test_a_message_of_the_known_shape_makes_a_template() -> None:
    assert MessageTemplate.from_message(_message()) is not None


@pytest.mark.parametrize(
    "changes",
    [{"root_id": _GONE}, {headers.ENQUEUED_AT: _GONE}, {"argsrepr": _GONE}],
    ids=["no root id", "no enqueued-at", "no argsrepr"],
)
def test_a_message_of_another_shape_makes_none(changes: dict[str, Any]) -> None:
    assert MessageTemplate.from_message(_message(**changes)) is None


def test_a_header_after_enqueued_at_makes_none() -> None:
    message = _message()
    message["headers"]["someone_elses"] = 1
    assert MessageTemplate.from_message(message) is None


def test_a_template_needs_every_fragment() -> None:
    with pytest.raises(ValueError, match="expected 11 fragments, got 2"):
        MessageTemplate(("a", "b"))
