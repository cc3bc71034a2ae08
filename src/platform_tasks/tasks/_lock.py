"""A Redis lock owned by a random token, released only by its owner.

Plain ``SET NX EX`` to take it. Releasing is compare-and-delete in one Lua call: a run whose
lock expired (it outlived the timeout) must not delete the lock a second run now holds.
"""

from __future__ import annotations

import secrets

import redis

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class OwnedLock:
    """One attempt at a lock: :meth:`acquire` once, then :meth:`release`."""

    def __init__(self, client: redis.Redis, key: str, timeout_seconds: int) -> None:
        self._client = client
        self.key = key
        self.timeout_seconds = timeout_seconds
        self.token = secrets.token_hex(16)

    def acquire(self) -> bool:
        """Take the lock if nobody holds it; it frees itself after ``timeout_seconds``."""
        return bool(self._client.set(self.key, self.token, nx=True, ex=self.timeout_seconds))

    def release(self) -> bool:
        """Delete the lock if we still own it; False when it expired or another run has it."""
        released = self._client.eval(_RELEASE, 1, self.key, self.token)
        return bool(released)
