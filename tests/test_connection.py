"""One counter connection (`numd.counter.connection`): replies held for the store, and the
one-pass read pinned to the token-by-token path by the equivalence test."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from numd.counter.connection import CounterProtocol
from numd.counter.framing import TokenReceiver
from numd.counter.protocol import CounterFactory
from numd.messagelog import MessageLog
from numd.service import NumberService
from numd.stats import Stats

from .counter_client import FakeClient, log_records
from .reference_model import expected_replies, reply_matches

# Durability: an array is answered only once its merge is stored


def test_array_reply_waits_for_the_store_and_keeps_order(
    factory: CounterFactory, clock: Clock
) -> None:
    """With a store, the array reply (and every reply behind it) waits until the merge is stored."""
    from twisted.internet.defer import Deferred

    pending: list[Deferred[None]] = []

    def when_durable() -> Deferred[None]:
        pending.append(Deferred())
        return pending[-1]

    factory.service.set_durability(when_durable)
    client = FakeClient(factory)
    assert client.send(b"1 odd ") != []
    assert client.send(b"[5] odd ") == []
    assert client.send(b"[6] even ") == []
    assert list(factory.service.values) == [5, 6]  # visible to readers at once
    assert len(pending) == 2  # one wait per read
    pending[1].callback(None)  # the later read's commit first: its replies still wait
    clock.advance(0)
    assert client.replies() == []
    pending[0].callback(None)
    assert client.replies() == []  # released at the end of the reactor turn
    clock.advance(0)
    replies = client.replies()
    assert replies[0] == b"[5]" and int(replies[1]) % 2 == 1
    assert replies[2] == b"[5,6]" and int(replies[3]) % 2 == 0 and len(replies) == 4


def test_one_read_of_changes_waits_once_for_every_change_in_it(
    factory: CounterFactory, clock: Clock
) -> None:
    """The store is asked once per read, after the read's last change: that wait covers them all."""
    from twisted.internet.defer import Deferred

    asked: list[list[int]] = []
    d: Deferred[None] = Deferred()

    def when_durable() -> Deferred[None]:
        asked.append(list(factory.service.values))
        return d

    factory.service.set_durability(when_durable)
    client = FakeClient(factory)
    client.send(b"1 ")
    assert client.send(b"[5] odd [6] [7] even ") == []
    assert asked == [[5, 6, 7]]
    d.callback(None)
    clock.advance(0)
    replies = client.replies()
    assert [replies[0], replies[2], replies[3]] == [b"[5]", b"[5,6]", b"[5,6,7]"]
    assert int(replies[1]) % 2 == 1 and int(replies[4]) % 2 == 0


def test_one_commit_releases_a_connections_replies_in_one_write(
    factory: CounterFactory, clock: Clock
) -> None:
    """When one commit acknowledges several arrays of a connection, their replies go in one write."""
    from twisted.internet.defer import Deferred

    pending: list[Deferred[None]] = []
    factory.service.set_durability(lambda: pending.append(Deferred()) or pending[-1])
    client = FakeClient(factory)
    client.send(b"[1] [2] [3] ")
    client.transport.writes.clear()
    for d in pending:
        d.callback(None)
    clock.advance(0)
    assert client.transport.writes == [b"[1] [1,2] [1,2,3] "]


def test_failed_store_is_an_error_not_an_ack(factory: CounterFactory, clock: Clock) -> None:
    """If storing fails, the client gets error:store-failed instead of the list."""
    from twisted.internet.defer import fail

    factory.service.set_durability(lambda: fail(OSError("disk full")))
    client = FakeClient(factory)
    assert client.send(b"[5] ") == [b"error:store-failed"]
    clock.advance(0)
    assert client.replies() == []
    assert factory.stats.errors["store-failed"] == 1


def test_reply_after_disconnect_is_dropped(factory: CounterFactory) -> None:
    """A stored change whose client has gone writes nothing and raises nothing."""
    from twisted.internet.defer import Deferred

    d: Deferred[None] = Deferred()
    factory.service.set_durability(lambda: d)
    client = FakeClient(factory)
    client.send(b"[5] ")
    client.close()
    d.callback(None)
    assert client.raw() == b""


# A read of reports and requests only is handled in one pass


