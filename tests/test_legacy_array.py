"""The older server's pickle array listener: requests served within the budget, refusals, replies
waiting for the store, limits and options (the pickles themselves: ``test_pickles.py``)."""

from __future__ import annotations

import itertools
import os
import pickle
import socket
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, LogLevel, globalLogPublisher
from twisted.python import usage

from numd.counter.legacy_array import (
    TRANSPORT_BUFFER,
    LegacyArrayFactory,
    LegacyArrayProtocol,
    reply_size_bound,
)
from numd.counter.pickles import BadRequest, decode_request, find_pickle_end
from numd.service import INT64_MAX, INT64_MIN, NumberService
from numd.tap import Options, makeService

from .pickle_samples import CANARY, PROTOCOLS, global_pickle, int64s, mutated_pickles


class CountingTransport(StringTransport):
    """A StringTransport that also keeps each write separately."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Record the write, then buffer it as usual."""
        self.writes.append(data)
        super().write(data)

    def abortConnection(self) -> None:
        """Note the abort (StringTransport's own sets `disconnected`, not the `aborted` it documents)."""
        self.aborted = True
        super().abortConnection()


@pytest.fixture
def service() -> NumberService:
    """A state service on a fake clock."""
    return NumberService(Clock())


@pytest.fixture
def clock() -> Clock:
    """The listener's fake clock (idle timeouts)."""
    return Clock()


@pytest.fixture
def factory(service: NumberService, clock: Clock) -> LegacyArrayFactory:
    """The listener's factory with the default byte cap, on a fake clock."""
    return LegacyArrayFactory(service, clock=clock)


def connect(
    factory: LegacyArrayFactory,
) -> tuple[LegacyArrayProtocol, CountingTransport]:
    """A connected protocol and its transport."""
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert isinstance(protocol, LegacyArrayProtocol)
    transport = CountingTransport()
    protocol.makeConnection(transport)
    return protocol, transport


# -- replies ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol_version", PROTOCOLS)
def test_each_protocol_version_is_merged_and_answered(
    factory: LegacyArrayFactory, service: NumberService, protocol_version: int
) -> None:
    """A pickled list of any protocol 2-5 is merged; the reply is one write of a protocol-4 pickle."""
    service.merge([50])
    protocol, transport = connect(factory)
    protocol.dataReceived(pickle.dumps([17, 3, 3, 90, -1, 2**40], protocol=protocol_version))
    (reply,) = transport.writes
    assert reply[:2] == b"\x80\x04"
    assert pickle.loads(reply) == [-1, 3, 3, 17, 50, 90, 2**40]
    assert type(pickle.loads(reply)) is list
    assert not transport.disconnecting
    assert (factory.stats.received["array"], factory.stats.sent["array"]) == (1, 1)


def test_request_split_across_reads(factory: LegacyArrayFactory, service: NumberService) -> None:
    """A request arriving one byte at a time is answered once, after its last byte."""
    protocol, transport = connect(factory)
    data = pickle.dumps(list(range(20)), protocol=2)
    for index in range(len(data) - 1):
        protocol.dataReceived(data[index : index + 1])
        assert transport.writes == []
    protocol.dataReceived(data[-1:])
    (reply,) = transport.writes
    assert pickle.loads(reply) == list(range(20))


def test_requests_coalesced_in_one_read(factory: LegacyArrayFactory) -> None:
    """Two requests (and the start of a third) in one read get two replies, in order."""
    protocol, transport = connect(factory)
    first, second, third = (pickle.dumps(v, protocol=4) for v in ([5, 1], [3], [0]))
    protocol.dataReceived(first + second + third[:4])
    assert [pickle.loads(r) for r in transport.writes] == [[1, 5], [1, 3, 5]]
    protocol.dataReceived(third[4:])
    assert pickle.loads(transport.writes[-1]) == [0, 1, 3, 5]


def test_many_requests_on_one_connection(factory: LegacyArrayFactory) -> None:
    """The old client sends again and again on the same connection."""
    protocol, transport = connect(factory)
    for round_ in range(5):
        protocol.dataReceived(pickle.dumps([round_] * 10, protocol=2))
    assert len(transport.writes) == 5
    assert pickle.loads(transport.writes[-1]) == sorted(list(range(5)) * 10)


def test_an_empty_list_is_answered(factory: LegacyArrayFactory, service: NumberService) -> None:
    """An empty list adds nothing and still gets the whole list back."""
    service.merge([8])
    protocol, transport = connect(factory)
    protocol.dataReceived(pickle.dumps([], protocol=3))
    assert pickle.loads(transport.writes[0]) == [8]


