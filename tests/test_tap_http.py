"""How `twistd numd` wires the HTTP API and the legacy array listener: options, listeners, readiness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock

from numd.counter.legacy_array import LegacyArrayFactory
from numd.http.api import NumdApi
from numd.http.site import ApiSite
from numd.tap import Daemon, Options, makeService


def parse(tmp_path: Path, *args: str) -> Options:
    """Options as twistd parses them, with the message log and the store kept in `tmp_path`."""
    options = Options()
    options.parseOptions(
        [
            "--message-log",
            str(tmp_path / "m.log"),
            "--db",
            str(tmp_path / "numd.db"),
            *args,
        ]
    )
    return options


def started(options: Options) -> tuple[Daemon, MemoryReactorClock]:
    """The service tree built and started on a memory reactor."""
    reactor = MemoryReactorClock()
    daemon = makeService(options, reactor=reactor)
    daemon.privilegedStartService()
    daemon.startService()
    return daemon, reactor


def get_json(resource: Any, path: str) -> tuple[int, Any]:
    """Status and JSON body of one GET through StubTreq."""
    stub = StubTreq(resource)
    results: list[Any] = []
    stub.get("http://127.0.0.1:8080" + path).addCallback(
        lambda r: r.json().addCallback(lambda body: (r.code, body))
    ).addBoth(results.append)
    stub.flush()
    return results[0]  # type: ignore[no-any-return]


def test_make_service_serves_the_api_and_the_legacy_listener(tmp_path: Path) -> None:
    """makeService binds the API site and the legacy listener on their endpoints, sharing one state."""
    daemon, reactor = started(
        parse(
            tmp_path,
            "--listen",
            "tcp:2005:interface=127.0.0.1",
            "--api-listen",
            "tcp:8081:interface=127.0.0.1",
            "--legacy-array-listen",
            "tcp:6000:interface=127.0.0.1",
            "--legacy-array-max-bytes",
            "512",
            "--legacy-routes",
            "--max-body",
            "1000",
        )
    )
    listeners = {factory: (port, iface) for port, factory, _backlog, iface in reactor.tcpServers}
    assert isinstance(daemon.site, ApiSite)
    assert listeners[daemon.site] == (8081, "127.0.0.1")
    assert isinstance(daemon.legacy_array_factory, LegacyArrayFactory)
    assert listeners[daemon.legacy_array_factory] == (6000, "127.0.0.1")
    assert isinstance(daemon.api, NumdApi)
    assert daemon.api.service is daemon.state
    assert daemon.legacy_array_factory.service is daemon.state
    assert (daemon.api.legacy_routes, daemon.api.max_body, daemon.site.max_body) == (
        True,
        1000,
        1000,
    )
    assert daemon.legacy_array_factory.max_bytes == 512
    daemon.stopService()


def test_without_legacy_options_there_is_no_legacy_listener(tmp_path: Path) -> None:
    """Without --legacy-array-listen nothing listens for pickles and the old routes are 404."""
    daemon, reactor = started(parse(tmp_path, "--listen", "tcp:2005:interface=127.0.0.1"))
    assert daemon.legacy_array_factory is None
    assert sorted(port for port, *_ in reactor.tcpServers) == [2005, 8080]
    code, body = get_json(daemon.site.resource, "/get_array")
    assert (code, body["error"]) == (404, "not-found")
    daemon.stopService()


def test_readyz_follows_the_listeners(tmp_path: Path) -> None:
    """/readyz is 503 until every listener has started listening, then 200."""
    daemon, _reactor = started(
        parse(
            tmp_path,
            "--listen",
            "tcp:2005:interface=127.0.0.1",
            "--listen",
            "tcp:2006:interface=127.0.0.1",
            "--legacy-array-listen",
            "tcp:6000:interface=127.0.0.1",
        )
    )
    code, body = get_json(daemon.site.resource, "/readyz")
    assert (code, body["status"]) == (503, "not-ready")
    assert body["checks"] == {
        "api_listener": False,
        "counter_listeners": False,
        "legacy_array_listener": False,
        "message_log_writable": True,
        "store_files_intact": True,
        "store_writable": True,
    }
    # A memory reactor does not start factories; a real port calls doStart once it listens.
    assert daemon.legacy_array_factory is not None
    for factory in (daemon.site, daemon.legacy_array_factory, daemon.counter_factory):
        factory.doStart()
    assert get_json(daemon.site.resource, "/readyz")[1]["checks"]["counter_listeners"] is False
    daemon.counter_factory.doStart()
    assert get_json(daemon.site.resource, "/readyz") == (
        200,
        {
            "status": "ready",
            "checks": {
                "api_listener": True,
                "counter_listeners": True,
                "legacy_array_listener": True,
                "message_log_writable": True,
                "store_files_intact": True,
                "store_writable": True,
            },
        },
    )
    daemon.stopService()


def test_metrics_cover_both_protocols(tmp_path: Path) -> None:
    """The daemon's metrics export the counter protocol's and the legacy listener's stats."""
    daemon, _reactor = started(
        parse(tmp_path, "--legacy-array-listen", "tcp:6000:interface=127.0.0.1")
    )
    assert daemon.legacy_array_factory is not None
    daemon.stats.received["odd"] += 2
    daemon.legacy_array_factory.stats.errors["not-list"] += 1
    text = daemon.metrics.render().decode()
    assert 'numd_messages_received_total{kind="odd",protocol="counter"} 2.0' in text
    assert 'numd_protocol_errors_total{protocol="legacy-array",reason="not-list"} 1.0' in text
    daemon.stopService()


def test_tac_builds_the_api_from_numd_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """numd.tac takes the API options from NUMD_OPTIONS like the plugin does."""
    from twisted.application.service import IService

    monkeypatch.setenv(
        "NUMD_OPTIONS",
        f"--message-log {tmp_path / 'm.log'} --db {tmp_path / 'numd.db'} "
        "--api-listen tcp:8099:interface=127.0.0.1 --legacy-routes",
    )
    tac = Path(__file__).parent.parent / "numd.tac"
    namespace: dict[str, Any] = {}
    exec(compile(tac.read_text(), str(tac), "exec"), namespace)
    (daemon,) = list(IService(namespace["application"]))
    assert daemon.api.legacy_routes is True
    assert daemon.api.service is daemon.state
    document = json.loads(daemon.api._openapi)
    assert "/get_array" in document["paths"]


def test_access_log_only_when_asked(tmp_path: Path) -> None:
    """No request is written to an access log by default; --access-log writes combined-format lines."""
    from twisted.internet.testing import StringTransport

    def one_request(site: Any) -> Any:
        """Serve one GET; return where the site was writing its access log meanwhile."""
        site.startFactory()
        channel = site.buildProtocol(None)
        channel.makeConnection(StringTransport())
        channel.dataReceived(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        access_log = site._logFile
        site.stopFactory()
        return access_log

    daemon, _ = started(parse(tmp_path))
    assert one_request(daemon.site) is None
    daemon.stopService()
    log_path = tmp_path / "access.log"
    daemon, _ = started(parse(tmp_path, "--access-log", str(log_path)))
    one_request(daemon.site)
    daemon.stopService()
    (line,) = log_path.read_text().splitlines()
    assert '"GET /healthz HTTP/1.1" 200' in line
