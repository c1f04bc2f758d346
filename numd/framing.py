"""Token framing for the counter protocol: space-ended tokens, split once per read.

Like `twisted.protocols.basic.LineReceiver` with ``delimiter = b" "``, but each
read is split with one `bytes.split` instead of copying the rest of the buffer
for every token (Twisted issues 6356/6357), and ``\\n`` and ``\\r\\n`` end a token
too, so that a person typing into ``nc`` is understood.
"""

from __future__ import annotations

from twisted.internet.protocol import Protocol


class TokenReceiver(Protocol):
    """Calls `readReceived` with the complete tokens of each read, then `tokensDone`.

    By default `readReceived` calls `tokenReceived` for each non-empty token;
    a subclass may override it to handle a whole read at once.
    """

    delimiter = b" "
    MAX_LENGTH = 32 * 1024
    """The longest token accepted; a longer one calls `lineLengthExceeded`."""

    _buffer = b""
    _stopped = False

    def dataReceived(self, data: bytes) -> None:
        """Split the buffered partial token plus `data` into tokens and dispatch them."""
        if self._stopped:
            return
        if self._buffer:
            data = self._buffer + data
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

    def _too_long(self, before: list[bytes], token: bytes) -> None:
        """Handle the tokens `before` an over-long `token`, then stop at it."""
        self._buffer = b""
        self.readReceived(before)
        if not self._stopped:
            self.stop_reading_tokens()
            self.lineLengthExceeded(token)
        self.tokensDone()

    def readReceived(self, tokens: list[bytes]) -> None:
        """Handle the complete tokens of one read (empty ones included), in order."""
        for token in tokens:
            if token:
                self.tokenReceived(token)
            if self._stopped:
                break

    @property
    def closing(self) -> bool:
        """True once the connection is being closed and tokens are ignored."""
        return self._stopped

    @property
    def pending(self) -> bytes:
        """The partial token received so far, waiting for its delimiter."""
        return self._buffer

    def take_pending(self) -> bytes:
        """Remove and return the partial token received so far."""
        pending, self._buffer = self._buffer, b""
        return pending

    def stop_reading_tokens(self) -> None:
        """Ignore every token from now on (the connection is being closed)."""
        self._stopped = True
        self._buffer = b""

    def tokenReceived(self, token: bytes) -> None:
        """Handle one complete, non-empty token. Must not raise."""
        raise NotImplementedError

    def tokensDone(self) -> None:
        """Called after the tokens of one read were handled."""

    def lineLengthExceeded(self, token: bytes) -> None:
        """A token grew past `MAX_LENGTH`; by default close the connection."""
        self.transport.loseConnection()
