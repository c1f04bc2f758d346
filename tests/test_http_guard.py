"""HTTP API protections: loopback by default, bearer token, Host allowlist, CORS, body cap, deadlines."""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.python import usage

from numd.api import NumdApi
from numd.http_guard import host_name, is_loopback_name
from numd.service import NumberService
from numd.tap import Options

TOKEN = "s3cret-token"


def parse(tmp_path: Path, *args: str) -> Options:
    """Options as twistd would parse them, with the files in `tmp_path`."""
    options = Options()
    options.parseOptions(["--message-log", str(tmp_path / "m.log"), "--db", ":memory:", *args])
    return options


@pytest.fixture
def service() -> NumberService:
    """A state service on a fake clock."""
    return NumberService(Clock(), random.Random(3))


def call(resource: Any, method: str, url: str, **kwargs: Any) -> tuple[int, Any, Any]:
    """Status, headers and body text of one request through StubTreq."""
    stub = StubTreq(resource)
    results: list[Any] = []
    d = stub.request(method, url, **kwargs)
    d.addCallback(lambda r: r.text().addCallback(lambda body: (r.code, r.headers, body)))
    d.addBoth(results.append)
    stub.flush()
    return results[0]  # type: ignore[no-any-return]


# 10. Loopback by default; beyond it a token or --allow-remote


def test_listeners_default_to_loopback(tmp_path: Path) -> None:
    """Both listeners bind 127.0.0.1 by default and need nothing more."""
    options = parse(tmp_path)
    assert options["listen"][0].startswith("tcp:2004:interface=127.0.0.1")
    assert options["api-listen"] == "tcp:8080:interface=127.0.0.1"
    assert options["api-token"] is None


@pytest.mark.parametrize(
    "args,complaint",
    [
        (["--api-listen", "tcp:8080"], "set an API token"),
        (["--api-listen", "tcp:8080:interface=0.0.0.0"], "set an API token"),
        (["--listen", "tcp:2004"], "no authentication"),
        (["--legacy-array-listen", "tcp:6000:interface=0.0.0.0"], "no authentication"),
    ],
)
def test_remote_listener_without_protection_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], complaint: str
) -> None:
    """A non-loopback listener without a token (or --allow-remote) stops start-up with a clear message."""
    monkeypatch.delenv("NUMD_API_TOKEN", raising=False)
    with pytest.raises(usage.UsageError, match=complaint):
        parse(tmp_path, *args)
    parse(tmp_path, *args, "--allow-remote")


