"""numd under systemd's protocols, for real: a `twistd -n numd` subprocess notifying a socket the
test owns, and serving sockets it inherited (from Debian's systemd-socket-activate, or from the
test, passed exactly as systemd passes them), across a restart."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from .daemon import TWISTD, free_port, recv_tokens, subprocess_env
from .systemd_support import (
    SOCKET_ACTIVATE,
    NotifySocket,
    listening_socket,
    notify_socket,
    passing_sockets,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    """The notification socket, as systemd creates it for a Type=notify service."""
    with notify_socket() as sock:
        yield sock


@contextmanager
def started(
    command: Sequence[str],
    directory: Path,
    env: dict[str, str],
    pass_fds: Sequence[int] = (),
) -> Iterator[subprocess.Popen]:
    """`command` running in `directory`, its output in ``twistd.out``; killed if still running."""
    with open(directory / "twistd.out", "ab") as out:
        process = subprocess.Popen(
            command,
            cwd=directory,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            pass_fds=pass_fds,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def numd_command(*args: str) -> list[str]:
    """``twistd -n numd`` with `args`, as a unit's ExecStart runs it (no pidfile)."""
    return [*TWISTD, "-n", "--pidfile=", "numd", *args]


def notified_env(notify: NotifySocket, **extra: str) -> dict[str, str]:
    """The subprocess environment with ``$NOTIFY_SOCKET`` (and `extra`), as systemd sets it."""
    env = subprocess_env()
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"):
        env.pop(name, None)
    return {**env, "NOTIFY_SOCKET": notify.env_value, **extra}


def readyz(port: int) -> dict:
    """numd's /readyz answer on 127.0.0.1:`port`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
        return json.loads(response.read())


def test_ready_comes_once_numd_serves_then_watchdog_pings_and_stopping_on_sigterm(
    tmp_path: Path, notify: NotifySocket
) -> None:
    """READY=1 arrives only once the counter port answers (a single connection attempt made on
    its arrival is served) and /readyz says ready; WATCHDOG=1 comes every half of WATCHDOG_USEC;
    SIGTERM brings STOPPING=1 and exit 0."""
    port, api_port = free_port(), free_port()
    command = numd_command(
        "--listen", f"tcp:{port}:interface=127.0.0.1",
        "--api-listen", f"tcp:{api_port}:interface=127.0.0.1",
    )  # fmt: skip
    env = notified_env(notify, WATCHDOG_USEC="600000")
    with started(command, tmp_path, env) as process:
        ready = notify.wait_for("READY")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"41 ")
            assert recv_tokens(sock, 1) == [b"0"]
        assert readyz(api_port)["status"] == "ready"
        assert ready["STATUS"] == "serving 0 counter clients, 0 values"
        assert [m for m in notify.messages if "READY" in m] == [ready]
        pings = sum(1 for m in notify.messages if "WATCHDOG" in m)
        for _ in range(3):  # every 0.3 s
            assert notify.wait_for("WATCHDOG", timeout=2) == {"WATCHDOG": "1"}
        assert pings >= 1  # the first one comes at start, before READY
        process.send_signal(signal.SIGTERM)
        stopping = notify.wait_for("STOPPING")
        assert stopping["STOPPING"] == "1"
        assert process.wait(15) == 0
    assert "Traceback" not in (tmp_path / "twistd.out").read_text()


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate is not installed")
def test_socket_activation_serves_both_listeners_and_the_connection_that_started_it(
    tmp_path: Path, notify: NotifySocket
) -> None:
    """Debian's systemd-socket-activate opens both ports, starts numd on the first connection
    and passes them named (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES): numd answers that first
    connection, serves the API on the other socket, and says READY=1."""
    assert SOCKET_ACTIVATE is not None
    port, api_port = free_port(), free_port()
    env = notified_env(notify)
    command = [
        SOCKET_ACTIVATE,
        "--listen", f"127.0.0.1:{port}", "--listen", f"127.0.0.1:{api_port}",
        "--fdname", "numd-counter:numd-http",
        # It passes only the variables it is told to (and PATH, HOME, USER, TERM).
        *(f"--setenv={name}={env[name]}" for name in ("PYTHONPATH", "PYTHONUNBUFFERED", "NOTIFY_SOCKET")),
        *numd_command(
            "--listen", "systemd:domain=INET:name=numd-counter",
            "--api-listen", "systemd:domain=INET:name=numd-http",
            "--db", "numd.db",
        ),
    ]  # fmt: skip
    with started(command, tmp_path, env) as process:
        sock = connect_when_listening(port, process)
        with sock:
            sock.sendall(b"77 odd ")  # sent before numd runs: it waits in the socket
            start, odd = recv_tokens(sock, 2)
        assert start == b"0" and int(odd) % 2 == 1
        ready = notify.wait_for("READY")
        assert ready["STATUS"].startswith("serving ")
        assert readyz(api_port)["checks"]["api_listener"] is True
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    output = (tmp_path / "twistd.out").read_text()
    assert "Traceback" not in output
    assert "refusing" not in output


def connect_when_listening(port: int, process: subprocess.Popen) -> socket.socket:
    """A connection to 127.0.0.1:`port` once something listens there (the activator binds it)."""
    for _ in range(200):
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode} before listening")
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listened on {port}")


def test_a_restart_under_socket_activation_loses_no_connection_attempt(
    tmp_path: Path, notify: NotifySocket
) -> None:
    """The test holds the counter socket, as systemd does, and passes it to two numd processes
    in turn. Clients that connect and send while no numd runs wait in its backlog, and the
    second numd answers every one of them; the state carries over."""
    db = tmp_path / "numd.db"
    with listening_socket(backlog=64) as counter:
        port = counter.getsockname()[1]
        command, fds = passing_sockets(
            numd_command(
                "--listen", "systemd:domain=INET:name=numd-counter",
                "--api-listen", "tcp:0:interface=127.0.0.1", "--db", str(db),
            ),
            [(counter, "numd-counter")],
        )  # fmt: skip
        with started(command, tmp_path, notified_env(notify), fds) as first:
            notify.wait_for("READY")
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"11 500 ")
                assert recv_tokens(sock, 1) == [b"0"]
            first.send_signal(signal.SIGTERM)
            assert first.wait(15) == 0
        waiting = []
        for client_id in range(21, 26):  # numd is down: the socket still takes them
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"%d odd " % client_id)
            waiting.append(sock)
        try:
            with started(command, tmp_path, notified_env(notify), fds) as second:
                for sock in waiting:
                    start, odd = recv_tokens(sock, 2)
                    assert start == b"0" and int(odd) % 2 == 1
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(b"11 ")
                    assert recv_tokens(sock, 1) == [b"500"]
                second.send_signal(signal.SIGTERM)
                assert second.wait(15) == 0
        finally:
            for sock in waiting:
                sock.close()
    assert "Traceback" not in (tmp_path / "twistd.out").read_text()
