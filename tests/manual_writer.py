"""A writer thread stand-in for tests: jobs wait until the test finishes them, in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred


class ManualWriter:
    """Stands in for the writer thread: jobs wait until the test finishes them, in order."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[], Any], Deferred[Any]]] = []
        self.fail_next = False

    def __call__(self, work: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append((work, d))
        return d

    def finish(self) -> None:
        """Run the oldest job (or fail it, if `fail_next` is set) and fire its Deferred."""
        work, d = self.jobs.pop(0)
        if self.fail_next:
            self.fail_next = False
            d.errback(OSError("disk full"))
        else:
            maybeDeferred(work).chainDeferred(d)

    def finish_all(self) -> None:
        """Finish jobs until none is left (finishing one may start the next)."""
        while self.jobs:
            self.finish()
