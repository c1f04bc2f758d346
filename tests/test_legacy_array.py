"""The older server's pickle array listener: framing by opcodes, a refusing unpickler, replies."""

from __future__ import annotations

import itertools
import os
import pickle
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from numd.legacy_array import (
    BadRequest,
    LegacyArrayFactory,
    LegacyArrayProtocol,
    RefusingUnpickler,
    decode_request,
    find_pickle_end,
)
from numd.service import INT64_MAX, INT64_MIN, NumberService

PROTOCOLS = [2, 3, 4, 5]
CANARY = "this"
"""A standard module with an import side effect (it prints), never imported by numd or its tests."""


class CountingTransport(StringTransport):
    """A StringTransport that also keeps each write separately."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Record the write, then buffer it as usual."""
        self.writes.append(data)
        super().write(data)


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


def global_pickle(module: str, name: str, argument: str = "") -> bytes:
    """A protocol-2 pickle that calls module.name(argument): GLOBAL + REDUCE, hand-made."""
    return (
        b"\x80\x02c"
        + module.encode()
        + b"\n"
        + name.encode()
        + b"\n"
        + b"X"
        + len(argument).to_bytes(4, "little")
        + argument.encode()
        + b"\x85R."
    )


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


def test_the_unpickler_itself_refuses_every_global(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Even without the opcode check, RefusingUnpickler never imports or calls a global."""
    import io

    assert CANARY not in sys.modules
    calls: list[object] = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command))
    for data in (
        global_pickle("os", "system", "true"),
        global_pickle(CANARY, "x"),
        pickle.dumps(os.getcwd, protocol=4),
    ):
        with pytest.raises(pickle.UnpicklingError, match="refused"):
            RefusingUnpickler(io.BytesIO(data)).load()
    assert calls == [] and CANARY not in sys.modules
    with pytest.raises(pickle.UnpicklingError):
        RefusingUnpickler(io.BytesIO(b"\x80\x02X\x01\x00\x00\x00aQ.")).load()


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


# -- properties ---------------------------------------------------------------------------------------


int64s = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)


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


# -- durability ------------------------------------------------------------------------------------------


def test_replies_wait_for_the_store_and_keep_their_order(
    factory: LegacyArrayFactory, service: NumberService
) -> None:
    """With a store, a reply goes out once its merge is stored, and later replies wait behind it."""
    from twisted.internet.defer import Deferred

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
    from twisted.internet.defer import Deferred

    durable: Deferred[None] = Deferred()
    service.set_durability(lambda: durable)
    protocol, transport = connect(factory)
    protocol.dataReceived(pickle.dumps([2], protocol=2))
    durable.errback(OSError("disk full"))
    assert_refused(factory, transport, "store-failed")


def test_idle_connection_is_closed(factory: LegacyArrayFactory, clock: Clock) -> None:
    """An old array client silent for the idle timeout is disconnected; one that talks is kept."""
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


def test_connections_over_the_limit_are_refused(service: NumberService) -> None:
    """Past max_clients a new connection gets no protocol (Twisted closes it); a metric counts it."""
    factory = LegacyArrayFactory(service, max_clients=2, clock=Clock())
    first, _ = connect(factory)
    connect(factory)
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)) is None
    assert factory.stats.connections["refused"] == 1
    first.connectionLost(None)
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)) is not None
