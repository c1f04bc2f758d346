"""numd.systemd: sd_notify messages to a datagram socket the test owns (READY, STATUS, WATCHDOG,
STOPPING) under a fake clock, and inherited sockets judged by the address they are bound to."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python import usage

from numd.options import Options, endpoint_is_loopback
from numd.service import NumberService
from numd.systemd import (
    READY_RETRY,
    STATUS_INTERVAL,
    InheritedSocketError,
    Notifier,
    SystemdNotifier,
    inherited_socket,
    serving_status,
    watchdog_interval,
)
from numd.tap import makeService

from .store_support import fired, started
from .systemd_support import (
    NotifySocket,
    listening_socket,
    notify_socket,
    pretend_inherited,
    short_directory,
)


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    """A notification socket at a path, as systemd creates it."""
    with notify_socket() as sock:
        yield sock


def received(sock: NotifySocket) -> list[dict[str, str]]:
    """Every notification waiting on `sock` now (sends are synchronous, so none is in flight)."""
    while sock.receive(0.05) is not None:
        pass
    found, sock.messages = sock.messages, []
    return found


def notifier_for(
    sock: NotifySocket, clock: Clock, *, ready: bool = True, watchdog: float | None = None
) -> tuple[SystemdNotifier, dict[str, object]]:
    """A SystemdNotifier to `sock` on `clock`, and the knobs its ready and status callables read."""
    knobs: dict[str, object] = {"ready": ready, "status": "serving 0 counter clients"}
    service = SystemdNotifier(
        clock,
        Notifier(sock.sock.getsockname()),
        ready=lambda: bool(knobs["ready"]),
        status=lambda: str(knobs["status"]),
        watchdog=watchdog,
    )
    return service, knobs


# -- sd_notify -------------------------------------------------------------------------


def test_a_message_is_one_datagram_of_newline_separated_fields(notify: NotifySocket) -> None:
    """Fields sent together arrive together, in one datagram, as systemd reads them."""
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": notify.env_value})
    assert notifier.send("READY=1", "STATUS=serving 3 counter clients")
    assert notify.sock.recv(4096) == b"READY=1\nSTATUS=serving 3 counter clients"


def test_an_abstract_namespace_socket_is_reached_through_its_at_sign() -> None:
    """``NOTIFY_SOCKET=@name`` names a socket in the abstract namespace (a leading NUL)."""
    with notify_socket(abstract=True) as sock:
        assert sock.env_value.startswith("@")
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": sock.env_value})
        assert notifier.address == "\0" + sock.env_value[1:]
        assert notifier.send("WATCHDOG=1")
        assert sock.receive(1) == {"WATCHDOG": "1"}


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    """Outside systemd numd sends nothing, raises nothing, logs nothing, and adds no service."""
    with capturedLogs() as events:
        notifier = Notifier.from_environment({})
        assert notifier.send("READY=1") is False
        built = SystemdNotifier.from_environment(
            Clock(), ready=lambda: True, status=str, environ={"WATCHDOG_USEC": "1000000"}
        )
    assert built is None
    assert events == []


def test_an_unreachable_socket_is_logged_once_and_never_raises() -> None:
    """A socket that is gone costs a warning (once, until a send succeeds again), not a crash."""
    with short_directory() as directory:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(directory / "gone")})
        with capturedLogs() as events:
            assert notifier.send("WATCHDOG=1") is False
            assert notifier.send("WATCHDOG=1") is False
            sock = NotifySocket(str(directory / "gone"))
            assert notifier.send("WATCHDOG=1") is True
            sock.close()
            os.unlink(directory / "gone")
            assert notifier.send("WATCHDOG=1") is False
    warnings = [e for e in events if e["log_level"].name == "warn"]
    assert len(warnings) == 2
    assert "cannot notify systemd at" in warnings[0]["log_format"]


@pytest.mark.timeout(10)
def test_a_manager_that_does_not_read_never_blocks_numd(notify: NotifySocket) -> None:
    """With the manager's queue full, a notification is dropped at once instead of blocking
    the reactor."""
    notifier = Notifier(notify.sock.getsockname())
    started = time.monotonic()
    results = [notifier.send("WATCHDOG=1") for _ in range(5000)]
    assert results[0] is True
    assert results[-1] is False  # the queue filled up; nobody waited for it to drain
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "environ,interval",
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
    ids=["usec", "our-pid", "other-pid", "unset", "zero", "not-a-number"],
)
def test_the_watchdog_pings_at_half_its_timeout_and_only_for_its_own_process(
    environ: dict[str, str], interval: float | None
) -> None:
    """Half of ``$WATCHDOG_USEC``, in seconds, when ``$WATCHDOG_PID`` is unset or ours (4242)."""
    assert watchdog_interval(environ, 4242) == interval


# -- the service ---------------------------------------------------------------------------


def test_ready_is_sent_once_the_reactor_runs_and_every_listener_is_up(notify: NotifySocket) -> None:
    """READY=1 waits for the reactor's first turn and for `ready()`, and comes once, with a status."""
    clock = Clock()
    service, knobs = notifier_for(notify, clock, ready=True)
    service.startService()
    assert received(notify) == []  # the reactor has not run yet
    clock.advance(0)
    assert received(notify) == [{"READY": "1", "STATUS": "serving 0 counter clients"}]
    service.stopService()
    received(notify)
    clock = Clock()
    service, knobs = notifier_for(notify, clock, ready=False)
    service.startService()
    clock.advance(0)
    assert received(notify) == []  # a listener is not up yet
    assert not service.is_ready
    knobs["ready"] = True
    clock.advance(READY_RETRY)
    assert received(notify) == [{"READY": "1", "STATUS": "serving 0 counter clients"}]
    assert service.is_ready
    clock.advance(READY_RETRY)
    assert received(notify) == []
    service.stopService()