# -- refusals ------------------------------------------------------------------------------------


def assert_refused(factory: LegacyArrayFactory, transport: CountingTransport, reason: str) -> None:
    """The connection is being closed, nothing was answered, and the reason was counted."""
    assert transport.disconnecting
    assert transport.writes == []
    assert factory.stats.errors == {reason: 1}


def test_global_is_refused_nothing_imported_or_called(
    factory: LegacyArrayFactory,
    service: NumberService,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A pickle naming a global closes the connection; no module is imported, nothing is called."""
    assert CANARY not in sys.modules
    calls: list[object] = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command))
    protocol, transport = connect(factory)
    protocol.dataReceived(global_pickle("os", "system", f"touch {tmp_path / 'pwned'}"))
    assert_refused(factory, transport, "refused-opcode")
    assert calls == [] and not (tmp_path / "pwned").exists()
    protocol2, transport2 = connect(factory)
    protocol2.dataReceived(global_pickle(CANARY, "anything"))
    assert transport2.disconnecting and transport2.writes == []
    assert CANARY not in sys.modules
    assert len(service.values) == 0


@pytest.mark.parametrize("protocol_version", PROTOCOLS)
def test_objects_of_classes_are_refused(factory: LegacyArrayFactory, protocol_version: int) -> None:
    """A pickle of an instance (STACK_GLOBAL/GLOBAL, NEWOBJ, REDUCE, BUILD) is refused."""
    from collections import OrderedDict

    protocol, transport = connect(factory)
    protocol.dataReceived(pickle.dumps([OrderedDict(a=1)], protocol=protocol_version))
    assert_refused(factory, transport, "refused-opcode")


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"hello world\n", "not-pickle"),
        (b"GET / HTTP/1.1\r\n\r\n", "not-pickle"),
        (b"\x80\x02\xff", "not-pickle"),
        (pickle.dumps([1, 2], protocol=0), "not-pickle"),
        (pickle.dumps([1, 2], protocol=1), "not-pickle"),
        (b"\x80\x06]q\x00.", "not-pickle"),
        (b"\x80\x02]\x80\x02.", "not-pickle"),
        (b"\x80\x02T\xff\xff\xff\xff", "not-pickle"),
        (b"\x80\x02X\xff\xff\xff\xff", "too-large"),
        (b"\x80\x02e.", "bad-pickle"),
        (b"\x80\x02h\x05.", "bad-pickle"),
        (b"\x80\x02K\x01K\x02.", "not-list"),
    ],
)
def test_garbage_closes_the_connection(
    factory: LegacyArrayFactory, data: bytes, reason: str
) -> None:
    """Bytes that are not a pickle of protocol 2-5 (or a broken one) close the connection."""
    protocol, transport = connect(factory)
    protocol.dataReceived(data)
    assert_refused(factory, transport, reason)


@pytest.mark.parametrize(
    "value,reason",
    [
        ({"a": 1}, "not-list"),
        ((1, 2, 3), "not-list"),
        (7, "not-list"),
        ("[1,2]", "not-list"),
        ({1, 2}, "not-list"),
        ([1, "2"], "not-int"),
        ([1, 2.5], "not-int"),
        ([True, 1], "not-int"),
        ([None], "not-int"),
        ([[1]], "not-int"),
        ([INT64_MAX + 1], "not-int"),
        ([INT64_MIN - 1], "not-int"),
    ],
)
def test_anything_but_a_list_of_ints_is_refused(
    factory: LegacyArrayFactory, service: NumberService, value: object, reason: str
) -> None:
    """A pickle of something else than a plain list of 64-bit ints closes the connection."""
    protocol, transport = connect(factory)
    protocol.dataReceived(pickle.dumps(value, protocol=4))
    assert_refused(factory, transport, reason)
    assert len(service.values) == 0


def test_oversized_request_is_refused(service: NumberService) -> None:
    """A pickle over the byte cap is refused, even before its STOP arrives."""
    factory = LegacyArrayFactory(service, max_bytes=1000, clock=Clock())
    protocol, transport = connect(factory)
    data = pickle.dumps(list(range(1000, 2000)), protocol=2)
    protocol.dataReceived(data[:1200])
    assert_refused(factory, transport, "too-large")
    protocol.dataReceived(data[1200:])
    assert transport.writes == []


def test_declared_length_over_the_cap_is_refused_at_once(
    service: NumberService,
) -> None:
    """A length field promising more than the cap is refused before the bytes come."""
    factory = LegacyArrayFactory(service, max_bytes=1000, clock=Clock())
    protocol, transport = connect(factory)
    protocol.dataReceived(b"\x80\x04\x8d" + (2**40).to_bytes(8, "little"))
    assert_refused(factory, transport, "too-large")


def test_endless_marks_are_refused(factory: LegacyArrayFactory) -> None:
    """A stream that never reaches STOP is cut at the cap."""
    protocol, transport = connect(factory)
    protocol.dataReceived(b"\x80\x02")
    for _ in range(20):
        protocol.dataReceived(b"(" * 1000)
    assert_refused(factory, transport, "too-large")


def test_a_request_at_the_cap_is_accepted(service: NumberService) -> None:
    """A pickle of exactly the cap's size is served."""
    data = pickle.dumps(list(range(100)), protocol=2)
    factory = LegacyArrayFactory(service, max_bytes=len(data), clock=Clock())
    protocol, transport = connect(factory)
    protocol.dataReceived(data)
    assert pickle.loads(transport.writes[0]) == list(range(100))


def test_reply_fits_the_old_clients_1024_byte_read_up_to_a_few_hundred_values(
    factory: LegacyArrayFactory, service: NumberService
) -> None:
    """The documented limit: 300 values of 1000-10000 fit in 1024 bytes, 400 do not."""
    protocol, transport = connect(factory)
    service.merge([5000] * 299)
    protocol.dataReceived(pickle.dumps([5000], protocol=2))
    assert len(transport.writes[-1]) <= 1024
    service.merge([5000] * 99)
    protocol.dataReceived(pickle.dumps([5000], protocol=2))
    assert len(transport.writes[-1]) > 1024


# -- memory and integer width, bounded while framing ---------------------------------------------


@contextmanager
def logged_events() -> Iterator[list[LogEvent]]:
    """Every log event emitted meanwhile (Twisted logs an escaping exception as a failure)."""
    events: list[LogEvent] = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def failures(events: list[LogEvent]) -> list[LogEvent]:
    """The events that carry a traceback, or are logged as errors."""
    return [
        e
        for e in events
        if "log_failure" in e or e.get("log_level") in (LogLevel.error, LogLevel.critical)
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x02]r\xff\xff\xff\x7f.",  # LONG_BINPUT 0x7fffffff: a 32 GiB memo
        b"\x80\x02]r\x00\x00\x40\x00.",  # LONG_BINPUT 2**22: a 64 MiB memo
        b"\x80\x02]p99999999999999999999\n.",  # PUT with a huge decimal
        b"\x80\x02]p4194304\n.",  # PUT 2**22
        b"\x80\x02]q\xff.",  # BINPUT 255, at offset 3
        b"\x80\x04\x95\x07\x00\x00\x00\x00\x00\x00\x00]r\x00\x00\x40\x00.",  # inside a FRAME
    ],
    ids=[
        "long-binput-2**31-1",
        "long-binput-2**22",
        "put-huge",
        "put-2**22",
        "binput-255",
        "framed",
    ],
)
def test_memo_index_beyond_the_request_is_refused_without_allocating(
    factory: LegacyArrayFactory, data: bytes
) -> None:
    """A memo put whose index is not below its own offset is refused while framing, quickly,
    without the unpickler growing its memo to the index (it would allocate 16 bytes an index)."""
    protocol, transport = connect(factory)
    tracemalloc.start()
    try:
        started = time.perf_counter()
        protocol.dataReceived(data)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_refused(factory, transport, "memo-index")
    assert peak < 256 * 1024
    assert elapsed < 1.0


