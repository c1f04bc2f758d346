"""What systemd does for numd, done by a test: a notification socket the test owns, and
listening sockets passed to a child exactly as systemd passes them."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from twisted.internet.endpoints import _SystemdParser
from twisted.python.systemd import ListenFDs

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
"""Debian's ``systemd-socket-activate`` (package systemd), or None."""

PASS_SOCKETS = r"""
import fcntl, os, sys
names, fds, argv = sys.argv[1].split(":"), [int(fd) for fd in sys.argv[2].split(",")], sys.argv[3:]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ.update(
    LISTEN_FDS=str(len(fds)), LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES=":".join(names)
)
os.execv(argv[0], argv)
"""
"""A child that moves the descriptors it was given to 3, 4, ..., sets LISTEN_FDS, LISTEN_PID
(its own pid, which exec keeps) and LISTEN_FDNAMES, then execs the command: what systemd
does between fork and exec."""


def passing_sockets(
    command: Sequence[str], sockets: Sequence[tuple[socket.socket, str]]
) -> tuple[list[str], tuple[int, ...]]:
    """The command line and the ``pass_fds`` that start `command` with `sockets` (socket,
    name) inherited as systemd passes them, in that order."""
    fds = tuple(s.fileno() for s, _ in sockets)
    names = ":".join(name for _, name in sockets)
    line = [sys.executable, "-c", PASS_SOCKETS, names, ",".join(map(str, fds)), *command]
    return line, fds


def listening_socket(host: str = "127.0.0.1", backlog: int = 64) -> socket.socket:
    """A TCP socket listening on a free port of `host` (the test owns it, as systemd would)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(backlog)
    return sock


@contextmanager
def short_directory() -> Iterator[Path]:
    """A new directory with a path short enough for AF_UNIX socket names (108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="numd-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class NotifySocket:
    """The datagram socket systemd reads notifications from (``$NOTIFY_SOCKET``), owned by a test.

    `address` is a path, or for the abstract namespace a name, given in the
    environment as ``@name``.
    """

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.env_value = "@" + address[1:] if address.startswith("\0") else address
        """What ``$NOTIFY_SOCKET`` holds for this socket."""
        self.messages: list[dict[str, str]] = []
        """Every notification received so far, as its fields."""

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def receive(self, timeout: float) -> dict[str, str] | None:
        """The next notification's fields, or None if none comes within `timeout` seconds."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode("utf-8").split("\n") if line)
        self.messages.append(fields)
        return fields

    def wait_for(self, key: str, timeout: float = 15.0) -> dict[str, str]:
        """The first notification from now on that has `key`; AssertionError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            fields = self.receive(left)
            if fields is not None and key in fields:
                return fields
        raise AssertionError(f"no {key} notification within {timeout} s: got {self.messages}")


@contextmanager
def notify_socket(abstract: bool = False) -> Iterator[NotifySocket]:
    """A `NotifySocket` at a path in a new short directory, or in the abstract namespace."""
    with short_directory() as directory:
        address = f"\0numd-test-{os.getpid()}-{id(directory)}" if abstract else str(directory / "n")
        sock = NotifySocket(address)
        try:
            yield sock
        finally:
            sock.close()


def pretend_inherited(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """A dict (name -> descriptor, in the order systemd passes them) that Twisted's ``systemd:``
    endpoints read as the descriptors this process inherited, until the test ends.

    Twisted reads LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES once, when it is imported,
    into its parser's private ``_sddaemon``: a test in this process replaces that.
    """
    named: dict[str, int] = {}

    class Inherited(ListenFDs):
        def inheritedDescriptors(self) -> list[int]:
            return list(named.values())

        def inheritedNamedDescriptors(self) -> dict[str, int]:
            return dict(named)

    monkeypatch.setattr(_SystemdParser, "_sddaemon", Inherited([]))
    return named