def test_status_is_sent_at_an_interval_when_it_changed(notify: NotifySocket) -> None:
    """STATUS= follows numd's state every STATUS_INTERVAL seconds, and is not repeated unchanged."""
    clock = Clock()
    service, knobs = notifier_for(notify, clock)
    service.startService()
    clock.advance(0)
    received(notify)
    clock.advance(STATUS_INTERVAL)
    assert received(notify) == []
    knobs["status"] = "serving 2 counter clients"
    clock.advance(STATUS_INTERVAL / 2)
    assert received(notify) == []
    clock.advance(STATUS_INTERVAL / 2)
    assert received(notify) == [{"STATUS": "serving 2 counter clients"}]
    service.stopService()


def test_watchdog_pings_come_from_the_reactor_clock_until_stop(notify: NotifySocket) -> None:
    """WATCHDOG=1 at start and every interval while the clock runs; none while it stands still
    (a stuck reactor), none after stop, and no timer is left behind."""
    clock = Clock()
    service, _ = notifier_for(notify, clock, watchdog=5.0)
    service.startService()
    assert received(notify) == [{"WATCHDOG": "1"}]
    clock.advance(0)
    received(notify)  # READY
    clock.advance(4.9)
    assert received(notify) == []
    clock.advance(0.1)
    assert received(notify) == [{"WATCHDOG": "1"}]
    clock.advance(10)
    assert received(notify) == [{"WATCHDOG": "1"}]  # a late clock pings once, not twice
    time.sleep(0.1)  # real time passing does not ping: only the reactor's turns do
    assert received(notify) == []
    service.stopService()
    assert [m for m in received(notify) if "WATCHDOG" in m] == []
    assert clock.getDelayedCalls() == []


