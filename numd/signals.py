"""Clean starts and exits under twistd: start-up failures as one line, exit 0 on SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import threading

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

    def startService(self) -> None:
        """Install the handlers as soon as the reactor runs (after its own)."""
        super().startService()
        self._reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.log.info("received {signal}, shutting down", signal=signal.Signals(signum).name)
        self._reactor.callFromThread(self._reactor.stop)  # type: ignore[attr-defined]


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