def test_api_token_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token from --api-token-file or $NUMD_API_TOKEN lets the API listen beyond loopback."""
    monkeypatch.delenv("NUMD_API_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    options = parse(tmp_path, "--api-listen", "tcp:8080", "--api-token-file", str(token_file))
    assert options["api-token"] == TOKEN
    monkeypatch.setenv("NUMD_API_TOKEN", "from-env")
    assert parse(tmp_path, "--api-listen", "tcp:8080")["api-token"] == "from-env"


def test_token_is_never_a_command_line_value(tmp_path: Path) -> None:
    """There is no option that takes the token itself, and a bad token file is a clear error."""
    with pytest.raises(usage.UsageError):
        parse(tmp_path, "--api-token", TOKEN)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(usage.UsageError, match="must hold one token"):
        parse(tmp_path, "--api-token-file", str(tmp_path / "empty"))
    with pytest.raises(usage.UsageError, match="cannot read"):
        parse(tmp_path, "--api-token-file", str(tmp_path / "missing"))


# 11. The bearer token


@pytest.mark.parametrize(
    "method,url,kwargs",
    [
        ("POST", "/api/v1/values", {"data": b"[5]"}),
        ("POST", "/api/v1/values", {}),
        ("DELETE", "/api/v1/values", {}),
        ("GET", "/add_value", {}),
        ("GET", "/clean_array", {}),
    ],
)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", "Basic " + TOKEN, TOKEN, "Bearer " + TOKEN[:-1]]
)
def test_changes_need_the_token(
    service: NumberService, method: str, url: str, kwargs: dict, authorization: str | None
) -> None:
    """Without the right bearer token a change gets 401 with WWW-Authenticate and changes nothing."""
    service.merge([1, 2])
    api = NumdApi(service, token=TOKEN, legacy_routes=True)
    headers = {} if authorization is None else {"Authorization": authorization}
    code, response_headers, body = call(
        api.guarded_resource(), method, "http://127.0.0.1:8080" + url, headers=headers, **kwargs
    )
    assert code == 401
    assert response_headers.getRawHeaders("WWW-Authenticate") == ['Bearer realm="numd"']
    assert '"unauthorized"' in body
    assert list(service.values) == [1, 2]


def test_right_token_changes_and_reads_need_none(service: NumberService) -> None:
    """With the token a change goes through; reads never need it."""
    api = NumdApi(service, token=TOKEN, legacy_routes=True)
    resource = api.guarded_resource()
    auth = {"Authorization": "Bearer " + TOKEN}
    code, _, _ = call(resource, "POST", "http://127.0.0.1/api/v1/values", data=b"[9]", headers=auth)
    assert code == 200 and list(service.values) == [9]
    for url in ("/api/v1/values", "/api/v1/clients", "/healthz", "/metrics", "/get_array"):
        assert call(resource, "GET", "http://127.0.0.1" + url)[0] == 200, url


def test_without_a_token_changes_are_open(service: NumberService) -> None:
    """Without a token (loopback only), changes need no header."""
    resource = NumdApi(service).guarded_resource()
    assert call(resource, "POST", "http://127.0.0.1/api/v1/values", data=b"7")[0] == 200


# 12. Host allowlist and CORS


@pytest.mark.parametrize(
    "host,allowed",
    [
        ("127.0.0.1:8080", True),
        ("localhost", True),
        ("LOCALHOST:8080", True),
        ("[::1]:8080", True),
        ("127.3.4.5", True),
        ("evil.example", False),
        ("evil.example:8080", False),
        ("127.0.0.1.evil.example", False),
        ("numd.internal", True),
    ],
)
def test_host_allowlist(service: NumberService, host: str, allowed: bool) -> None:
    """Loopback names and configured names are served; any other Host gets 403 (DNS rebinding)."""
    resource = NumdApi(service, allowed_hosts=["numd.internal"]).guarded_resource()
    code, _, body = call(resource, "GET", "http://127.0.0.1/healthz", headers={"Host": host})
    assert code == (200 if allowed else 403)
    if not allowed:
        assert '"host-not-allowed"' in body


def test_any_host_with_star(service: NumberService) -> None:
    """--allowed-host '*' turns the Host check off."""
    resource = NumdApi(service, allowed_hosts=["*"]).guarded_resource()
    assert call(resource, "GET", "http://x/healthz", headers={"Host": "x.example"})[0] == 200


def test_host_parsing() -> None:
    """Ports and brackets are stripped; loopback addresses of every form are recognised."""
    assert host_name(b"[::1]:80") == "::1"
    assert host_name(b"Example.COM:80") == "example.com"
    assert host_name(None) is None
    assert is_loopback_name("127.255.0.1") and is_loopback_name("::1")
    assert not is_loopback_name("10.0.0.1") and not is_loopback_name("localhost.evil")


def test_no_cors_headers_unless_configured(service: NumberService) -> None:
    """By default no Access-Control header is sent, whatever the Origin."""
    resource = NumdApi(service).guarded_resource()
    _, headers, _ = call(
        resource, "GET", "http://127.0.0.1/healthz", headers={"Origin": "https://evil.example"}
    )
    assert not [
        name for name, _ in headers.getAllRawHeaders() if name.lower().startswith(b"access-control")
    ]


def test_cors_for_a_configured_origin(service: NumberService) -> None:
    """A configured origin gets Access-Control-Allow-Origin and an answered preflight."""
    resource = NumdApi(service, cors_origins=["https://ui.example"]).guarded_resource()
    origin = {"Origin": "https://ui.example"}
    _, headers, _ = call(resource, "GET", "http://127.0.0.1/healthz", headers=origin)
    assert headers.getRawHeaders("Access-Control-Allow-Origin") == ["https://ui.example"]
    code, headers, _ = call(
        resource, "OPTIONS", "http://127.0.0.1/api/v1/values",
        headers={**origin, "Access-Control-Request-Method": "POST"},
    )  # fmt: skip
    assert code == 204
    assert "POST" in headers.getRawHeaders("Access-Control-Allow-Methods")[0]
    _, headers, _ = call(
        resource, "GET", "http://127.0.0.1/healthz", headers={"Origin": "https://other.example"}
    )
    assert headers.getRawHeaders("Access-Control-Allow-Origin") is None


# 13. Body cap without reading the body; slow requests time out (fake clock, real socket)


async def raw_exchange(site: Any, request: bytes, then: Any = None) -> bytes:
    """Send raw bytes to `site` over 127.0.0.1 and return everything read until it closes."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    sock = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    sock.setblocking(False)
    try:
        sock.sendall(request)
        if then is not None:
            await deferLater(reactor, 0.05)
            then()
        received = b""
        deadline = reactor.seconds() + 5
        while reactor.seconds() < deadline:
            await deferLater(reactor, 0.01)
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                return received
            received += chunk
        raise AssertionError(f"the server did not close; got {received!r}")
    finally:
        sock.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_announced_big_body_is_refused_before_it_is_sent(service: NumberService) -> None:
    """A Content-Length over the cap gets 413 and a close at once, with the body never sent."""
    site = NumdApi(service, max_body=1024).site()
    answer = await raw_exchange(
        site,
        b"POST /api/v1/values HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000\r\n\r\n[1",
    )
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"body-too-large"' in answer
    assert len(service.values) == 0