class TriggerReactor(MemoryReactorClock):
    """A memory reactor whose system event triggers can be fired and removed, as a real one's."""

    def addSystemEventTrigger(self, phase: str, event: str, f: Any, *args: Any, **kw: Any) -> Any:
        """Record the trigger; its handle is what removes it."""
        handle = (phase, event, f, args, kw)
        self.triggers.setdefault(phase, {}).setdefault(event, []).append(handle)
        return handle

    def removeSystemEventTrigger(self, handle: Any) -> None:
        """Forget a trigger."""
        phase, event = handle[:2]
        self.triggers[phase][event].remove(handle)

    def fire(self, phase: str, event: str) -> None:
        """Run the triggers of `phase` for `event`, as the reactor does when it stops."""
        for _, _, f, args, kw in list(self.triggers.get(phase, {}).get(event, [])):
            f(*args, **kw)


def test_stopping_is_sent_once_as_shutdown_begins(notify: NotifySocket) -> None:
    """STOPPING=1 goes out from the reactor's before-shutdown trigger (before the other services
    stop and the connections close) and is not repeated when the service stops."""
    reactor = TriggerReactor()
    service, _ = notifier_for(notify, reactor)  # type: ignore[arg-type]
    service.startService()
    reactor.advance(0)
    received(notify)
    reactor.fire("before", "shutdown")
    assert received(notify) == [{"STOPPING": "1", "STATUS": "stopping"}]
    service.stopService()
    assert received(notify) == []


def test_stopping_is_sent_when_the_service_stops_without_a_shutdown(notify: NotifySocket) -> None:
    """Stopped on its own (no reactor shutdown), the service still says STOPPING=1, once, and
    leaves no timer nor shutdown trigger behind."""
    reactor = TriggerReactor()
    service, _ = notifier_for(notify, reactor)  # type: ignore[arg-type]
    service.startService()
    reactor.advance(0)
    received(notify)
    service.stopService()
    assert [m.get("STOPPING") for m in received(notify)] == ["1"]
    assert reactor.getDelayedCalls() == []
    assert reactor.triggers["before"]["shutdown"] == []
    service.startService()  # a second run says it again
    service.stopService()
    assert [m.get("STOPPING") for m in received(notify) if "STOPPING" in m] == ["1"]


def test_the_status_line_counts_clients_and_values_and_names_failing_checks() -> None:
    """One client, two values: singular and plural right; a failing /readyz check is named."""
    writable = {"value": True}
    status = serving_status(
        lambda: 1, lambda: 2, {"store_writable": lambda: bool(writable["value"])}
    )
    assert status() == "serving 1 counter client, 2 values"
    writable["value"] = False
    assert status() == "serving 1 counter client, 2 values; degraded: store_writable"
    assert serving_status(lambda: 0, lambda: 1)() == "serving 0 counter clients, 1 value"


# -- wiring ----------------------------------------------------------------------------------


def parse(tmp_path: Path, *args: str) -> Options:
    """Options with the files in `tmp_path`, as twistd would parse them."""
    options = Options()
    options.parseOptions(
        ["--message-log", str(tmp_path / "m.log"), "--db", str(tmp_path / "numd.db"), *args]
    )
    return options


