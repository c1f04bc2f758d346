"""A writer thread: blocking file work run in order, off the reactor thread.

The store's commits and the message log's writes wait on the disk (an fsync can
take many milliseconds); each of them gets one `Writer`, so the reactor only
hands work over and hears back. With a reactor that cannot take calls from
other threads (a test's `Clock` or memory reactor), work runs at once, in place,
so tests stay synchronous and deterministic.

A writer's thread runs at a lower scheduling priority than the reactor thread
(`WRITER_NICENESS` more): when both want the same core, as when numd is pinned
to one, the kernel runs the reactor first, so a commit or a log write delays no
client's answer by more than the reactor's own work. The writer still gets the
core whenever the reactor waits for the network, which is most of the time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")

Runner = Callable[[Callable[[], Any]], "Deferred[Any]"]
"""Runs a function on a writer and fires with its result (on the reactor thread)."""

WRITER_NICENESS = 10
"""How much nicer (lower priority) than the process a writer's thread runs."""


def lower_thread_priority(by: int = WRITER_NICENESS) -> None:
    """Make the calling thread `by` nicer than it is (Linux schedules threads apart).

    Raising one's niceness needs no privilege. Where the system has no
    per-thread niceness, nothing changes.
    """
    get_native_id = getattr(threading, "get_native_id", None)
    if get_native_id is None or not hasattr(os, "setpriority"):
        return
    thread = get_native_id()
    try:
        niceness = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, niceness + by))
    except OSError:
        pass


class Writer:
    """Runs functions one at a time, in the order given, on one thread of its own."""

    def __init__(self, reactor: object, name: str) -> None:
        self._threads = reactor if IReactorFromThreads.providedBy(reactor) else None
        """The reactor, if it takes calls from threads (a test's Clock does not)."""
        self._core = reactor if IReactorCore.providedBy(reactor) else None
        self.name = name
        self._pool: ThreadPool | None = None
        self._shutdown_trigger: Any = None

    @property
    def threaded(self) -> bool:
        """Whether work runs on a thread (else in place, at once)."""
        return self._threads is not None

    def start(self) -> None:
        """Start the thread (if the reactor can take calls from threads)."""
        if not self.threaded or self._pool is not None:
            return
        self._pool = ThreadPool(1, 1, name=self.name)
        self._pool.start()
        self._pool.callInThread(lower_thread_priority)  # the pool's one thread, before any work
        if self._core is not None:
            # Should the reactor stop without stopping us, the thread must not keep
            # the process alive.
            self._shutdown_trigger = self._core.addSystemEventTrigger(
                "during", "shutdown", self._pool.stop
            )

    def run(self, work: Callable[[], T]) -> Deferred[T]:
        """Run `work()` after everything given before; fire (on the reactor thread) with its result."""
        if self._pool is None or self._threads is None:
            return maybeDeferred(work)
        return deferToThreadPool(self._threads, self._pool, work)

    def stop(self) -> None:
        """Let the thread finish what it was given, then end it (blocks until it has)."""
        if self._pool is None:
            return
        if self._shutdown_trigger is not None and self._core is not None:
            self._core.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        self._pool.stop()
        self._pool = None