def test_memo_index_is_refused_before_the_rest_of_a_long_put_arrives(
    factory: LegacyArrayFactory,
) -> None:
    """A text PUT whose index has more digits than any index below the cap is refused at once."""
    protocol, transport = connect(factory)
    protocol.dataReceived(b"\x80\x02]p" + b"9" * 11)
    assert_refused(factory, transport, "memo-index")


def test_integer_wider_than_64_bits_is_refused_while_framing(factory: LegacyArrayFactory) -> None:
    """A LONG4 of 5,000 bytes is refused as soon as its length is read: counted as not-int,
    the connection closed, no traceback logged, and its bytes never awaited or decoded."""
    protocol, transport = connect(factory)
    with logged_events() as events:
        protocol.dataReceived(b"\x80\x02]q\x00(\x8b" + (5000).to_bytes(4, "little"))
        assert_refused(factory, transport, "not-int")
        protocol.dataReceived(b"\x01" * 5000 + b"e.")
    assert factory.stats.errors == {"not-int": 1}
    assert not failures(events)
    assert factory.stats.received["array"] == 0


def test_a_whole_huge_integer_in_one_read_is_a_counted_error(
    factory: LegacyArrayFactory,
) -> None:
    """The same LONG4 sent whole is a counted not-int error, never an escaping exception."""
    protocol, transport = connect(factory)
    with logged_events() as events:
        protocol.dataReceived(pickle.dumps([1, 256**5000 - 1], protocol=2))
    assert_refused(factory, transport, "not-int")
    assert not failures(events)


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x02]q\x00(I" + b"9" * 21 + b"\ne.",  # INT with 21 digits
        b"\x80\x02]q\x00(I-" + b"1" * 21 + b"\ne.",
        b"\x80\x02]q\x00(L" + b"9" * 21 + b"L\ne.",  # LONG with 21 digits
        b"\x80\x02]q\x00(L" + b"9" * 5000,  # LONG of 5,000 digits, refused before its newline
        b"\x80\x02]q\x00(\x8a\x09" + b"\x00" * 9 + b"e.",  # LONG1 of 9 bytes
        b"\x80\x02]q\x00(\x8a\xff",  # LONG1 of 255 bytes, refused before they come
    ],
    ids=["int-21", "int-minus-21", "long-21", "long-5000", "long1-9", "long1-255"],
)
def test_wide_integers_of_every_kind_are_refused_while_framing(
    factory: LegacyArrayFactory, data: bytes
) -> None:
    """Text INT/LONG of more than 20 digits and LONG1/LONG4 of more than 8 bytes are not-int."""
    protocol, transport = connect(factory)
    protocol.dataReceived(data)
    assert_refused(factory, transport, "not-int")


