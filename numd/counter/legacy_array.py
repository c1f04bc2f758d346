"""The older sorted-list server's array listener, for its unchanged clients.

Such a client connects, then repeatedly sends a Python pickle of a list of 10-20
integers, with no framing, and reads one pickle back holding the whole sorted
list. Pickles from the network are dangerous: unpickling can import any module
and call any function. So:

1. Framing: `find_pickle_end` walks the opcodes (with the opcode table of
   `pickletools`) from where the last read stopped until STOP, so a request split
   across reads waits for its end, and two requests in one read are both served.
   The first opcode must be PROTO 2-5, every opcode must be known, and a request
   larger than the byte cap is refused as soon as that is known (declared
   lengths are checked before their bytes arrive).
2. Every opcode that could name a global, build an object or call something
   (GLOBAL, STACK_GLOBAL, INST, OBJ, NEWOBJ, NEWOBJ_EX, REDUCE, BUILD, EXT1/2/4,
   PERSID, BINPERSID) is refused while framing, before any unpickling.
3. Memory stays proportional to the bytes received, whatever the opcodes say.
   The C unpickler grows its memo to twice the index a PUT, BINPUT or
   LONG_BINPUT names (``r\xff\xff\xff\x7f``, five bytes, asks for 32 GiB), so
   a memo index must be below the offset of its opcode, which every real pickle's
   is (its indices count the objects before it). Integers wider than 64 bits are
   refused while framing too (LONG1/LONG4 of more than 8 bytes, text INT/LONG of
   more than 20 digits), before their bytes arrive: Python cannot even format an
   integer of more than 4,300 digits, and nothing here formats one.
4. The request is then decoded by `RefusingUnpickler`, whose `find_class`
   refuses every global (a second lock on the same door), and must be a plain
   list of plain 64-bit integers.

The values are merged into the shared sorted list and the reply, the whole list
as a pickle of protocol 4, goes out in one write, once the merge is stored when
the daemon has a store (replies keep request order). Anything else, a failed
store included, closes the connection with a log line.

Every small request costs a reply as large as the whole list, so a client that
pipelines requests and never reads would make numd build replies without end.
Each connection therefore has a memory budget (`DEFAULT_CONNECTION_BUDGET`),
kept inside a read as well as between reads: the protocol is the transport's
streaming producer, stops handling requests the moment the transport says its
buffer is full or the replies waiting for the store would pass the budget,
keeps the rest of the read, stops reading, and carries on when the transport
drains or the store answers. A client that leaves its replies unread for the
write-stall timeout is cut off (see `LegacyArrayProtocol`).

The old client reads its reply with one ``recv(1024)``: a reply of protocol 4
holds at most about 330 values of 1000-65535 (3 bytes each) in 1024 bytes, so
once the shared list passes a few hundred values that client fails to unpickle
its reply. That is the client's limit, not the server's: the reply is complete.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from collections import deque
from dataclasses import dataclass
from typing import Any, NoReturn

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from numd.counter.protocol import DEFAULT_CONNECTION_BUDGET, DEFAULT_WRITE_STALL_TIMEOUT
from numd.messagelog import describe_peer
from numd.service import INT64_MAX, INT64_MIN, NumberService
from numd.stats import Stats
from numd.timers import cancel

DEFAULT_MAX_CLIENTS = 1000
"""Old array clients connected at once; the next connection is closed at once."""
DEFAULT_IDLE_TIMEOUT: float | None = None
"""Seconds of silence after which an old array client is disconnected: never by default.

