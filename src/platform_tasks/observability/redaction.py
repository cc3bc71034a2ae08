"""A structlog processor that keeps secrets and personal data out of the logs.

It runs last before rendering, on structlog's own events and on Celery's, kombu's and redis'
stdlib records alike, so a secret is caught whoever logged it. Rules, in order:

* a value under a key that names a secret (``password``, ``token``, ``authorization``…) becomes
  ``[redacted]``;
* every configured secret value (the Redis, Sentinel and SMTP passwords) is replaced by ``***``
  wherever it appears, also URL-encoded;
* the password of a URL with credentials is masked: ``redis://u:pw@h`` -> ``redis://u:***@h``;
* a Luhn-valid run of 13-19 digits (spaces or dashes allowed between them) becomes ``[card]``;
* an e-mail address keeps its first letter and domain: ``newcomer@example.com`` ->
  ``n***@example.com``.

Values are walked recursively through dicts, lists and tuples; any other object is turned into
its ``str()`` first, so nothing reaches the renderer unexamined.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import quote

REDACTED = "[redacted]"
MASK = "***"
CARD = "[card]"

#: A key containing one of these (lower case, ``-`` read as ``_``) holds a secret.
SECRET_KEY_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "credential",
    "cookie",
    "private_key",
)

#: Keys whose values are names, not personal data: ``email@host`` is a worker's node name.
_NOT_PERSONAL_KEYS = frozenset({"worker", "hostname", "logger", "level", "timestamp"})

#: Keys the log pipeline itself fills (never caller data): not worth a scan on every line.
_PIPELINE_KEYS = frozenset({"timestamp", "level", "logger", "process", "pid"})

#: Redacted strings remembered per redactor; task ids and names repeat on every line of a task.
_CACHE_LIMIT = 4096
_CACHEABLE_LENGTH = 256

#: Configured secrets shorter than this are not searched for: they would mangle every line.
MIN_SECRET_LENGTH = 4

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):"
                              r"(?P<password>[^@/\s]+)@")
# Not preceded or followed by a word character or a dash: a UUID's digit groups are not a card.
_CARD_CANDIDATE = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_EMAIL = re.compile(
    r"(?<![\w.%+-])(?P<first>[A-Za-z0-9])[A-Za-z0-9._%+-]*@"
    r"(?P<domain>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})"
)


_has_digit = re.compile(r"\d").search


def luhn_valid(digits: str) -> bool:
    """Whether ``digits`` (only 0-9) passes the Luhn check card numbers carry."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    if 13 <= len(digits) <= 19 and luhn_valid(digits):
        return CARD
    return match.group(0)


@functools.lru_cache(maxsize=1024)
def is_secret_key(key: str) -> bool:
    """Whether a field named ``key`` holds a secret by its name alone."""
    normalized = key.lower().replace("-", "_")
    return any(part in normalized for part in SECRET_KEY_PARTS)


class Redactor:
    """The processor: ``Redactor(secrets)(logger, method_name, event_dict)``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        variants: set[str] = set()
        for secret in secrets:
            if len(secret) < MIN_SECRET_LENGTH:
                continue
            variants.add(secret)
            variants.add(quote(secret, safe=""))
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = sorted(variants, key=len, reverse=True)
        self._cache: dict[tuple[str, bool], str] = {}

    def redact_text(self, text: str, *, personal: bool = True) -> str:
        """``text`` with every rule applied (e-mail masking only when ``personal``)."""
        if len(text) > _CACHEABLE_LENGTH:
            return self._redact_text(text, personal)
        cached = self._cache.get((text, personal))
        if cached is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            cached = self._cache[(text, personal)] = self._redact_text(text, personal)
        return cached

    def _redact_text(self, text: str, personal: bool) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        if "://" in text:
            text = _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:" + MASK + "@", text)
        if _has_digit(text):
            text = _CARD_CANDIDATE.sub(_mask_card, text)
        if personal and "@" in text:
            text = _EMAIL.sub(r"\g<first>" + MASK + r"@\g<domain>", text)
        return text

    def redact_value(self, value: Any, *, personal: bool = True) -> Any:
        """``value`` redacted recursively; non-JSON objects become redacted strings."""
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.redact_text(value, personal=personal)
        if isinstance(value, Mapping):
            return {
                str(key): self._redact_field(str(key), item) for key, item in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self.redact_value(item, personal=personal) for item in value]
        return self.redact_text(str(value), personal=personal)

    def _redact_field(self, key: str, value: Any) -> Any:
        if value is not None and value != "" and is_secret_key(key):
            return REDACTED
        return self.redact_value(value, personal=key not in _NOT_PERSONAL_KEYS)

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            if key not in _PIPELINE_KEYS:
                event_dict[key] = self._redact_field(key, event_dict[key])
        return event_dict
