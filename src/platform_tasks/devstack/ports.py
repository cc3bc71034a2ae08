"""Free TCP ports on the loopback interface."""

from __future__ import annotations

import socket
from contextlib import ExitStack

LOOPBACK = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that nothing listens on right now.

    All sockets stay bound until every port is picked, so the kernel cannot hand out one port
    twice. A port can still be taken by someone else before its server binds it; on a
    developer's loopback that race is rare enough to accept.
    """
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_port() -> int:
    """One port that nothing listens on right now."""
    return free_ports(1)[0]
