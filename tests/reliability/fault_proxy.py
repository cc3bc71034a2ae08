"""A TCP proxy on loopback that injects network faults between a client and a server.

The suite puts it between a worker (or a producer, or a replica) and a Redis node:

* ``forward()``: pass bytes both ways (the default);
* ``stall()``: a partition as TCP sees one. No byte moves in either direction, none is
  dropped, and connections stay open: peers notice only through their own timeouts, and
  when the partition heals (``forward()``) what was in flight arrives, as TCP retransmits;
* ``drop_replies()``: requests reach the server, its replies are thrown away (a reply lost
  on the way back); those connections are cut when the mode ends, since their byte stream
  has a hole;
* ``delay(seconds)``: every chunk waits that long before it is passed on;
* ``refuse()``: new connections are closed at once (the server looks down);
* ``cut()``: reset every open connection now, whatever the mode.

It runs an asyncio loop in a daemon thread; the methods are called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, Self

from platform_tasks.devstack.ports import LOOPBACK

_CHUNK = 64 * 1024


class Mode(enum.Enum):
    FORWARD = "forward"
    STALL = "stall"
    DROP_REPLIES = "drop-replies"
    DELAY = "delay"
    REFUSE = "refuse"


class _Link:
    """One proxied connection: the client's side and the server's side."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        #: Set once a reply was dropped on this link: its stream has a hole.
        self.damaged = False

    def abort(self) -> None:
        for writer in (self.client, self.server):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                # Linger 0: close with a reset, as a dropped connection looks to its peer.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
            writer.transport.abort()


class FaultProxy:
    """Listens on ``127.0.0.1:<port>`` and forwards to ``upstream``, with faults on demand."""

    def __init__(self, upstream: tuple[str, int], port: int = 0) -> None:
        self.upstream = upstream
        self._requested_port = port
        self.port = 0
        self._mode = Mode.FORWARD
        self._delay = 0.0
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        #: Bytes passed on, per direction (tests read them to see traffic happened).
        self.bytes_up = 0
        self.bytes_down = 0

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=f"fault-proxy-{self.upstream}",
                                        daemon=True)
        self._thread.start()
        self._started.wait(10.0)
        if self._error is not None:
            raise self._error
        if not self.port:
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10.0)
        if self._thread is not None:
            self._thread.join(10.0)
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def connections(self) -> int:
        return len(self._links)

    # -- faults -------------------------------------------------------------------------------

    def forward(self) -> None:
        """Heal: pass bytes both ways again (stalled bytes go on; damaged links are cut)."""
        self._set(Mode.FORWARD)

    def stall(self) -> None:
        self._set(Mode.STALL)

    def drop_replies(self) -> None:
        self._set(Mode.DROP_REPLIES)

    def delay(self, seconds: float) -> None:
        self._delay = seconds
        self._set(Mode.DELAY)

    def refuse(self) -> None:
        self._set(Mode.REFUSE)

    def cut(self) -> int:
        """Reset every open connection; how many there were."""
        return self._call(self._cut_all())

    # -- internals ----------------------------------------------------------------------------

    def _set(self, mode: Mode) -> None:
        self._call(self._switch(mode))

    def _call(self, coroutine: Coroutine[Any, Any, int]) -> int:
        loop = self._loop
        if loop is None:
            coroutine.close()
            raise RuntimeError("the fault proxy is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(10.0)

    async def _switch(self, mode: Mode) -> int:
        assert self._flowing is not None
        self._mode = mode
        if mode is Mode.STALL:
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode is Mode.FORWARD:
            damaged = [link for link in self._links if link.damaged]
            for link in damaged:
                link.abort()
            return len(damaged)
        return 0

    async def _cut_all(self) -> int:
        links = list(self._links)
        for link in links:
            link.abort()
        return len(links)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._open())
        except BaseException as error:  # reported by start()
            self._error = error
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _open(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, LOOPBACK, self._requested_port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        assert self._flowing is not None
        if self._server is not None:
            self._server.close()
        # Let stalled pumps run into the closed sockets, so each handler ends on its own:
        # a cancelled stream handler makes asyncio log a spurious error.
        self._mode = Mode.FORWARD
        self._flowing.set()
        await self._cut_all()
        handlers = list(self._handlers)
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=5.0)
            for handler in pending:
                handler.cancel()
        asyncio.get_running_loop().call_soon(asyncio.get_running_loop().stop)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(handler)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._mode is Mode.REFUSE:
            writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            # The server is down: the client sees its connection closed, as it would.
            writer.transport.abort()
            return
        link = _Link(writer, server_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(reader, server_writer, link, upstream=True),
                self._pump(server_reader, writer, link, upstream=False),
            )
        finally:
            self._links.discard(link)
            link.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    link: _Link, *, upstream: bool) -> None:
        assert self._flowing is not None
        try:
            while True:
                # Stalled: read nothing more, so the peers' kernels buffer and then push back.
                await self._flowing.wait()
                data = await reader.read(_CHUNK)
                if not data:
                    break
                # A chunk read just before a stall waits here instead of slipping through.
                await self._flowing.wait()
                if not upstream and self._mode is Mode.DROP_REPLIES:
                    link.damaged = True
                    continue
                if self._mode is Mode.DELAY:
                    await asyncio.sleep(self._delay)
                writer.write(data)
                await writer.drain()
                if upstream:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            # One side closed: close the other, so the peer sees what a direct link shows.
            link.abort()
