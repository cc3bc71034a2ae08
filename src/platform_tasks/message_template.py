"""Task messages spliced from pre-encoded fragments, byte for byte as kombu writes them.

kombu's Redis transport writes each message as one JSON envelope (``kombu.utils.json``:
ASCII only, ``", "`` and ``": "`` between items) around a base64 body, itself the same JSON
of Celery's ``[args, kwargs, embed]``. Within one bulk enqueue nearly all of the envelope is
the same for every task, so :class:`MessageTemplate` encodes it once, from a message kombu
wrote, and each message only encodes what varies per task, with the encoders kombu uses, in
the places kombu puts it.
"""

from __future__ import annotations

import binascii
import json
import os
import secrets
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii
from typing import Any

from kombu.utils.json import JSONEncoder as KombuJSONEncoder

from platform_tasks import headers
from platform_tasks.json_encoding import reusable_encoder

#: kombu's JSON, refusing what plain JSON cannot carry (NaN, other types) as the producer's
#: payload check always has. For what it accepts the output is kombu's: kombu's encoder only
#: differs in its fallback for types this one refuses.
_encode_arguments = reusable_encoder(allow_nan=False)
#: The form the payload size limit has always been counted in.
_COMPACT_JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
_KOMBU_JSON = KombuJSONEncoder()
#: The third element of every body Celery writes for a task without callbacks or canvas.
_NO_EMBED = _KOMBU_JSON.encode({"callbacks": None, "errbacks": None, "chain": None,
                                "chord": None})
#: The idempotency key's entry, written after the enqueued-at header when a task has a key.
_KEY_ENTRY = ", " + encode_basestring_ascii(headers.IDEMPOTENCY_KEY) + ": "

#: Per hex digit, the digit with its two top bits set to RFC 4122's variant (``10``).
_VARIANT_DIGIT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def encode_arguments(args: list[Any], kwargs: dict[str, Any]) -> str:
    """``[args, kwargs]`` as kombu's JSON; raises ``TypeError``/``ValueError`` for non-JSON,
    ``RecursionError`` for a value that contains itself (or is nested past Python's limit)."""
    return _encode_arguments([args, kwargs])


def compact_size(args: list[Any], kwargs: dict[str, Any]) -> int:
    """Bytes of ``[args, kwargs]`` as compact JSON (no spaces), the form the limit counts."""
    return len(_COMPACT_JSON.encode([args, kwargs]))


def random_uuid4s(count: int) -> list[str]:
    """``count`` strings as ``str(uuid.uuid4())`` makes them, from one read of os.urandom."""
    digits = os.urandom(16 * count).hex()
    variant = _VARIANT_DIGIT
    return [
        # The version digit replaces a random one; the variant keeps two random bits.
        f"{d[:8]}-{d[8:12]}-4{d[13:16]}-{variant[d[16]]}{d[17:20]}-{d[20:]}"
        for d in (digits[start:start + 32] for start in range(0, 32 * count, 32))
    ]


def _json(value: Any) -> str:
    """One JSON value as kombu writes it inside a message."""
    if type(value) is str:
        return encode_basestring_ascii(value)
    return _KOMBU_JSON.encode(value)


def _body(arguments: str) -> str:
    """The base64 body of a task whose ``[args, kwargs]`` encode as ``arguments``."""
    data = (arguments[:-1] + ", " + _NO_EMBED + "]").encode("ascii")
    return binascii.b2a_base64(data, newline=False).decode("ascii")


#: The per-task fields, in the order kombu writes them, and where each sits in a message.
_HEADER_FIELDS = {
    "id": "id", "eta": "eta", "root_id": "root_id", "argsrepr": "argsrepr",
    "kwargsrepr": "kwargsrepr", "correlation": headers.CORRELATION_ID,
    "enqueued_at": headers.ENQUEUED_AT,
}
_PROPERTY_FIELDS = {"reply_id": "correlation_id", "delivery_tag": "delivery_tag"}
_ORDER = ("body", *_HEADER_FIELDS, *_PROPERTY_FIELDS)


class MessageTemplate:
    """A message kombu wrote, cut around the fields that vary per task."""

    def __init__(self, fragments: tuple[str, ...]) -> None:
        if len(fragments) != len(_ORDER) + 1:
            raise ValueError(f"expected {len(_ORDER) + 1} fragments, got {len(fragments)}")
        self._fragments = fragments

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> MessageTemplate | None:
        """The template of ``message`` (as kombu's channel left it after publishing), or
        ``None`` for a shape this does not know (its messages then take kombu's way)."""
        message_headers = dict(message.get("headers") or {})
        properties = dict(message.get("properties") or {})
        message_headers.pop(headers.IDEMPOTENCY_KEY, None)
        # The key is spliced in after enqueued-at, where the producer puts it: it must end.
        if not message_headers or list(message_headers)[-1] != headers.ENQUEUED_AT:
            return None
        token = secrets.token_hex(8)
        marks: dict[str, str] = {}
        for slots, target in ((_HEADER_FIELDS, message_headers),
                              (_PROPERTY_FIELDS, properties)):
            for name, key in slots.items():
                if key not in target:
                    return None
                target[key] = marks[name] = f"\x00{token}:{name}"
        marks["body"] = f"\x00{token}:body"
        encoded = _KOMBU_JSON.encode({**message, "body": marks["body"],
                                      "headers": message_headers, "properties": properties})
        # The marks as the JSON holds them (quoted, the NUL escaped).
        quoted = {name: encode_basestring_ascii(mark) for name, mark in marks.items()}
        fragments: list[str] = []
        rest = encoded
        for name in _ORDER:
            before, found, rest = rest.partition(quoted[name])
            # Each mark once and in this order, or the message is not the shape rendered.
            if not found or any(mark[1:-1] in before for mark in quoted.values()):
                return None
            fragments.append(before)
        if any(mark[1:-1] in rest for mark in quoted.values()):
            return None
        fragments.append(rest)
        return cls(tuple(fragments))

    def render(
        self,
        *,
        arguments: str,
        task_id: str,
        root_id: Any,
        eta: str | None,
        argsrepr: str,
        kwargsrepr: str,
        correlation_id: Any,
        enqueued_at: float,
        idempotency_key: Any,
        delivery_tag: str,
    ) -> str:
        """The message of one task; ``arguments`` is :func:`encode_arguments`' output."""
        quoted_id = encode_basestring_ascii(task_id)
        enqueued = repr(enqueued_at)
        if idempotency_key is not None:
            enqueued += _KEY_ENTRY + _json(idempotency_key)
        f = self._fragments
        return "".join((
            f[0], '"', _body(arguments), '"',
            f[1], quoted_id,
            f[2], "null" if eta is None else encode_basestring_ascii(eta),
            f[3], _json(root_id),
            f[4], encode_basestring_ascii(argsrepr),
            f[5], encode_basestring_ascii(kwargsrepr),
            f[6], _json(correlation_id),
            f[7], enqueued,
            f[8], quoted_id,
            f[9], encode_basestring_ascii(delivery_tag),
            f[10],
        ))