# -- properties ---------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.lists(int64s, max_size=30), min_size=1, max_size=4),
    protocol_version=st.sampled_from(PROTOCOLS),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
)
def test_any_split_gives_the_same_replies(
    values: list[list[int]], protocol_version: int, cuts: list[int]
) -> None:
    """However the byte stream of several requests is cut into reads, every request is answered."""
    service = NumberService(Clock())
    factory = LegacyArrayFactory(service, clock=Clock())
    protocol, transport = connect(factory)
    stream = b"".join(pickle.dumps(v, protocol=protocol_version) for v in values)
    points = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    for start, end in itertools.pairwise(points):
        protocol.dataReceived(stream[start:end])
    assert not transport.disconnecting
    merged: list[int] = []
    for value, reply in zip(values, transport.writes, strict=True):
        merged = sorted(merged + value)
        assert pickle.loads(reply) == merged


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), start=st.binary(max_size=3))
def test_arbitrary_bytes_never_crash(data: bytes, start: bytes) -> None:
    """Any bytes either get replies or close the connection; nothing escapes dataReceived."""
    service = NumberService(Clock())
    factory = LegacyArrayFactory(service, max_bytes=64, clock=Clock())
    protocol, transport = connect(factory)
    protocol.dataReceived(start + data)
    try:
        end, _ = find_pickle_end(start + data, 0, 64)
    except BadRequest:
        assert transport.disconnecting
    else:
        if end is not None:
            try:
                decode_request((start + data)[:end])
            except BadRequest:
                assert transport.disconnecting


