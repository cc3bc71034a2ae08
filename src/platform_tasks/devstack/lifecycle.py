"""The start/stop shape every local-stack service shares, and the ``with`` support it gives."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Service:
    """Something the local stack starts and must stop; ``with service:`` does both."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
