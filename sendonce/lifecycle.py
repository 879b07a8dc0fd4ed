"""``with`` for the project's background services: started on entry, stopped on exit.

The local broker, the webhook receiver's thread and the fake schema registry are
started and stopped the same way in tests, the demo and the benchmarks; one base
class gives them the context-manager protocol instead of a copy in each. Foundation:
imports nothing of sendonce's.
"""

from __future__ import annotations

from typing import Any, Self


class Service:
    """A service with ``start()`` and ``stop()``; ``with service:`` runs it for the block.

    ``stop()`` runs however the block ends, so a failing test or demo step never leaves
    a broker or a listener behind.
    """

    def start(self) -> Any:
        """Start the service (subclasses); the return value is the subclass's own."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the service and release what it holds (subclasses)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
