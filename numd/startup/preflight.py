"""Start-up failures that reach the terminal whole: checks before twistd forks, and a way out after.

Why this exists: without ``-n``, twistd forks before numd's services start. The
daemon child reports a failure to the waiting parent through a status pipe, as
at most 100 bytes of the ``repr`` of the exception's last line::

    An error has occurred: b'numd.signals.StartupError: numd: cannot listen on 127.0.0.1:2004: [Errno 98] Address already in us'

and twistd opens its own ``--logfile`` (before forking) and ``--pidfile`` (after)
with a traceback when their directory is missing. So, in the parent, while
`numd.tap.makeService` runs (before twistd opens its log and forks):

1. `check_before_start` checks what can be checked: the directories of twistd's
   log and pid files (with or without ``-n``), and, when twistd will fork, that
   each TCP port numd listens on can be bound. A problem is a `StartupError`:
   one line on the terminal, exit status 1, nothing forked.
2. What fails in the daemon all the same (a port taken in between, a database
   that cannot be used) is written whole to the terminal twistd was started
   from, by a `StartupReport` that keeps a duplicate of the parent's standard
   error until start-up ends (twistd's own shortened line follows it).

A ``.tac`` file has no access to twistd's options: under ``twistd -y`` none of
this applies, and twistd's own reporting remains.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from twisted.python import usage

from numd.signals import StartupError


@dataclass(frozen=True)
class TwistdRun:
    """What numd needs to know of the twistd command that runs it."""

    daemonize: bool
    """twistd forks (no ``-n``)."""
    log_file: str | None
    """The file twistd will open for its log; None when it logs to stdout, syslog or a --logger."""
    log_file_given: bool
    """``--logfile`` was given (else `log_file` is twistd's default, ``twistd.log``)."""
    pid_file: str | None
    """The file twistd will write its pid to; None without one (``--pidfile=``) or in a chroot."""

    @classmethod
    def of(cls, config: usage.Options) -> TwistdRun | None:
        """The twistd run of a plugin's parsed options, or None if twistd did not parse them."""
        parent = config.parent
        if parent is None or "nodaemon" not in parent:
            return None
        daemonize = not (parent["nodaemon"] or parent.get("debug"))
        logfile = parent.get("logfile")
        log_file: str | None
        if parent.get("syslog") or parent.get("logger") or logfile == "-":
            log_file = None
        elif logfile:
            log_file = logfile
        else:
            log_file = "twistd.log" if daemonize else None
        pid_file = parent.get("pidfile") or None
        if parent.get("chroot"):
            pid_file = None
        return cls(daemonize, log_file, bool(logfile), pid_file)


def before_start(config: usage.Options, listen: Iterable[str]) -> StartupReport | None:
    """Under twistd, `check_before_start`; a `StartupReport` if twistd will fork, else None."""
    run = TwistdRun.of(config)
    if run is None:
        return None
    check_before_start(run, listen)
    return StartupReport.keep_terminal() if run.daemonize else None


def check_before_start(run: TwistdRun, listen: Iterable[str]) -> None:
    """Raise `StartupError` if twistd cannot write its files or, when it forks, a port is taken.

    `listen` holds the server endpoint strings numd will listen on.
    """
    if run.log_file is not None:
        option = "--logfile" if run.log_file_given else "--logfile (default twistd.log)"
        _check_writable(option, run.log_file)
    if run.pid_file is not None:
        _check_writable("--pidfile", run.pid_file)
    if run.daemonize:
        for description in listen:
            _check_port(description)


def _check_writable(option: str, path: str) -> None:
    """A `StartupError` unless a file can be created or appended to at `path`."""
    full = os.path.abspath(path)
    directory = os.path.dirname(full)
    if not os.path.isdir(directory):
        problem = f"directory {directory} does not exist"
    elif os.path.isdir(full):
        problem = "it is a directory"
    elif os.path.exists(full) and not os.access(full, os.W_OK):
        problem = "it is not writable"
    elif not os.path.exists(full) and not os.access(directory, os.W_OK | os.X_OK):
        problem = f"directory {directory} is not writable"
    else:
        return
    raise StartupError(f"numd: twistd's {option}: cannot write {path!r}: {problem}")


def tcp_address(description: str) -> tuple[socket.AddressFamily, str, int] | None:
    """The address family, interface and port a TCP (or TLS) server endpoint string binds.

    None for other endpoints (UNIX sockets, inherited descriptors, ...), whose
    problems show when they listen.
    """
    parts = re.split(r"(?<!\\):", description)
    kind = parts[0].lower()
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    named = dict(part.split("=", 1) for part in parts[1:] if "=" in part)
    positional = [part for part in parts[1:] if "=" not in part]
    port = named.get("port", positional[0] if positional else "")
    interface = named.get("interface", "::" if kind == "tcp6" else "").replace("\\:", ":")
    try:
        number = int(port)
    except ValueError:
        return None
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    return family, interface, number


def _check_port(description: str) -> None:
    """A `StartupError`, worded as the daemon's own, if `description`'s TCP port cannot be bound now.

    The socket is set up as Twisted sets up a listening one (``SO_REUSEADDR``),
    bound, and closed at once; port 0 (any free port) is never checked.
    """
    address = tcp_address(description)
    if address is None or address[2] == 0:
        return
    family, interface, port = address
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((interface, port))
        except OSError as e:
            if isinstance(e, socket.gaierror):
                return  # a name that does not resolve: Twisted says it when it listens
            raise StartupError(
                f"numd: cannot listen on {interface or '*'}:{port}: {_socket_error(e)}"
            ) from None


def _socket_error(error: OSError) -> str:
    """`error` as Twisted's `CannotListenError` shows its socket error: ``[Errno 98] ...``."""
    if error.errno is not None and error.strerror:
        return f"[Errno {error.errno}] {error.strerror}"
    return str(error)


class StartupReport:
    """Writes a start-up failure of the daemonized numd whole to the terminal twistd started from.

    Made in the parent before twistd forks (`keep_terminal`), it holds a
    duplicate of standard error. In the daemon, whose standard error is then
    ``/dev/null``, `failed` writes the message there; `started` (or `failed`)
    closes it, so the daemon keeps no hold on the terminal. Without a fork
    (``-n``) standard error is still the terminal, where the `StartupError`
    prints itself: `failed` then writes nothing.
    """

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self._terminal = _identity(fd) if fd is not None else None

    @classmethod
    def keep_terminal(cls) -> StartupReport:
        """A report on a duplicate of the current standard error (none if it is closed)."""
        try:
            fd: int | None = os.dup(2)  # not inherited by programs numd might run (PEP 446)
        except OSError:
            fd = None
        return cls(fd)

    def failed(self, message: str) -> None:
        """Write `message` to the kept terminal if this process no longer writes there; close it."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _identity(2) != self._terminal:
                os.write(fd, (message + "\n").encode("utf-8", "backslashreplace"))
        except OSError:
            pass
        finally:
            os.close(fd)

    def started(self) -> None:
        """Start-up is over: let the terminal go."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _identity(fd: int | None) -> tuple[int, int] | None:
    """The device and inode `fd` is open on, or None if it is not open."""
    if fd is None:
        return None
    try:
        status = os.fstat(fd)
    except OSError as e:
        if e.errno == errno.EBADF:
            return None
        raise
    return status.st_dev, status.st_ino
