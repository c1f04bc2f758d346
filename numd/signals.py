"""Clean starts and exits under twistd: usage mistakes as two lines (exit 2), start-up failures
as one line (exit 1), exit 0 on SIGTERM/SIGINT, and SIGHUP to reopen the log files after an
outside rotation (``logrotate``).

Shared by the daemon and the client (``twistd numd``, ``numd.tac``, ``numd-client`` and
``twistd numd-client``), so a mistake reads the same whichever way numd was started.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorCore
from twisted.logger import FileLogObserver, Logger, LogPublisher, globalLogPublisher
from twisted.python import usage
from twisted.python.logfile import BaseLogFile

from numd import version_line


class _SignalHandlers(Service):
    """Installs `_handle` for `signals` while running, and puts the previous handlers back."""

    signals: tuple[int, ...] = ()

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
        for signum in self.signals:
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)

    def _handle(self, signum: int, frame: object) -> None:
        raise NotImplementedError

    def _call_from_signal(self, f: Callable[[], object]) -> None:
        """Run `f` on the reactor thread soon.

        From a signal handler the reactor may be mid-iteration or not yet
        running: callFromThread is safe in both cases.
        """
        call_from_thread = getattr(self._reactor, "callFromThread", None)
        if call_from_thread is not None:
            call_from_thread(f)


class ExitZeroOnSignal(_SignalHandlers):
    """Makes SIGTERM and SIGINT stop the reactor cleanly so that twistd exits 0.

    twistd's own handlers re-raise the signal after shutdown (exit status 143 for
    SIGTERM), which supervisors and scripts read as a failure. These handlers are
    installed after the reactor's, once it runs, and stop it the same way, so
    every service still stops in order.
    """

    log = Logger()
    name = "exit-zero-on-signal"
    signals = (signal.SIGTERM, signal.SIGINT)

    def _handle(self, signum: int, frame: object) -> None:
        self.log.info("received {signal}, shutting down", signal=signal.Signals(signum).name)
        self._call_from_signal(self._reactor.stop)


Reopener = Callable[[], "defer.Deferred[Any] | None"]
"""Reopens one log file (on the reactor thread); may return a Deferred that fires once done."""


class ReopenLogsOnHangup(_SignalHandlers):
    """Makes SIGHUP reopen numd's log files, for ``logrotate`` (move, then SIGHUP).

    Without a handler SIGHUP would end the daemon at once, without closing its
    clients or flushing its log. With it, the daemon keeps serving; each of the
    `reopeners` runs on the reactor thread (the message log hands its reopening
    to its writer thread, after the records buffered before the signal), and one
    that fails is logged, not raised, so the others still run.
    """

    log = Logger()
    name = "reopen-logs-on-hangup"
    signals = (signal.SIGHUP,)

    def __init__(self, reactor: IReactorCore, reopeners: Sequence[Reopener]) -> None:
        super().__init__(reactor)
        self.reopeners = list(reopeners)

    def _handle(self, signum: int, frame: object) -> None:
        self._call_from_signal(self.reopen)

    def reopen(self) -> defer.Deferred[None]:
        """Reopen every log file; fires once all are done (failures are logged)."""
        self.log.info("received SIGHUP, reopening the log files")
        done = []
        for reopener in self.reopeners:
            d = defer.maybeDeferred(reopener)
            d.addErrback(lambda failure: self.log.failure("could not reopen a log file", failure))
            done.append(d)
        return defer.gatherResults(done).addCallback(
            lambda _: self.log.info("log files reopened")  # in the new files
        )


def twistd_log_file(publisher: LogPublisher = globalLogPublisher) -> BaseLogFile | None:
    """The log file twistd writes its own log to, if it writes one (else None).

    twistd gives no handle on it, so it is found the way twistd set it up: for
    ``--logfile PATH`` (or its default ``twistd.log`` when it daemonizes) twistd's
    ``AppLogger`` opens a `twisted.python.logfile.LogFile`, wraps it in a
    `textFileLogObserver` and passes that to ``globalLogBeginner.beginLoggingTo``,
    which adds it to the global log publisher. This reads the publisher's
    observers and each `FileLogObserver`'s file. Both attributes
    (``LogPublisher._observers``, ``FileLogObserver._outFile``) are private to
    Twisted and read with `getattr`: if a later Twisted renames them, this returns
    None and twistd's own SIGUSR1 (which rotates that file itself) remains. With
    ``-n`` and no ``--logfile``, or ``--logfile -``, twistd writes to stdout: None.
    """
    for observer in getattr(publisher, "_observers", ()):
        if isinstance(observer, FileLogObserver):
            out = getattr(observer, "_outFile", None)
            if isinstance(out, BaseLogFile):
                return out
    return None


def reopen_log_file(find: Callable[[], object]) -> Reopener:
    """A reopener for the `twisted.python.logfile` file that `find()` gives when called.

    For twistd's log (`twistd_log_file`) and the HTTP access log. The file is
    reopened on the reactor thread, where twistd's own SIGUSR1 rotates it too;
    anything else (no file, stdout, a closed file) is left alone. `LogFile.reopen`
    closes the file before it opens the new one, and a file it cannot open leaves
    it closed for good (every later event would fail): so it is only called when
    the directory is writable, else an `OSError` says why and the old file stays.
    """

    def reopen() -> None:
        log_file = find()
        if not isinstance(log_file, BaseLogFile) or log_file.closed:
            return
        path = log_file.path
        if not os.access(log_file.directory, os.W_OK) or (
            os.path.exists(path) and not os.access(path, os.W_OK)
        ):
            raise PermissionError(errno.EACCES, "cannot reopen: not writable", path)
        log_file.reopen()

    return reopen


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


USAGE_STATUS = 2
"""Exit status of a usage mistake (an unknown option, a bad value), as for most Unix commands."""

_TYPE_ENFORCEMENT = "Parameter type enforcement failed: "
"""What `usage.Options` puts before a coercer's `ValueError`."""

