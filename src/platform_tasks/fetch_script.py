"""The atomic batched fetch: pop messages and record them as unacknowledged in one step.

kombu takes one message with ``BRPOP`` and records it as unacknowledged with a second
command (a ``MULTI`` on the ``unacked`` hash and its ``unacked_index``): two round trips per
message, and a message popped but not yet recorded exists only in the worker's memory: a
worker killed in between loses it. This script does both inside Redis, for up to a batch of
messages at once, writing exactly the records kombu writes (``[payload, exchange,
routing_key]`` under the delivery tag, scored with the time taken), so acks, restores,
Flower, celery-exporter and the monitor see what they always saw.

A queue item the script cannot read as a kombu message (not JSON, no delivery tag) is popped
but not recorded, and handed back separately for the dead-letter list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kombu.utils.encoding import bytes_to_str

#: KEYS: unacked hash, unacked index, then the queue lists in the order to drain them.
#: ARGV: most messages to take, the time to score them with.
FETCH_SCRIPT = """
local unacked, index = KEYS[1], KEYS[2]
local limit, now = tonumber(ARGV[1]), ARGV[2]
local taken, unreadable = {}, {}
local count = 0
for position = 3, #KEYS do
  local queue = KEYS[position]
  while count < limit do
    local item = redis.call('RPOP', queue)
    if not item then break end
    local decoded, message = pcall(cjson.decode, item)
    local tag, info
    if decoded and type(message) == 'table' and type(message.properties) == 'table' then
      tag = message.properties.delivery_tag
      info = message.properties.delivery_info
    end
    if type(tag) == 'string' and tag ~= '' and type(info) == 'table' then
      local record = '[' .. item .. ',' .. cjson.encode(info.exchange or '') .. ','
        .. cjson.encode(info.routing_key or '') .. ']'
      redis.call('HSET', unacked, tag, record)
      redis.call('ZADD', index, now, tag)
      taken[#taken + 1] = queue
      taken[#taken + 1] = item
      count = count + 1
    else
      unreadable[#unreadable + 1] = queue
      unreadable[#unreadable + 1] = item
    end
  end
end
return {taken, unreadable}
"""

#: Most messages one fetch takes, whatever the prefetch allows: one reply stays small.
MAX_BATCH = 64


@dataclass(frozen=True, slots=True)
class FetchedItem:
    """One list item a fetch popped: its list (queue name plus priority suffix) and text."""

    list_key: str
    text: str


@dataclass(frozen=True, slots=True)
class FetchReply:
    taken: list[FetchedItem]
    unreadable: list[FetchedItem]


def _pairs(flat: Any) -> list[FetchedItem]:
    values = list(flat or [])
    return [
        FetchedItem(bytes_to_str(values[i]), bytes_to_str(values[i + 1]))
        for i in range(0, len(values) - 1, 2)
    ]


def parse_reply(reply: Any) -> FetchReply:
    """The script's reply (two flat lists of key, item pairs) as items."""
    parts = list(reply or [])
    taken = parts[0] if parts else []
    unreadable = parts[1] if len(parts) > 1 else []
    return FetchReply(_pairs(taken), _pairs(unreadable))


def eval_args(unacked_key: str, index_key: str, list_keys: list[str], limit: int,
              now: float) -> list[Any]:
    """The ``EVAL`` command for one fetch."""
    return ["EVAL", FETCH_SCRIPT, 2 + len(list_keys), unacked_key, index_key, *list_keys,
            max(1, min(limit, MAX_BATCH)), repr(now)]
