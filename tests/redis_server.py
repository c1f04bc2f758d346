"""A real ``redis-server`` for tests: 127.0.0.1, a free port, a temporary directory, stopped by PID.

Tests that need it are marked `requires_redis` (or use a fixture that calls
`skip_without_redis`), which skips them with a one-line reason when Debian's
``redis-server`` package is not installed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REDIS_SERVER = "/usr/bin/redis-server"
MISSING = f"{REDIS_SERVER} not found (Debian package redis-server)"
"""The one-line reason a test that needs a real Redis is skipped without one."""
requires_redis = pytest.mark.skipif(not os.access(REDIS_SERVER, os.X_OK), reason=MISSING)

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def skip_without_redis() -> None:
    """Skip the current test, saying why, if there is no ``redis-server`` to run."""
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.skip(MISSING)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis server on 127.0.0.1:`port` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process with its data in `directory`.

    `appendfsync` None runs without an append-only file (and without snapshots);
    ``"always"`` or ``"everysec"`` runs with ``appendonly yes`` and that fsync policy.
    `start` waits until the server answers PING; `stop` and `kill` end it by PID.
    A restarted server keeps its port and its directory (so its data, with an AOF).
    """

    def __init__(self, directory: Path, appendfsync: str | None = None) -> None:
        self.directory = directory
        self.appendfsync = appendfsync
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The running server's process ID."""
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def log_path(self) -> Path:
        """The server's own log file."""
        return self.directory / "redis.log"

    def answers(self) -> bool:
        """Whether the server answers (PING) on its port."""
        return ping(self.port)

    def _arguments(self) -> list[str]:
        arguments = [
            REDIS_SERVER,
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
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--maxmemory-policy",
            "noeviction",
        ]
        if self.appendfsync is None:
            arguments += ["--appendonly", "no"]
        else:
            arguments += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        return arguments

    def start(self) -> RedisServer:
        """Start the server (on a free port the first time) and wait until it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        attempts = 3 if self.port == 0 else 1
        for _ in range(attempts):
            if attempts > 1:
                self.port = free_port()
            self.process = subprocess.Popen(
                self._arguments(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self.process.poll() is None:
                if self.answers():
                    return self
                time.sleep(0.02)
            self.stop()  # exited (a port taken meanwhile?) or too slow: try another port
        raise RuntimeError(f"redis-server did not start; its log says:\n{self._log_tail()}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and reap it."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash or power loss would stop it."""
        self._end(signal.SIGKILL)

    def _end(self, signum: int) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signum)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-10:])
        except OSError as e:
            return f"(no log: {e})"