The older server never timed out, and its client loops forever on a closed socket."""
DEFAULT_MAX_BYTES = 16 * 1024
"""Largest request (one pickle) accepted, in bytes."""
TRANSPORT_BUFFER = FileDescriptor.bufferSize
"""Unsent bytes past which a Twisted transport pauses its producer (64 KiB): counted in the budget."""
REPLY_PROTOCOL = 4

_OPCODES: dict[int, pickletools.OpcodeInfo] = {ord(op.code): op for op in pickletools.opcodes}
_PROTO = ord(pickle.PROTO)
_STOP = ord(pickle.STOP)
_PUT = ord(pickle.PUT)
_BINPUT = ord(pickle.BINPUT)
_LONG_BINPUT = ord(pickle.LONG_BINPUT)
_INT = ord(pickle.INT)
_LONG = ord(pickle.LONG)
_LONG1 = ord(pickle.LONG1)
_LONG4 = ord(pickle.LONG4)
REFUSED_OPCODES = frozenset(
    {
        "GLOBAL",
        "STACK_GLOBAL",
        "INST",
        "OBJ",
        "NEWOBJ",
        "NEWOBJ_EX",
        "REDUCE",
        "BUILD",
        "EXT1",
        "EXT2",
        "EXT4",
        "PERSID",
        "BINPERSID",
    }
)
"""Opcodes that load globals, build objects or call things: refused while framing."""
_REFUSED_CODES = frozenset(ord(op.code) for op in pickletools.opcodes if op.name in REFUSED_OPCODES)
MAX_BINARY_INT_BYTES = 8
"""Longest LONG1/LONG4 integer accepted, in bytes: every 64-bit signed integer fits in 8."""
MAX_TEXT_INT_DIGITS = 20
"""Most digits of a text INT/LONG accepted (a 64-bit integer has at most 19)."""
_MEMO_PUT_CODES = frozenset({_PUT, _BINPUT, _LONG_BINPUT})
_TEXT_ARGUMENT_MAX = {
    _PUT: 10,  # the digits of an index below the byte cap
    _INT: 1 + MAX_TEXT_INT_DIGITS,  # a sign and the digits
    _LONG: 2 + MAX_TEXT_INT_DIGITS,  # a sign, the digits and an L
}
"""Longest argument (before its newline) of the text opcodes whose values are bounded."""
_BINARY_ARGUMENT_WIDTH = {_BINPUT: 1, _LONG_BINPUT: 4, _LONG1: 1, _LONG4: 4}
"""Width of the index or length field of the binary opcodes whose values are bounded."""
_BOUNDED_CODES = frozenset(_TEXT_ARGUMENT_MAX) | frozenset(_BINARY_ARGUMENT_WIDTH)


class BadRequest(Exception):
    """A request that is not a safe pickle of a list of ints; `reason` names why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def find_pickle_end(
    data: bytes | bytearray, start: int = 0, limit: int = DEFAULT_MAX_BYTES
) -> tuple[int | None, int]:
    """Walk the opcodes of the pickle at the start of `data`, from offset `start`.

    Returns ``(end, resume)``: `end` is the offset just after STOP, or None when
    more bytes are needed, and `resume` is where to continue the walk once they
    arrive (the start of the first incomplete opcode), so the whole request is
    walked once however it is split. Raises `BadRequest` for anything that is
    not a pickle of protocol 2-5, for refused opcodes, for a pickle that is, or
    says it will be, longer than `limit` bytes, for a memo index not below its
    opcode's offset (``memo-index``) and for an integer wider than 64 bits
    (``not-int``); each of those as soon as its first bytes show it.
    """
    pos = start
    size = len(data)
    while pos < size:
        code = data[pos]
        if pos == 0 and code != _PROTO:
            raise BadRequest("not-pickle", "does not start with PROTO (protocol 2-5)")
        op = _OPCODES.get(code)
        if op is None:
            raise BadRequest("not-pickle", f"unknown opcode {code:#04x} at {pos}")
        if code in _REFUSED_CODES:
            raise BadRequest("refused-opcode", f"opcode {op.name} at {pos} is refused")
        if code in _BOUNDED_CODES:
            end = _bounded_argument_end(data, pos, code)
        else:
            end = _argument_end(data, pos + 1, op, limit)
        if end is None:
            return None, pos
        if end > limit:
            _too_large(limit)
        if code == _PROTO:
            version = data[pos + 1]
            if pos != 0 or not 2 <= version <= 5:
                raise BadRequest("not-pickle", f"protocol {version} at {pos}; 2-5 accepted")
        pos = end
        if code == _STOP:
            return pos, pos
    if pos > limit:
        _too_large(limit)
    return None, pos