def test_the_notifier_is_added_last_and_only_under_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notify: NotifySocket
) -> None:
    """With ``$NOTIFY_SOCKET`` the notifier is the last service (it starts after the store and
    the listeners); without it there is none."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    daemon = makeService(parse(tmp_path), reactor=MemoryReactorClock())
    assert not any(isinstance(s, SystemdNotifier) for s in daemon)
    monkeypatch.setenv("NOTIFY_SOCKET", notify.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    daemon = makeService(parse(tmp_path), reactor=MemoryReactorClock())
    last = list(daemon)[-1]
    assert isinstance(last, SystemdNotifier)
    assert last.watchdog == 10.0


def test_ready_comes_after_the_store_loaded_and_every_listener_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notify: NotifySocket
) -> None:
    """READY=1 waits until the database is loaded and the counter and HTTP factories have their
    ports (as /readyz does), and its status counts what was loaded."""
    state = NumberService(Clock())
    store = started(state, str(tmp_path / "numd.db"), Clock(), maybeDeferred)
    state.merge([5, 7, 9])
    assert fired(store.stopService())
    reactor = TriggerReactor()
    monkeypatch.setenv("NOTIFY_SOCKET", notify.env_value)
    daemon = makeService(parse(tmp_path), reactor=reactor)
    daemon.privilegedStartService()
    daemon.startService()
    reactor.advance(0)
    assert received(notify) == []  # the memory reactor's ports never started their factories
    daemon.counter_factory.doStart()  # what a real port does once it listens
    reactor.advance(READY_RETRY)
    assert received(notify) == []  # the HTTP API is not listening yet
    daemon.site.doStart()
    reactor.advance(READY_RETRY)
    assert received(notify) == [{"READY": "1", "STATUS": "serving 0 counter clients, 3 values"}]
    assert fired(daemon.stopService())


# -- inherited sockets -----------------------------------------------------------------------


@pytest.fixture
def inherit(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Pretend numd inherited descriptors from systemd: the test fills name -> descriptor."""
    monkeypatch.setenv("LISTEN_FDNAMES", "numd-counter")
    return pretend_inherited(monkeypatch)


@pytest.mark.parametrize(
    "host,local",
    [
        ("127.0.0.1", True),
        ("127.0.1.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
    ],
)
def test_an_inherited_socket_is_judged_by_the_address_it_is_bound_to(
    inherit: dict[str, int], host: str, local: bool
) -> None:
    """Loopback addresses count as local, the wildcard addresses do not, whatever the string says."""
    domain = "INET6" if ":" in host else "INET"
    try:
        sock = listening_socket(host)
    except OSError as e:
        pytest.skip(f"this host cannot listen on {host}: {e.strerror}")
    with sock:
        inherit["numd-counter"] = sock.fileno()
        description = f"systemd:domain={domain}:name=numd-counter"
        found = inherited_socket(description)
        assert found.address[:2] == sock.getsockname()[:2]
        assert endpoint_is_loopback(description) is local
        assert endpoint_is_loopback(f"systemd:domain={domain}:index=0") is local


def test_an_inherited_unix_socket_counts_as_local(inherit: dict[str, int]) -> None:
    """A Unix socket systemd passes (ListenStream=/run/...) is local."""
    with short_directory() as directory, socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(directory / "s"))
        sock.listen()
        inherit["numd-counter"] = sock.fileno()
        found = inherited_socket("systemd:domain=UNIX:name=numd-counter")
        assert (found.is_local, found.describe()) == (True, str(directory / "s"))


def test_a_remote_inherited_socket_is_refused_without_allow_remote(
    tmp_path: Path, inherit: dict[str, int]
) -> None:
    """A counter socket on all interfaces needs --allow-remote, as with a tcp: endpoint; a
    loopback one is accepted as it is."""
    with listening_socket("0.0.0.0") as remote, listening_socket() as local:
        inherit["numd-counter"] = remote.fileno()
        inherit["numd-http"] = local.fileno()
        counter = "systemd:domain=INET:name=numd-counter"
        with pytest.raises(
            usage.UsageError, match="refusing to listen on systemd:.*no authentication"
        ):
            parse(tmp_path, "--listen", counter)
        options = parse(tmp_path, "--listen", counter, "--allow-remote")
        assert options["listen"] == [counter]  # no backlog= added: the socket has its own
        options = parse(
            tmp_path, "--listen", "systemd:domain=INET:name=numd-http",
            "--api-listen", "systemd:domain=INET:name=numd-http",
        )  # fmt: skip
        assert options["api-listen"] == "systemd:domain=INET:name=numd-http"