@pytest.mark.parametrize(
    "reads",
    [
        [b"even odd " * 20],
        [b"5 even 17 odd 18 ", b"odd 19 20 21 "],
        [b"ev", b"en 1", b"2 odd -3", b" 999999999999999999 "],
        [b"even bad odd [3] 7 ", b"9223372036854775807 odd "],
        [b"odd  even ", b"5\r\neven\n"],
        [b"7 ", b"even ", b"odd ", b"-3 ", b"x ", b"12345678901234567890 ", b"[1] ", b"odd "],
    ],
    ids=[
        "requests",
        "mixed",
        "split-tokens",
        "with-errors-arrays-long",
        "blank-and-newlines",
        "one-token-reads",
    ],
)
def test_a_whole_read_gives_what_token_by_token_gives(
    clock: Clock, tmp_path: Path, reads: list[bytes]
) -> None:
    """Replies, their order, the registry, the counters and the log match one read per token."""

    class TokenByToken(CounterProtocol):
        readReceived = TokenReceiver.readReceived  # no whole-read pass: tokenReceived for each

    def run(name: str, chunks: list[bytes]) -> tuple[list[bytes], object, Stats, list[list[str]]]:
        log = MessageLog(str(tmp_path / name), Clock())
        log.startService()
        factory = CounterFactory(NumberService(clock, random.Random(11)), log, Stats(), clock)
        if name == "tokens.log":
            factory.protocol = TokenByToken
        client = FakeClient(factory)
        client.send(b"42 ")
        for chunk in chunks:
            client.send(chunk)
        records = log_records(factory)
        log.stopService()
        logged = [[r["msg"] for r in records if r["dir"] == d] for d in ("in", "out")]
        return client.replies(), factory.service.clients[42].as_dict(), factory.stats, logged

    whole = run("whole.log", reads)
    joined = b"".join(reads).replace(b"\r\n", b" ").replace(b"\n", b" ")
    one_by_one = run("tokens.log", [token + b" " for token in joined.split(b" ") if token])
    assert whole[0] == one_by_one[0]
    assert whole[1] == one_by_one[1]
    assert (whole[2].received, whole[2].sent, whole[2].errors) == (
        one_by_one[2].received,
        one_by_one[2].sent,
        one_by_one[2].errors,
    )
    assert whole[3] == one_by_one[3]


def test_requests_in_one_read_draw_the_same_numbers_as_give(clock: Clock) -> None:
    """The numbers drawn for a read of requests are those `give` draws, in order, with their parity."""
    expected_service = NumberService(clock, random.Random(5))
    expected_service.register(1)
    parities = ["even", "odd", "odd", "even"] * 8
    expected = [expected_service.give(1, p) for p in parities]  # type: ignore[arg-type]
    log = MessageLog("unused.log", clock, enabled=False)
    factory = CounterFactory(NumberService(clock, random.Random(5)), log, Stats(), clock)
    client = FakeClient(factory)
    client.send(b"1 ")
    replies = client.send(b"".join(p.encode() + b" " for p in parities))
    assert [int(r) for r in replies] == expected
    assert factory.service.clients[1].last_given == expected[-1]
    assert factory.stats.sent["even"] == factory.stats.sent["odd"] == 16


# The "nothing queued" flag of the hot path

TOKENS = st.sampled_from([b"even", b"odd", b"5", b"-17", b"[3]", b"[1,2]", b"bad", b"[x]"])


@settings(max_examples=100, deadline=None)
@given(
    reads=st.lists(st.lists(TOKENS, max_size=6), max_size=10),
    commits=st.lists(st.booleans(), min_size=10, max_size=10),
)
def test_the_nothing_queued_flag_follows_the_queues(
    reads: list[list[bytes]], commits: list[bool]
) -> None:
    """Whatever is read and whenever the store answers, the one flag the hot path tests is
    true exactly while a reply is queued to be written or held; every request is answered,
    in order, once the store has answered everything."""
    clock = Clock()
    pending: list[Deferred[None]] = []
    service = NumberService(clock, random.Random(3))
    service.set_durability(lambda: pending.append(Deferred()) or pending[-1])
    factory = CounterFactory(service, MessageLog("unused", clock, enabled=False), Stats(), clock)
    client = FakeClient(factory)
    client.send(b"1 ")
    protocol: CounterProtocol = client.protocol

    def flag_matches() -> bool:
        return protocol._queued == bool(protocol._out or protocol._held)

    replies: list[bytes] = []

    def commit() -> None:
        while pending:
            pending.pop(0).callback(None)
        clock.advance(0)
        replies.extend(client.replies())

    for tokens, store_answers in zip(reads, commits, strict=False):
        replies.extend(client.send(b"".join(token + b" " for token in tokens)))
        assert flag_matches()
        if store_answers:
            commit()
            assert flag_matches()
    commit()
    assert not protocol._queued and flag_matches()
    expected = expected_replies([token for tokens in reads for token in tokens])
    assert len(replies) == len(expected)
    assert all(reply_matches(r, kind) for r, kind in zip(replies, expected, strict=True))
