"""The message log: one JSON line for every counter-protocol message and connection event.

Record format (one JSON object per line, UTF-8, keys in this order)::

    {"t":1732245600.123,"dir":"in","peer":"127.0.0.1:51234","id":5287,"msg":"odd"}
    {"t":1732245600.123,"dir":"out","peer":"127.0.0.1:51234","id":5287,"msg":"37"}
    {"t":1732245599.020,"dir":"event","peer":"127.0.0.1:51234","id":null,"event":"connect"}

``t`` is the Unix time, to the millisecond (of the read that carried the message,
for ``in`` and ``out``), ``dir`` is ``in`` (received), ``out`` (sent) or ``event``;
a read's ``in`` records come first, then the ``out`` records of its replies;
``id`` is the client ID, or null before registration. ``msg`` holds the token's
bytes one character per byte (latin-1), JSON-escaped, so
``record["msg"].encode("latin-1")`` gives back exactly the bytes on the wire,
whatever they were. Client bytes are never used as a format string.

Records are buffered and handed in batches (at least every ``flush_interval``
seconds, sooner when the buffer is large) to a writer thread of the log's own,
which writes them in order: the reactor thread never waits for the disk, which
may be busy with the store's fsyncs. A crash can lose the last fraction of a
second of log. The file rotates by size and keeps a bounded number of old files
(unless it is not a regular file: ``--message-log /dev/null`` is written but
never rotated). If writing fails, or the disk falls more than ``max_behind``
bytes behind, the daemon keeps serving: records are counted as dropped and
`writable` turns false until a write succeeds again.

The file outlives outside rotation (``logrotate``): `MessageLog.reopen` (numd's
SIGHUP) opens the path anew, on the writer thread after every record handed over
before it; before each batch the writer also checks that the path still names
the open file and opens it anew if it was moved or deleted. Writes append
(``O_APPEND``), so ``copytruncate`` leaves no hole, and a write that fails half
way is cut off again, so every line stays a whole record (`numd.logfile`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from numd.logfile import AppendLogFile
from numd.timers import cancel
from numd.writer import Runner, Writer

_PLAIN = re.compile(rb"[\x21\x23-\x5b\x5d-\x7e]*")
"""Bytes that need no JSON escaping: printable ASCII except ``"`` and ``\\``."""


def _json_token(token: bytes) -> bytes:
    if _PLAIN.fullmatch(token):
        return b'"' + token + b'"'
    return json.dumps(token.decode("latin-1")).encode("ascii")


def describe_peer(address: object) -> str:
    """``host:port`` for an IP address, else the address's own text (the ``peer`` of records)."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


class IConnectionLog(Interface):
    """A connection's records: `ConnectionLog`, or `SilentConnectionLog` (log off), which does
    nothing at all: the counter protocol calls these on every read."""

    def identify(client_id: int | None) -> None:
        """Stamp the following records with `client_id` (None before registration)."""

    def new_read(now: float) -> None:
        """Start the records of one read, received at `now`."""

    def received(token: bytes) -> None:
        """Record one token the server received (any bytes)."""

    def records(received: Sequence[bytes], sent: Sequence[bytes]) -> None:
        """Record a read's plain tokens, then its replies."""

    def exchange(token: bytes, reply: bytes | None) -> None:
        """`records` for a read of one plain token and its reply (None: no reply)."""

    def sent(token: bytes) -> None:
        """Record one token sent."""

    def event(event: str) -> None:
        """Record a connection event (connect, register, disconnect, ...), timed now."""


