"""A counter connection on a state that answers later, as the state shared through Redis does:
registration waits for the shared state (the read's other tokens wait behind it), refusals
become ``error:id-in-use`` / ``error:unavailable``, and array replies are built once the merge
is in the local copy. The state here is a `NumberService` whose answers the test fires."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from numd.counter.protocol import CounterFactory
from numd.messagelog import MessageLog
from numd.service import IdInUse, NumberService, StateUnavailable
from numd.stats import Stats

from .counter_client import FakeClient


class LaterState(NumberService):
    """Registration and merges that the test answers: a merge shows in the reads only once
    the Deferred `when_durable` handed out fires (as a change that came back from Redis)."""

    applies_later = True

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock, random.Random(3))
        self.claims: list[tuple[int, Deferred[int]]] = []
        self.unapplied: list[int] = []
        self.acks: list[tuple[list[int], Deferred[None]]] = []
        self.released: list[int] = []

    def claim(self, client_id: int) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        self.claims.append((client_id, d))

        def registered(number: int) -> int:
            self.record_for(client_id)  # as the registration's entry would, coming back
            return number

        return d.addCallback(registered)

    def disconnect(self, client_id: int) -> None:
        self.released.append(client_id)

    def merge(self, values: Iterable[int]) -> list[int]:
        added = list(values)
        self.unapplied += added
        return added

    @property
    def waits_for_durability(self) -> bool:
        return True

    def when_durable(self) -> Deferred[None] | None:
        values, self.unapplied = self.unapplied, []
        d: Deferred[None] = Deferred()
        self.acks.append((values, d))
        return d

    def apply(self, index: int = 0) -> None:
        """Redis applied merge number `index`: into the copy, then acknowledged."""
        values, d = self.acks.pop(index)
        NumberService.merge(self, values)
        d.callback(None)


@pytest.fixture
def later(clock: Clock) -> LaterState:
    return LaterState(clock)


@pytest.fixture
def shared_factory(later: LaterState, message_log: MessageLog, clock: Clock) -> CounterFactory:
    return CounterFactory(later, message_log, Stats(), clock)


def test_tokens_after_an_id_wait_for_the_shared_registration(
    shared_factory: CounterFactory, later: LaterState, clock: Clock
) -> None:
    """``42 5 even``: nothing is answered until the shared state registers 42; then its start
    number comes first and the reads's other tokens are handled, in order."""
    client = FakeClient(shared_factory)
    assert client.send(b"42 5 even ") == []
    assert client.protocol.transport.producerState == "paused"  # reading stops meanwhile
    assert client.send(b"odd ") == []  # more input waits too
    [(client_id, d)] = later.claims
    assert client_id == 42
    d.callback(7)
    replies = client.replies()
    assert replies[0] == b"7" and int(replies[1]) % 2 == 0 and int(replies[2]) % 2 == 1
    assert len(replies) == 3
    assert client.protocol.transport.producerState == "producing"
    assert shared_factory.owners[42] is client.protocol


@pytest.mark.parametrize(
    ("error", "reply"),
    [(IdInUse(42), b"error:id-in-use"), (StateUnavailable("redis down"), b"error:unavailable")],
)
def test_a_refused_shared_registration_is_answered_and_closed(
    shared_factory: CounterFactory, later: LaterState, error: Exception, reply: bytes
) -> None:
    """An ID in use on another instance, or Redis unreachable: one error, then the connection closes."""
    client = FakeClient(shared_factory)
    client.send(b"42 5 ")
    later.claims[0][1].errback(error)
    assert client.replies() == [reply]
    assert client.transport.disconnecting
    assert 42 not in shared_factory.owners


def test_a_connection_gone_before_its_registration_frees_the_id(
    shared_factory: CounterFactory, later: LaterState
) -> None:
    """The client went away while the shared state registered it: the ID is freed again."""
    client = FakeClient(shared_factory)
    client.send(b"42 ")
    client.close()
    later.claims[0][1].callback(0)
    assert later.released == [42]
    assert 42 not in shared_factory.owners


def test_array_reply_is_built_once_the_merge_is_in_the_copy(
    shared_factory: CounterFactory, later: LaterState, clock: Clock
) -> None:
    """The reply shows the merge (built when the change is applied, not when it was sent)."""
    client = FakeClient(shared_factory)
    client.send(b"1 ")
    later.claims[0][1].callback(0)
    client.replies()
    assert client.send(b"[5,3] ") == []
    later.apply()
    clock.advance(0)
    assert client.replies() == [b"[3,5]"]


def test_an_unapplied_merge_is_answered_unavailable(
    shared_factory: CounterFactory, later: LaterState, clock: Clock
) -> None:
    """Redis did not apply the merge: ``error:unavailable`` in its reply's place, counted."""
    client = FakeClient(shared_factory)
    client.send(b"1 ")
    later.claims[0][1].callback(0)
    client.replies()
    client.send(b"[5] odd ")
    later.acks[0][1].errback(StateUnavailable("redis down"))
    clock.advance(0)
    replies = client.replies()
    assert replies[0] == b"error:unavailable" and int(replies[1]) % 2 == 1
    assert shared_factory.stats.errors["unavailable"] == 1
    assert later.list_size == 0


def test_lease_lost_closes_the_connection_without_freeing_the_id(
    shared_factory: CounterFactory, later: LaterState
) -> None:
    """Another instance holds the ID now: ``error:id-in-use``, closed, and no disconnect sent
    (the lease is not this instance's to free)."""
    client = FakeClient(shared_factory)
    client.send(b"9 ")
    later.claims[0][1].callback(0)
    client.replies()
    shared_factory.leases_lost([9, 10])
    assert client.replies() == [b"error:id-in-use"]
    assert client.transport.disconnecting
    client.close()
    assert later.released == []
    assert shared_factory.stats.connections["lease-lost"] == 1


def test_talking_names_the_ids_whose_connections_completed_a_token_since(
    shared_factory: CounterFactory, later: LaterState, clock: Clock
) -> None:
    """Only connections that completed a token since the given time have their leases renewed."""
    quiet, busy = FakeClient(shared_factory, 1), FakeClient(shared_factory, 2)
    quiet.send(b"1 ")
    busy.send(b"2 ")
    for _, d in later.claims:
        d.callback(0)
    clock.advance(5)
    since = clock.seconds()
    busy.send(b"3 ")
    assert shared_factory.talking(since) == [2]
