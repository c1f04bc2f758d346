"""Token framing for the counter protocol: space-ended tokens, split once per read.

Like `twisted.protocols.basic.LineReceiver` with ``delimiter = b" "``, but each
read is split with one `bytes.split` instead of copying the rest of the buffer
for every token (Twisted issues 6356/6357), and ``\\n`` and ``\\r\\n`` end a token
too, so that a person typing into ``nc`` is understood.

Two protections live here because only the framing sees the bytes:

- A token that arrives in many small reads is kept as a list of pieces and
  joined once, when its delimiter comes: reassembling it costs time linear in
  its length, not in its length times the number of reads.
- A subclass can stop handling the tokens of a read part-way
  (`hold_tokens`): the rest of the read is kept, unsplit, and handled by
  `release_tokens`. That is backpressure inside a read, so one read carrying
  thousands of requests never makes thousands of replies at once.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol


class IStreamTransport(ITCPTransport, IConsumer, IPushProducer):
    """What numd's stream protocols use of their transport, as Twisted's TCP connection has it:
    writes, closing and aborting, a registered producer, and pausing its own reading."""


class TokenReceiver(Protocol):
    """Calls `readReceived` with the complete tokens of each read, then `tokensDone`.

    By default `readReceived` calls `tokenReceived` for each non-empty token;
    a subclass may override it to handle a whole read at once.
    """

    transport: IStreamTransport  # set by makeConnection, before any other call
    delimiter = b" "
    MAX_LENGTH = 32 * 1024
    """The longest token accepted; a longer one calls `lineLengthExceeded`."""

    _buffer = b""
    """The partial token (or, while tokens are held, the unhandled input)."""
    _pieces: list[bytes] | None = None
    """The reads after `_buffer` of a partial token spread over several reads (never
    set while `_buffer` is empty), joined once its delimiter comes."""
    _pieces_length = 0
    _stopped = False
    _holding = False
    _blocked = False
    """`_stopped or _holding`: one test on the common path."""

    def dataReceived(self, data: bytes) -> None:
        """Split the buffered partial token plus `data` into tokens and dispatch them."""
        if self._blocked:
            if self._holding:
                self._buffer += data  # bounded: the holder stopped reading from the transport
            return
        if self._buffer:
            data = self._gather(data)
            if not data:  # still no delimiter
                self.readReceived([])
                self.tokensDone()
                return
        if b"\n" in data:
            data = data.replace(b"\r\n", b" ").replace(b"\n", b" ")
        tokens = data.split(self.delimiter)
        self._buffer = rest = tokens.pop()
        limit = self.MAX_LENGTH
        if len(data) > limit:  # only then can a token be too long
            for index, token in enumerate(tokens):
                if len(token) > limit:
                    self._too_long(tokens[:index], token)
                    return
            if len(rest) > limit:
                self._too_long(tokens, rest)
                return
        self.readReceived(tokens)
        self.tokensDone()

    def _gather(self, data: bytes) -> bytes:
        """The partial token plus `data` once a token ends (or the cap is passed), else b"".

        Until then the pieces are only listed: a token trickled in byte by byte
        is joined once, not copied on every read.
        """
        pieces = self._pieces
        if pieces is None:
            if _ends_token(data):
                return self._buffer + data
            self._pieces = pieces = []
            self._pieces_length = len(self._buffer)
        pieces.append(data)
        self._pieces_length += len(data)
        if _ends_token(data) or self._pieces_length > self.MAX_LENGTH:
            data = b"".join([self._buffer, *pieces])
            self._buffer = b""
            self._pieces = None
            self._pieces_length = 0
            return data
        return b""

    def _too_long(self, before: list[bytes], token: bytes) -> None:
        """Handle the tokens `before` an over-long `token`, then stop at it."""
        self._buffer = b""
        self.readReceived(before)
        if self._holding:  # the over-long token waits behind the held ones
            self._buffer += token
        elif not self._stopped:
            self.stop_reading_tokens()
            self.lineLengthExceeded(token)
        self.tokensDone()

    def readReceived(self, tokens: list[bytes]) -> None:
        """Handle the complete tokens of one read (empty ones included), in order.

        Stops early if the connection closes, or if `hold_tokens` is called: the
        tokens not handled yet are then kept for `release_tokens`.
        """
        for index, token in enumerate(tokens):
            if token:
                self.tokenReceived(token)
                if self._stopped:
                    return
                if self._holding:
                    self._keep(tokens[index + 1 :])
                    return

    def _keep(self, tokens: list[bytes]) -> None:
        """Put `tokens` back in front of the partial token, unsplit, for `release_tokens`."""
        if tokens:
            self._buffer = b" ".join(tokens) + b" " + self._buffer

    @property
    def closing(self) -> bool:
        """True once the connection is being closed and tokens are ignored."""
        return self._stopped

    @property
    def holding(self) -> bool:
        """True while `hold_tokens` keeps the input unhandled."""
        return self._holding

    @property
    def pending_length(self) -> int:
        """The length of the partial token received so far (cheap, unlike `pending`)."""
        return self._pieces_length if self._pieces is not None else len(self._buffer)

    @property
    def pending(self) -> bytes:
        """The partial token received so far, waiting for its delimiter."""
        if self._pieces is not None:
            return b"".join([self._buffer, *self._pieces])
        return self._buffer

    def take_pending(self) -> bytes:
        """Remove and return the partial token received so far."""
        pending = self.pending
        self._buffer, self._pieces, self._pieces_length = b"", None, 0
        return pending

    def hold_tokens(self) -> None:
        """Handle no more tokens until `release_tokens`; input received meanwhile is kept.

        The caller should also stop reading from the transport, which is what
        bounds the input kept.
        """
        self._holding = self._blocked = True

    def release_tokens(self) -> None:
        """Handle the input kept since `hold_tokens` (and go on taking new input)."""
        if not self._holding:
            return
        self._holding = False
        self._blocked = self._stopped
        if self._stopped:
            return
        data, self._buffer = self._buffer, b""
        self.dataReceived(data)

    def stop_reading_tokens(self) -> None:
        """Ignore every token from now on (the connection is being closed)."""
        self._stopped = self._blocked = True
        self._holding = False
        self._buffer = b""
        self._pieces = None
        self._pieces_length = 0

    def tokenReceived(self, token: bytes) -> None:
        """Handle one complete, non-empty token. Must not raise."""
        raise NotImplementedError

    def tokensDone(self) -> None:
        """Called after the tokens of one read were handled."""

    def lineLengthExceeded(self, token: bytes) -> None:
        """A token grew past `MAX_LENGTH`; by default close the connection."""
        self.transport.loseConnection()


def _ends_token(data: bytes) -> bool:
    """Whether `data` holds a delimiter (a space or a newline)."""
    return b" " in data or b"\n" in data
