"""A writer thread: blocking file work run in order, off the reactor thread.

The store's commits and the message log's writes wait on the disk (an fsync can
take many milliseconds); each of them gets one `Writer`, so the reactor only
hands work over and hears back. With a reactor that cannot take calls from
other threads (a test's `Clock` or memory reactor), work runs at once, in place,
so tests stay synchronous and deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")

Runner = Callable[[Callable[[], Any]], "Deferred[Any]"]
"""Runs a function on a writer and fires with its result (on the reactor thread)."""


class Writer:
    """Runs functions one at a time, in the order given, on one thread of its own."""

    def __init__(self, reactor: object, name: str) -> None:
        self._reactor = reactor
        self.name = name
        self._pool: ThreadPool | None = None
        self._shutdown_trigger: Any = None

    @property
    def threaded(self) -> bool:
        """Whether work runs on a thread (else in place, at once)."""
        return IReactorFromThreads.providedBy(self._reactor)

    def start(self) -> None:
        """Start the thread (if the reactor can take calls from threads)."""
        if not self.threaded or self._pool is not None:
            return
        self._pool = ThreadPool(1, 1, name=self.name)
        self._pool.start()
        if IReactorCore.providedBy(self._reactor):
            # Should the reactor stop without stopping us, the thread must not keep
            # the process alive.
            self._shutdown_trigger = self._reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
                "during", "shutdown", self._pool.stop
            )

    def run(self, work: Callable[[], T]) -> Deferred[T]:
        """Run `work()` after everything given before; fire (on the reactor thread) with its result."""
        if self._pool is None:
            return maybeDeferred(work)
        return deferToThreadPool(self._reactor, self._pool, work)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Let the thread finish what it was given, then end it (blocks until it has)."""
        if self._pool is None:
            return
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)  # type: ignore[attr-defined]
            self._shutdown_trigger = None
        self._pool.stop()
        self._pool = None
