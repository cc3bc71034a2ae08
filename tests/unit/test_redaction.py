"""The redaction processor: each rule on its own, then recursion through nested values."""

from __future__ import annotations

from typing import Any

import pytest

from platform_tasks.observability.redaction import CARD, MASK, REDACTED, Redactor, luhn_valid


def redact(event: dict[str, Any], secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    return dict(Redactor(secrets)(None, "info", dict(event)))


@pytest.mark.parametrize(
    "key", ["password", "redis_password", "passwd", "client_secret", "token", "access-token",
            "Authorization", "api_key", "apiKey"],
)
def test_a_secret_key_has_its_value_redacted(key: str) -> None:
    assert redact({key: "hunter22"})[key] == REDACTED


def test_an_idempotency_key_is_kept() -> None:
    assert redact({"idempotency_key": "order-1001-charge"})["idempotency_key"] == (
        "order-1001-charge"
    )


def test_a_url_keeps_its_user_and_loses_its_password() -> None:
    event = redact({"event": "connecting to redis://app:pa55word@10.0.0.1:6379/0"})
    assert event["event"] == f"connecting to redis://app:{MASK}@10.0.0.1:6379/0"


def test_a_sentinel_url_without_user_loses_its_password() -> None:
    event = redact({"broker": "sentinel://:pw@h1:26379;sentinel://:pw@h2:26379"})
    assert event["broker"] == f"sentinel://:{MASK}@h1:26379;sentinel://:{MASK}@h2:26379"


@pytest.mark.parametrize(
    "text", ["4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "378282246310005"],
)
def test_a_luhn_valid_card_number_becomes_a_marker(text: str) -> None:
    assert redact({"event": f"charged {text} ok"})["event"] == f"charged {CARD} ok"


@pytest.mark.parametrize(
    "text",
    ["4111111111111112",  # fails Luhn
     "123456789012",  # too short
     "12345678-1234-1234-1234-123456789012",  # a UUID's digit groups
     "2026-11-25T00:00:00Z"],
)
def test_other_digit_runs_are_left_alone(text: str) -> None:
    assert redact({"event": text})["event"] == text


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")


def test_an_email_address_is_masked_to_its_first_letter_and_domain() -> None:
    event = redact({"event": "sent to newcomer@example.com", "to": "a.b+c@mail.example.org"})
    assert event["event"] == "sent to n***@example.com"
    assert event["to"] == "a***@mail.example.org"


def test_a_worker_node_name_is_not_an_email_address() -> None:
    assert redact({"worker": "email@pod-1.cluster.local"})["worker"] == "email@pod-1.cluster.local"


def test_a_configured_secret_is_replaced_wherever_it_appears() -> None:
    event = redact(
        {"event": "AUTH s3cr3t-V@lue failed", "detail": {"args": ["s3cr3t-V%40lue"]}},
        secrets=("s3cr3t-V@lue",),
    )
    assert event["event"] == f"AUTH {MASK} failed"
    assert event["detail"] == {"args": [MASK]}


def test_a_too_short_secret_is_not_searched_for() -> None:
    assert redact({"event": "abc"}, secrets=("ab",))["event"] == "abc"


def test_nested_values_are_redacted_recursively() -> None:
    event = redact({
        "kwargs": {"user_email": "bob@example.com", "auth": {"token": "t0k"},
                   "cards": ("4111111111111111",)},
    })
    assert event["kwargs"] == {
        "user_email": "b***@example.com",
        "auth": {"token": REDACTED},
        "cards": [CARD],
    }


def test_other_objects_are_rendered_as_redacted_text() -> None:
    class Holder:
        def __str__(self) -> str:
            return "Holder(redis://u:pw@h)"

    assert redact({"obj": Holder()})["obj"] == f"Holder(redis://u:{MASK}@h)"


def test_numbers_and_none_pass_through() -> None:
    assert redact({"n": 4111111111111111, "f": 1.5, "b": True, "x": None}) == {
        "n": 4111111111111111, "f": 1.5, "b": True, "x": None,
    }


def test_an_id_is_kept_whole_but_a_configured_secret_inside_it_is_not() -> None:
    task_id = "5f0b6c1e-2f7e-4d55-9a8e-0d5a0b1c2d3e"
    assert redact({"task_id": task_id})["task_id"] == task_id
    # An operator who made a UUID their Redis password still never sees it in a line.
    assert redact({"correlation_id": task_id}, secrets=(task_id,))["correlation_id"] == MASK


def test_a_value_seen_before_is_redacted_the_same_way_again() -> None:
    redactor = Redactor(("s3cret-pw",))
    line = {"event": "card 4111 1111 1111 1111 for someone@example.com, pw s3cret-pw"}
    first = dict(redactor(None, "info", dict(line)))
    second = dict(redactor(None, "info", dict(line)))
    assert first == second
    assert first["event"] == f"card {CARD} for s{MASK}@example.com, pw {MASK}"
