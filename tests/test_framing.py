"""Token framing (`numd.counter.framing.TokenReceiver`): tokens split once per read, newlines,
held input, the length cap, and tokens trickled in small reads."""

from __future__ import annotations

from twisted.internet.testing import StringTransport

from numd.counter.framing import TokenReceiver
from numd.counter.protocol import CounterFactory

from .counter_client import FakeClient


class Tokens(TokenReceiver):
    """Records every token, every read's tokens and every end of a read; may hold after a token."""

    MAX_LENGTH = 16

    def __init__(self, hold_after: bytes | None = None) -> None:
        self.tokens: list[bytes] = []
        self.reads: list[list[bytes]] = []
        self.done = 0
        self.too_long: list[bytes] = []
        self.hold_after = hold_after

    def readReceived(self, tokens: list[bytes]) -> None:
        """Note the read's tokens, then handle them one by one."""
        self.reads.append(list(tokens))
        super().readReceived(tokens)

    def tokenReceived(self, token: bytes) -> None:
        """Keep the token; hold the rest of the input after `hold_after`."""
        self.tokens.append(token)
        if token == self.hold_after:
            self.hold_tokens()

    def tokensDone(self) -> None:
        """Count the reads handled."""
        self.done += 1

    def lineLengthExceeded(self, token: bytes) -> None:
        """Keep the over-long token."""
        self.too_long.append(token)


def connected(receiver: Tokens) -> Tokens:
    """`receiver`, connected to a string transport."""
    receiver.makeConnection(StringTransport())
    return receiver


def test_one_read_is_split_once_and_its_empty_tokens_are_skipped() -> None:
    """A read's complete tokens reach `readReceived` together (empty ones included), only the
    non-empty ones reach `tokenReceived`, and the last, partial one waits for its delimiter."""
    receiver = connected(Tokens())
    receiver.dataReceived(b"1  even odd 2")
    assert receiver.reads == [[b"1", b"", b"even", b"odd"]]
    assert receiver.tokens == [b"1", b"even", b"odd"]
    assert receiver.pending == b"2" and receiver.pending_length == 1
    receiver.dataReceived(b"3 ")
    assert receiver.tokens[-1] == b"23"
    assert receiver.done == 2


def test_newlines_end_tokens_and_a_lone_carriage_return_does_not() -> None:
    """``\\n`` and ``\\r\\n`` end a token as a space does, even split between reads."""
    receiver = connected(Tokens())
    receiver.dataReceived(b"1\n2\r\n3\r")
    receiver.dataReceived(b"\n4\r5 ")
    assert receiver.tokens == [b"1", b"2", b"3", b"4\r5"]


def test_held_input_is_kept_unsplit_and_handled_in_order_on_release() -> None:
    """After `hold_tokens` the read's other tokens and every later read wait, in order, until
    `release_tokens` handles them all."""
    receiver = connected(Tokens(hold_after=b"stop"))
    receiver.dataReceived(b"a stop b c")
    assert receiver.tokens == [b"a", b"stop"] and receiver.holding
    receiver.dataReceived(b"d e ")
    assert receiver.tokens == [b"a", b"stop"]
    receiver.release_tokens()
    assert receiver.tokens == [b"a", b"stop", b"b", b"cd", b"e"]
    assert not receiver.holding


def test_stopped_receiver_ignores_everything() -> None:
    """Once `stop_reading_tokens` was called, no token is handled and nothing is kept."""
    receiver = connected(Tokens())
    receiver.dataReceived(b"a b")
    receiver.stop_reading_tokens()
    receiver.dataReceived(b" c d ")
    assert receiver.tokens == [b"a"]
    assert receiver.closing and receiver.pending == b""


def test_the_tokens_before_an_over_long_one_are_handled_then_it_is_refused() -> None:
    """A token past `MAX_LENGTH` stops the read there: the ones before it count, it is
    reported once, and nothing after it is handled."""
    receiver = connected(Tokens())
    receiver.dataReceived(b"a b " + b"x" * 20 + b" c ")
    assert receiver.tokens == [b"a", b"b"]
    assert receiver.too_long == [b"x" * 20]
    assert receiver.closing


def test_an_over_long_token_waits_behind_held_tokens() -> None:
    """While the receiver holds, an over-long token is kept behind the held input and refused
    only when its turn comes."""
    receiver = connected(Tokens(hold_after=b"stop"))
    receiver.dataReceived(b"stop a " + b"x" * 20 + b" ")
    assert receiver.too_long == []
    receiver.release_tokens()
    assert receiver.tokens == [b"stop", b"a"]
    assert receiver.too_long == [b"x" * 20]


def test_take_pending_removes_the_partial_token() -> None:
    """The partial token, even gathered from several reads, is taken whole, once."""
    receiver = connected(Tokens())
    for piece in (b"5", b"2", b"8"):
        receiver.dataReceived(piece)
    assert receiver.take_pending() == b"528"
    assert receiver.pending == b"" and receiver.pending_length == 0
    receiver.dataReceived(b"7 ")
    assert receiver.tokens == [b"7"]


class _CountingBytes(bytes):
    """Bytes that count how many bytes were copied in front of them by ``other + self``."""

    copied = 0

    def __radd__(self, other: bytes) -> bytes:
        _CountingBytes.copied += len(other)
        return bytes(other) + bytes(self)


def test_a_token_trickled_byte_by_byte_is_joined_once() -> None:
    """Reassembling a 30,000-byte token sent one byte per read copies each byte about once."""

    class Tokens(TokenReceiver):
        def __init__(self) -> None:
            self.tokens: list[bytes] = []

        def tokenReceived(self, token: bytes) -> None:
            self.tokens.append(token)

    receiver = Tokens()
    receiver.makeConnection(StringTransport())
    _CountingBytes.copied = 0
    token = b"7" * 30_000
    for byte in token:
        receiver.dataReceived(_CountingBytes(bytes([byte])))
    receiver.dataReceived(_CountingBytes(b" "))
    assert receiver.tokens == [token]
    assert _CountingBytes.copied <= 2 * len(token)


def test_a_trickled_token_past_the_cap_is_cut(factory: CounterFactory) -> None:
    """A token trickled in small pieces is still cut at --max-token-length."""
    client = FakeClient(factory)
    replies: list[bytes] = []
    for _ in range(40):
        replies += client.send(b"9" * 1000)
    assert replies == [b"error:too-long"]
    assert client.transport.disconnecting
