"""Debian's ``redis-sentinel`` for tests: one primary, one replica and three sentinels on 127.0.0.1.

`SentinelGroup` starts them on free ports, each in its own directory under one
temporary directory, and stops every process by PID (`stop`). Its sentinels
monitor the primary as `MASTER_NAME` with a quorum of 2 and short timings, so that
a failover after the primary is killed takes a few seconds, not the minutes of
Debian's ``/etc/redis/sentinel.conf``.

Tests that need it call `skip_without_sentinel`, which skips with a one-line reason
when ``redis-server`` or ``redis-sentinel`` (Debian packages ``redis-server`` and
``redis-sentinel``) is not installed. The group's state is read with
``redis-cli`` (Debian package ``redis-tools``, which ``redis-server`` depends on).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from .redis_server import REDIS_SERVER, RedisServer

REDIS_SENTINEL = "/usr/bin/redis-sentinel"
REDIS_CLI = "/usr/bin/redis-cli"
MISSING = f"{REDIS_SENTINEL} not found (Debian package redis-sentinel)"
"""The one-line reason a test that needs Sentinel is skipped without it."""
MASTER_NAME = "numd"
"""The name the group's sentinels monitor the primary as."""
DOWN_AFTER_MS = 1000
"""How long the primary must be silent before a sentinel thinks it is down."""
FAILOVER_TIMEOUT_MS = 4000
"""Sentinel's failover-timeout: how long one failover attempt may take before another starts."""
READY_TIMEOUT = 15.0


def skip_without_sentinel() -> None:
    """Skip the current test, saying why, without ``redis-server``, ``redis-sentinel`` or
    ``redis-cli``."""
    for program, package in (
        (REDIS_SERVER, "redis-server"),
        (REDIS_SENTINEL, "redis-sentinel"),
        (REDIS_CLI, "redis-tools"),
    ):
        if not os.access(program, os.X_OK):
            pytest.skip(f"{program} not found (Debian package {package})")


def cli(port: int, *args: str, password: str | None = None, timeout: float = 5.0) -> list[str]:
    """One command through ``redis-cli`` to 127.0.0.1:`port`; its reply, one line per element
    (``redis-cli``'s raw output: an empty line for nil, an error reply as its text)."""
    env = dict(os.environ)
    if password is not None:
        env["REDISCLI_AUTH"] = password  # not on the command line
    done = subprocess.run(
        [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), "--raw", *args],
        capture_output=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    return done.stdout.decode(errors="replace").splitlines()


def role(port: int, password: str | None = None) -> str:
    """The role a Redis server says it has (``master``, ``slave``), or ``""`` if it does not answer."""
    reply = cli(port, "ROLE", password=password)
    return reply[0] if reply else ""


