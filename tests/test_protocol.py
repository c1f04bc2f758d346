"""The counter protocol, byte by byte, on a StringTransport and a fake clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from twisted.internet.task import Clock

from numd.counter.protocol import CounterFactory
from numd.service import NumberService
from numd.stats import Stats

from .counter_client import FakeClient, log_records

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