@pytest_twisted.ensureDeferred
async def test_chunked_body_is_cut_when_it_passes_the_cap(service: NumberService) -> None:
    """A chunked body is refused the moment it passes the cap."""
    site = NumdApi(service, max_body=1024).site()
    chunk = b"800\r\n" + b" " * 0x800 + b"\r\n"
    answer = await raw_exchange(
        site,
        b"POST /api/v1/values HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunk,
    )
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert len(service.values) == 0


@pytest.mark.parametrize(
    "partial",
    [
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n",  # headers never finish
        b"POST /api/v1/values HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n[1",
    ],
    ids=["slow-headers", "slow-body"],
)
@pytest_twisted.ensureDeferred
async def test_slow_request_times_out(service: NumberService, partial: bytes) -> None:
    """Headers or a body that do not arrive within the request timeout get 408 and a close."""
    clock = Clock()
    site = NumdApi(service, request_timeout=10).site(reactor=clock)
    answer = await raw_exchange(site, partial, then=lambda: clock.advance(10))
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"request-timeout"' in answer
    assert len(service.values) == 0


@pytest_twisted.ensureDeferred
async def test_request_in_time_is_served_and_its_deadline_cancelled(service: NumberService) -> None:
    """A complete request is answered, and no deadline is left on the clock afterwards."""
    clock = Clock()
    site = NumdApi(service, request_timeout=10).site(reactor=clock)
    answer = await raw_exchange(
        site, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    pending = [c for c in clock.getDelayedCalls() if "_too_slow" in repr(c.func)]
    assert not pending


# 15. An unwritable message log: numd keeps serving, /readyz says degraded, a metric counts drops


def test_unwritable_message_log_keeps_serving(tmp_path: Path) -> None:
    """When the log cannot be written, clients are still answered, /readyz is degraded, drops are counted."""
    from numd.messagelog import MessageLog
    from numd.metrics import Metrics
    from numd.protocol import CounterFactory
    from numd.stats import Stats

    from .counter_client import FakeClient

    clock = Clock()
    service = NumberService(clock, random.Random(1))
    log = MessageLog(str(tmp_path / "m.log"), clock)
    log.startService()
    stats = Stats()
    factory = CounterFactory(service, log, stats, clock)
    metrics = Metrics(service, log)
    metrics.add_stats("counter", stats)
    api = NumdApi(service, message_log=log, metrics=metrics)

    def disk_full(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    log._file.write = disk_full  # type: ignore[union-attr,method-assign]
    client = FakeClient(factory)
    assert client.send(b"1 odd ")[0] == b"0"
    log.flush()
    assert len(client.send(b"even [3] ")) == 2
    log.flush()
    code, _, body = call(api.guarded_resource(), "GET", "http://127.0.0.1/readyz")
    assert code == 503 and '"degraded"' in body
    _, _, text = call(api.guarded_resource(), "GET", "http://127.0.0.1/metrics")
    dropped = [
        line
        for line in text.splitlines()
        if line.startswith("numd_message_log_records_dropped_total")
    ]
    assert dropped and float(dropped[0].split()[-1]) >= 6
    log.stopService()


@pytest.mark.parametrize(
    "description,loopback",
    [
        ("tcp:2004:interface=127.0.0.1", True),
        ("tcp:2004:interface=127.0.0.1:backlog=4096", True),
        ("tcp6:80:interface=\\:\\:1", True),
        ("tcp:1:interface=localhost", True),
        ("unix:/tmp/numd.sock", True),
        ("tcp:2004", False),
        ("tcp:80:interface=0.0.0.0", False),
        ("tcp:1:interface=10.0.0.1", False),
        ("systemd:domain=INET:index=0", False),
    ],
)
def test_endpoint_is_loopback(description: str, loopback: bool) -> None:
    """Which endpoint strings listen on loopback only (an unknown kind counts as remote)."""
    from numd.options import endpoint_is_loopback

    assert endpoint_is_loopback(description) is loopback