@implementer(IConnectionLog)
class ConnectionLog:
    """One connection's records, with its peer and client ID formatted once.

    The protocol calls `new_read` once per read (its time stamp, shared by every
    record of that read), then `received` for each token of the read, or
    `records` for a read of plain tokens and its replies, so a read's ``in``
    records come first and its ``out`` records after them, as on the wire. A run
    of plain tokens becomes its records in one `bytes.join`.
    """

    __slots__ = ("_log", "_lines", "peer", "client_id", "_who", "_stamp")

    def __init__(self, log: MessageLog, peer: str) -> None:
        self._log = log
        self._lines = log._buffer
        self.peer = peer
        self.identify(None)
        self.new_read(log.now())

    def identify(self, client_id: int | None) -> None:
        """Stamp the following records with `client_id` (None before registration)."""
        self.client_id = client_id
        self._who = b'","peer":%s,"id":%s,"msg":' % (
            json.dumps(self.peer).encode("ascii"),
            b"null" if client_id is None else b"%d" % client_id,
        )

    def new_read(self, now: float) -> None:
        """Start the records of one read, received at `now`."""
        self._stamp = self._log.read_stamp(now)

    def received(self, token: bytes) -> None:
        """Record one token the server received (any bytes: escaped if need be)."""
        self._lines.append(self._stamp + b"in" + self._who + _json_token(token) + b"}\n")

    def records(self, received: Sequence[bytes], sent: Sequence[bytes]) -> None:
        """Record a read's tokens (each plain: printable ASCII but ``"`` and ``\\``), then its replies."""
        stamp, who = self._stamp, self._who
        self._lines.append(
            _records(stamp + b"in" + who, received) + _records(stamp + b"out" + who, sent)
        )

    def exchange(self, token: bytes, reply: bytes | None) -> None:
        """`records` for a read of one plain token and its reply (None: no reply)."""
        stamp, who = self._stamp, self._who
        if reply is None:
            self._lines.append(b'%sin%s"%s"}\n' % (stamp, who, token))
        else:
            self._lines.append(
                b'%sin%s"%s"}\n%sout%s"%s"}\n' % (stamp, who, token, stamp, who, reply)
            )

    def sent(self, token: bytes) -> None:
        """Record one token sent."""
        self._lines.append(_records(self._stamp + b"out" + self._who, [token]))

    def event(self, event: str) -> None:
        """Record a connection event (connect, register, disconnect, ...), timed now."""
        self._log.add(
            b"%sevent%s%s}\n"
            % (
                self._log.stamp(self._log.now()),
                self._who.replace(b',"msg":', b',"event":'),
                json.dumps(event).encode("ascii"),
            )
        )


def _records(head: bytes, tokens: Sequence[bytes]) -> bytes:
    """One record per plain token: ``head + '"' + token + '"}\\n'``, in one join."""
    if not tokens:
        return b""
    return head + b'"' + (b'"}\n' + head + b'"').join(tokens) + b'"}\n'


@implementer(IConnectionLog)
class SilentConnectionLog:
    """What `MessageLog.connection` gives when the log is off: every record is dropped unformatted."""

    __slots__ = ("peer", "client_id")

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.client_id: int | None = None

    def identify(self, client_id: int | None) -> None:
        """Remember the client ID (nothing is written)."""
        self.client_id = client_id

    def new_read(self, now: float) -> None:
        """Nothing to stamp."""

    def received(self, token: bytes) -> None:
        """Nothing is written."""

    def records(self, received: Sequence[bytes], sent: Sequence[bytes]) -> None:
        """Nothing is written."""

    def exchange(self, token: bytes, reply: bytes | None) -> None:
        """Nothing is written."""

    def sent(self, token: bytes) -> None:
        """Nothing is written."""

    def event(self, event: str) -> None:
        """Nothing is written."""


DEFAULT_MAX_BYTES = 10 * 1024 * 1024
"""Size at which the message log is rotated (``--message-log-max-bytes``)."""
DEFAULT_MAX_FILES = 5
"""Rotated message log files kept (``--message-log-files``)."""
WRITE_PIECE = 256 * 1024
"""Bytes joined per write: joining holds the GIL, so the reactor thread waits at most that long."""


def _count_records(chunks: list[bytes]) -> int:
    """Records in `chunks`: one line each (JSON escapes newlines inside tokens)."""
    return sum(chunk.count(b"\n") for chunk in chunks)


def _pieces(chunks: list[bytes], size: int) -> Iterator[bytes]:
    """`chunks` joined into pieces of about `size` bytes, in order."""
    piece: list[bytes] = []
    length = 0
    for chunk in chunks:
        piece.append(chunk)
        length += len(chunk)
        if length >= size:
            yield b"".join(piece)
            piece, length = [], 0
    if piece:
        yield b"".join(piece)


