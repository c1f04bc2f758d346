"""Run a real `twistd -n numd` as a subprocess on free 127.0.0.1 ports, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
"""The twistd command line, run by the interpreter running the tests."""


ROOT = Path(__file__).resolve().parent.parent


def subprocess_env() -> dict[str, str]:
    """The environment for numd subprocesses: this checkout's `numd` first on the path.

    A strict editable install links only the modules that existed when it was
    made; putting the checkout first makes subprocesses run the code under test.
    """
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT) if not path else f"{ROOT}{os.pathsep}{path}",
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Return once 127.0.0.1:port accepts connections; fail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


@dataclass
class Daemon:
    """A running numd subprocess."""

    process: subprocess.Popen
    port: int
    api_port: int
    directory: Path
    output: Path

    @property
    def message_log(self) -> Path:
        """Its message log."""
        return self.directory / "numd-messages.log"

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """A blocking socket connected to its counter port, with a timeout on every call."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send `sig` and return the exit code (killing it if it does not exit in time)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
                raise
        return self.process.returncode


@contextmanager
def running_numd(
    directory: Path, *args: str, plugin: str = "numd", twistd_args: Sequence[str] = ()
) -> Iterator[Daemon]:
    """Start `twistd -n numd` with its counter and HTTP listeners on free 127.0.0.1 ports.

    ARGS come last, so a test may override any option (a later --api-listen wins);
    `twistd_args` go to twistd itself (e.g. ``--logfile``, ``--pidfile``), after its defaults.
    """
    port = free_port()
    api_port = free_port()
    output = directory / "twistd.out"
    with open(output, "wb") as out:
        process = subprocess.Popen(
            [
                *TWISTD,
                "-n",
                "--pidfile=",
                *twistd_args,
                plugin,
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--api-listen",
                f"tcp:{api_port}:interface=127.0.0.1",
                *args,
            ],
            cwd=directory,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=subprocess_env(),
        )
    daemon = Daemon(process, port, api_port, directory, output)
    try:
        wait_for_port(port, process)
        yield daemon
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def recv_tokens(sock: socket.socket, count: int) -> list[bytes]:
    """Read until `count` space-ended tokens arrived (the socket's timeout bounds each read)."""
    data = b""
    while data.count(b" ") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.split(b" ")[:count]
