"""The client for real: `twistd -n numd` and `twistd -n numd-client` (or `numd-client`) as subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from numd.tap import Options as NumdOptions

from .daemon import TWISTD, free_port, wait_for_port

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parent.parent
CLIENT_ID = 4242


def environment() -> dict[str, str]:
    """The test's environment, with the checkout first on the path (new modules included)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def console_script() -> list[str]:
    """The installed ``numd-client`` command, or the same entry point through this interpreter."""
    script = Path(sys.executable).parent / "numd-client"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from numd.client.tap import main; main()"]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` every 0.1 s; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.1)


def stop(process: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM, wait (kill if it does not exit in time), return the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
            raise
    return process.returncode


@contextmanager
def started(
    command: list[str], directory: Path, name: str, **kwargs: object
) -> Iterator[subprocess.Popen]:
    """Run `command` in `directory` (output in NAME.out unless redirected); always killed at the end."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    with open(directory / f"{name}.out", "wb") as out:
        kwargs.setdefault("stdout", out)
        kwargs.setdefault("stderr", subprocess.STDOUT)
        process = subprocess.Popen(command, cwd=directory, env=environment(), **kwargs)  # type: ignore[call-overload]
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def listen_options() -> tuple[int, list[str]]:
    """A free counter port, and options putting every listener of the daemon on free ports."""
    known = set(NumdOptions().longOpt)
    others = [option for option in ("api-listen",) if f"{option}=" in known]
    port, *other_ports = free_ports(1 + len(others))
    args = ["--listen", f"tcp:{port}:interface=127.0.0.1"]
    for option, other in zip(others, other_ports, strict=True):
        args += [f"--{option}", f"tcp:{other}:interface=127.0.0.1"]
    return port, args


@contextmanager
def numd_server(directory: Path) -> Iterator[int]:
    """`twistd -n numd` on a free 127.0.0.1 port with its own pidfile; yields the port."""
    port, listen = listen_options()
    command = [
        *TWISTD, "-n", "--pidfile", str(directory / "server.pid"), "numd", *listen,
        "--message-log", str(directory / "messages.log"),
    ]  # fmt: skip
    with started(command, directory, "server") as server:
        try:
            wait_for_port(port, server)
        except (RuntimeError, TimeoutError) as e:
            raise AssertionError((directory / "server.out").read_text()) from e
        yield port
        status = stop(server)
        assert status == 0, (directory / "server.out").read_text()


def reports(log: Path, client_id: int) -> list[int]:
    """The numbers `client_id` reported, from the server's message log."""
    if not log.exists():
        return []
    numbers = []
    for line in log.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["dir"] == "in" and record["id"] == client_id:
            if record["msg"].lstrip("-").isdigit():
                numbers.append(int(record["msg"]))
    return numbers


def events(path: Path) -> list[dict[str, object]]:
    """The JSON events a client printed."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_twistd_client_reports_increase_on_a_twistd_server(tmp_path: Path) -> None:
    """`twistd -n numd-client --connect` registers with a real server and its reports climb there."""
    log = tmp_path / "messages.log"
    with numd_server(tmp_path) as port:
        command = [
            *TWISTD, "-n", "--pidfile", str(tmp_path / "client.pid"),
            "--logfile", str(tmp_path / "client.log"), "numd-client", "--connect",
            "--server", f"tcp:127.0.0.1:{port}", "--id", str(CLIENT_ID),
            "--parity", "odd", "--json",
        ]  # fmt: skip
        with started(command, tmp_path, "client") as client:
            wait_until(lambda: len(reports(log, CLIENT_ID)) >= 12, 30, "12 reports logged")
            # (on failure, client.log and server.out in tmp_path tell what happened)
            assert (tmp_path / "server.pid").exists() and (tmp_path / "client.pid").exists()
            # A clean stop on SIGTERM exits 0 (numd.signals), not with the signal.
            status = stop(client)
            assert status == 0, (tmp_path / "client.log").read_text()
        numbers = reports(log, CLIENT_ID)
        assert numbers == sorted(set(numbers))  # odd increments: strictly increasing
        assert numbers[0] == 1
    printed = events(tmp_path / "client.out")
    assert printed[0]["event"] == "connecting" and printed[1]["event"] == "connected"
    assert [e["number"] for e in printed if e["event"] == "report"][: len(numbers)] == numbers
    client_log = (tmp_path / "client.log").read_text()
    assert "Traceback" not in client_log and "Server Shut Down." in client_log
    assert not (tmp_path / "client.pid").exists()


def test_console_client_takes_commands_from_standard_input(tmp_path: Path) -> None:
    """The `numd-client` command connects on c, shuts down on s and quits on q, with exit status 0."""
    log = tmp_path / "messages.log"
    with numd_server(tmp_path) as port:
        command = [
            *console_script(), "--server", f"tcp:127.0.0.1:{port}",
            "--id", str(CLIENT_ID), "--json",
        ]  # fmt: skip
        with started(command, tmp_path, "client", stdin=subprocess.PIPE) as client:
            assert client.stdin is not None
            client.stdin.write(b"c\n")
            client.stdin.flush()
            wait_until(lambda: len(reports(log, CLIENT_ID)) >= 3, 30, "3 reports logged")
            client.stdin.write(b"s\nq\n")
            client.stdin.close()
            assert client.wait(15) == 0
    kinds = [e["event"] for e in events(tmp_path / "client.out")]
    assert kinds[:3] == ["connecting", "connected", "report"]
    assert kinds[-2:] == ["shutdown", "disconnected"]


def test_console_client_array_mode_with_count(tmp_path: Path) -> None:
    """`numd-client --array --count 2` prints two sorted lists from a real server and exits 0."""
    with numd_server(tmp_path) as port:
        command = [
            *console_script(),
            "--server",
            f"tcp:127.0.0.1:{port}",
            "--array",
            "--count",
            "2",
        ]
        with started(command, tmp_path, "client", stderr=subprocess.PIPE) as client:
            assert client.wait(30) == 0
            assert client.stderr is not None
            assert client.stderr.read() == b""
    first, second = (tmp_path / "client.out").read_text().splitlines()
    for line in first, second:
        values = [int(v) for v in line.strip("[]").split(",")]
        assert values == sorted(values) and all(0 <= v <= 100 for v in values)
    assert 20 <= len(second.split(",")) <= 40


def test_console_client_exits_1_when_the_server_is_down(tmp_path: Path) -> None:
    """With nothing listening, array mode reports the refused connection and exits with status 1."""
    command = [
        *console_script(),
        "--server",
        f"tcp:127.0.0.1:{free_port()}",
        "--array",
        "--count",
        "1",
    ]
    with started(command, tmp_path, "client") as client:
        assert client.wait(30) == 1
    assert "error: cannot connect" in (tmp_path / "client.out").read_text()