@dataclass
class _Outcome:
    """What the writer did with one batch, reported back to the reactor thread."""

    written: int = 0
    """Records now in the file."""
    dropped: int = 0
    """Records lost: the write failed (the file keeps none of the failed piece)."""
    error: Exception | None = None
    moved: bool = False
    """The path no longer named the open file (moved or deleted): a new one was opened."""
    rotate_error: OSError | None = None
    """Why the file could not be rotated at its cap (it keeps growing meanwhile)."""


class MessageLog(Service):
    """Writes message records to a size-rotated file, in buffered batches."""

    log = Logger()
    name = "numd-message-log"

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_files: int = DEFAULT_MAX_FILES,
        flush_interval: float = 0.2,
        flush_records: int = 1000,
        enabled: bool = True,
        max_behind: int = 64 * 1024 * 1024,
        run: Runner | None = None,
    ) -> None:
        self.path = os.path.abspath(path)
        self._clock = clock
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.flush_interval = flush_interval
        self.flush_records = flush_records
        self.enabled = enabled
        """False: no file is opened and no record is formatted (``--no-message-log``)."""
        self.max_behind = max_behind
        """Bytes the writer may have in hand, not yet written; past it, records are dropped."""
        self._behind = 0
        self._writer = Writer(clock, "numd-message-log")
        self._run: Runner = run if run is not None else self._writer.run
        self._buffer: list[bytes] = []
        """Formatted records: one per entry, or the records of one read in one entry."""
        self._stamp_ms: int | None = None
        self._stamp = b""
        self._timer: IDelayedCall | None = None
        self._file: AppendLogFile | None = None
        """Used on the writer thread only (and before it starts and after it stops)."""
        self._rotate_failing = False
        self.written = 0
        """Records written to the file so far."""
        self.dropped = 0
        """Records lost because the file could not be written."""
        self.writable = True
        """False while the last write attempt failed."""

    # -- lifecycle -------------------------------------------------------------

    def startService(self) -> None:
        """Open (or create) the log file, here, so a bad path is reported at once; start the writer."""
        super().startService()
        if self.enabled:
            self._open()
            self._writer.start()

    def stopService(self) -> Deferred[None]:
        """Hand over everything buffered; fire once it is written and the file closed."""
        super().stopService()
        self.flush()
        done = self._run(self._close)  # after every write handed over before it
        done.addBoth(lambda _: self._writer.stop())
        return done

    def _open(self) -> bool:
        try:
            self._file = self._new_file()
        except OSError as e:
            self._file = None
            self._fail(e)
            return False
        return True

    def _new_file(self) -> AppendLogFile:
        return AppendLogFile(self.path, self.max_bytes, self.max_files)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def reopen(self) -> Deferred[None]:
        """Open the log's path anew, once every record buffered so far is written.

        For outside rotation (``logrotate`` moves the file, then sends SIGHUP):
        the records buffered before the call go to the old file, the later ones
        to the new file at `path`, and the old file is closed. It runs on the
        writer thread in order with the writes, so no record is lost or torn.
        Fires once done. If the path cannot be opened, the error is logged and
        the old file stays open: nothing is dropped until a batch finds the path
        still missing past `numd.logfile.MISSING_GRACE` and cannot create it.
        """
        if not self.enabled or not self.running:
            return succeed(None)
        self.flush()
        return self._run(self._reopen_file).addCallback(self._reopened)

    def _reopen_file(self) -> OSError | None:
        """On the writer: open `path` anew, closing the old file; the error if it cannot."""
        try:
            if self._file is None:
                self._file = self._new_file()
            else:
                self._file.reopen()
        except OSError as e:
            return e
        return None

    def _reopened(self, error: OSError | None) -> None:
        if error is None:
            self.log.info("message log {path} reopened", path=self.path)
        else:  # nothing is lost yet: the old file stays open (see `_write` for what follows)
            self.log.error(
                "message log {path} cannot be reopened ({error}); writing on to the old file",
                path=self.path,
                error=error,
            )

    # -- records -----------------------------------------------------------------

    def connection(self, peer: str) -> IConnectionLog:
        """A writer of records for one connection from `peer` (a silent one when the log is off)."""
        if not self.enabled:
            return SilentConnectionLog(peer)
        return ConnectionLog(self, peer)

    def now(self) -> float:
        """The time stamped on records."""
        return self._clock.seconds()

    def read_stamp(self, now: float) -> bytes:
        """`checkpoint`, then `stamp` (once per read: one call)."""
        self.checkpoint()
        return self.stamp(now)

    def stamp(self, now: float) -> bytes:
        """A record's start, ``{"t":<now, to the millisecond>,"dir":"``: formatted once per millisecond."""
        ms = round(now * 1000)
        if ms != self._stamp_ms:
            self._stamp_ms = ms
            self._stamp = b'{"t":%d.%03d,"dir":"' % divmod(ms, 1000)
        return self._stamp

    def add(self, line: bytes) -> None:
        """Buffer one formatted record; flush when the buffer is large or on the timer."""
        self._buffer.append(line)
        self.checkpoint()

    def checkpoint(self) -> None:
        """Flush if the buffer holds `flush_records` entries; else make sure the timer runs.

        Connections append their records straight to the buffer (a read's records
        in one entry) and call this once per read.
        """
        if len(self._buffer) >= self.flush_records:
            self.flush()
        elif self._timer is None and self.running:
            self._timer = self._clock.callLater(self.flush_interval, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Hand every buffered record to the writer now.

        Joining the records and counting them is the writer's work too: a large
        batch (arrays' replies are logged whole, up to the reply cap each) costs
        the reactor thread only a list copy.
        """
        cancel(self._timer)
        self._timer = None
        if not self._buffer:
            return
        chunks = self._buffer.copy()
        self._buffer.clear()  # in place: connections hold this list
        size = sum(map(len, chunks))
        if self._behind + size > self.max_behind:
            self.dropped += _count_records(chunks)
            self._fail(OSError(f"the disk is more than {self.max_behind} bytes behind"))
            return
        self._behind += size
        now = self._clock.seconds()
        self._run(lambda: self._write(chunks, now)).addCallback(self._wrote, size)

    def when_written(self) -> Deferred[None]:
        """Hand the buffer over now; fire once every record buffered so far is written (or dropped).

        A connection that logs a lot waits for this before it makes more records
        (`numd.counter.budget`, the counter connection's memory budget).
        """
        self.flush()
        if not self.enabled:
            return succeed(None)
        return self._run(lambda: None)  # the writer runs work in order

    def _write(self, chunks: list[bytes], now: float) -> _Outcome:
        """On the writer: write `chunks`, (re)opening the file if need be.

        Once per batch, before writing, the path is checked to still name the
        open file (`now` is the time of the flush); moved or deleted, a new file
        is opened (see `AppendLogFile.reopen_if_moved`). Each piece is
        written whole or not at all, so a failure drops the records of that
        piece and of the rest of the batch, and the file keeps whole records.
        """
        outcome = _Outcome()
        try:
            if self._file is None:
                self._file = self._new_file()
            else:
                outcome.moved = self._file.reopen_if_moved(now)
            for piece in _pieces(chunks, WRITE_PIECE):
                self._file.write(piece)
                outcome.written += piece.count(b"\n")
        except (OSError, ValueError) as e:
            outcome.error = e
            outcome.dropped = _count_records(chunks) - outcome.written
        if self._file is not None:
            outcome.rotate_error = self._file.rotate_error
        return outcome

    def _wrote(self, outcome: _Outcome, size: int) -> None:
        """Back on the reactor thread: count what was written or dropped, report changes."""
        self._behind -= size
        self.written += outcome.written
        if outcome.moved:
            self.log.info(
                "message log {path} was moved or deleted: writing to a new file there",
                path=self.path,
            )
        if outcome.rotate_error is not None and not self._rotate_failing:
            self.log.warn(
                "message log {path} cannot be rotated ({error}): it grows past its cap",
                path=self.path,
                error=outcome.rotate_error,
            )
        self._rotate_failing = outcome.rotate_error is not None
        if outcome.error is not None:
            self.dropped += outcome.dropped
            self._fail(outcome.error)
            return
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