def _bounded_argument_end(data: bytes | bytearray, pos: int, code: int) -> int | None:
    """`_argument_end` for the memo puts and the integers, whose values are bounded too.

    A memo put's index must be below `pos`, the offset of its opcode: a real
    pickle's memo indices count the objects before it, each at least one byte, and
    the unpickler's memo grows to twice the largest index, so its memory stays
    proportional to the request (at most 16 bytes a byte). An integer must fit in
    64 bits: LONG1 and LONG4 carry at most 8 bytes, text INT and LONG at most 20
    digits. Raises `BadRequest` as soon as a value is known to be out of bounds,
    before the rest of a long argument arrives.
    """
    size = len(data)
    if code in _TEXT_ARGUMENT_MAX:
        longest = _TEXT_ARGUMENT_MAX[code]
        newline = data.find(b"\n", pos + 1, pos + 2 + longest)
        if newline < 0:
            if size >= pos + 2 + longest:
                _out_of_bounds(code, pos, "too long")
            return None
        argument = bytes(data[pos + 1 : newline])
        if code == _PUT:
            if not argument.isdigit() or int(argument) >= pos:
                _out_of_bounds(code, pos, "not below its offset")
        else:
            if argument[:1] in (b"-", b"+"):
                argument = argument[1:]
            if code == _LONG and argument.endswith(b"L"):
                argument = argument[:-1]
            if len(argument) > MAX_TEXT_INT_DIGITS:
                _out_of_bounds(code, pos, "too long")
        return newline + 1
    width = _BINARY_ARGUMENT_WIDTH[code]
    if pos + 1 + width > size:
        return None
    value = int.from_bytes(data[pos + 1 : pos + 1 + width], "little", signed=code == _LONG4)
    if code in (_LONG1, _LONG4):
        if value < 0:
            raise BadRequest("not-pickle", f"negative length in {_OPCODES[code].name} at {pos}")
        if value > MAX_BINARY_INT_BYTES:
            _out_of_bounds(code, pos, f"{value} bytes long")
        end = pos + 1 + width + value
        return end if end <= size else None
    if value >= pos:
        _out_of_bounds(code, pos, "not below its offset")
    return pos + 1 + width


def _out_of_bounds(code: int, pos: int, why: str) -> NoReturn:
    name = _OPCODES[code].name
    if code in _MEMO_PUT_CODES:
        raise BadRequest("memo-index", f"the memo index of {name} at {pos} is {why}")
    raise BadRequest("not-int", f"the integer of {name} at {pos} is {why}: 64 bits at most")


def _too_large(limit: int) -> NoReturn:
    raise BadRequest("too-large", f"request longer than {limit} bytes")


def _argument_end(
    data: bytes | bytearray, pos: int, op: pickletools.OpcodeInfo, limit: int
) -> int | None:
    """Offset after `op`'s argument starting at `pos`, or None if it is incomplete."""
    arg = op.arg
    if arg is None:
        return pos
    size = len(data)
    n = arg.n
    if n >= 0:
        end = pos + n
    elif n == pickletools.UP_TO_NEWLINE:
        lines = 2 if arg.name == "stringnl_noescape_pair" else 1
        end = pos
        for _ in range(lines):
            newline = data.find(b"\n", end, limit + 1)
            if newline < 0:
                if size > limit:
                    _too_large(limit)
                return None
            end = newline + 1
    else:
        width = {
            pickletools.TAKEN_FROM_ARGUMENT1: 1,
            pickletools.TAKEN_FROM_ARGUMENT4: 4,
            pickletools.TAKEN_FROM_ARGUMENT4U: 4,
            pickletools.TAKEN_FROM_ARGUMENT8U: 8,
        }[n]
        if pos + width > size:
            return None
        length = int.from_bytes(
            data[pos : pos + width],
            "little",
            signed=n == pickletools.TAKEN_FROM_ARGUMENT4,
        )
        if length < 0:
            raise BadRequest("not-pickle", f"negative length in {op.name}")
        end = pos + width + length
    if end > limit:
        _too_large(limit)
    return end if end <= size else None


