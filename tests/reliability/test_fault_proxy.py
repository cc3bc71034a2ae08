"""The fault proxy does what each fault says, against a plain echo server (no Redis)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest
from fault_proxy import FaultProxy, Mode

from platform_tasks.devstack.ports import LOOPBACK


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: _EchoServer = self.server  # type: ignore[assignment]
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            server.received.append(data)
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__((LOOPBACK, 0), _Echo)
        self.received: list[bytes] = []


@pytest.fixture
def echo() -> Iterator[_EchoServer]:
    server = _EchoServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: _EchoServer) -> Iterator[FaultProxy]:
    host, port = echo.server_address[:2]
    with FaultProxy((str(host), int(port))) as running:
        yield running


def connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=timeout)


def closed(client: socket.socket) -> bool:
    """Whether the proxy closed ``client``'s connection (an end of stream or a reset)."""
    client.settimeout(2.0)
    try:
        return client.recv(100) == b""
    except ConnectionError:
        return True


def roundtrip(client: socket.socket, payload: bytes) -> bytes:
    client.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = client.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_it_forwards_both_ways(proxy: FaultProxy) -> None:
    with connect(proxy) as client:
        assert roundtrip(client, b"hello") == b"hello"
    assert proxy.mode is Mode.FORWARD


def test_a_stall_moves_nothing_and_loses_nothing(proxy: FaultProxy, echo: _EchoServer) -> None:
    with connect(proxy, timeout=0.5) as client:
        assert roundtrip(client, b"before") == b"before"
        proxy.stall()
        client.sendall(b"during")
        with pytest.raises(TimeoutError):
            client.recv(100)
        assert b"during" not in b"".join(echo.received)

        proxy.forward()
        client.settimeout(2.0)
        assert client.recv(100) == b"during"


def test_dropped_replies_reach_the_server_only(proxy: FaultProxy, echo: _EchoServer) -> None:
    with connect(proxy, timeout=0.5) as client:
        proxy.drop_replies()
        client.sendall(b"request")
        with pytest.raises(TimeoutError):
            client.recv(100)
        assert b"request" in b"".join(echo.received)

        # Healing cuts the damaged connection: its byte stream has a hole in it.
        proxy.forward()
        assert closed(client)
    with connect(proxy) as fresh:
        assert roundtrip(fresh, b"again") == b"again"


def test_a_cut_resets_every_open_connection(proxy: FaultProxy) -> None:
    clients = [connect(proxy) for _ in range(3)]
    for client in clients:
        assert roundtrip(client, b"x") == b"x"
    assert proxy.cut() == 3
    for client in clients:
        assert closed(client)
        client.close()
    with connect(proxy) as fresh:
        assert roundtrip(fresh, b"new") == b"new"


def test_a_delay_holds_each_chunk_back(proxy: FaultProxy) -> None:
    proxy.delay(0.3)
    with connect(proxy) as client:
        started = time.monotonic()
        assert roundtrip(client, b"slow") == b"slow"
        # Once on the way up and once on the way back.
        assert time.monotonic() - started >= 0.55


def test_refusing_closes_new_connections_only(proxy: FaultProxy) -> None:
    with connect(proxy) as old:
        assert roundtrip(old, b"up") == b"up"
        proxy.refuse()
        with connect(proxy) as new:
            assert closed(new)
        assert roundtrip(old, b"still") == b"still"
        proxy.forward()
        with connect(proxy) as later:
            assert roundtrip(later, b"back") == b"back"


def test_a_down_server_looks_like_a_closed_connection() -> None:
    port = socket.socket()
    port.bind((LOOPBACK, 0))
    address = port.getsockname()
    port.close()
    with FaultProxy(address) as proxy, connect(proxy) as client:
        assert closed(client)
