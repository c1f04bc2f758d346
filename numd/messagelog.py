"""The message log: one JSON line for every counter-protocol message and connection event.

Record format (one JSON object per line, UTF-8, keys in this order)::

    {"t":1732245600.123,"dir":"in","peer":"127.0.0.1:51234","id":5287,"msg":"odd"}
    {"t":1732245600.123,"dir":"out","peer":"127.0.0.1:51234","id":5287,"msg":"37"}
    {"t":1732245599.020,"dir":"event","peer":"127.0.0.1:51234","id":null,"event":"connect"}

``t`` is the Unix time (of the read that carried the message, for ``in`` and
``out``), ``dir`` is ``in`` (received), ``out`` (sent) or ``event``;
``id`` is the client ID, or null before registration. ``msg`` holds the token's
bytes one character per byte (latin-1), JSON-escaped, so
``record["msg"].encode("latin-1")`` gives back exactly the bytes on the wire,
whatever they were. Client bytes are never used as a format string.

Records are buffered and written in batches (at least every ``flush_interval``
seconds, sooner when the buffer is large), so a crash can lose the last fraction
of a second of log. The file rotates by size and keeps a bounded number of old
files (unless it is not a regular file: ``--message-log /dev/null`` turns the
log off and is never rotated). If writing fails the daemon keeps serving: records are counted as dropped
and `writable` turns false until a write succeeds again.
"""

from __future__ import annotations

import json
import os
import re
import stat

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.logfile import LogFile

from numd.timers import cancel

_PLAIN = re.compile(rb"[\x21\x23-\x5b\x5d-\x7e]*")
"""Bytes that need no JSON escaping: printable ASCII except ``"`` and ``\\``."""
_PLAIN_READ = re.compile(rb"[\x20\x21\x23-\x5b\x5d-\x7e]*")
"""A read whose tokens (all its bytes but spaces) need no escaping."""


def _json_token(token: bytes) -> bytes:
    if _PLAIN.fullmatch(token):
        return b'"' + token + b'"'
    return json.dumps(token.decode("latin-1")).encode("ascii")


