"""The wait and the fetch share one write: both replies are read, whatever the wait says.

Against a real redis-server: the two commands are sent packed, as the transport sends them,
and the reply reader is the transport's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from platform_tasks.broker_transport import _WAIT_THEN_FETCH, _FetchesInBatches


class _Reader:
    """Just what the reply reader uses of a channel: its client and connection errors."""

    connection_errors = (redis.ConnectionError, redis.TimeoutError)

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.client.connection = client.connection_pool.get_connection()

    def send(self, wait: list[Any], fetch: list[Any]) -> None:
        connection = self.client.connection
        connection.send_packed_command(connection.pack_commands([wait, fetch]))

    def read(self) -> tuple[Exception | None, Any]:
        return _FetchesInBatches._read_replies(self, _WAIT_THEN_FETCH, {})  # type: ignore[arg-type]


@pytest.fixture
def reader(redis_url: str) -> Iterator[_Reader]:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    yield _Reader(client)
    client.connection_pool.release(client.connection)
    client.close()


FETCH = ["EVAL", "return redis.call('RPOP', KEYS[1])", 1, "q"]


def test_a_wait_that_finds_an_item_moves_it_where_the_fetch_takes_it(reader: _Reader) -> None:
    reader.client.lpush("q", "m1")

    reader.send(["BLMOVE", "q", "q-wake", "RIGHT", "LEFT", 1],
                ["EVAL", "return redis.call('RPOP', KEYS[1])", 1, "q-wake"])

    assert reader.read() == (None, b"m1")
    assert reader.client.exists("q", "q-wake") == 0


def test_a_wait_that_times_out_still_yields_the_fetchs_reply(reader: _Reader) -> None:
    reader.send(["BLMOVE", "q", "q", "RIGHT", "RIGHT", 0.1], FETCH)

    assert reader.read() == (None, None)


def test_a_failed_wait_is_reported_with_the_fetchs_reply_and_the_replies_stay_in_step(
    reader: _Reader,
) -> None:
    reader.client.set("not-a-list", "x")
    reader.client.lpush("q", "m1")

    reader.send(["BLMOVE", "not-a-list", "not-a-list", "RIGHT", "RIGHT", 1], FETCH)
    wait_error, reply = reader.read()

    assert isinstance(wait_error, redis.ResponseError)
    assert "WRONGTYPE" in str(wait_error)
    assert reply == b"m1"
    # The next reply on the connection is the next command's, not a leftover.
    reader.client.connection.send_command("PING")
    assert reader.client.parse_response(reader.client.connection, "PING") is True
