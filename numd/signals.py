"""Clean starts and exits under twistd: start-up failures as one line, exit 0 on SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import threading
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger


class ExitZeroOnSignal(Service):
    """Makes SIGTERM and SIGINT stop the reactor cleanly so that twistd exits 0.

    twistd's own handlers re-raise the signal after shutdown (exit status 143 for
    SIGTERM), which supervisors and scripts read as a failure. These handlers are
    installed after the reactor's, once it runs, and stop it the same way, so
    every service still stops in order.
    """

    log = Logger()
    name = "exit-zero-on-signal"

    def __init__(self, reactor: IReactorCore) -> None:
        self._reactor = reactor
        self._previous: dict[int, Any] = {}

    def startService(self) -> None:
        """Install the handlers now (the listeners already accept connections, and a
        signal may come before the reactor runs) and again once the reactor runs,
        since it installs its own on start-up."""
        super().startService()
        self._install()
        self._reactor.callWhenRunning(self._install)

    def stopService(self) -> None:
        """Put back the handlers that were there before."""
        super().stopService()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _install(self) -> None:
        if not self.running or threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.log.info("received {signal}, shutting down", signal=signal.Signals(signum).name)
        # From a signal handler the reactor may be mid-iteration or not yet
        # running: callFromThread is safe in both cases.
        call_from_thread = getattr(self._reactor, "callFromThread", None)
        if call_from_thread is not None:
            call_from_thread(self._reactor.stop)


class StartupError(SystemExit, Exception):
    """numd cannot start (busy port, unusable database): a one-line reason, exit status 1.

    A `SystemExit`, so ``twistd -n`` prints just the message, no traceback; and an
    `Exception`, so a daemonizing twistd reports it to the waiting parent process
    (which then exits 1 with the message) instead of leaving it waiting forever.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.code)