def describe_peer(address: object) -> str:
    """``host:port`` for an IP address, else the address's own text (the ``peer`` of records)."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


class ConnectionLog:
    """One connection's records, with its peer and client ID formatted once.

    The protocol calls `new_read` once per read (one timestamp, one check that
    the read needs no escaping), then `received`/`sent` per token: each record
    is a few byte concatenations, cheap enough for every message.
    """

    __slots__ = ("_log", "_lines", "peer", "client_id", "_who", "_stamp", "_plain")

    def __init__(self, log: MessageLog, peer: str) -> None:
        self._log = log
        self._lines = log._buffer
        self.peer = peer
        self.identify(None)
        self.new_read(b"")

    def identify(self, client_id: int | None) -> None:
        """Stamp the following records with `client_id` (None before registration)."""
        self.client_id = client_id
        self._who = b'","peer":%s,"id":%s,' % (
            json.dumps(self.peer).encode("ascii"),
            b"null" if client_id is None else b"%d" % client_id,
        )

    def new_read(self, data: bytes) -> None:
        """Start the records of one read of `data` (its time; whether it needs escaping)."""
        self._log.checkpoint()
        self._stamp = b'{"t":%.3f,"dir":"' % self._log.now()
        self._plain = _PLAIN_READ.fullmatch(data) is not None

    def received(self, token: bytes) -> None:
        """Record a token the server received (in this read)."""
        msg = b'"' + token + b'"' if self._plain else _json_token(token)
        self._lines.append(self._stamp + b"in" + self._who + b'"msg":' + msg + b"}\n")

    def sent(self, token: bytes) -> None:
        """Record a token the server sent (numd's own tokens are plain ASCII)."""
        self._lines.append(self._stamp + b"out" + self._who + b'"msg":"' + token + b'"}\n')

    def event(self, event: str) -> None:
        """Record a connection event (connect, register, disconnect, ...), timed now."""
        self._log.add(
            b'{"t":%.3f,"dir":"event%s"event":%s}\n'
            % (self._log.now(), self._who, json.dumps(event).encode("ascii"))
        )


class SilentConnectionLog:
    """What `MessageLog.connection` gives when the log is off: every record is dropped unformatted."""

    __slots__ = ("peer", "client_id")

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.client_id: int | None = None

    def identify(self, client_id: int | None) -> None:
        """Remember the client ID (nothing is written)."""
        self.client_id = client_id

    def new_read(self, data: bytes) -> None:
        """Nothing to stamp."""

    def received(self, token: bytes) -> None:
        """Nothing is written."""

    def sent(self, token: bytes) -> None:
        """Nothing is written."""

    def event(self, event: str) -> None:
        """Nothing is written."""


def _rotatable(path: str) -> bool:
    """Whether `path` is (or will be) a regular file, which rotation may rename.

    ``--message-log /dev/null`` (or a FIFO) must never be renamed: as root,
    rotating it would replace the system's /dev/null with a plain file.
    """
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True


class MessageLog(Service):
    """Writes message records to a size-rotated file, in buffered batches."""

    log = Logger()
    name = "numd-message-log"

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        max_bytes: int = 10 * 1024 * 1024,
        max_files: int = 5,
        flush_interval: float = 0.2,
        flush_records: int = 1000,
        enabled: bool = True,
    ) -> None:
        self.path = os.path.abspath(path)
        self._clock = clock
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.flush_interval = flush_interval
        self.flush_records = flush_records
        self.enabled = enabled
        """False: no file is opened and no record is formatted (``--no-message-log``)."""
        self._buffer: list[bytes] = []
        self._timer: IDelayedCall | None = None
        self._file: LogFile | None = None
        self.written = 0
        """Records written to the file so far."""
        self.dropped = 0
        """Records lost because the file could not be written."""
        self.writable = True
        """False while the last write attempt failed."""

    # -- lifecycle -------------------------------------------------------------

    def startService(self) -> None:
        """Open (or create) the log file."""
        super().startService()
        if self.enabled:
            self._open()

    def stopService(self) -> None:
        """Write everything buffered and close the file."""
        super().stopService()
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> bool:
        try:
            self._file = LogFile(
                os.path.basename(self.path),
                os.path.dirname(self.path),
                rotateLength=self.max_bytes if _rotatable(self.path) else None,
                maxRotatedFiles=self.max_files,
            )
        except OSError as e:
            self._file = None
            self._fail(e)
            return False
        return True

    # -- records -----------------------------------------------------------------

    def connection(self, peer: str) -> ConnectionLog | SilentConnectionLog:
        """A writer of records for one connection from `peer` (a silent one when the log is off)."""
        if not self.enabled:
            return SilentConnectionLog(peer)
        return ConnectionLog(self, peer)

    def now(self) -> float:
        """The time stamped on records."""
        return self._clock.seconds()

    def add(self, line: bytes) -> None:
        """Buffer one formatted record; flush when the buffer is large or on the timer."""
        self._buffer.append(line)
        self.checkpoint()

    def checkpoint(self) -> None:
        """Flush if the buffer holds `flush_records` records; else make sure the timer runs.

        Connections append their records straight to the buffer and call this
        once per read, so the per-record cost is one list append.
        """
        if len(self._buffer) >= self.flush_records:
            self.flush()
        elif self._timer is None and self.running:
            self._timer = self._clock.callLater(self.flush_interval, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write every buffered record to the file now."""
        cancel(self._timer)
        self._timer = None
        if not self._buffer:
            return
        count = len(self._buffer)
        data = b"".join(self._buffer)
        self._buffer.clear()  # in place: connections hold this list
        if self._file is None and not self._open():
            self.dropped += count
            return
        assert self._file is not None
        try:
            self._file.write(data)
        except (OSError, ValueError) as e:
            self.dropped += count
            self._fail(e)
            return
        self.written += count
        if not self.writable:
            self.log.info("message log {path} is writable again", path=self.path)
        self.writable = True

    def _fail(self, error: Exception) -> None:
        if self.writable:
            self.log.error(
                "message log {path} cannot be written ({error}); records are dropped",
                path=self.path,
                error=error,
            )
        self.writable = False
