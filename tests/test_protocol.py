"""The counter protocol, byte by byte, on a StringTransport and a fake clock."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from sortedcontainers import SortedList
from twisted.internet.task import Clock

from numd.counter.framing import TokenReceiver
from numd.counter.protocol import CounterFactory, CounterProtocol
from numd.counter.replies import format_values
from numd.messagelog import MessageLog
from numd.service import NumberService
from numd.stats import Stats

from .counter_client import FakeClient


def log_records(factory: CounterFactory) -> list[dict]:
    """Every record the message log holds so far."""
    factory.message_log.flush()
    with open(factory.message_log.path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# 1. Registration


def test_new_id_gets_zero(factory: CounterFactory) -> None:
    """A never-seen ID is answered with the start number b"0 "."""
    client = FakeClient(factory)
    assert client.send(b"5287 ") == [b"0"]
    assert factory.service.clients[5287].connected


def test_returning_id_resumes_last_report(factory: CounterFactory) -> None:
    """A client that comes back gets the last number it reported, e.g. b"1080 "."""
    first = FakeClient(factory)
    first.send(b"42 1079 1080 ")
    first.close()
    assert not factory.service.clients[42].connected
    again = FakeClient(factory, port=40001)
    assert again.raw() == b""
    again.protocol.dataReceived(b"42 ")
    assert again.raw() == b"1080 "


@pytest.mark.parametrize("token", [b"0", b"10000", b"7"])
def test_id_range_edges(factory: CounterFactory, token: bytes) -> None:
    """IDs 0 and 10000 are accepted."""
    assert FakeClient(factory).send(token + b" ") == [b"0"]


@pytest.mark.parametrize("token", [b"10001", b"-1", b"-0", b"99999999"])
def test_bad_id(factory: CounterFactory, token: bytes) -> None:
    """An integer outside 0-10000 is error:bad-id and leaves the client unregistered."""
    client = FakeClient(factory)
    assert client.send(token + b" ") == [b"error:bad-id"]
    assert client.protocol.client_id is None
    assert client.send(b"12 ") == [b"0"]


@pytest.mark.parametrize("token", [b"abc", b"007", b"+5", b"1.5"])
def test_id_that_is_no_integer(factory: CounterFactory, token: bytes) -> None:
    """A first token that is no integer is error:bad-token, and the connection stays open."""
    client = FakeClient(factory)
    assert client.send(token + b" ") == [b"error:bad-token"]
    assert not client.transport.disconnecting


# 2. Old clients: bare ID, no delimiter


def test_old_client_bare_id_after_quiet_time(factory: CounterFactory, clock: Clock) -> None:
    """b"5287" then silence: after the quiet time the digits are the ID, answered b"0 "."""
    client = FakeClient(factory)
    assert client.send(b"5287") == []
    clock.advance(0.099)
    assert client.raw() == b""
    clock.advance(0.001)
    assert client.raw() == b"0 "
    assert client.protocol.client_id == 5287
    # The old client then goes on with delimited tokens.
    assert client.send(b"1 2 odd ")[0] in {b"%d" % n for n in range(1, 100, 2)}
    assert factory.service.clients[5287].number == 2
    assert not clock.getDelayedCalls()


def test_old_client_id_split_across_reads(factory: CounterFactory, clock: Clock) -> None:
    """Digits arriving in pieces restart the quiet time; the whole ID is used."""
    client = FakeClient(factory)
    client.send(b"52")
    clock.advance(0.05)
    client.send(b"87")
    clock.advance(0.08)
    assert client.raw() == b""
    clock.advance(0.02)
    assert client.raw() == b"0 "
    assert client.protocol.client_id == 5287


def test_quiet_time_is_configurable(state: NumberService, message_log, clock: Clock) -> None:
    """The quiet time comes from the factory."""
    from numd.stats import Stats

    factory = CounterFactory(state, message_log, Stats(), clock, quiet_time=0.5)
    client = FakeClient(factory)
    client.send(b"9")
    clock.advance(0.4)
    assert client.raw() == b""
    clock.advance(0.1)
    assert client.raw() == b"0 "
    assert client.protocol.client_id == 9


def test_delimiter_before_quiet_time_registers_once(factory: CounterFactory, clock: Clock) -> None:
    """A modern client whose delimiter arrives late is registered once, not twice."""
    client = FakeClient(factory)
    client.send(b"33")
    assert client.send(b" ") == [b"0"]
    clock.advance(1)
    assert client.raw() == b""
    assert not clock.getDelayedCalls()


def test_six_digits_are_not_an_old_client_id(factory: CounterFactory, clock: Clock) -> None:
    """Only 1-5 digits count as a bare ID; other partial tokens wait for a delimiter."""
    client = FakeClient(factory)
    client.send(b"123456")
    assert not clock.getDelayedCalls()
    client.send(b"x")
    assert not clock.getDelayedCalls()


def test_no_quiet_timer_after_registration(factory: CounterFactory, clock: Clock) -> None:
    """After registration a partial number just waits for its delimiter."""
    client = FakeClient(factory)
    client.send(b"1 ")
    client.send(b"25")
    assert not clock.getDelayedCalls()
    client.send(b" ")
    assert factory.service.clients[1].number == 25


# 3. Reports


def test_report_is_recorded_without_reply(factory: CounterFactory, clock: Clock) -> None:
    """A number after registration is recorded, with no reply."""
    client = FakeClient(factory)
    client.send(b"8 ")
    clock.advance(3)
    assert client.send(b"-17 ") == []
    record = factory.service.clients[8]
    assert record.number == -17
    assert record.last_seen == clock.seconds()


@pytest.mark.parametrize(
    "token,value",
    [(b"9223372036854775807", 2**63 - 1), (b"-9223372036854775808", -(2**63))],
)
def test_report_64_bit_limits(factory: CounterFactory, token: bytes, value: int) -> None:
    """The 64-bit extremes are valid reports."""
    client = FakeClient(factory)
    client.send(b"8 ")
    assert client.send(token + b" ") == []
    assert factory.service.clients[8].number == value


@pytest.mark.parametrize("token", [b"9223372036854775808", b"-9223372036854775809", b"1" * 25])
def test_report_outside_64_bit(factory: CounterFactory, token: bytes) -> None:
    """A number outside 64-bit range is error:bad-token and changes nothing."""
    client = FakeClient(factory)
    client.send(b"8 5 ")
    assert client.send(token + b" ") == [b"error:bad-token"]
    assert factory.service.clients[8].number == 5


# 4. Requests


def test_even_and_odd_answers_cover_their_range(factory: CounterFactory) -> None:
    """Over many draws, even answers are exactly 0-98 even, odd ones exactly 1-99 odd."""
    client = FakeClient(factory)
    client.send(b"3 ")
    evens = Counter(int(t) for t in client.send(b"even " * 5000))
    odds = Counter(int(t) for t in client.send(b"odd " * 5000))
    assert set(evens) == set(range(0, 99, 2))
    assert set(odds) == set(range(1, 100, 2))
    # Roughly uniform: every value drawn at least a third of its expected 100 times.
    assert min(evens.values()) > 33 and min(odds.values()) > 33


def test_answer_is_recorded(factory: CounterFactory) -> None:
    """The last number given is kept in the registry."""
    client = FakeClient(factory)
    client.send(b"3 ")
    (answer,) = client.send(b"odd ")
    assert factory.service.clients[3].last_given == int(answer)


def test_replies_in_request_order_one_write(factory: CounterFactory) -> None:
    """Pipelined requests get one reply each, in order, written in one write per read."""
    client = FakeClient(factory)
    client.send(b"3 ")
    client.transport.writes.clear()
    replies = client.send(b"odd even odd bad odd ")
    assert len(client.transport.writes) == 1
    assert len(replies) == 5
    assert [int(t) % 2 for t in replies[:3]] == [1, 0, 1]
    assert replies[3] == b"error:bad-token"
    assert int(replies[4]) % 2 == 1


def test_seeded_answers_are_reproducible(clock: Clock, message_log) -> None:
    """Two services with the same seed answer the same sequence."""
    import random

    from numd.stats import Stats

    answers = []
    for _ in range(2):
        f = CounterFactory(NumberService(clock, random.Random(99)), message_log, Stats(), clock)
        client = FakeClient(f)
        client.send(b"1 ")
        answers.append(client.send(b"odd even " * 10))
    assert answers[0] == answers[1]


def test_request_before_registration(factory: CounterFactory) -> None:
    """even/odd before an ID is error:not-registered; the client may register after."""
    client = FakeClient(factory)
    assert client.send(b"odd even ") == [b"error:not-registered"] * 2
    assert client.send(b"4 ") == [b"0"]


# 5. Arrays


def test_array_is_merged_and_sorted_list_returned(factory: CounterFactory) -> None:
    """An array merges into the shared list (duplicates kept) and the list comes back."""
    a, b = FakeClient(factory), FakeClient(factory, port=40001)
    a.send(b"1 ")
    assert a.send(b"[17,3,3,90] ") == [b"[3,3,17,90]"]
    assert b.send(b"[-5,17] ") == [b"[-5,3,3,17,17,90]"]
    assert list(factory.service.values) == [-5, 3, 3, 17, 17, 90]


def test_array_before_registration_then_register(factory: CounterFactory) -> None:
    """An array may come first; the next integer is still the ID."""
    client = FakeClient(factory)
    assert client.send(b"[2,1] 77 ") == [b"[1,2]", b"0"]
    assert client.protocol.client_id == 77


@pytest.mark.parametrize(
    "token",
    [
        b"[]",
        b"[1,]",
        b"[,1]",
        b"[1,,2]",
        b"[1 ",
        b"[01]",
        b"[1;2]",
        b"[a]",
        b"[9223372036854775808]",
    ],
)
def test_bad_arrays(factory: CounterFactory, token: bytes) -> None:
    """A malformed array is error:bad-array and leaves the list alone."""
    client = FakeClient(factory)
    assert client.send(token + b" ")[:1] == [b"error:bad-array"]
    assert len(factory.service.values) == 0


def test_array_size_limits(factory: CounterFactory) -> None:
    """1000 values are accepted, 1001 are error:bad-array."""
    client = FakeClient(factory)
    ok = b"[" + b",".join(b"%d" % i for i in range(1000)) + b"] "
    assert len(client.send(ok)[0]) > 1000
    too_many = b"[" + b",".join(b"1" for _ in range(1001)) + b"] "
    assert client.send(too_many) == [b"error:bad-array"]
    assert len(factory.service.values) == 1000


def test_array_reply_is_cut_at_the_cap(state: NumberService, message_log, clock: Clock) -> None:
    """Past the reply cap, the reply is the first values then ",...]/<size>", within the cap."""
    from numd.stats import Stats

    factory = CounterFactory(state, message_log, Stats(), clock, reply_cap=100)
    state.merge(range(1000, 1100))
    (reply,) = FakeClient(factory).send(b"[5] ")
    assert len(reply) <= 100
    assert reply.startswith(b"[5,1000,1001,")
    head, size = reply.split(b"/")
    assert size == b"101"
    assert head.endswith(b",...]")
    shown = [int(v) for v in head[1:-5].split(b",")]
    assert shown == list(state.values[: len(shown)])


def test_format_values_small_and_exact_fit() -> None:
    """A list that fits is sent whole; one byte less cuts it."""
    values = SortedList([1, 22, 333])
    assert format_values(values, 64) == b"[1,22,333]"
    assert format_values(SortedList(), 64) == b"[]"
    long = SortedList(range(100))
    whole = format_values(long, 10_000)
    assert format_values(long, len(whole)) == whole
    assert format_values(long, len(whole) - 1).endswith(b",...]/100")


@pytest.mark.parametrize(
    "values",
    [
        [v % 101 for v in range(200_000)],
        list(range(-100_000, 100_000)),
        [(-1) ** v * v * 7_919_000_000_013 for v in range(50_000)],
        [5] * 100_000,
    ],
    ids=["repeated-small", "negative-to-positive", "wide-mixed-signs", "one-value"],
)
def test_format_values_is_the_exact_prefix(values: list[int]) -> None:
    """For any kind of list, the cut reply is exactly the smallest values, nearly filling the cap."""
    sorted_values = SortedList(values)
    reply = format_values(sorted_values, 65536)
    head, size = reply.split(b"/")
    shown = [int(v) for v in head[1:-5].split(b",")]
    assert shown == list(sorted_values[: len(shown)])
    assert int(size) == len(values)
    assert 65536 - 25 <= len(reply) <= 65536


def test_format_values_cost_is_bounded() -> None:
    """A million values still give a reply within the default cap, starting at the smallest."""
    values = SortedList(range(1_000_000))
    reply = format_values(values, 64 * 1024)
    assert len(reply) <= 64 * 1024
    assert reply.startswith(b"[0,1,2,")
    assert reply.endswith(b",...]/1000000")


# 6. Errors


@pytest.mark.parametrize("token", [b"hello", b"EVEN", b"1e3", b"0x5", b"\xff", b"od\x00d"])
def test_any_other_token_is_one_error(factory: CounterFactory, token: bytes) -> None:
    """An unknown token gets exactly one error:bad-token and the connection stays open."""
    client = FakeClient(factory)
    client.send(b"1 ")
    assert client.send(token + b" ") == [b"error:bad-token"]
    assert not client.transport.disconnecting
    assert len(client.send(b"odd ")) == 1


def test_nothing_unasked_is_sent(factory: CounterFactory, clock: Clock) -> None:
    """Connecting, reporting and idling produce no bytes at all."""
    client = FakeClient(factory)
    assert client.raw() == b""
    assert client.send(b"1 2 3 4 ") == [b"0"]
    clock.advance(60)
    assert client.raw() == b""


# 7. Newlines


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_newline_ends_a_token(factory: CounterFactory, ending: bytes) -> None:
    """A person typing into nc (Enter sends \\n or \\r\\n) is understood."""
    client = FakeClient(factory)
    assert client.send(b"6" + ending) == [b"0"]
    assert len(client.send(b"odd" + ending)) == 1


def test_crlf_split_across_reads(factory: CounterFactory) -> None:
    """A \\r\\n split between two reads still ends the token cleanly."""
    client = FakeClient(factory)
    client.send(b"6\r")
    assert client.send(b"\n") == [b"0"]


# 8. id-in-use


def test_second_connection_for_a_live_id(factory: CounterFactory) -> None:
    """A second live connection for an ID gets error:id-in-use and is closed; the first goes on."""
    first, second = FakeClient(factory), FakeClient(factory, port=40001)
    first.send(b"9 ")
    assert second.send(b"9 odd ") == [b"error:id-in-use"]
    assert second.transport.disconnecting
    second.close()
    assert factory.service.clients[9].connected
    assert len(first.send(b"even ")) == 1


def test_state_stays_after_disconnect(factory: CounterFactory) -> None:
    """A disconnected client keeps its record, marked not connected."""
    client = FakeClient(factory)
    client.send(b"9 100 odd ")
    client.close()
    record = factory.service.clients[9]
    assert (record.number, record.connected) == (100, False)
    assert record.last_given is not None


# 9. Framing


def test_tokens_reassembled_across_reads(factory: CounterFactory) -> None:
    """A token split over reads is one token."""
    client = FakeClient(factory)
    client.send(b"1 ")
    client.send(b"12")
    client.send(b"34")
    assert client.send(b"5 o") == []
    assert len(client.send(b"dd ")) == 1
    assert factory.service.clients[1].number == 12345


def test_coalesced_tokens_in_one_read(factory: CounterFactory) -> None:
    """b"608 even " in one read is a report then a request."""
    client = FakeClient(factory)
    client.send(b"1 ")
    (answer,) = client.send(b"608 even ")
    assert int(answer) % 2 == 0
    assert factory.service.clients[1].number == 608


def test_empty_tokens_are_ignored(factory: CounterFactory) -> None:
    """Two spaces (an empty token) get no reply."""
    client = FakeClient(factory)
    assert client.send(b"  1    odd  ")[0] == b"0"
    assert client.raw() == b""


def test_too_long_token(factory: CounterFactory) -> None:
    """A token over the cap gets error:too-long and the connection is closed."""
    client = FakeClient(factory)
    assert client.send(b"x" * (40 * 1024)) == [b"error:too-long"]
    assert client.transport.disconnecting
    assert client.send(b"odd ") == []


# The message log


def test_every_message_is_logged(factory: CounterFactory) -> None:
    """Received and sent tokens and connection events are in the message log, in order."""
    client = FakeClient(factory)
    client.send(b"5287 10 odd ")
    answer = factory.service.clients[5287].last_given
    client.close()
    records = log_records(factory)
    summary = [(r["dir"], r.get("msg", r.get("event")), r["id"]) for r in records]
    assert summary == [
        ("event", "connect", None),
        ("in", "5287", None),
        ("event", "register", 5287),
        ("in", "10", 5287),
        ("in", "odd", 5287),
        ("out", "0", 5287),  # a read's replies follow its tokens, as on the wire
        ("out", str(answer), 5287),
        ("event", "disconnect", 5287),
    ]
    assert all(r["peer"] == "127.0.0.1:40000" for r in records)


def test_hostile_bytes_are_logged_faithfully(factory: CounterFactory) -> None:
    """Format strings, quotes, control and non-UTF-8 bytes come back exactly from the log."""
    hostile = [b'{}%s"\\', b"\x00\x01\x1b[31m", b"\xff\xfe\xc3", b"\xe2\x80\xaf"]
    client = FakeClient(factory)
    client.send(b"1 " + b" ".join(hostile) + b" ")
    got = [r["msg"].encode("latin-1") for r in log_records(factory) if r["dir"] == "in"]
    assert got[1:] == hostile


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
