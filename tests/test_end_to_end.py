"""numd for real: a `twistd -n numd` subprocess and clients on 127.0.0.1 sockets."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from .daemon import TWISTD, free_port, recv_tokens, running_numd, subprocess_env

pytestmark = pytest.mark.timeout(60)


def records(path: Path) -> list[dict]:
    """Every record of a message log."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_old_client_session_is_served_and_logged(tmp_path: Path) -> None:
    """An old client (bare ID, then reports, odd, even) is answered right and every message is logged."""
    with running_numd(tmp_path, "--seed", "1") as numd:
        with numd.connect() as sock:
            sock.sendall(b"5287")  # no delimiter: the old clients' way
            assert recv_tokens(sock, 1) == [b"0"]
            sock.sendall(b"1 2 odd ")
            (odd,) = recv_tokens(sock, 1)
            sock.sendall(b"3 even ")
            (even,) = recv_tokens(sock, 1)
            assert int(odd) % 2 == 1 and 1 <= int(odd) <= 99
            assert int(even) % 2 == 0 and 0 <= int(even) <= 98
        # It comes back and resumes where it stopped.
        time.sleep(0.2)
        with numd.connect() as sock:
            sock.sendall(b"5287 ")
            assert recv_tokens(sock, 1) == [b"3"]
        assert numd.stop(signal.SIGTERM) == 0
    log = [(r["dir"], r.get("msg", r.get("event")), r["id"]) for r in records(numd.message_log)]
    assert ("in", "5287", None) in log
    assert ("out", "0", 5287) in log
    assert ("in", "odd", 5287) in log
    assert ("out", odd.decode(), 5287) in log
    assert ("out", even.decode(), 5287) in log
    assert ("out", "3", 5287) in log
    assert log.count(("event", "disconnect", 5287)) == 2
    output = numd.output.read_text()
    assert "Traceback" not in output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_closes_live_clients_and_flushes(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM or SIGINT with clients connected: they see the connection close, the log is
    complete, exit 0 within 5 s, no traceback."""
    with running_numd(tmp_path) as numd:
        socks = [numd.connect() for _ in range(3)]
        for i, sock in enumerate(socks):
            sock.sendall(b"%d 7 " % i)
            assert recv_tokens(sock, 1) == [b"0"]
        started = time.monotonic()
        assert numd.stop(sig) == 0
        assert time.monotonic() - started < 5
        for sock in socks:
            assert sock.recv(10) == b""
            sock.close()
    log = records(numd.message_log)
    assert sum(1 for r in log if r.get("event") == "disconnect" and r["id"] is not None) == 3
    assert "Traceback" not in numd.output.read_text()
    assert sum(1 for r in log if r.get("msg") == "7") == 3


@pytest.mark.parametrize("daemonize", [False, True], ids=["twistd -n", "daemonizing twistd"])
def test_busy_port_fails_clearly(tmp_path: Path, daemonize: bool) -> None:
    """A second daemon on a busy port exits 1 at once with a one-line reason, no traceback;
    a daemonizing twistd reports it from its child instead of hanging."""
    import subprocess

    with running_numd(tmp_path) as numd:
        other = tmp_path / "other"
        other.mkdir()
        twistd_options = (
            ["--pidfile", str(other / "numd.pid"), "--logfile", str(other / "twistd.log")]
            if daemonize
            else ["-n", "--pidfile="]
        )
        result = subprocess.run(
            [
                *TWISTD,
                *twistd_options,
                "numd",
                "--listen",
                f"tcp:{numd.port}:interface=127.0.0.1",
                "--api-listen",
                "tcp:0:interface=127.0.0.1",
                "--db",
                ":memory:",
            ],  # fmt: skip
            cwd=other,
            env=subprocess_env(),
            capture_output=True,
            timeout=30,
        )
        assert result.returncode == 1
        out = (result.stdout + result.stderr).decode()
        assert f"numd: cannot listen on 127.0.0.1:{numd.port}" in out
        assert "Traceback" not in out
        assert not (other / "numd.pid").exists()


def test_tac_file_runs(tmp_path: Path) -> None:
    """`twistd -ny numd.tac` serves the counter protocol with options from NUMD_OPTIONS."""
    import socket
    import subprocess

    from .daemon import wait_for_port

    port = free_port()
    tac = Path(__file__).parent.parent / "numd.tac"
    process = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "-y", str(tac)],
        cwd=tmp_path,
        env={
            **subprocess_env(),
            "NUMD_OPTIONS": f"--listen tcp:{port}:interface=127.0.0.1 "
            "--api-listen tcp:0:interface=127.0.0.1",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"12 odd ")
            tokens = recv_tokens(sock, 2)
        assert tokens[0] == b"0" and int(tokens[1]) % 2 == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_a_stopped_process_drops_no_client_that_kept_sending(tmp_path: Path) -> None:
    """numd stopped (SIGSTOP) for longer than its idle timeout, then continued: a client that
    kept reporting meanwhile is still served; one that really was silent is closed."""
    with running_numd(tmp_path, "--idle-timeout", "2") as numd:
        with numd.connect() as talker, numd.connect() as silent:
            talker.sendall(b"1 ")
            silent.sendall(b"2 ")
            assert recv_tokens(talker, 1) == [b"0"]
            assert recv_tokens(silent, 1) == [b"0"]
            numd.process.send_signal(signal.SIGSTOP)
            try:
                for number in range(1, 31):  # 3 s of reports, queued in the kernel
                    talker.sendall(b"%d " % number)
                    time.sleep(0.1)
            finally:
                numd.process.send_signal(signal.SIGCONT)
            for number in range(31, 41):
                talker.sendall(b"%d " % number)
                time.sleep(0.1)
            talker.sendall(b"odd ")
            (odd,) = recv_tokens(talker, 1)
            assert int(odd) % 2 == 1
            silent.settimeout(5)
            try:  # closed (aborted) by the idle sweep after the stall
                assert silent.recv(100) == b""
            except ConnectionResetError:
                pass
        assert numd.stop(signal.SIGTERM) == 0
    output = numd.output.read_text()
    assert "idle sweep waits for the reads queued meanwhile" in output
    assert "Traceback" not in output
