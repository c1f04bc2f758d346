"""Framing and decoding of the pickles the older array clients send, safely.

Such a client sends a Python pickle of a list of 10-20 integers, with no framing
(`numd.counter.legacy_array`). Pickles from the network are dangerous:
unpickling can import any module and call any function. So:

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

A module of its own because it is the part that touches hostile bytes: it knows
nothing of connections, and is tested (and fuzzed) on bytes alone.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from typing import Any, NoReturn

from numd.counter.tokens import INT64_MAX, INT64_MIN

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


def find_pickle_end(data: bytes | bytearray, start: int, limit: int) -> tuple[int | None, int]:
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
