"""Start-up failures reach the terminal whole (`numd.startup.preflight`): twistd's files and numd's
ports are checked before twistd forks, and what fails in the daemon all the same is written whole
to the terminal twistd was started from. Read from real `twistd` subprocesses, daemonized."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from twisted.python import usage

from numd.signals import StartupError
from numd.startup.preflight import StartupReport, TwistdRun, check_before_start, tcp_address

from .daemon import TWISTD, subprocess_env


@contextmanager
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something listens on for the duration."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def run_twistd(directory: Path, *args: str) -> tuple[int, str]:
    """Run twistd in `directory` (daemonizing unless `args` say -n) until its first process exits.

    Returns the exit status and everything printed. A daemon that did start is
    killed, through its pid file, before this returns.
    """
    pid_file = directory / "numd.pid"
    try:
        result = subprocess.run(
            [*TWISTD, *args],
            cwd=directory,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=30,
        )
    finally:
        _kill_daemon(pid_file)
    return result.returncode, result.stdout


def _kill_daemon(pid_file: Path) -> None:
    """Kill the daemon whose pid `pid_file` holds, if one started, and wait (bounded) for its end."""
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def numd_args(*args: str) -> list[str]:
    """`numd` with ports that are always free and no database, then `args`."""
    return [
        "numd",
        "--db", ":memory:",
        "--listen", "tcp:0:interface=127.0.0.1",
        "--api-listen", "tcp:0:interface=127.0.0.1",
        *args,
    ]  # fmt: skip


def daemonized(directory: Path) -> list[str]:
    """twistd's options for a daemon whose pid and log files are in `directory`."""
    return ["--pidfile", str(directory / "numd.pid"), "--logfile", str(directory / "twistd.log")]


@pytest.mark.parametrize("option", ["--listen", "--api-listen", "--legacy-array-listen"])
def test_daemonized_busy_port_is_one_whole_line_and_status_1(tmp_path: Path, option: str) -> None:
    """Without -n, a busy port is said in one whole, readable line (no bytes repr, nothing cut
    off), with exit status 1, before twistd forks: no daemon, no pid file."""
    with busy_port() as port:
        status, output = run_twistd(
            tmp_path,
            *daemonized(tmp_path),
            *numd_args(option, f"tcp:{port}:interface=127.0.0.1"),
        )
    assert (status, output) == (
        1,
        f"numd: cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use\n",
    )
    assert not (tmp_path / "numd.pid").exists()


@pytest.mark.parametrize("daemonize", [True, False], ids=["daemonizing", "-n"])
@pytest.mark.parametrize("option", ["--logfile", "--pidfile"])
def test_log_or_pid_file_in_a_missing_directory_is_one_line_and_status_1(
    tmp_path: Path, option: str, daemonize: bool
) -> None:
    """twistd's --logfile or --pidfile in a directory that does not exist: one line naming it,
    no traceback, exit status 1."""
    files = {"--pidfile": str(tmp_path / "numd.pid"), "--logfile": str(tmp_path / "twistd.log")}
    files[option] = str(tmp_path / "missing" / "file")
    twistd_args = [arg for name, path in files.items() for arg in (name, path)]
    status, output = run_twistd(
        tmp_path, *([] if daemonize else ["-n"]), *twistd_args, *numd_args()
    )
    assert (status, output) == (
        1,
        f"numd: twistd's {option}: cannot write '{tmp_path}/missing/file': "
        f"directory {tmp_path}/missing does not exist\n",
    )


def test_a_failure_in_the_daemon_reaches_the_terminal_whole(tmp_path: Path) -> None:
    """What only fails once twistd has forked (here a file that is not a database, with a long
    path) is written whole to the terminal first; twistd's own shortened report follows."""
    directory = tmp_path / ("a-directory-with-a-long-name-" * 3)
    directory.mkdir()
    (directory / "numd.db").write_bytes(b"not a database" * 1000)
    status, output = run_twistd(
        directory, *daemonized(directory), *numd_args("--db", str(directory / "numd.db"))
    )
    first, *rest = output.splitlines()
    assert status == 1
    assert first == f"numd: cannot use the database {directory}/numd.db: file is not a database"
    assert len(first) > 100  # longer than twistd's status pipe carries
    assert "Traceback" not in output
    assert not (directory / "numd.pid").exists()