class GroupServer(RedisServer):
    """A primary or replica of a `SentinelGroup`: it may need a password and follow a primary.

    Both have ``masterauth``: after a failover the old primary comes back as a replica.
    """

    def __init__(
        self,
        directory: Path,
        appendfsync: str | None = None,
        password: str | None = None,
        replicaof: int | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        super().__init__(directory, appendfsync)
        self.password = password
        self.replicaof = replicaof
        self.extra = list(extra)

    def _arguments(self) -> list[str]:
        # A replica synchronises at once: no wait for more replicas to share a diskless transfer.
        arguments = super()._arguments() + ["--repl-diskless-sync-delay", "0", *self.extra]
        if self.password is not None:
            arguments += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replicaof is not None:
            arguments += ["--replicaof", "127.0.0.1", str(self.replicaof)]
        return arguments

    def answers(self) -> bool:
        """Whether the server answers on its port (with its password, if it has one)."""
        return cli(self.port, "PING", password=self.password, timeout=1.0) == ["PONG"]

    def start(self) -> GroupServer:
        """Start the server and wait until it answers."""
        super().start()
        return self


class SentinelServer(RedisServer):
    """One ``redis-sentinel`` watching the group's primary, with its config file in `directory`.

    Sentinel rewrites its config file as it learns the group (and after a failover),
    so a restarted sentinel remembers what it knew.
    """

    def __init__(
        self,
        directory: Path,
        primary_port: int,
        auth_pass: str | None = None,
        quorum: int = 2,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
    ) -> None:
        super().__init__(directory)
        self.primary_port = primary_port
        self.auth_pass = auth_pass
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    @property
    def config_path(self) -> Path:
        """The sentinel's config file (which it rewrites)."""
        return self.directory / "sentinel.conf"

    @property
    def log_path(self) -> Path:
        """The sentinel's own log file."""
        return self.directory / "sentinel.log"

    def _arguments(self) -> list[str]:
        if not self.config_path.exists():
            lines = [
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.primary_port} {self.quorum}",
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
                f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {MASTER_NAME} 1",
                "sentinel resolve-hostnames no",
            ]
            if self.auth_pass is not None:
                lines.append(f'sentinel auth-pass {MASTER_NAME} "{self.auth_pass}"')
            self.config_path.write_text("\n".join(lines) + "\n")
        return [
            REDIS_SENTINEL,
            str(self.config_path),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.log_path),
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ]

    def start(self) -> SentinelServer:
        """Start the sentinel (on a free port the first time) and wait until it answers PING."""
        super().start()
        return self

    def master(self) -> dict[str, str]:
        """What this sentinel knows of the primary (``SENTINEL MASTER``), field by field."""
        reply = cli(self.port, "SENTINEL", "MASTER", MASTER_NAME)
        return dict(zip(reply[::2], reply[1::2], strict=False))

    def primary_port_named(self) -> int | None:
        """The primary's port this sentinel names now (``get-master-addr-by-name``)."""
        reply = cli(self.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(reply[1]) if len(reply) == 2 and reply[1].isdigit() else None


class SentinelGroup:
    """A primary, a replica (``replicaof``) and three sentinels (quorum 2), in `directory`.

    `start` returns once the replica has synchronised and every sentinel knows the
    replica and the two other sentinels, so that a failover can happen; `stop` ends
    every process by PID. `password` protects the primary and the replica (the
    sentinels get it as ``auth-pass``); the sentinels themselves ask for none, as in
    Debian's default ``sentinel.conf``. `extra` are more ``redis-server`` arguments for
    both; `link`, given the primary's port, returns the port the replica should follow
    instead (a relay in between, e.g. one that delays the replication stream).
    """

    def __init__(
        self,
        directory: Path,
        appendfsync: str | None = None,
        password: str | None = None,
        sentinels: int = 3,
        extra: Sequence[str] = (),
        link: Callable[[int], int] | None = None,
    ) -> None:
        self.directory = directory
        self.password = password
        self.link = link
        self.primary = GroupServer(directory / "a", appendfsync, password, extra=extra)
        self.replica = GroupServer(directory / "b", appendfsync, password, extra=extra)
        self.sentinel_count = sentinels
        self.sentinels: list[SentinelServer] = []

    @property
    def servers(self) -> list[GroupServer]:
        """The primary and the replica, in the order they were started."""
        return [self.primary, self.replica]

    def sentinel_url(self, db: int = 0, master: str = MASTER_NAME) -> str:
        """The ``--db`` value that reaches the primary through the sentinels."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{master}/{db}"

    def start(self) -> SentinelGroup:
        """Start everything and wait until a failover is possible."""
        try:
            self.primary.start()
            port = self.primary.port
            self.replica.replicaof = port if self.link is None else self.link(port)
            self.replica.start()
            self._wait("the replica to synchronise", self._replica_synchronised)
            for n in range(self.sentinel_count):
                sentinel = SentinelServer(
                    self.directory / f"s{n}", self.primary.port, auth_pass=self.password
                )
                self.sentinels.append(sentinel.start())
            self._wait("the sentinels to know each other and the replica", self._sentinels_ready)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process of the group (by PID)."""
        for process in [*self.sentinels, self.primary, self.replica]:
            process.stop()

    def primary_port(self) -> int | None:
        """The primary's port as a majority of the running sentinels name it, if they agree."""
        named = [s.primary_port_named() for s in self.sentinels if s.process is not None]
        for port in set(named):
            if port is not None and named.count(port) * 2 > len(named):
                return port
        return None

    def wait_for_failover(self, old_port: int, timeout: float = READY_TIMEOUT) -> int:
        """Wait until the sentinels name a primary other than `old_port` and it says it is
        the primary; its port."""
        new: list[int] = []

        def promoted() -> bool:
            port = self.primary_port()
            if port is None or port == old_port or role(port, self.password) != "master":
                return False
            new.append(port)
            return True

        self._wait("the failover", promoted, timeout)
        return new[-1]

    def _replica_synchronised(self) -> bool:
        info = cli(self.replica.port, "INFO", "replication", password=self.password)
        return any(line.strip() == "master_link_status:up" for line in info)

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            master = sentinel.master()
            if master.get("num-slaves") != "1":
                return False
            if master.get("num-other-sentinels") != str(self.sentinel_count - 1):
                return False
        return True

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float = READY_TIMEOUT) -> None:
        """Return once `ready()` is true; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for {what}")
            time.sleep(0.05)
