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
from collections.abc import Callable, Iterable, Mapping, MutableMapping
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

#: Values with nothing to redact in them (exact types: a subclass may print anything).
_PLAIN_NUMBERS = frozenset({int, float, bool})

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
#: Task, correlation and root ids: three per lifecycle line, each new. A UUID cannot hold a
#: card number (32 hex digits in 8-4-4-4-12 groups), an e-mail address or a URL, so only
#: the configured secrets are looked for in it.
_is_uuid = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}").fullmatch
_UUID_LENGTH = 36
_UUID_CHARACTERS = "0123456789abcdefABCDEF-"


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
        # Only these can occur inside a UUID (hex digits and dashes): usually none, so the
        # three ids on every lifecycle line are passed through without a search.
        self._uuid_secrets = [secret for secret in self._secrets
                              if not secret.strip(_UUID_CHARACTERS)]
        # One cache per kind of field: e-mail masking applies to one and not the other.
        self._caches: dict[bool, dict[str, str]] = {True: {}, False: {}}

    def redact_text(self, text: str, *, personal: bool = True) -> str:
        """``text`` with every rule applied (e-mail masking only when ``personal``)."""
        cache = self._caches[personal]
        cached = cache.get(text)
        if cached is not None:
            return cached
        length = len(text)
        if length == _UUID_LENGTH and _is_uuid(text):
            # Not cached: an id is seen on a few lines and would push the names out.
            return self._mask_secrets(text, self._uuid_secrets) if self._uuid_secrets else text
        redacted = self._redact_text(text, personal)
        if length <= _CACHEABLE_LENGTH:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[text] = redacted
        return redacted

    def _mask_secrets(self, text: str, secrets: list[str] | None = None) -> str:
        for secret in self._secrets if secrets is None else secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def _redact_text(self, text: str, personal: bool) -> str:
        text = self._mask_secrets(text)
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

    def _string_field(self, key: str, value: str) -> str:
        if value and is_secret_key(key):
            return REDACTED
        return self.redact_text(value, personal=key not in _NOT_PERSONAL_KEYS)

    def string_field(self, key: str, value: str) -> str:
        """What the processor makes of the string ``value`` of a field named ``key``."""
        if key in _PIPELINE_KEYS:
            return value
        return self._string_field(key, value)

    def untouched_uuid_test(self) -> Callable[[str], object] | None:
        """A test true for a 36-character string the processor leaves exactly as it is
        because it is a UUID; None when a configured secret could hide inside one."""
        return None if self._uuid_secrets else _is_uuid

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        # The hot path of every log line: plain strings, the common case, skip the general
        # walk. Values are replaced in place (the keys stay): no copy of the dict per line.
        for key, value in event_dict.items():
            if key in _PIPELINE_KEYS or value is None:
                continue
            kind = type(value)
            if kind in _PLAIN_NUMBERS:
                continue
            if kind is str:
                event_dict[key] = self._string_field(key, value)
            else:
                event_dict[key] = self._redact_field(key, value)
        return event_dict