@settings(max_examples=400, deadline=None)
@given(
    data=st.binary(max_size=300) | mutated_pickles(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_no_exception_escapes_data_received_and_bad_input_is_counted(
    data: bytes, cuts: list[int]
) -> None:
    """Random bytes and mutated valid pickles, cut into random reads: nothing escapes
    dataReceived, nothing is logged as a failure, a closed connection counts exactly one
    error, an open one none, and every reply is the sorted list as it was then."""
    service = NumberService(Clock())
    factory = LegacyArrayFactory(service, max_bytes=256, clock=Clock())
    protocol, transport = connect(factory)
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    with logged_events() as events:
        for start, end in itertools.pairwise(points):
            protocol.dataReceived(data[start:end])
    assert not failures(events)
    errors = sum(factory.stats.errors.values())
    assert errors == (1 if transport.disconnecting else 0)
    if data[:1] not in (b"", b"\x80"):
        assert transport.disconnecting
    replies = [pickle.loads(r) for r in transport.writes]
    assert len(replies) == factory.stats.sent["array"] == factory.stats.received["array"]
    assert all(r == sorted(r) and len(r) <= len(service.values) for r in replies)
    if replies:
        assert len(replies[-1]) == len(service.values) or transport.disconnecting


# -- durability ------------------------------------------------------------------------------------------


def test_replies_wait_for_the_store_and_keep_their_order(
    factory: LegacyArrayFactory, service: NumberService
) -> None:
    """With a store, a reply goes out once its merge is stored, and later replies wait behind it."""
    first: Deferred[None] = Deferred()
    answers = iter([first, None])
    service.set_durability(lambda: next(answers))
    protocol, transport = connect(factory)
    protocol.dataReceived(pickle.dumps([2], protocol=2) + pickle.dumps([1], protocol=2))
    assert transport.writes == []
    first.callback(None)
    assert [pickle.loads(r) for r in transport.writes] == [[2], [1, 2]]


def test_a_merge_that_cannot_be_stored_closes_the_connection(
    factory: LegacyArrayFactory, service: NumberService
) -> None:
    """If the store fails, the old client (which has no way to read an error) is disconnected."""
    durable: Deferred[None] = Deferred()
    service.set_durability(lambda: durable)
    protocol, transport = connect(factory)
    protocol.dataReceived(pickle.dumps([2], protocol=2))
    durable.errback(OSError("disk full"))
    assert_refused(factory, transport, "store-failed")


def test_idle_connection_is_closed(service: NumberService, clock: Clock) -> None:
    """With an idle timeout set, an old array client silent for it is disconnected; one that
    talks is kept."""
    factory = LegacyArrayFactory(service, idle_timeout=120.0, clock=clock)
    quiet, quiet_transport = connect(factory)
    busy, busy_transport = connect(factory)
    for _ in range(5):
        clock.advance(30)
        busy.dataReceived(pickle.dumps([1], protocol=2))
    assert quiet_transport.disconnecting or getattr(quiet_transport, "aborted", False)
    assert not busy_transport.disconnecting
    assert factory.stats.connections["idle-timeout"] == 1
    quiet.connectionLost(None)
    busy.connectionLost(None)
    assert not clock.getDelayedCalls()


def test_no_idle_timeout_by_default(factory: LegacyArrayFactory, clock: Clock) -> None:
    """By default a silent old array client is never closed (the older server never timed out):
    still open after ten times the counter protocol's idle timeout, with no timer pending."""
    assert factory.idle_timeout is None
    protocol, transport = connect(factory)
    protocol.dataReceived(pickle.dumps([1], protocol=2))
    for _ in range(10):
        clock.advance(120)
    assert not transport.disconnecting and not getattr(transport, "aborted", False)
    assert not clock.getDelayedCalls()
    assert factory.stats.connections["idle-timeout"] == 0


def test_the_idle_timeout_option_closes_a_silent_client(
    service: NumberService, clock: Clock
) -> None:
    """With an idle timeout of 5 s, a client silent for 5 s is aborted and counted."""
    factory = LegacyArrayFactory(service, idle_timeout=5.0, clock=clock)
    protocol, transport = connect(factory)
    clock.advance(4.9)
    assert not getattr(transport, "aborted", False)
    clock.advance(0.1)
    assert transport.aborted
    assert factory.stats.connections["idle-timeout"] == 1


# -- the per-connection budget, backpressure and the write-stall cut-off ----------------------------


class BufferedTransport(CountingTransport):
    """A transport that, like Twisted's TCP transport, calls its streaming producer's
    pauseProducing from inside write while more than `bufferSize` bytes are unsent, and
    resumeProducing once a `drain` has sent them all."""

    bufferSize = TRANSPORT_BUFFER
    producerPaused = False

    def write(self, data: bytes) -> None:
        """Buffer the write; pause the producer if the buffer is past its size."""
        super().write(data)
        if self.producer is not None and self.streaming and len(self.value()) > self.bufferSize:
            self.producerPaused = True
            self.producer.pauseProducing()

    def drain(self) -> None:
        """The client reads every unsent byte: resume a paused producer."""
        self.clear()
        if self.producerPaused and self.producer is not None:
            self.producerPaused = False
            self.producer.resumeProducing()

    @property
    def reading(self) -> bool:
        """Whether the protocol lets the transport read (it has not paused it)."""
        return self.producerState == "producing"


def buffered(factory: LegacyArrayFactory) -> tuple[LegacyArrayProtocol, BufferedTransport]:
    """A protocol connected to a `BufferedTransport`."""
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert isinstance(protocol, LegacyArrayProtocol)
    transport = BufferedTransport()
    protocol.makeConnection(transport)
    return protocol, transport


READ_SIZE = 65536
"""Bytes a Twisted TCP transport reads at most at once."""


def deliver(protocol: LegacyArrayProtocol, transport: BufferedTransport, stream: bytes) -> int:
    """Feed `stream` in reads of READ_SIZE for as long as the protocol lets the transport read,
    as a real transport would; return how many bytes were delivered."""
    offset = 0
    while offset < len(stream) and transport.reading and not transport.disconnecting:
        protocol.dataReceived(stream[offset : offset + READ_SIZE])
        offset += READ_SIZE
    return min(offset, len(stream))


def pipelined(count: int, first: int = 0) -> tuple[list[list[int]], bytes]:
    """`count` small requests like the old client's (15 values each) and their byte stream."""
    requests = [[first + i] * 15 for i in range(count)]
    return requests, b"".join(pickle.dumps(r, protocol=2) for r in requests)


@pytest.fixture
def crowded(service: NumberService) -> NumberService:
    """A service whose list holds 3,000 values, so each reply is about 9 KB."""
    service.merge(range(1000, 4000))
    return service


def test_the_reply_size_bound_holds(crowded: NumberService) -> None:
    """reply_size_bound is an upper bound of the pickled reply, for small and 8-byte values."""
    for values in ([], list(crowded.values), [INT64_MIN, INT64_MAX] * 5000, list(range(70000))):
        assert len(pickle.dumps(values, protocol=4)) <= reply_size_bound(len(values))


def test_handling_stops_inside_a_read_when_the_transport_is_full(
    crowded: NumberService, clock: Clock
) -> None:
    """One read of 200 pipelined requests: once the transport has more than its buffer size
    unsent, the rest of the read waits in the input buffer and reading stops; each drain lets
    the next replies out, until all 200 are answered in order."""
    factory = LegacyArrayFactory(crowded, clock=clock)
    protocol, transport = buffered(factory)
    requests, stream = pipelined(200)
    protocol.dataReceived(stream)
    answered = len(transport.writes)
    assert 0 < answered < 20
    assert len(transport.value()) <= TRANSPORT_BUFFER + len(transport.writes[-1])
    assert not transport.reading
    assert factory.stats.received["array"] == answered
    while not transport.reading:
        transport.drain()
    assert len(transport.writes) == factory.stats.sent["array"] == 200
    expected = list(crowded.values)
    assert pickle.loads(transport.writes[-1]) == expected
    assert sorted(v for r in requests for v in r) == [v for v in expected if v < 1000]


def test_a_pipelining_client_that_never_reads_holds_a_bounded_amount(
    crowded: NumberService, clock: Clock
) -> None:
    """Thousands of small pickles sent without reading a reply: numd answers only until the
    transport is full, then holds at most one read and one partial request of input, and its
    unsent replies stay under the transport's buffer and one reply, all within the budget."""
    factory = LegacyArrayFactory(crowded, clock=clock)
    protocol, transport = buffered(factory)
    _, stream = pipelined(5000)
    delivered = deliver(protocol, transport, stream)
    assert delivered < len(stream)
    assert factory.stats.received["array"] < 20
    reply = len(transport.writes[-1])
    assert len(transport.value()) <= TRANSPORT_BUFFER + reply
    assert protocol.pending_bytes <= READ_SIZE + factory.max_bytes
    assert len(transport.value()) + protocol.pending_bytes <= factory.budget
    assert not transport.reading


def test_a_client_that_never_reads_is_cut_off(crowded: NumberService, clock: Clock) -> None:
    """A client whose replies stay unread for the write-stall timeout is aborted and counted as
    write-stalled; nothing more is answered; no timer is left once the connection is gone."""
    factory = LegacyArrayFactory(crowded, write_stall_timeout=5.0, clock=clock)
    protocol, transport = buffered(factory)
    _, stream = pipelined(5000)
    deliver(protocol, transport, stream)
    clock.advance(4.9)
    assert not getattr(transport, "aborted", False)
    clock.advance(0.1)
    assert transport.aborted
    assert factory.stats.connections["write-stalled"] == 1
    answered = factory.stats.sent["array"]
    transport.drain()
    assert factory.stats.sent["array"] == answered
    protocol.connectionLost(None)
    assert not clock.getDelayedCalls()


def test_a_client_that_reads_in_time_is_kept(crowded: NumberService, clock: Clock) -> None:
    """A client that reads its replies before the write-stall timeout is served on."""
    factory = LegacyArrayFactory(crowded, write_stall_timeout=5.0, clock=clock)
    protocol, transport = buffered(factory)
    _, stream = pipelined(300)
    offset = deliver(protocol, transport, stream)
    while offset < len(stream) or not transport.reading:
        clock.advance(4)
        transport.drain()
        offset += deliver(protocol, transport, stream[offset:])
    assert not transport.disconnecting
    assert factory.stats.sent["array"] == 300
    assert factory.stats.connections["write-stalled"] == 0
    assert not clock.getDelayedCalls()


def test_replies_waiting_for_the_store_stay_within_the_budget(clock: Clock) -> None:
    """While the store has not answered, replies wait; the requests that would push them past the
    budget stay unhandled in the input buffer and reading stops; each stored merge lets more in,
    and every request is answered, in order."""
    service = NumberService(Clock())
    service.merge(range(1000, 11000))  # replies of about 30 KB, bounded at 110 KB
    waiting: list[Deferred[None]] = []

    def durable() -> Deferred[None]:
        waiting.append(Deferred())
        return waiting[-1]

    service.set_durability(durable)
    factory = LegacyArrayFactory(service, clock=clock)
    protocol, transport = buffered(factory)
    requests, stream = pipelined(500)
    protocol.dataReceived(stream)
    assert transport.writes == []
    assert not transport.reading
    assert 1 <= len(waiting) < 40  # about 30 replies of 30 KB: 500 would be 15 MB
    assert protocol.pending_bytes + TRANSPORT_BUFFER <= factory.budget
    while waiting:
        waiting.pop(0).callback(None)
        assert protocol.pending_bytes + len(transport.value()) <= factory.budget
        transport.drain()
    assert transport.reading
    assert factory.stats.sent["array"] == 500
    assert [v for v in pickle.loads(transport.writes[-1]) if v < 1000] == sorted(
        v for r in requests for v in r
    )


def test_a_reply_larger_than_the_budget_is_the_only_one_held(clock: Clock) -> None:
    """With a budget smaller than one reply, each reply is built only once the one before it
    has been written: one is held at a time."""
    service = NumberService(Clock())
    service.merge(range(1000, 6000))  # replies of about 15 KB
    waiting: list[Deferred[None]] = []

    def durable() -> Deferred[None]:
        waiting.append(Deferred())
        return waiting[-1]

    service.set_durability(durable)
    factory = LegacyArrayFactory(service, budget=10_000, clock=clock)
    protocol, transport = buffered(factory)
    _, stream = pipelined(3)
    protocol.dataReceived(stream)
    for answered in range(3):
        assert len(waiting) == 1
        assert len(transport.writes) == answered
        waiting.pop().callback(None)
        transport.drain()
    assert len(transport.writes) == 3 and transport.reading


def test_a_refused_client_that_does_not_read_is_aborted(
    crowded: NumberService, clock: Clock
) -> None:
    """A bad request closes the connection once the replies before it are sent; if the client
    does not read them within the write-stall timeout, it is aborted (as write-stalled: the
    idle clock stopped at the refusal)."""
    factory = LegacyArrayFactory(crowded, idle_timeout=2.0, write_stall_timeout=5.0, clock=clock)
    protocol, transport = buffered(factory)
    protocol.dataReceived(pickle.dumps([1], protocol=2) + b"garbage")
    assert transport.disconnecting and transport.producer is None
    assert factory.stats.errors == {"not-pickle": 1}
    clock.advance(5)
    assert transport.aborted
    assert factory.stats.connections["write-stalled"] == 1
    assert factory.stats.connections["idle-timeout"] == 0
    protocol.connectionLost(None)
    assert not clock.getDelayedCalls()


class RecordingFactory(LegacyArrayFactory):
    """A LegacyArrayFactory that keeps its protocols."""

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        """Build and keep the protocol."""
        protocol = super().buildProtocol(addr)
        self.built: list[LegacyArrayProtocol] = [*getattr(self, "built", []), protocol]
        return protocol


class SilentClient(Protocol):
    """Sends what it is given and never reads a reply."""

    def __init__(self) -> None:
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        """Stop reading at once."""
        self.transport.pauseProducing()

    def connectionLost(self, reason: object = None) -> None:
        """Note that the server closed the connection."""
        self.closed.callback(None)


def unsent(transport: Any) -> int:
    """Bytes a Twisted TCP transport holds unsent (its dataBuffer past offset, and its list)."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


@pytest_twisted.ensureDeferred
async def test_loopback_client_pipelining_pickles_without_reading() -> None:
    """Over a real socket, a client that pipelines 2,000 pickles against a 20,000-value list and
    never reads: numd stops handling once its socket and buffer are full, holds less than the
    budget plus one reply, and cuts the client off after the write-stall timeout."""
    from twisted.internet import reactor

    stall_clock = Clock()
    service = NumberService(stall_clock)
    service.merge(range(1000, 21000))  # replies of about 60 KB: 2,000 would be 120 MB
    factory = RecordingFactory(service, write_stall_timeout=30.0, clock=stall_clock)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=5)
        client = await endpoint.connect(Factory.forProtocol(SilentClient)).addTimeout(5, reactor)
        (protocol,) = factory.built
        protocol.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        _, stream = pipelined(2000)
        client.transport.write(stream)
        deadline = reactor.seconds() + 5
        while protocol._stall_timer is None:
            assert reactor.seconds() < deadline, "numd never paused"
            await deferLater(reactor, 0.01)
        await deferLater(reactor, 0.1)
        reply = reply_size_bound(len(service.values))
        assert factory.stats.received["array"] < 2000
        assert unsent(protocol.transport) + protocol.pending_bytes <= factory.budget + reply
        stall_clock.advance(30)
        assert factory.stats.connections["write-stalled"] == 1
        client.transport.resumeProducing()  # to see the connection go
        await client.closed.addTimeout(5, reactor)
        assert factory.stats.connections["closed"] == 1
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_loopback_refusal_while_paused_still_closes() -> None:
    """Over a real socket, a connection refused while the transport has paused it (here a merge
    the store fails to keep) closes once the client reads what was sent before: the protocol
    unregisters as producer, without which Twisted's transport would wait for it forever."""
    from twisted.internet import reactor

    waiting: list[Deferred[None]] = []

    def durable() -> Deferred[None]:
        waiting.append(Deferred())
        return waiting[-1]

    service = NumberService(reactor)
    service.merge(range(1000, 21000))
    service.set_durability(durable)
    factory = RecordingFactory(service, clock=reactor)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=5)
        client = await endpoint.connect(Factory.forProtocol(SilentClient)).addTimeout(5, reactor)
        (protocol,) = factory.built
        protocol.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client.transport.write(pipelined(2000)[1])
        deadline = reactor.seconds() + 5
        while not protocol._transport_paused:
            assert reactor.seconds() < deadline, "numd never paused"
            while len(waiting) > 1:
                waiting.pop(0).callback(None)
            await deferLater(reactor, 0.01)
        waiting.pop().errback(OSError("disk full"))
        assert factory.stats.errors == {"store-failed": 1}
        client.transport.resumeProducing()
        await client.closed.addTimeout(5, reactor)
        assert factory.stats.connections["closed"] == 1
    finally:
        await port.stopListening()


def test_connections_over_the_limit_are_refused(service: NumberService) -> None:
    """Past max_clients a new connection gets no protocol (Twisted closes it); a metric counts it."""
    factory = LegacyArrayFactory(service, max_clients=2, clock=Clock())
    first, _ = connect(factory)
    connect(factory)
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)) is None
    assert factory.stats.connections["refused"] == 1
    first.connectionLost(None)
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)) is not None


