"""End to end: a real `twistd -n numd` with its HTTP API, the counter protocol and the legacy listener.

The daemon runs as a subprocess on free 127.0.0.1 ports; HTTP goes through treq
over the loopback, the counter protocol and the old array client through
sockets with timeouts. The subprocess is always killed at the end.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.web.client import HTTPConnectionPool

from .daemon import TWISTD, Daemon, free_port, recv_tokens, running_numd, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ApiDaemon:
    """A running numd with its API and legacy array ports."""

    daemon: Daemon
    api_port: int
    legacy_array_port: int

    @property
    def base(self) -> str:
        """The API's base URL."""
        return f"http://127.0.0.1:{self.api_port}"


@contextmanager
def running_api_daemon(directory: Path, *args: str) -> Iterator[ApiDaemon]:
    """`twistd -n numd` with the API and the legacy array listener on free ports, legacy routes on.

    The checkout goes first on PYTHONPATH so the subprocess runs this tree's
    modules even if the installed (strict editable) copy predates new ones.
    """
    api_port, legacy_port = free_port(), free_port()
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), old]))
    try:
        with running_numd(
            directory,
            "--api-listen",
            f"tcp:{api_port}:interface=127.0.0.1",
            "--legacy-array-listen",
            f"tcp:{legacy_port}:interface=127.0.0.1",
            "--legacy-routes",
            *args,
        ) as daemon:
            wait_for_port(api_port, daemon.process)
            wait_for_port(legacy_port, daemon.process)
            yield ApiDaemon(daemon, api_port, legacy_port)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture
def api_daemon(tmp_path: Path) -> Iterator[ApiDaemon]:
    """A running daemon, killed after the test."""
    with running_api_daemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
def pool() -> Iterator[HTTPConnectionPool]:
    """A non-persistent HTTP connection pool, closed after the test."""
    from twisted.internet import reactor

    pool = HTTPConnectionPool(reactor, persistent=False)
    yield pool
    pytest_twisted.blockon(pool.closeCachedConnections())


async def http(method: str, url: str, pool: HTTPConnectionPool, **kwargs: Any) -> tuple[int, Any]:
    """Status and decoded body of one request, each wait bounded by 5 s."""
    from twisted.internet import reactor

    response = await treq.request(method, url, pool=pool, **kwargs).addTimeout(5, reactor)
    body = await treq.content(response).addTimeout(5, reactor)
    content_type = response.headers.getRawHeaders("Content-Type", [""])[0]
    if content_type == "application/json":
        return response.code, json.loads(body)
    return response.code, body.decode("utf-8")


def counter_array(daemon: Daemon, token: bytes) -> list[int]:
    """Send one array token on the counter protocol and parse the sorted list it answers."""
    with daemon.connect(timeout=5) as sock:
        sock.sendall(token + b" ")
        (reply,) = recv_tokens(sock, 1)
    assert reply.startswith(b"[") and reply.endswith(b"]"), reply
    return [int(v) for v in reply[1:-1].split(b",") if v]


def legacy_array(port: int, values: list[int]) -> list[int]:
    """Do what the older array client does: send a pickle, read the reply with one recv(1024)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(pickle.dumps(values, protocol=2))
        return pickle.loads(sock.recv(1024))  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
async def test_http_and_counter_protocol_share_one_list(
    api_daemon: ApiDaemon, pool: HTTPConnectionPool
) -> None:
    """A value added over HTTP is in a counter client's array reply, and the other way round."""
    values_url = api_daemon.base + "/api/v1/values"
    code, body = await http("POST", values_url, pool, json=[424242])
    assert (code, body) == (200, {"added": [424242], "size": 1})

    assert counter_array(api_daemon.daemon, b"[1]") == [1, 424242]

    assert counter_array(api_daemon.daemon, b"[777777,5]") == [1, 5, 424242, 777777]
    code, body = await http("GET", values_url + "?min=700000&max=800000", pool)
    assert code == 200
    assert (body["size"], body["matched"], body["values"]) == (4, 1, [777777])


@pytest_twisted.ensureDeferred
async def test_legacy_clients_share_the_list_too(
    api_daemon: ApiDaemon, pool: HTTPConnectionPool
) -> None:
    """The old array client and the old text routes see and change the same list as the JSON API."""
    code, _ = await http("POST", api_daemon.base + "/api/v1/values", pool, json=[20])
    assert code == 200
    assert legacy_array(api_daemon.legacy_array_port, [31, 7, 7]) == [7, 7, 20, 31]
    code, text = await http("GET", api_daemon.base + "/get_array", pool)
    expected = (
        "REST API Server[EndPoint = get_array] response : "
        "Array Size: 4, Array: SortedList([7, 7, 20, 31])"
    )
    assert (code, text) == (200, expected)
    code, text = await http("DELETE", api_daemon.base + "/clean_array", pool)
    assert text.endswith("New Size: 0, New Array: SortedList([])")
    assert legacy_array(api_daemon.legacy_array_port, [3]) == [3]


@pytest_twisted.ensureDeferred
async def test_health_readiness_and_metrics(
    api_daemon: ApiDaemon, pool: HTTPConnectionPool
) -> None:
    """A started daemon is alive and ready (every listener up), and its metrics show the traffic."""
    assert await http("GET", api_daemon.base + "/healthz", pool) == (
        200,
        {"status": "ok"},
    )
    code, body = await http("GET", api_daemon.base + "/readyz", pool)
    assert (code, body["status"]) == (200, "ready")
    assert set(body["checks"]) == {
        "api_listener",
        "counter_listeners",
        "legacy_array_listener",
        "message_log_writable",
        "store_files_intact",
        "store_writable",
    }
    with api_daemon.daemon.connect(timeout=5) as sock:
        sock.sendall(b"12 odd ")
        start, odd = recv_tokens(sock, 2)
        code, text = await http("GET", api_daemon.base + "/metrics", pool)
        assert code == 200
        assert "numd_clients_connected 1.0" in text
        assert 'numd_messages_received_total{kind="odd",protocol="counter"} 1.0' in text
        assert 'numd_http_requests_total{route="/readyz",status="200"} 1.0' in text
        code, body = await http("GET", api_daemon.base + "/api/v1/clients/12", pool)
        assert code == 200
        assert (body["id"], body["number"], body["connected"]) == (12, 0, True)
        assert (start, body["last_given"]) == (b"0", int(odd))


def test_sigterm_still_exits_cleanly_with_the_api(api_daemon: ApiDaemon) -> None:
    """SIGTERM stops the daemon with its HTTP and legacy listeners, exit code 0."""
    assert api_daemon.daemon.stop() == 0


@pytest_twisted.ensureDeferred
async def test_tac_file_serves_the_api(tmp_path: Path, pool: HTTPConnectionPool) -> None:
    """`twistd -ny numd.tac` serves the HTTP API too, with the options from NUMD_OPTIONS."""
    counter_port, api_port = free_port(), free_port()
    options = (
        f"--listen tcp:{counter_port}:interface=127.0.0.1 "
        f"--api-listen tcp:{api_port}:interface=127.0.0.1 --legacy-routes"
    )
    env = {
        **os.environ,
        "NUMD_OPTIONS": options,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "-y", str(ROOT / "numd.tac")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(api_port, process)
        base = f"http://127.0.0.1:{api_port}"
        assert await http("GET", base + "/healthz", pool) == (200, {"status": "ok"})
        code, text = await http("GET", base + "/get_array", pool)
        assert (code, text.endswith("Array Size: 0, Array: SortedList([])")) == (
            200,
            True,
        )
    finally:
        process.kill()
        process.wait(10)
