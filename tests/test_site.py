"""numd.http.site: the connection cap, the capped body, the JSON 400 for a path that is not UTF-8."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from numd.http.api import NumdApi
from numd.http.site import ApiSite
from numd.service import NumberService

from .http_client import GET, Wire, assert_json_error, parse_answers, read_until_closed


@pytest.fixture
def service() -> NumberService:
    """A state service on a fake clock."""
    return NumberService(Clock(), random.Random(3))


# The connection cap (SSE streams count)


def test_connections_past_the_cap_get_503_and_a_slot_frees_on_close(service: NumberService) -> None:
    """Past --api-max-connections a new connection gets a JSON 503 and is closed; a close frees a slot.

    An open event stream is a connection like any other.
    """
    from numd.http.dashboard import Dashboard

    clock = Clock()
    api = NumdApi(service, max_connections=2, dashboard=Dashboard(service, clock))
    site = api.site(reactor=clock)
    stream, idle = Wire(site), Wire(site)
    stream.send(b"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    refused = Wire(site)
    (answer,) = refused.answers()
    assert_json_error(answer, 503, "too-many-connections")
    assert answer.header(b"Retry-After") == b"1"
    assert refused.closed and not stream.closed and not idle.closed
    assert site.stats.connections["refused"] == 1
    assert site.stats.errors["too-many-connections"] == 1
    stream.transport.loseConnection()
    served = Wire(site)
    served.send(GET + b"\r\n")
    assert [a.status for a in served.answers()] == [200]
    assert site.stats.connections["refused"] == 1
    idle.transport.loseConnection()
    served.transport.loseConnection()
    assert site.connections == set()


def test_reaching_the_cap_is_logged_once_each_time(service: NumberService) -> None:
    """The first refusal after the cap is reached is logged; later ones only counted, until a slot frees."""
    site = NumdApi(service, max_connections=1).site(reactor=Clock())
    events: list[dict] = []
    site._logger = Logger(namespace="numd.http.site.ApiSite", observer=events.append)
    held = Wire(site)
    Wire(site), Wire(site)
    assert len(events) == 1 and events[0]["count"] == 1
    held.transport.loseConnection()
    Wire(site)
    Wire(site)
    assert len(events) == 2
    assert site.stats.connections["refused"] == 3


def test_refused_connections_are_in_the_metrics(service: NumberService) -> None:
    """/metrics counts HTTP refusals under protocol="http": connections refused, errors by code."""
    api = NumdApi(service, max_connections=1)
    site = api.site(reactor=Clock())
    first = Wire(site)
    Wire(site)
    first.send(b"GET /x HTTP/9.9\r\n\r\n")
    text = api.metrics.render().decode()
    assert 'numd_connection_events_total{event="refused",protocol="http"} 1.0' in text
    assert 'numd_protocol_errors_total{protocol="http",reason="too-many-connections"} 1.0' in text
    assert (
        'numd_protocol_errors_total{protocol="http",reason="http-version-not-supported"} 1.0'
        in text
    )


@pytest_twisted.ensureDeferred
async def test_connection_cap_over_loopback(service: NumberService) -> None:
    """With real sockets: two idle connections fill a cap of 2, the third is answered 503 and closed."""
    site = NumdApi(service, max_connections=2).site()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    address = ("127.0.0.1", port.getHost().port)
    holders = [socket.create_connection(address, timeout=5) for _ in range(2)]
    try:
        for _ in range(100):
            if len(site.connections) == 2:
                break
            await deferLater(reactor, 0.01)
        assert len(site.connections) == 2
        raw = await exchange_over_loopback_to(address, GET + b"\r\n")
        (answer,) = parse_answers(raw)
        assert_json_error(answer, 503, "too-many-connections")
        holders.pop().close()
        for _ in range(100):
            if len(site.connections) < 2:
                break
            await deferLater(reactor, 0.01)
        raw = await exchange_over_loopback_to(address, GET + b"Connection: close\r\n\r\n")
        assert [a.status for a in parse_answers(raw)] == [200]
    finally:
        for sock in holders:
            sock.close()
        await port.stopListening()


async def exchange_over_loopback_to(address: tuple[str, int], data: bytes) -> bytes:
    """Send `data` to a listening `address` and read until the server closes (5 s at most)."""
    sock = socket.create_connection(address, timeout=5)
    sock.setblocking(False)
    try:
        sock.sendall(data)
        return await read_until_closed(sock)
    finally:
        sock.close()


# -- the site's body cap, over a real socket ------------------------------------------------------------------


@asynccontextmanager
async def serving(site: ApiSite) -> AsyncIterator[tuple[str, HTTPConnectionPool]]:
    """`site` listening on a free 127.0.0.1 port: its base URL and a pool; both closed afterwards."""
    from twisted.internet import reactor

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        yield f"http://127.0.0.1:{port.getHost().port}", pool
    finally:
        await pool.closeCachedConnections()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_site_keeps_no_more_than_the_cap_of_a_body(
    service: NumberService,
) -> None:
    """Over loopback, ApiSite stores at most cap+1 bytes of a body and the route answers 413."""
    from twisted.internet import reactor

    site = NumdApi(service, max_body=1024).site()
    kept: list[int] = []
    real_get_content_file = site.getContentFile

    def spy(length: int | None) -> Any:
        content = real_get_content_file(length)
        real_write = content.write

        def write(data: bytes) -> int:
            written = real_write(data)
            kept.append(content.tell())
            return written

        content.write = write  # type: ignore[method-assign]
        return content

    site.getContentFile = spy  # type: ignore[method-assign]
    async with serving(site) as (base, pool):
        url = base + "/api/v1/values"
        response = await treq.post(url, data=b"[1]" + b" " * 200_000, pool=pool).addTimeout(
            5, reactor
        )
        body = await treq.json_content(response).addTimeout(5, reactor)
        assert response.code == 413
        assert body["error"] == "body-too-large"
        assert max(kept, default=0) <= 1025  # refused as announced: nothing kept
        response = await treq.post(url, data=b"[7]", pool=pool).addTimeout(5, reactor)
        assert (await treq.json_content(response).addTimeout(5, reactor))["added"] == [7]


@pytest_twisted.ensureDeferred
async def test_site_answers_a_non_utf8_path_with_json_400(
    service: NumberService,
) -> None:
    """Over loopback, a path that is not UTF-8 gets a JSON 400 (not Klein's plain text)."""
    from twisted.internet import reactor

    async with serving(NumdApi(service).site()) as (base, pool):
        response = await treq.get(base + "/api/v1/clients/%ff", pool=pool).addTimeout(5, reactor)
        body = await treq.json_content(response).addTimeout(5, reactor)
        assert (response.code, body["error"]) == (400, "bad-path")
