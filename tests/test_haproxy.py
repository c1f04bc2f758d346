"""contrib/haproxy/numd.cfg with Debian's own haproxy, in front of two real numd instances that
share one real redis-server: one address for the counter protocol and one for the HTTP API.

The shipped file is used as it is, but for its addresses (free loopback ports; the third
instance points at a port where nothing listens, as a dead machine would) and its log
target (standard error instead of syslog). Skips, saying why, without haproxy or redis-server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .daemon import ROOT, Daemon, free_port, recv_tokens, subprocess_env, wait_for_port
from .redis_server import RedisServer
from .shared_numd import http_json, shared_instances, wait_until

HAPROXY = "/usr/sbin/haproxy"
CONFIG = ROOT / "contrib" / "haproxy" / "numd.cfg"
COUNTER_PORT, HTTP_PORT = "2004", "8080"
"""The ports the shipped file names for numd's counter and HTTP listeners."""

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        not os.access(HAPROXY, os.X_OK), reason=f"{HAPROXY} not found (Debian package haproxy)"
    ),
]


def configured(text: str, counter: int, http: int, servers: dict[str, tuple[int, int]]) -> str:
    """The shipped configuration `text` with its frontends on 127.0.0.1:`counter` and `http`,
    each server on 127.0.0.1 at the (counter, HTTP) ports `servers` gives its name, and its
    log on standard error. Fails if the file does not have the lines these replace."""
    out = []
    binds = replaced = 0
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["bind"]:
            port = words[1].rsplit(":", 1)[1]
            line = f"    bind 127.0.0.1:{counter if port == COUNTER_PORT else http}"
            binds += 1
        elif words[:1] == ["server"]:
            name, port = words[1], words[2].rsplit(":", 1)[1]
            counter_port, http_port = servers[name]
            listener = counter_port if port == COUNTER_PORT else http_port
            line = f"    server {name} 127.0.0.1:{listener} port {http_port}"
            replaced += 1
        elif words[:2] == ["log", "/dev/log"]:
            line = "    log stderr format raw local0"
        out.append(line)
    assert (binds, replaced) == (2, 2 * len(servers)), (binds, replaced)
    return "\n".join(out) + "\n"


@contextmanager
def running_haproxy(config: Path, ports: tuple[int, int]) -> Iterator[Path]:
    """haproxy in the foreground with `config`, listening on `ports`; its standard error's file.
    Stopped (and reaped) on the way out."""
    errors = config.with_suffix(".err")
    with open(errors, "wb") as err:
        process = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        for port in ports:
            wait_for_port(port, process)
        yield errors
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def registrations(daemon: Daemon) -> float:
    """How many client IDs this instance's counter listener has received (its own metric)."""
    url = f"http://127.0.0.1:{daemon.api_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    pattern = r'numd_messages_received_total\{kind="id",protocol="counter"\} (\S+)'
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def run_client(
    port: int, client_id: int, until: Callable[[list[dict]], bool], timeout: float = 15.0
) -> list[dict]:
    """numd's own counter client (``numd-client --connect --json``) on 127.0.0.1:`port`, until its
    JSON events so far satisfy `until` (or `timeout` passes), then SIGTERM; its events."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from numd.client.tap import main; main()",
            "--server",
            f"tcp:127.0.0.1:{port}",
            "--id",
            str(client_id),
            "--connect",
            "--json",
        ],  # fmt: skip
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=subprocess_env(),
    )
    events: list[dict] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(b"{"):
                events.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not until(list(events)) and time.monotonic() < deadline:
            if process.poll() is not None:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        reader.join(5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    return events


def test_the_shipped_configuration_is_valid() -> None:
    """``haproxy -c`` accepts contrib/haproxy/numd.cfg as shipped."""
    result = subprocess.run(
        [HAPROXY, "-c", "-f", str(CONFIG)], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_clients_reach_two_instances_through_one_address(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Through HAProxy with the shipped configuration: a dead instance is taken out by its
    check, the live ones stay in; counter connections are spread over both live instances
    and see one shared list; the API answers the same on every request; numd's own client
    reports, the instance it was on stops, and the client resumes through the same address
    from its last number."""
    with shared_instances(tmp_path, redis_server) as (a, b):
        counter, http = free_port(), free_port()
        dead = free_port()
        config = tmp_path / "haproxy.cfg"
        servers = {
            "numd1": (a.port, a.api_port),
            "numd2": (b.port, b.api_port),
            "numd3": (dead, dead),
        }
        config.write_text(configured(CONFIG.read_text(), counter, http, servers))
        with running_haproxy(config, (counter, http)) as errors:
            wait_until(
                lambda: all(
                    f"{backend}/numd3 is DOWN" in errors.read_text()
                    for backend in ("numd_counter", "numd_http")
                ),
                10,
            )

            # Counter connections, spread by leastconn, one shared list.
            socks = [socket.create_connection(("127.0.0.1", counter), timeout=5) for _ in range(4)]
            try:
                for client_id, sock in enumerate(socks, start=41):
                    sock.sendall(b"%d " % client_id)
                    assert recv_tokens(sock, 1) == [b"0"]
                for value, sock in enumerate(socks):
                    sock.sendall(b"[%d,-%d] " % (value, value))
                    (reply,) = recv_tokens(sock, 1)
                assert json.loads(reply) == [-3, -2, -1, 0, 0, 1, 2, 3]
            finally:
                for sock in socks:
                    sock.close()
            assert (registrations(a), registrations(b)) == (2.0, 2.0)

            # The API: every request answered, by either instance, with the same list.
            status, body = http_json(http, "/api/v1/values", "POST", [10, 20])
            assert (status, body["size"]) == (200, 10), body
            for _ in range(4):
                status, page = http_json(http, "/api/v1/values")
                assert (status, page["values"]) == (200, [-3, -2, -1, 0, 0, 1, 2, 3, 10, 20])
            assert http_json(http, "/readyz")[0] == 200
            log = errors.read_text()
            assert "/numd1 is DOWN" not in log and "/numd2 is DOWN" not in log, log

            # numd's own client: reports through HAProxy; its instance stops; it resumes.
            before = registrations(a), registrations(b)
            events = run_client(counter, 31, lambda e: sum(x["event"] == "report" for x in e) >= 2)
            reports = [e["number"] for e in events if e["event"] == "report"]
            assert reports, events
            served_by_a = registrations(a) > before[0]
            assert served_by_a != (registrations(b) > before[1])
            wait_until(
                lambda: http_json(http, "/api/v1/clients/31")[1].get("number") == reports[-1], 2
            )
            assert (a if served_by_a else b).stop(signal.SIGTERM) == 0
            events = run_client(counter, 31, lambda e: any(x["event"] == "connected" for x in e))
            connected = [e for e in events if e["event"] == "connected"]
            assert connected and connected[0]["number"] == reports[-1], events
        assert "Traceback" not in a.output.read_text() + b.output.read_text()
