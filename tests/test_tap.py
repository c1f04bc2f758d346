"""`twistd numd` options and the service tree `makeService` builds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from numd.tap import Options, makeService


def parse(*args: str) -> Options:
    """Parsed options, as twistd would parse them."""
    options = Options()
    options.parseOptions(list(args))
    return options


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no options numd listens on 127.0.0.1:2004 and logs to numd-messages.log."""
    monkeypatch.chdir(tmp_path)
    options = parse()
    assert options["listen"] == ["tcp:2004:interface=127.0.0.1:backlog=4096"]
    assert options["message-log"] == "numd-messages.log"
    assert options["seed"] is None
    assert options["quiet-time"] == 0.1
    assert options["reply-cap"] == 65536
    assert options["max-token-length"] == 32768
    assert options["max-clients"] == 12_000
    assert options["idle-timeout"] == 120.0
    assert options["write-stall-timeout"] == 30.0


def test_listen_is_repeatable(tmp_path: Path) -> None:
    """--listen may be given several times; every endpoint is used."""
    options = parse(
        "--listen",
        "tcp:2005:interface=127.0.0.1",
        "--listen",
        "tcp:2006:interface=127.0.0.1",
        "--message-log",
        str(tmp_path / "m.log"),
        "--seed",
        "3",
        "--quiet-time",
        "0.25",
    )
    assert options["listen"] == [
        "tcp:2005:interface=127.0.0.1:backlog=4096",
        "tcp:2006:interface=127.0.0.1:backlog=4096",
    ]
    assert (options["seed"], options["quiet-time"]) == (3, 0.25)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--listen", "nonsense:1"], "bad endpoint"),
        (["--quiet-time", "0"], "quiet-time"),
        (["--quiet-time", "soon"], "quiet-time"),
        (["--reply-cap", "10"], "reply-cap"),
        (["--seed", "x"], "seed"),
        (["--message-log", "/nonexistent/dir/m.log"], "not writable"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    """A bad value is a clear usage error, not a traceback at start."""
    with pytest.raises(usage.UsageError, match=message):
        parse(*args)


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


def test_open_file_limit_is_raised_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The soft open-file limit is raised to the hard one, with a warning when too low."""
    import resource

    from twisted.logger import LogLevel, globalLogPublisher

    from numd.tap import check_open_files

    limits = {"soft": 1024, "hard": 2048}
    monkeypatch.setattr(resource, "getrlimit", lambda _: (limits["soft"], limits["hard"]))
    monkeypatch.setattr(resource, "setrlimit", lambda _, v: limits.update(soft=v[0]))
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert check_open_files(100) == 2048
        assert not [e for e in events if e["log_level"] == LogLevel.warn]
        assert check_open_files(10_000) == 2048
    finally:
        globalLogPublisher.removeObserver(events.append)
    (warning,) = [e for e in events if e["log_level"] == LogLevel.warn]
    assert warning["max_clients"] == 10_000 and warning["soft"] == 2048


def test_open_file_check_counts_every_listeners_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counter clients, HTTP connections and legacy array clients all need a descriptor each."""
    import resource

    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    from numd.tap import RESERVED_FILES, check_open_files

    monkeypatch.setattr(resource, "getrlimit", lambda _: (2048, 2048))
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert check_open_files(2048 - RESERVED_FILES) == 2048
        assert not [e for e in events if e["log_level"] == LogLevel.warn]
        check_open_files(2048 - RESERVED_FILES, api_max_connections=1)
        check_open_files(1000, api_max_connections=256, legacy_max_clients=1000)
    finally:
        globalLogPublisher.removeObserver(events.append)
    first, second = [e for e in events if e["log_level"] == LogLevel.warn]
    assert (first["needed"], second["needed"]) == (2049, 1000 + 256 + 1000 + RESERVED_FILES)
    assert formatEvent(second).startswith(
        "--max-clients 1000 + --api-max-connections 256 + --legacy-array-max-clients 1000 "
        f"need about {2256 + RESERVED_FILES} open files but the limit is 2048"
    )


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


def test_api_max_connections_option(tmp_path: Path) -> None:
    """--api-max-connections defaults to 256 and must be a positive integer."""
    log = ["--message-log", str(tmp_path / "m.log")]
    assert parse(*log)["api-max-connections"] == 256
    assert parse(*log, "--api-max-connections", "3")["api-max-connections"] == 3
    for bad in ("0", "many"):
        with pytest.raises(usage.UsageError, match="api-max-connections"):
            parse(*log, "--api-max-connections", bad)


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
