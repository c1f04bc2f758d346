"""Counter listener hardening: trickling clients, process stalls, keepalive tuning and ID
takeover (fake clock and fake transports). The memory budget is in ``test_budget.py``, the
framing of trickled tokens in ``test_framing.py``."""

from __future__ import annotations

import socket

import pytest
from twisted.internet.task import Clock

from numd.counter.protocol import (
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    CounterFactory,
    tune_keepalive,
)
from numd.messagelog import MessageLog
from numd.service import NumberService
from numd.stats import Stats

from .counter_client import FakeClient

# -- trickling clients


def test_bytes_that_complete_no_token_do_not_keep_a_connection(
    state: NumberService, message_log: MessageLog, clock: Clock
) -> None:
    """One byte a second that never ends a token is idle; a client that completes tokens is not."""
    factory = CounterFactory(state, message_log, Stats(), clock, idle_timeout=10)
    factory.doStart()
    trickler, talker = FakeClient(factory), FakeClient(factory, port=40001)
    trickler.send(b"1 ")
    talker.send(b"2 ")
    for second in range(16):
        clock.advance(1)
        trickler.send(b"9")
        talker.send(b"%d " % second)
    assert trickler.transport.disconnecting
    assert not talker.transport.disconnecting
    assert factory.stats.connections["idle-timeout"] == 1
    factory.doStop()


def test_old_client_bare_id_in_pieces_still_registers(
    factory: CounterFactory, clock: Clock
) -> None:
    """An old client's ID sent in two pieces, then silence, still registers after the quiet time."""
    client = FakeClient(factory)
    client.send(b"52")
    client.send(b"87")
    clock.advance(0.1)
    assert client.replies() == [b"0"]
    assert factory.service.clients[5287].connected


# -- stalls of the whole process


def test_a_stall_past_the_idle_timeout_drops_no_client_that_kept_sending(
    state: NumberService, message_log: MessageLog, clock: Clock
) -> None:
    """After the process stood still longer than the idle timeout, clients whose reads were
    queued meanwhile are kept; a client that really was silent is closed at the next sweep."""
    factory = CounterFactory(state, message_log, Stats(), clock, idle_timeout=10)
    factory.doStart()
    talker, silent = FakeClient(factory), FakeClient(factory, port=40001)
    talker.send(b"1 ")
    silent.send(b"2 ")
    clock.advance(30)  # the stall: the sweep's timer fires once, 27.5 s late, before any read
    assert not talker.transport.disconnecting
    assert not silent.transport.disconnecting
    assert factory.stats.connections["stall-skips"] == 1
    talker.send(b"5 ")  # the read queued during the stall
    clock.advance(2.5)
    assert not talker.transport.disconnecting
    assert silent.transport.disconnecting
    factory.doStop()


# -- half-open peers


def test_keepalive_finds_a_vanished_peer_within_a_minute() -> None:
    """Every counter socket probes after 20 s of silence, every 5 s, and gives up after 8 probes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=5)
    accepted, _ = server.accept()

    class Handle:
        def getHandle(self) -> socket.socket:
            return accepted

    try:
        tune_keepalive(Handle())
        got = [
            accepted.getsockopt(socket.IPPROTO_TCP, option)
            for option in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
        ]
        assert got == [KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT]
        assert KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT <= 60
    finally:
        for s in (client, accepted, server):
            s.close()


def test_a_silent_connection_hands_its_id_to_a_new_one(
    factory: CounterFactory, clock: Clock
) -> None:
    """A new connection for an ID whose connection is silent past the takeover time gets the ID
    and the last number; the old connection is closed and its loss frees nothing of the new one."""
    old = FakeClient(factory)
    old.send(b"7 41 ")
    clock.advance(factory.takeover_time)
    new = FakeClient(factory, port=40001)
    assert new.send(b"7 ") == [b"41"]
    assert old.transport.disconnecting
    assert factory.stats.connections["taken-over"] == 1
    old.close()
    assert factory.service.clients[7].connected
    assert factory.owners[7] is new.protocol
    new.send(b"42 ")
    assert factory.service.clients[7].number == 42
    new.close()
    assert not factory.service.clients[7].connected


def test_a_live_connection_keeps_its_id(factory: CounterFactory, clock: Clock) -> None:
    """A connection that talked within the takeover time keeps its ID: the newcomer gets id-in-use."""
    old = FakeClient(factory)
    old.send(b"7 ")
    clock.advance(factory.takeover_time - 1)
    old.send(b"3 ")
    clock.advance(1.5)
    new = FakeClient(factory, port=40001)
    assert new.send(b"7 ") == [b"error:id-in-use"]
    assert not old.transport.disconnecting
    assert factory.stats.connections["taken-over"] == 0


@pytest.mark.parametrize("takeover_time", [1.0, 30.0])
def test_takeover_time_is_an_option(
    state: NumberService, message_log: MessageLog, clock: Clock, takeover_time: float
) -> None:
    """--takeover-time sets how long the old connection must have been silent."""
    factory = CounterFactory(state, message_log, Stats(), clock, takeover_time=takeover_time)
    FakeClient(factory).send(b"9 ")
    clock.advance(2)
    reply = FakeClient(factory, port=40001).send(b"9 ")
    assert reply == ([b"0"] if takeover_time < 2 else [b"error:id-in-use"])
