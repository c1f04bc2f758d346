"""`twistd numd` options and the service tree `makeService` builds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from numd.tap import Options, makeService


def parse(*args: str) -> Options:
    """Parsed options, as twistd would parse them."""
    options = Options()
    options.parseOptions(list(args))
    return options


def test_make_service_listens_on_every_endpoint(tmp_path: Path) -> None:
    """makeService binds each --listen endpoint and opens the message log."""
    reactor = MemoryReactorClock()
    options = parse(
        "--listen",
        "tcp:2005:interface=127.0.0.1",
        "--listen",
        "tcp:2006:interface=127.0.0.1:backlog=10",
        "--message-log",
        str(tmp_path / "m.log"),
        "--db",
        str(tmp_path / "numd.db"),
        "--max-clients",
        "7",
        "--idle-timeout",
        "9",
    )
    service = makeService(options, reactor=reactor)
    service.privilegedStartService()
    service.startService()
    counter = [
        (port, backlog, iface)
        for port, factory, backlog, iface in reactor.tcpServers
        if factory is service.counter_factory
    ]
    assert counter == [(2005, 4096, "127.0.0.1"), (2006, 10, "127.0.0.1")]
    assert service.counter_factory.max_clients == 7
    assert service.counter_factory.idle_timeout == 9
    assert os.path.exists(tmp_path / "m.log")
    service.stopService()


@pytest.mark.parametrize("legacy", [False, True])
def test_start_checks_open_files_against_every_listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, legacy: bool
) -> None:
    """At start the open-file check gets --max-clients, --api-max-connections and, if on, the legacy cap."""
    import numd.tap

    calls: list[tuple[tuple, dict]] = []
    monkeypatch.setattr(numd.tap, "check_open_files", lambda *a, **k: calls.append((a, k)) or 1024)
    args = ["--message-log", str(tmp_path / "m.log"), "--db", ":memory:", "--max-clients", "10",
            "--api-max-connections", "20", "--legacy-array-max-clients", "30"]  # fmt: skip
    if legacy:
        args += ["--legacy-array-listen", "tcp:6000:interface=127.0.0.1"]
    service = makeService(parse(*args), reactor=MemoryReactorClock())
    service.privilegedStartService()
    assert calls == [
        ((10,), {"api_max_connections": 20, "legacy_max_clients": 30 if legacy else 0})
    ]
    assert service.site.max_connections == 20


def test_services_stop_in_reverse_order(tmp_path: Path) -> None:
    """The state service is started first, so it is stopped last."""
    service = makeService(
        parse("--message-log", str(tmp_path / "m.log"), "--db", ":memory:"),
        reactor=MemoryReactorClock(),
    )
    names = [s.name for s in service]
    assert names[0] == "numd-state"
    assert names[1] == "numd-message-log"


def test_tac_builds_the_same_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """numd.tac builds an application from NUMD_OPTIONS with the same service tree."""
    from twisted.application.service import IService

    monkeypatch.setenv("NUMD_OPTIONS", f"--message-log {tmp_path / 'm.log'} --db :memory: --seed 5")
    tac = Path(__file__).parent.parent / "numd.tac"
    namespace: dict = {}
    exec(compile(tac.read_text(), str(tac), "exec"), namespace)
    (daemon,) = list(IService(namespace["application"]))
    assert daemon.state.rng.random() == __import__("random").Random(5).random()
    assert daemon.message_log.path == str(tmp_path / "m.log")


def test_start_keeps_full_collections_rare_and_short(tmp_path: Path) -> None:
    """After start the loaded state is frozen out of full GC passes, which come rarely; stop undoes both."""
    import gc

    service = makeService(
        parse("--message-log", str(tmp_path / "m.log"), "--db", ":memory:"),
        reactor=MemoryReactorClock(),
    )
    service.state.merge(range(5000))
    service.privilegedStartService()
    service.startService()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        assert gc.get_threshold() == (200, 1, 5000)
        state_ids = {id(service.state.clients), id(service.state.values._lists)}
        assert not state_ids & {id(o) for o in gc.get_objects(generation=2)}
    finally:
        service.stopService()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (700, 10, 10)


def test_no_message_log_option(tmp_path: Path) -> None:
    """--no-message-log turns the log off, even when its directory does not exist."""
    options = parse("--no-message-log", "--message-log", "/nonexistent/m.log", "--db", ":memory:")
    service = makeService(options, reactor=MemoryReactorClock())
    assert service.message_log.enabled is False
    assert parse("--db", ":memory:")["no-message-log"] == 0


def test_each_redis_address_builds_the_shared_state(tmp_path: Path) -> None:
    """``--db`` with a Redis, a Unix-socket or a Sentinel address: the state is shared through
    Redis (its connections wait for the service to start), and no SQLite store is made."""
    from numd.store.redis.state import SharedState

    for db in (
        "redis://127.0.0.1:6390/1",
        "unix:///run/redis/redis.sock?db=2",
        "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/main/0",
    ):
        options = parse("--db", db, "--message-log", str(tmp_path / "m.log"))
        service = makeService(options, reactor=MemoryReactorClock())
        assert isinstance(service.state, SharedState), db
        assert service.store is None
        assert not service.state.redis.connected


def test_daemon_is_given_its_parts_and_tunes_the_process_around_its_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon holds the parts it is given and adds no service itself.

    Its collector tuning comes after every service started and is undone after
    every service stopped, and the live connections are closed before any
    service stops.
    """
    from types import SimpleNamespace
    from typing import Any

    from twisted.application.service import Service
    from twisted.internet.defer import succeed

    import numd.tap

    calls: list[str] = []
    monkeypatch.setattr(numd.tap, "check_open_files", lambda *a, **k: 1024)

    class Recorder(Service):
        def startService(self) -> None:
            calls.append("service started")
            super().startService()

        def stopService(self) -> None:
            calls.append("service stopped")
            super().stopService()

    def close_all(clock: Any, timeout: float) -> Any:
        calls.append(f"connections closed within {timeout} s")
        return succeed(None)

    parts: dict[str, Any] = {
        name: SimpleNamespace(name=name)
        for name in ("state", "message_log", "stats", "store", "metrics", "api")
    }
    parts["legacy_array_factory"] = SimpleNamespace(max_clients=1)
    parts["counter_factory"] = SimpleNamespace(max_clients=1, close_all=close_all)
    parts["site"] = SimpleNamespace(max_connections=1)
    collections = SimpleNamespace(
        tune=lambda: calls.append("tuned"), restore=lambda: calls.append("restored")
    )
    daemon = numd.tap.Daemon(**parts, clock=MemoryReactorClock(), collections=collections)
    assert list(daemon) == []
    assert all(getattr(daemon, name) is part for name, part in parts.items())
    Recorder().setServiceParent(daemon)
    daemon.privilegedStartService()
    daemon.startService()
    daemon.stopService()
    assert calls == [
        "service started",
        "tuned",
        "connections closed within 2.0 s",
        "service stopped",
        "restored",
    ]