_GETOPT_ERRORS = [
    (re.compile(r"option (\S+) not recognized"), r"\1: no such option"),
    (re.compile(r"option (\S+) requires argument"), r"\1: needs a value"),
    (re.compile(r"option (\S+) must not have an argument"), r"\1: takes no value"),
    (re.compile(r"option (\S+) not a unique prefix"), r"\1: more than one option starts with it"),
]
"""`getopt`'s messages (which `usage.Options` passes on), said as numd says its own."""


def usage_problem(error: usage.UsageError) -> str:
    """The one-line problem of a usage error: the option first, without `usage.Options`' prefix."""
    text = str(error)
    if text.startswith(_TYPE_ENFORCEMENT):
        text = text[len(_TYPE_ENFORCEMENT) :]
    for pattern, replacement in _GETOPT_ERRORS:
        if pattern.fullmatch(text):
            return pattern.sub(replacement, text)
    return text


def _twistds_own(error: usage.UsageError, twistd: usage.Options) -> usage.UsageError:
    """`error`, or, for an option of twistd's own given after the plugin's name, where it goes.

    ``twistd -n numd-client --connect --logfile client.log`` is a common slip.
    """
    unknown = re.fullmatch(r"option -(-?)(\S+) not recognized", str(error))
    if unknown is None:
        return error
    long_option, name = unknown[1] == "-", unknown[2]
    if long_option:
        known = any(option.rstrip("=") == name for option in twistd.longOpt)
    else:
        known = name in twistd.shortOpt.replace(":", "")
    if not known:
        return error
    dashes = "--" if long_option else "-"
    return usage.UsageError(
        f"{dashes}{name}: an option of twistd's, which goes before `{twistd.subCommand}`"
    )


def exit_on_usage_error(
    error: usage.UsageError,
    command: str,
    help_command: str | None = None,
    stderr: TextIO | None = None,
) -> NoReturn:
    """Print `error` in two lines, the problem then where the help is, and exit with status 2.

    ``numd-client: --id: 'abc' is not an integer`` then ``see `numd-client --help```:
    the one useful line first, not after 80 lines of help.
    """
    out = stderr if stderr is not None else sys.stderr
    out.write(f"{command}: {usage_problem(error)}\nsee `{help_command or command} --help`\n")
    out.flush()
    raise SystemExit(USAGE_STATUS)


class TwistdOptions(usage.Options):
    """Options of a twistd plugin (numd's two) whose usage errors print two lines and exit 2.

    twistd catches a plugin's `usage.UsageError`, prints the whole help with the
    error last, and exits 1. Parsed by twistd (the options then have twistd's
    own as their ``parent``), these options print the error first, with a
    pointer to ``--help`` (`exit_on_usage_error`), and end the process with
    status 2 (a `SystemExit`, which twistd lets through). Parsed without a
    parent (tests, ``numd.tac``, the ``numd-client`` command) they raise the
    error as usual, for the caller to report.

    ``--version`` prints numd's version, not Twisted's.
    """

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse `options`; under twistd, a usage error ends the process (status 2)."""
        parent = self.parent
        if parent is None:
            super().parseOptions(options)
            return
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            exit_on_usage_error(_twistds_own(e, parent), f"twistd {parent.subCommand}")

    def opt_version(self) -> NoReturn:
        """Display numd's version and exit."""
        print(version_line())
        raise SystemExit(0)