# -- wiring: options to the listener ------------------------------------------------------------


def built_listener(tmp_path: Path, *args: str) -> LegacyArrayFactory:
    """The legacy listener's factory as ``twistd numd`` builds it from `args`, on a memory reactor."""
    options = Options()
    options.parseOptions(
        [
            "--message-log",
            str(tmp_path / "m.log"),
            "--db",
            ":memory:",
            "--legacy-array-listen",
            "tcp:6000:interface=127.0.0.1",
            *args,
        ]
    )
    daemon = makeService(options, reactor=MemoryReactorClock())
    assert daemon.legacy_array_factory is not None
    return daemon.legacy_array_factory


def test_listener_defaults_no_idle_timeout_and_the_shared_write_stall_timeout(
    tmp_path: Path,
) -> None:
    """By default the listener has no idle timeout (whatever --idle-timeout says) and the
    daemon's write-stall timeout (30 s)."""
    factory = built_listener(tmp_path, "--idle-timeout", "60")
    assert factory.idle_timeout is None
    assert factory.write_stall_timeout == 30.0
    assert factory.budget == 1024 * 1024


def test_listener_options_reach_the_listener(tmp_path: Path) -> None:
    """--legacy-array-idle-timeout sets the listener's own idle timeout; --write-stall-timeout
    applies to it as to the counter protocol."""
    factory = built_listener(
        tmp_path, "--legacy-array-idle-timeout", "45", "--write-stall-timeout", "7"
    )
    assert (factory.idle_timeout, factory.write_stall_timeout) == (45.0, 7.0)


@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_bad_legacy_idle_timeout_is_a_usage_error(tmp_path: Path, value: str) -> None:
    """A legacy idle timeout that is not a number of at least 1 s is a usage error naming it."""
    with pytest.raises(usage.UsageError, match="legacy-array-idle-timeout"):
        built_listener(tmp_path, "--legacy-array-idle-timeout", value)