def test_services_start_in_the_order_of_the_tree(tmp_path: Path) -> None:
    """State, message log, store, counter listeners, legacy listener, HTTP API, signal handlers."""
    from twisted.application.internet import StreamServerEndpointService

    from numd.signals import ExitZeroOnSignal, ReopenLogsOnHangup

    daemon = makeService(
        parse("--message-log", str(tmp_path / "m.log"), "--db", str(tmp_path / "numd.db"),
              "--listen", "tcp:2005:interface=127.0.0.1", "--listen", "tcp:2006:interface=127.0.0.1",
              "--legacy-array-listen", "tcp:6000:interface=127.0.0.1"),
        reactor=MemoryReactorClock(),
    )  # fmt: skip
    services = list(daemon)
    assert services[:3] == [daemon.state, daemon.message_log, daemon.store]
    listeners = services[3:7]
    assert all(isinstance(s, StreamServerEndpointService) for s in listeners)
    assert [s.factory for s in listeners] == [
        daemon.counter_factory,
        daemon.counter_factory,
        daemon.legacy_array_factory,
        daemon.site,
    ]
    assert [type(s) for s in services[7:]] == [ExitZeroOnSignal, ReopenLogsOnHangup]


def test_stop_stops_accepting_before_it_closes_the_connections(tmp_path: Path) -> None:
    """On stop every listener stops accepting first, then the live connections close: a client
    that connects meanwhile waits in the socket's queue (for the next numd, under socket
    activation) instead of being accepted and closed."""
    service = makeService(
        parse("--message-log", str(tmp_path / "m.log"), "--db", ":memory:"),
        reactor=MemoryReactorClock(),
    )
    service.privilegedStartService()
    service.startService()
    listening_at_close: list[bool] = []
    close_all = service.counter_factory.close_all

    def recording_close_all(clock: object, timeout: float) -> object:
        listening_at_close.extend(listener.running for listener in service.listeners)
        return close_all(clock, timeout)  # type: ignore[arg-type]

    service.counter_factory.close_all = recording_close_all  # type: ignore[method-assign]
    service.stopService()
    assert len(service.listeners) == 2  # the counter port and the HTTP API
    assert listening_at_close == [False, False]