class RefusingUnpickler(pickle.Unpickler):
    """An unpickler that never loads a class or function: every global is refused."""

    def find_class(self, module: str, name: str) -> NoReturn:
        raise pickle.UnpicklingError(f"global {module}.{name} refused")

    def persistent_load(self, pid: Any) -> NoReturn:
        raise pickle.UnpicklingError("persistent IDs refused")


def decode_request(request: bytes) -> list[int]:
    """The list of ints in `request`, one whole pickle; `BadRequest` for anything else.

    Safe for any bytes: the opcodes are walked first (`find_pickle_end`, with the
    request's own length as the cap), so the unpickler never sees a refused
    opcode, a memo index beyond the request or an integer wider than 64 bits.
    """
    end, _ = find_pickle_end(request, 0, len(request))
    if end is None:
        raise BadRequest("bad-pickle", "the pickle ends before its STOP")
    if end != len(request):
        raise BadRequest("bad-pickle", f"{len(request) - end} bytes after STOP")
    return unpickle_list(request)


def unpickle_list(request: bytes) -> list[int]:
    """The list of ints in one request already framed by `find_pickle_end`; else `BadRequest`.

    Only for bytes that passed `find_pickle_end`: on other bytes the unpickler may
    allocate memory in proportion to a memo index rather than to the bytes.
    """
    try:
        value = RefusingUnpickler(io.BytesIO(request)).load()
    except Exception as e:  # noqa: BLE001 - any failure of untrusted bytes is a bad request
        raise BadRequest("bad-pickle", _describe(e)) from None
    if type(value) is not list:
        raise BadRequest("not-list", f"a {type(value).__name__}, not a list")
    for item in value:
        if type(item) is not int:
            raise BadRequest("not-int", f"an item is a {type(item).__name__}")
        if not INT64_MIN <= item <= INT64_MAX:
            # Never formatted: an int of more than 4,300 digits cannot be.
            raise BadRequest(
                "not-int", f"an integer of {item.bit_length()} bits is outside the 64-bit range"
            )
    return value


def _describe(error: Exception) -> str:
    """``Type: message`` of an unpickling error, short, whatever the exception holds."""
    try:
        message = str(error)
    except Exception:  # noqa: BLE001 - a message that cannot be formatted is left out
        message = "?"
    if len(message) > 200:
        message = message[:200] + "..."
    return f"{type(error).__name__}: {message}"


def reply_size_bound(count: int) -> int:
    """Most bytes the protocol-4 pickle of a list of `count` 64-bit ints can take.

    Each int takes at most 10 bytes (LONG1 of 8 bytes); the framing (PROTO, FRAME
    every 64 KiB, the list, a MARK and APPENDS every 1,000 items, STOP) stays
    under 16 bytes plus 1 a value. Used to decide, before building a reply,
    whether it still fits the connection's budget.
    """
    return 11 * count + 16


@dataclass
class _HeldReply:
    """A reply waiting for its merge to be stored (or behind one that is)."""

    reply: bytes
    ready: bool


