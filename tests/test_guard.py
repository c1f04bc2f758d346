"""numd.http.guard: the Host allowlist and syntax, the bearer token, CORS."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger

from numd.http.api import NumdApi
from numd.http.guard import host_name, host_problem, is_loopback_name
from numd.service import NumberService

from .http_client import Wire, assert_json_error, call

TOKEN = "s3cret-token"


@pytest.fixture
def service() -> NumberService:
    """A state service on a fake clock."""
    return NumberService(Clock(), random.Random(3))


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


# 12. Host: one header, no userinfo


@pytest.mark.parametrize(
    "hosts",
    [
        [b"127.0.0.1", b"127.0.0.1"],
        [b"127.0.0.1", b"evil.example"],
        [b"localhost:80@evil.example"],
        [b"user:pass@localhost"],
        [b"@localhost"],
        [b"localhost/evil"],
        [b"localhost:80:81"],
        [b"localhost:http"],
        [b"local host"],
        [b"::1"],
    ],
)
@pytest.mark.parametrize("allowed", [[], ["*"]])
def test_repeated_or_malformed_host_is_400(
    service: NumberService, hosts: list[bytes], allowed: list[str]
) -> None:
    """Two Host headers, userinfo (``@``) or a Host that is not name[:port] get 400 bad-host.

    Even with ``--allowed-host '*'``; with userinfo the name is never taken as localhost.
    """
    site = NumdApi(service, allowed_hosts=allowed).site(reactor=Clock())
    wire = Wire(site)
    wire.send(
        b"POST /api/v1/values HTTP/1.1\r\n"
        + b"".join(b"Host: " + h + b"\r\n" for h in hosts)
        + b"Content-Length: 3\r\n\r\n[1]"
    )
    (answer,) = wire.answers()
    assert_json_error(answer, 400, "bad-host", closes=False)
    if len(hosts) == 1 and b"@" in hosts[0]:
        assert "userinfo" in answer.json()["message"]
    assert len(service.values) == 0


@pytest.mark.parametrize(
    "host", [b"127.0.0.1", b"localhost:8080", b"[::1]:8080", b"LOCALHOST.", b"127.0.0.1:"]
)
def test_well_formed_loopback_hosts_are_still_served(service: NumberService, host: bytes) -> None:
    """The Host syntax check lets every well-formed loopback Host through."""
    wire = Wire(NumdApi(service).site(reactor=Clock()))
    wire.send(b"GET /healthz HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert [a.status for a in wire.answers()] == [200]


@given(
    name=st.from_regex(
        r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True
    ),
    port=st.none() | st.integers(0, 65535),
    userinfo=st.binary(max_size=20),
)
def test_host_problem_finds_every_userinfo(name: str, port: int | None, userinfo: bytes) -> None:
    """A name with an optional port is well formed; the same with any ``userinfo@`` in front never is."""
    host = name.encode() + (b"" if port is None else b":%d" % port)
    assert host_problem([host]) is None
    assert host_problem([userinfo + b"@" + host]) is not None
    assert host_problem([host, host]) is not None


def test_refused_host_is_logged_as_text(service: NumberService) -> None:
    """A refused Host appears in the log as text ('evil.example'), never as a bytes repr (b'...')."""
    from twisted.logger import formatEvent

    events: list[dict] = []
    resource = NumdApi(service).guarded_resource()
    guard_log = resource.log  # type: ignore[attr-defined]
    resource.log = Logger(namespace=guard_log.namespace, observer=events.append)  # type: ignore[attr-defined]
    call(resource, "GET", "http://127.0.0.1/healthz", headers={"Host": "evil.example"})
    text = [formatEvent(e) for e in events]
    assert text == ["refused a request for Host 'evil.example'"]