@pytest.mark.parametrize(
    "description,message",
    [
        (
            "systemd:domain=INET:name=numd-other",
            "no inherited socket is named 'numd-other': the sockets passed are named numd-counter",
        ),
        ("systemd:domain=INET:index=3", "there is no inherited socket number 3"),
        ("systemd:domain=INET:index=first", "index=first is not a descriptor number"),
        ("systemd:domain=INET6:name=numd-counter", "is an INET socket, not INET6"),
        ("systemd:domain=CAN_OF_WORMS:name=numd-counter", "is not an address family"),
        ("systemd:domain=INET", "Specify exactly one of descriptor index or name"),
        ("systemd:name=numd-counter", "needs domain= and one of index= or name="),
    ],
    ids=["name", "index", "bad-index", "family", "domain", "neither", "no-domain"],
)
def test_a_missing_or_wrong_inherited_socket_is_a_clear_usage_error(
    tmp_path: Path, inherit: dict[str, int], description: str, message: str
) -> None:
    """Each way a systemd: endpoint can miss its socket ends start-up with a line saying which."""
    with listening_socket() as sock:
        inherit["numd-counter"] = sock.fileno()
        with pytest.raises(usage.UsageError, match=message) as caught:
            parse(tmp_path, "--listen", description)
    assert str(caught.value).startswith(f"--listen: bad endpoint {description!r}: ")


def test_without_inherited_sockets_the_error_says_how_systemd_passes_them(
    tmp_path: Path, inherit: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run by hand with a systemd: endpoint, numd says what it lacks (and that Twisted needs
    LISTEN_FDNAMES)."""
    monkeypatch.delenv("LISTEN_FDNAMES")
    with pytest.raises(usage.UsageError, match="numd was given no sockets .*LISTEN_FDNAMES"):
        parse(tmp_path, "--api-listen", "systemd:domain=INET:name=numd-http")


@pytest.mark.parametrize("what", ["closed", "pipe", "not-listening", "datagram"])
def test_an_inherited_descriptor_that_is_no_listening_socket_is_refused(
    inherit: dict[str, int], what: str
) -> None:
    """A descriptor that is closed, not a socket, or not a listening stream socket is named."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stream,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram,
    ):
        stream.bind(("127.0.0.1", 0))
        datagram.bind(("127.0.0.1", 0))
        read, write = os.pipe()
        closed = os.dup(read)
        os.close(closed)
        inherit["numd-counter"] = {
            "closed": closed,
            "pipe": read,
            "not-listening": stream.fileno(),
            "datagram": datagram.fileno(),
        }[what]
        try:
            with pytest.raises(InheritedSocketError, match="inherited descriptor") as caught:
                inherited_socket("systemd:domain=INET:name=numd-counter")
        finally:
            os.close(read)
            os.close(write)
    expected = {
        "closed": "is not open",
        "pipe": "is not a socket",
        "not-listening": "is not a listening stream socket",
        "datagram": "is not a listening stream socket",
    }[what]
    assert expected in str(caught.value)


def test_make_service_adopts_the_inherited_sockets(tmp_path: Path, inherit: dict[str, int]) -> None:
    """The counter, HTTP and legacy array listeners adopt the descriptors their systemd:
    endpoints name, and bind nothing themselves."""
    names = ["numd-counter", "numd-http", "numd-legacy"]
    sockets = [listening_socket() for _ in names]
    try:
        for name, sock in zip(names, sockets):
            inherit[name] = os.dup(sock.fileno())  # adopting closes the descriptor
        reactor = MemoryReactorClock()
        daemon = makeService(
            parse(
                tmp_path, "--listen", "systemd:domain=INET:name=numd-counter",
                "--api-listen", "systemd:domain=INET:name=numd-http",
                "--legacy-array-listen", "systemd:domain=INET:index=2",
            ),
            reactor=reactor,
        )  # fmt: skip
        daemon.privilegedStartService()
        daemon.startService()
        assert [(fd, factory) for fd, _, factory in reactor.adoptedPorts] == [
            (inherit["numd-counter"], daemon.counter_factory),
            (inherit["numd-legacy"], daemon.legacy_array_factory),
            (inherit["numd-http"], daemon.site),
        ]
        assert reactor.tcpServers == []
        daemon.stopService()
    finally:
        for sock in sockets:
            sock.close()
