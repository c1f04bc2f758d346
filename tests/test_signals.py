"""numd.signals: clean exits on SIGTERM/SIGINT, and start-up errors that say why."""

from __future__ import annotations

import signal

from twisted.internet.testing import MemoryReactorClock

from numd.signals import ExitZeroOnSignal, StartupError


class ThreadSafeMemoryReactor(MemoryReactorClock):
    """A memory reactor that records callFromThread calls."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: list[object] = []

    def callFromThread(self, f: object, *args: object) -> None:
        self.from_threads.append(f)


def test_handlers_are_installed_at_start_before_the_reactor_runs() -> None:
    """A SIGTERM that comes before the reactor runs still stops it cleanly; stop restores the old handlers."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    reactor = ThreadSafeMemoryReactor()
    service = ExitZeroOnSignal(reactor)
    service.startService()
    try:
        handler = signal.getsignal(signal.SIGTERM)
        assert handler == service._handle
        assert signal.getsignal(signal.SIGINT) == service._handle
        handler(signal.SIGTERM, None)  # type: ignore[operator]
        assert reactor.from_threads == [reactor.stop]
        assert reactor.whenRunningHooks  # installed again once the reactor runs
    finally:
        service.stopService()
    assert {s: signal.getsignal(s) for s in before} == before


def test_startup_error_is_both_an_exit_and_an_exception() -> None:
    """twistd -n prints only the message; a daemonizing twistd reports it to its parent."""
    error = StartupError("numd: cannot listen on 127.0.0.1:2004: busy")
    assert isinstance(error, SystemExit) and isinstance(error, Exception)
    assert str(error) == error.code == "numd: cannot listen on 127.0.0.1:2004: busy"
