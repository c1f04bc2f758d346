"""TLS end to end: a real `twistd -n numd` with ``ssl:`` counter and HTTP listeners, its clients over TLS.

The daemon runs as a subprocess on free 127.0.0.1 ports with a certificate the
test makes (tests/tls_support.py). The counter protocol is spoken through the
standard library's ``ssl`` (an implementation apart from Twisted's), the API
through treq with the test's CA trusted and through ``http.client``, and the
client is the real ``numd-client`` command; the subprocesses are always killed.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.ssl import Certificate
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from .daemon import Daemon, free_port, recv_tokens, running_numd, wait_for_port
from .test_client_end_to_end import console_script, events, reports, started, wait_until
from .tls_support import TlsFiles, make_ca, make_tls_files

pytestmark = pytest.mark.timeout(90)

CLIENT_ID = 4343


class TlsDaemon:
    """A running ``twistd -n numd`` with a TLS counter port beside its plain one, and a TLS API."""

    def __init__(self, daemon: Daemon, tls: TlsFiles, port: int, api_port: int) -> None:
        self.daemon = daemon
        self.tls = tls
        self.port = port
        """The counter protocol's TLS port."""
        self.api_port = api_port
        """The HTTP API's TLS port."""

    @property
    def base(self) -> str:
        """The API's base URL."""
        return f"https://127.0.0.1:{self.api_port}"

    def context(self) -> ssl.SSLContext:
        """A standard-library TLS context that trusts the test's CA and checks host names."""
        return ssl.create_default_context(cafile=str(self.tls.ca))

    def connect(self) -> ssl.SSLSocket:
        """A blocking TLS socket to the counter port, verified, with a timeout on every call."""
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return self.context().wrap_socket(raw, server_hostname="127.0.0.1")

    def https(self, method: str, path: str, **headers: str) -> http.client.HTTPResponse:
        """One request to the API over TLS through ``http.client``; the response, unread."""
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.api_port, timeout=5, context=self.context()
        )
        connection.request(method, path, headers=headers)
        return connection.getresponse()


@pytest.fixture
def tls_daemon(tmp_path: Path) -> Iterator[TlsDaemon]:
    """`twistd -n numd` with ``ssl:`` counter and API listeners on free ports, killed after the test."""
    tls = make_tls_files(tmp_path / "tls")
    port, api_port = free_port(), free_port()
    with running_numd(
        tmp_path,
        "--listen",
        tls.ssl_endpoint(port),
        "--api-listen",
        tls.ssl_endpoint(api_port),
        "--db",
        ":memory:",
    ) as daemon:
        wait_for_port(port, daemon.process)
        wait_for_port(api_port, daemon.process)
        yield TlsDaemon(daemon, tls, port, api_port)
        assert daemon.stop() == 0, daemon.output.read_text()
    assert "Traceback" not in daemon.output.read_text()


@pytest.fixture
def https_pool() -> Iterator[HTTPConnectionPool]:
    """A non-persistent HTTP connection pool, closed after the test."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    yield pool
    pytest_twisted.blockon(pool.closeCachedConnections())


def trusting_client(tls: TlsFiles, pool: HTTPConnectionPool) -> treq.client.HTTPClient:
    """treq over an Agent that trusts the test's CA (and checks the certificate names the host)."""
    policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(tls.ca.read_bytes()))
    return treq.client.HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))


async def json_answer(client: treq.client.HTTPClient, method: str, url: str, **kwargs: Any) -> Any:
    """Status and JSON body of one request, each wait bounded by 5 s."""
    response = await client.request(method, url, **kwargs).addTimeout(5, reactor)
    body = await treq.json_content(response).addTimeout(5, reactor)
    return response.code, body


def test_counter_protocol_over_tls(tls_daemon: TlsDaemon) -> None:
    """A client verifying the certificate registers, reports, asks and merges arrays over TLS; a
    large array reply comes whole; the plain port beside it serves the same list."""
    with tls_daemon.connect() as sock:
        sock.sendall(b"5287 1080 odd [17,3,3,90] ")
        start, odd, merged = recv_tokens(sock, 3)
        assert (start, merged) == (b"0", b"[3,3,17,90]")
        assert int(odd) % 2 == 1
        big = b"[" + b",".join(b"%d" % v for v in range(1000, 2000)) + b"]"
        sock.sendall(big + b" ")
        (reply,) = recv_tokens(sock, 1)
        assert len(reply.split(b",")) == 1004 and reply.endswith(b",1999]")
    with tls_daemon.daemon.connect() as plain:
        plain.sendall(b"[1] ")
        (reply,) = recv_tokens(plain, 1)
        assert reply.startswith(b"[1,3,3,17,90,1000,")


def test_plain_tcp_on_the_tls_port_gets_nothing(tls_daemon: TlsDaemon) -> None:
    """A client that does not speak TLS gets no counter reply from the TLS port: the connection closes."""
    with socket.create_connection(("127.0.0.1", tls_daemon.port), timeout=5) as sock:
        sock.sendall(b"5287 odd ")
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert b"error:" not in received and not received.startswith(b"0 ")