class LegacyArrayProtocol(Protocol, TimeoutMixin):
    """One old array client: pickled lists in, the pickled sorted list out.

    Its memory is bounded by the factory's `budget`, inside a read as well as
    between reads. A request is handled only while the transport has not asked it
    to pause (its buffer is past 64 KiB) and, when replies are already waiting for
    the store, only if those replies, the input not yet handled, the transport's
    64 KiB and the largest reply this request can have (`reply_size_bound`) fit
    the budget. Otherwise the complete requests stay in the input buffer, reading
    stops (so the buffer holds at most one read and one partial request), and
    handling carries on when the transport drains or the store answers. A reply
    larger than the whole budget is built only when no other is waiting, so it is
    then the only one. A client that leaves its replies unread for the factory's
    write-stall timeout is aborted; one silent for the idle timeout (off by
    default) is closed.
    """

    log = Logger()
    factory: LegacyArrayFactory

    peer = "?"
    _closing = False
    _handling = False
    _blocked = False
    """A complete request waits in the buffer for the budget or the transport."""
    _transport_paused = False
    """The transport's buffer is full: it called `pauseProducing` and has not resumed us."""
    _reading_paused = False
    _frame_end: int | None = None
    """The end of the complete request at the head of the buffer, once framed."""
    _stall_timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        """Start with an empty buffer; count the connection; register for backpressure."""
        self.peer = describe_peer(self.transport.getPeer())
        self._buffer = bytearray()
        self._resume = 0
        self._held: deque[_HeldReply] = deque()
        self._held_bytes = 0
        self.factory.stats.connections["opened"] += 1
        self.factory.active += 1
        self.callLater = self.factory.clock.callLater  # type: ignore[method-assign]
        self.setTimeout(self.factory.idle_timeout)
        # The transport pauses us (from inside write) once its buffer passes its size.
        self.transport.registerProducer(self, True)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Drop what is left, stop the timers, count the closed connection."""
        self._closing = True
        self.setTimeout(None)
        cancel(self._stall_timer)
        self._stall_timer = None
        self._drop_pending()
        self.factory.active -= 1
        self.factory.stats.connections["closed"] += 1

    def timeoutConnection(self) -> None:
        """Nothing came for the idle timeout: close the connection."""
        self.factory.stats.connections["idle-timeout"] += 1
        self.log.info("legacy array listener: closing idle {peer}", peer=self.peer)
        self._closing = True
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        """Buffer `data`; serve the complete requests that fit the budget; close on anything bad."""
        if self._closing:
            return
        self.resetTimeout()
        self._buffer += data
        self._serve()

    @property
    def pending_bytes(self) -> int:
        """Bytes this connection holds itself: replies not yet written and input not yet handled."""
        return self._held_bytes + len(self._buffer)

    # -- handling, within the budget ------------------------------------------------

    def _serve(self) -> None:
        """Handle what the budget allows, then pause or resume reading to match."""
        if self._handling:
            return  # called back from inside the loop: the loop carries on
        self._handling = True
        try:
            self._blocked = self._handle_buffered()
        finally:
            self._handling = False
        self._update_reading()

    def _handle_buffered(self) -> bool:
        """Handle complete requests while they fit; True if one is left waiting for room."""
        factory = self.factory
        service = factory.service
        while self._buffer and not self._closing:
            end = self._frame_end
            if end is None:
                try:
                    end, self._resume = find_pickle_end(
                        self._buffer, self._resume, factory.max_bytes
                    )
                except BadRequest as e:
                    self._refuse(e)
                    return False
                if end is None:
                    return False
                self._frame_end = end
            if self._transport_paused or (self._held and not self._fits(end)):
                return True
            request = bytes(self._buffer[:end])
            del self._buffer[:end]
            self._resume = 0
            self._frame_end = None
            try:
                values = unpickle_list(request)
            except BadRequest as e:
                self._refuse(e)
                return False
            factory.stats.received["array"] += 1
            service.merge(values)
            reply = pickle.dumps(service.all_values(), protocol=REPLY_PROTOCOL)
            self._answer_when_stored(reply)
        return False

    def _fits(self, request_length: int) -> bool:
        """Whether the reply to a request of `request_length` bytes fits beside what is held.

        The request adds at most one value per 2 bytes (BININT1 is the shortest).
        """
        largest = reply_size_bound(self.factory.service.list_size + request_length // 2)
        held = self._held_bytes + len(self._buffer) + TRANSPORT_BUFFER
        return held + largest <= self.factory.budget

    def _update_reading(self) -> None:
        """Read from the client only while nothing waits for room; the idle clock stops meanwhile."""
        if self._closing:
            return
        pause = self._transport_paused or self._blocked
        if pause == self._reading_paused:
            return
        self._reading_paused = pause
        if pause:
            self.transport.pauseProducing()
            self.setTimeout(None)
        else:
            self.transport.resumeProducing()
            self.setTimeout(self.factory.idle_timeout)

    # -- replies -----------------------------------------------------------------------

    def _answer_when_stored(self, reply: bytes) -> None:
        """Send `reply` once its merge is stored, after the replies before it."""
        durable = self.factory.service.when_durable()
        held = _HeldReply(reply, ready=durable is None)
        self._held.append(held)
        self._held_bytes += len(reply)
        if durable is not None:

            def stored(_: object) -> None:
                held.ready = True
                self._release()
                if not self._closing:
                    self._serve()

            def failed(failure: Failure) -> None:
                self.log.failure("storing a merge for {peer} failed", failure, peer=self.peer)
                self._refuse(BadRequest("store-failed", "the merge could not be stored"))

            durable.addCallbacks(stored, failed)
        self._release()

    def _release(self) -> None:
        """Write the ready replies at the head of the queue, each in one write.

        They are built already, so they go to the transport even after it has
        asked us to pause: that moves them, it adds nothing.
        """
        while self._held and self._held[0].ready and not self._closing:
            reply = self._held.popleft().reply
            self._held_bytes -= len(reply)
            self.factory.stats.sent["array"] += 1
            self.transport.write(reply)

    def _drop_pending(self) -> None:
        self._buffer = bytearray()
        self._frame_end = None
        self._held.clear()
        self._held_bytes = 0

    def _refuse(self, error: BadRequest) -> None:
        """Count and log `error`, then close once the replies already written are sent.

        A client that does not read those within the write-stall timeout is aborted.
        """
        if self._closing:
            return
        self._closing = True
        self._drop_pending()
        self.setTimeout(None)
        self.factory.stats.errors[error.reason] += 1
        self.log.warn(
            "legacy array listener: closing {peer}: {reason} ({detail})",
            peer=self.peer,
            reason=error.reason,
            detail=error.detail,
        )
        # A transport with a producer registered never finishes closing.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._start_stall_timer()

    # -- backpressure (IPushProducer, driven by the transport) -------------------------

    def pauseProducing(self) -> None:
        """The transport's buffer is full: handle nothing more, stop reading, start the stall clock."""
        self._transport_paused = True
        self._start_stall_timer()
        self._update_reading()

    def resumeProducing(self) -> None:
        """The transport drained: carry on with the buffered requests, then read again."""
        self._transport_paused = False
        cancel(self._stall_timer)
        self._stall_timer = None
        if not self._closing:
            self._serve()

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost does the cleanup."""

    def _start_stall_timer(self) -> None:
        if self._stall_timer is None:
            self._stall_timer = self.factory.clock.callLater(
                self.factory.write_stall_timeout, self._write_stalled
            )

    def _write_stalled(self) -> None:
        """The client left its replies unread for the write-stall timeout: abort it."""
        self._stall_timer = None
        self.factory.stats.connections["write-stalled"] += 1
        self.log.info(
            "legacy array listener: cutting off {peer}: it has not read its replies for {seconds} s",
            peer=self.peer,
            seconds=self.factory.write_stall_timeout,
        )
        self._closing = True
        self._drop_pending()
        self.transport.abortConnection()


class LegacyArrayFactory(Factory):
    """Builds `LegacyArrayProtocol`s sharing one service; counts into its own `Stats`."""

    protocol = LegacyArrayProtocol

    def __init__(
        self,
        service: NumberService,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        write_stall_timeout: float = DEFAULT_WRITE_STALL_TIMEOUT,
        budget: int = DEFAULT_CONNECTION_BUDGET,
        clock: IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.service = service
        self.max_bytes = max_bytes
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.write_stall_timeout = write_stall_timeout
        self.budget = budget
        self.clock: IReactorTime = clock  # type: ignore[assignment]
        self.active = 0
        self.stats = Stats()

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        """A protocol, or None (the connection is closed at once) past `max_clients`."""
        if self.active >= self.max_clients:
            self.stats.connections["refused"] += 1
            self.stats.errors["too-many-clients"] += 1
            return None
        return super().buildProtocol(addr)
