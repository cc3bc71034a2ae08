"""The atomic fetch script against a real redis-server: it takes what kombu's BRPOP would, in
kombu's priority order, and writes exactly kombu's unacked records in the same step."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu.utils.json import loads

from platform_tasks.fetch_script import eval_args, parse_reply

PRIORITY_SEP = "\x06\x16"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    connection.flushall()
    yield connection
    connection.close()


def message(routing_key: str = "default") -> dict[str, Any]:
    return {
        "body": "W1sxLCAyXSwge30sIHt9XQ==",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": "platform_tasks.default.add_numbers", "id": str(uuid.uuid4())},
        "properties": {
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": "", "routing_key": routing_key},
            "body_encoding": "base64",
            "priority": 0,
        },
    }


def run(client: redis.Redis, lists: list[str], limit: int, now: float = 1000.5) -> Any:
    command = eval_args("unacked", "unacked_index", lists, limit, now)
    return parse_reply(client.execute_command(*command))


def test_it_takes_the_oldest_first_and_records_each_as_kombu_does(client: redis.Redis) -> None:
    sent = [message() for _ in range(3)]
    for item in sent:  # kombu publishes with LPUSH and consumes from the right
        client.lpush("default", json.dumps(item))

    reply = run(client, ["default"], limit=10, now=1234.25)

    assert [json.loads(item.text) for item in reply.taken] == sent
    assert {item.list_key for item in reply.taken} == {"default"}
    assert reply.unreadable == []
    assert client.llen("default") == 0
    for item in sent:
        tag = item["properties"]["delivery_tag"]
        payload, exchange, routing_key = loads(client.hget("unacked", tag))
        assert (payload, exchange, routing_key) == (item, "", "default")
        assert client.zscore("unacked_index", tag) == 1234.25


def test_it_takes_no_more_than_the_limit(client: redis.Redis) -> None:
    for _ in range(5):
        client.lpush("default", json.dumps(message()))

    assert len(run(client, ["default"], limit=2).taken) == 2
    assert client.llen("default") == 3
    assert client.hlen("unacked") == 2


def test_it_drains_the_lists_in_the_order_given(client: redis.Redis) -> None:
    urgent, later = message(), message()
    client.lpush(f"default{PRIORITY_SEP}6", json.dumps(later))
    client.lpush("default", json.dumps(urgent))

    reply = run(client, ["default", f"default{PRIORITY_SEP}3", f"default{PRIORITY_SEP}6"], 10)

    assert [json.loads(item.text) for item in reply.taken] == [urgent, later]
    assert [item.list_key for item in reply.taken] == ["default", f"default{PRIORITY_SEP}6"]


@pytest.mark.parametrize("item", ["garbage \x00 not json", json.dumps({"headers": {}}),
                                  json.dumps({"properties": {"delivery_tag": "t"}})])
def test_an_item_that_is_no_message_is_handed_back_unrecorded(
    client: redis.Redis, item: str
) -> None:
    good = message()
    client.lpush("default", item)
    client.lpush("default", json.dumps(good))

    reply = run(client, ["default"], limit=10)

    assert [entry.text for entry in reply.unreadable] == [item]
    assert [json.loads(entry.text) for entry in reply.taken] == [good]
    assert client.hlen("unacked") == 1
    assert client.llen("default") == 0


def test_an_empty_queue_gives_an_empty_reply(client: redis.Redis) -> None:
    reply = run(client, ["default", f"default{PRIORITY_SEP}3"], limit=10)
    assert (reply.taken, reply.unreadable) == ([], [])