def test_a_daemon_that_starts_leaves_the_terminal_silent(tmp_path: Path) -> None:
    """A daemonizing twistd that starts numd prints nothing and exits 0 (the daemon runs on, its
    pid in the pid file, until the test kills it)."""
    pid_file = tmp_path / "numd.pid"
    try:
        result = subprocess.run(
            [*TWISTD, *daemonized(tmp_path), *numd_args()],
            cwd=tmp_path,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
        assert int(pid_file.read_text()) > 0
    finally:
        _kill_daemon(pid_file)


# -- the parts, without a subprocess -------------------------------------------------------


class _Plugin(usage.Options):
    """A plugin's options."""


class _Twistd(usage.Options):
    """twistd's options that numd reads (as twistd's ServerOptions has them)."""

    optFlags = [["nodaemon", "n", ""], ["syslog", None, ""]]
    optParameters = [
        ["logfile", "l", None, ""],
        ["pidfile", None, "twistd.pid", ""],
        ["logger", None, None, ""],
        ["chroot", None, None, ""],
    ]
    subCommands = [["numd", None, _Plugin, ""]]


def twistd_run(*args: str) -> TwistdRun | None:
    """The `TwistdRun` of ``twistd ARGS numd``."""
    twistd = _Twistd()
    twistd.parseOptions([*args, "numd"])
    return TwistdRun.of(twistd.subOptions)


def test_twistd_run_is_read_from_twistds_options() -> None:
    """Which files twistd will write, and whether it forks, as twistd itself decides them."""
    assert twistd_run() == TwistdRun(True, "twistd.log", False, "twistd.pid")
    assert twistd_run("-n") == TwistdRun(False, None, False, "twistd.pid")
    assert twistd_run("-n", "--logfile", "x.log", "--pidfile=") == TwistdRun(
        False, "x.log", True, None
    )
    assert twistd_run("--syslog") == TwistdRun(True, None, False, "twistd.pid")
    assert twistd_run("--chroot", "/srv") == TwistdRun(True, "twistd.log", False, None)
    assert TwistdRun.of(_Plugin()) is None  # not parsed by twistd (tests, numd.tac)


def test_only_a_forking_twistd_checks_ports() -> None:
    """With -n a busy port is left to the listener itself (which says it the same way)."""
    with busy_port() as port:
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        check_before_start(TwistdRun(False, None, False, None), [endpoint])
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port}"):
            check_before_start(TwistdRun(True, None, False, None), ["tcp:0", endpoint])


def test_tcp_address_of_endpoint_strings() -> None:
    """The interface and port numd's TCP and TLS endpoints bind; other kinds are not probed."""
    assert tcp_address("tcp:2004:interface=127.0.0.1:backlog=4096") == (
        socket.AF_INET,
        "127.0.0.1",
        2004,
    )
    assert tcp_address("tcp:port=8080") == (socket.AF_INET, "", 8080)
    assert tcp_address("tcp6:8080") == (socket.AF_INET6, "::", 8080)
    assert tcp_address("tcp:8080:interface=\\:\\:1") == (socket.AF_INET6, "::1", 8080)
    assert tcp_address("ssl:8443:privateKey=k.pem") == (socket.AF_INET, "", 8443)
    assert tcp_address("unix:/run/numd.sock") is None
    assert tcp_address("systemd:domain=INET:index=0") is None


def test_report_writes_only_when_the_terminal_is_no_longer_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A report writes the failure to the kept descriptor when this process's stderr is another
    file (a daemon's /dev/null), and nothing when it is the same (``-n``: the `StartupError`
    prints itself); either way it closes the descriptor."""
    read_end, write_end = os.pipe()
    try:
        StartupReport(write_end).failed("numd: it failed")  # this process's stderr is not the pipe
        assert os.read(read_end, 100) == b"numd: it failed\n"
    finally:
        os.close(read_end)
    with pytest.raises(OSError):
        os.fstat(write_end)
    kept = os.dup(2)
    StartupReport(kept).failed("numd: printed by SystemExit instead")
    assert capfd.readouterr().err == ""
    with pytest.raises(OSError):
        os.fstat(kept)