@pytest_twisted.ensureDeferred
async def test_http_api_over_tls_with_treq(
    tls_daemon: TlsDaemon, https_pool: HTTPConnectionPool
) -> None:
    """treq, trusting the test's CA, reads and changes the list over HTTPS; the counter protocol
    over TLS sees the same list."""
    client = trusting_client(tls_daemon.tls, https_pool)
    assert await json_answer(client, "GET", tls_daemon.base + "/healthz") == (
        200,
        {"status": "ok"},
    )
    code, body = await json_answer(
        client, "POST", tls_daemon.base + "/api/v1/values", json=[424242, 7]
    )
    assert (code, body) == (200, {"added": [424242, 7], "size": 2})
    with tls_daemon.connect() as sock:
        sock.sendall(b"[1] ")
        assert recv_tokens(sock, 1) == [b"[1,7,424242]"]
    code, body = await json_answer(client, "GET", tls_daemon.base + "/api/v1/values")
    assert (code, body["values"]) == (200, [1, 7, 424242])
    code, body = await json_answer(client, "GET", tls_daemon.base + "/readyz")
    assert code == 200 and body["status"] == "ready"


def test_dashboard_over_tls_uses_no_http_urls(tls_daemon: TlsDaemon) -> None:
    """The dashboard page and its files load over HTTPS and name the API by path only (no
    ``http://`` that a browser would block as mixed content); its event stream starts with the
    snapshot."""
    with tls_daemon.https("GET", "/") as response:
        page = response.read().decode("utf-8")
        assert response.status == 200
    assert "<script" in page and "http://" not in page
    for path in ("/static/dashboard.js", "/static/dashboard.css"):
        with tls_daemon.https("GET", path) as response:
            text = response.read().decode("utf-8")
            assert response.status == 200
        # The one http:// URL in the script is SVG's XML namespace, which is never fetched.
        assert text.replace('"http://www.w3.org/2000/svg"', "").count("http://") == 0
    with tls_daemon.https("GET", "/api/v1/events") as response:
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/event-stream"
        lines = [response.readline() for _ in range(4)]
    assert lines[2] == b"event: snapshot\n" and lines[3].startswith(b"data: {")


def test_host_check_applies_over_tls(tls_daemon: TlsDaemon) -> None:
    """TLS changes nothing of the Host allowlist: a foreign Host is refused, a loopback one served."""
    with tls_daemon.https("GET", "/api/v1/values", Host="evil.example") as response:
        assert response.status == 403
        assert json.loads(response.read())["error"] == "host-not-allowed"
    with tls_daemon.https("GET", "/api/v1/values", Host=f"localhost:{tls_daemon.api_port}") as r:
        assert r.status == 200


def test_numd_client_verifies_the_server_and_reports_over_tls(
    tls_daemon: TlsDaemon, tmp_path: Path
) -> None:
    """``numd-client --server tls:...:trustRoots=DIR`` checks the certificate, registers and
    reports; its numbers reach the server's message log."""
    server = f"tls:127.0.0.1:{tls_daemon.port}:trustRoots={tls_daemon.tls.ca_dir}"
    command = [
        *console_script(), "--server", server, "--id", str(CLIENT_ID), "--connect", "--json",
    ]  # fmt: skip
    log = tls_daemon.daemon.message_log
    with started(command, tmp_path, "client") as client:
        wait_until(lambda: len(reports(log, CLIENT_ID)) >= 3, 30, "3 reports logged")
        client.terminate()
        assert client.wait(10) == 0
    kinds = [e["event"] for e in events(tmp_path / "client.out")]
    assert kinds[:3] == ["connecting", "connected", "report"]
    assert "error" not in kinds


def test_numd_client_refuses_a_server_it_does_not_trust(
    tls_daemon: TlsDaemon, tmp_path: Path
) -> None:
    """A client that trusts another CA never registers: each attempt ends with a JSON event that
    says why, then a retry; no traceback, and nothing reaches the server's log."""
    make_ca(tmp_path / "other-ca", "another CA")
    server = f"tls:127.0.0.1:{tls_daemon.port}:trustRoots={tmp_path / 'other-ca'}"
    command = [
        *console_script(), "--server", server, "--id", str(CLIENT_ID), "--connect", "--json",
    ]  # fmt: skip
    out = tmp_path / "client.out"
    with started(command, tmp_path, "client") as client:
        wait_until(lambda: out.exists() and "retrying" in out.read_text(), 30, "a retry")
        client.terminate()
        client.wait(10)
    printed = events(out)
    said = [str(v) for e in printed for v in e.values() if isinstance(v, str)]
    assert any(
        text.startswith("TLS: the server's certificate is not trusted (certificate verify failed)")
        for text in said
    )
    assert "connected" not in [e["event"] for e in printed]
    assert "Traceback" not in out.read_text()
    assert reports(tls_daemon.daemon.message_log, CLIENT_ID) == []


def test_array_mode_says_why_tls_failed(tls_daemon: TlsDaemon, tmp_path: Path) -> None:
    """``numd-client --array`` against a name the certificate does not list exits 1 and says so."""
    server = (
        f"tls:127.0.0.2:{tls_daemon.port}:trustRoots={tls_daemon.tls.ca_dir}"
        f":endpoint=tcp\\:127.0.0.1\\:{tls_daemon.port}"
    )
    command = [*console_script(), "--server", server, "--array", "--count", "1"]
    with started(command, tmp_path, "client", stderr=subprocess.STDOUT) as client:
        assert client.wait(30) == 1
    output = (tmp_path / "client.out").read_text()
    assert "TLS: the server's certificate is not for 127.0.0.2" in output
    assert "Traceback" not in output
