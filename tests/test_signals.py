"""numd.signals: clean exits on SIGTERM/SIGINT, log files reopened on SIGHUP, start-up errors that say why."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogPublisher, capturedLogs, textFileLogObserver
from twisted.python import usage
from twisted.python.logfile import LogFile

from numd import version_line
from numd.signals import (
    ExitZeroOnSignal,
    ReopenLogsOnHangup,
    StartupError,
    TwistdOptions,
    reopen_log_file,
    twistd_log_file,
    usage_problem,
)


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


def test_sighup_reopens_every_log_and_keeps_running() -> None:
    """SIGHUP runs every reopener on the reactor thread, never stops the reactor; one that
    fails is logged and the others still run; stop restores the old handler."""
    before = signal.getsignal(signal.SIGHUP)
    reactor = ThreadSafeMemoryReactor()
    calls: list[str] = []

    def broken() -> None:
        calls.append("broken")
        raise OSError("cannot open")

    service = ReopenLogsOnHangup(
        reactor, [lambda: calls.append("first"), broken, lambda: calls.append("last")]
    )
    service.startService()
    try:
        handler = signal.getsignal(signal.SIGHUP)
        assert handler == service._handle
        handler(signal.SIGHUP, None)  # type: ignore[operator]
        assert reactor.from_threads == [service.reopen] and calls == []
        with capturedLogs() as events:
            done = reactor.from_threads[0]()  # type: ignore[operator]
        assert done.called
        assert calls == ["first", "broken", "last"]
        assert [e["log_format"] for e in events if "log_failure" in e] == [
            "could not reopen a log file"
        ]
        assert not reactor.hasStopped and not reactor.hasRun
    finally:
        service.stopService()
    assert signal.getsignal(signal.SIGHUP) == before


def test_twistd_log_file_is_found_through_its_observer(tmp_path: Path) -> None:
    """twistd's --logfile is the LogFile behind the text observer twistd gave the publisher;
    a twistd that logs to stdout has none."""
    log_file = LogFile.fromFullPath(str(tmp_path / "twistd.log"))
    try:
        found = LogPublisher(lambda event: None, textFileLogObserver(log_file))
        assert twistd_log_file(found) is log_file
    finally:
        log_file.close()
    assert twistd_log_file(LogPublisher(textFileLogObserver(sys.stdout))) is None
    assert twistd_log_file(LogPublisher()) is None


def test_a_moved_twisted_log_file_is_reopened_at_its_path(tmp_path: Path) -> None:
    """After a move, reopening gives a new file at the path; a closed file is left alone."""
    path = tmp_path / "twistd.log"
    log_file = LogFile.fromFullPath(str(path))
    reopen = reopen_log_file(lambda: log_file)
    log_file.write("before\n")
    os.rename(path, tmp_path / "twistd.log.moved")
    reopen()
    log_file.write("after\n")
    log_file.close()
    reopen()  # closed: nothing happens
    assert log_file.closed
    assert (tmp_path / "twistd.log.moved").read_text() == "before\n"
    assert path.read_text() == "after\n"
    reopen_log_file(lambda: None)()  # no file (stdout, no access log): nothing to do


def test_a_twisted_log_file_that_cannot_be_reopened_stays_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory numd may not write: the reopen fails before closing anything, and
    logging goes on in the old file."""
    path = tmp_path / "twistd.log"
    log_file = LogFile.fromFullPath(str(path))
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a non-root user
    with pytest.raises(PermissionError):
        reopen_log_file(lambda: log_file)()
    monkeypatch.undo()
    log_file.write("still here\n")
    log_file.close()
    assert path.read_text() == "still here\n"


# -- usage mistakes ------------------------------------------------------------------------


def _count(value: str) -> int:
    """An integer, or an error naming the option (as numd's options do)."""
    if not value.isdigit():
        raise ValueError(f"--count: {value!r} is not an integer")
    return int(value)


class _Numbers(TwistdOptions):
    """A plugin's options with one integer option."""

    optParameters = [["count", None, 1, "How many.", _count]]


class _Twistd(usage.Options):
    """twistd's options, as far as a plugin's options see them: a parent with a subcommand."""

    subCommands = [["numbers", None, _Numbers, "A plugin."]]


@pytest.mark.parametrize(
    "message,problem",
    [
        ("Parameter type enforcement failed: --count: 'x' is not an integer", "--count: 'x' is not an integer"),
        ("option --frobnicate not recognized", "--frobnicate: no such option"),
        ("option --count requires argument", "--count: needs a value"),
        ("option --json must not have an argument", "--json: takes no value"),
        ("option --c not a unique prefix", "--c: more than one option starts with it"),
        ("--parity must be even, odd or random, not 'x'", "--parity must be even, odd or random, not 'x'"),
    ],
)  # fmt: skip
def test_usage_problem_names_the_option_first(message: str, problem: str) -> None:
    """Twisted's and getopt's wordings are said as numd says its own: the option, then what is wrong."""
    assert usage_problem(usage.UsageError(message)) == problem


def test_under_twistd_a_usage_mistake_prints_two_lines_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Parsed as a twistd subcommand, a bad value ends the process with status 2 and two lines
    on stderr; parsed alone, the same options raise the usage error for the caller."""
    with pytest.raises(SystemExit) as exited:
        _Twistd().parseOptions(["numbers", "--count", "many"])
    assert exited.value.code == 2
    assert capsys.readouterr() == (
        "",
        "twistd numbers: --count: 'many' is not an integer\nsee `twistd numbers --help`\n",
    )
    with pytest.raises(usage.UsageError):
        _Numbers().parseOptions(["--count", "many"])
    assert capsys.readouterr() == ("", "")


def test_version_option_prints_numds_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``--version`` of numd's options is numd's version (with Twisted's and Python's)."""
    with pytest.raises(SystemExit) as exited:
        _Numbers().parseOptions(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == version_line() + "\n"
