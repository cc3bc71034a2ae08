"""JSON encoders made once and reused, for the per-message and per-line hot paths.

``json.JSONEncoder.encode`` builds a new C encoder (and a dict for its circular-reference
check) on every call; for the small values encoded once per task that setup cost as much as
the encoding. An encoder made here is the C encoder itself, built once, with the output of
``json.JSONEncoder(default=…, allow_nan=…)`` (ASCII, ``", "`` and ``": "`` between items).
It has no circular-reference check: a value that contains itself raises ``RecursionError``
instead of ``ValueError``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as json_encoder
from typing import Any


def reusable_encoder(default: Callable[[Any], Any] | None = None, *,
                     allow_nan: bool = True) -> Callable[[Any], str]:
    """A function encoding a value as ``json.JSONEncoder(default=default,
    allow_nan=allow_nan).encode`` does, without rebuilding the encoder per call."""
    fallback = json.JSONEncoder(default=default, allow_nan=allow_nan)
    make: Any = getattr(json_encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator
        return fallback.encode
    c_encoder = make(None, fallback.default, json_encoder.encode_basestring_ascii, None,
                     ": ", ", ", False, False, allow_nan)

    def encode(value: Any) -> str:
        if type(value) is str:  # the one-string case needs no encoder at all
            return json_encoder.encode_basestring_ascii(value)
        return "".join(c_encoder(value, 0))

    return encode
