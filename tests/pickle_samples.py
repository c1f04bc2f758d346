"""Pickles for the tests of the legacy array listener and of its pickle decoding: the
protocols an old client may use, a hand-made pickle that calls a global, and streams of
valid requests with hostile changes."""

from __future__ import annotations

import pickle

from hypothesis import strategies as st

from numd.counter.tokens import INT64_MAX, INT64_MIN

PROTOCOLS = [2, 3, 4, 5]
"""The pickle protocols an old client may write, and numd accepts."""
CANARY = "this"
"""A standard module with an import side effect (it prints), never imported by numd or its tests."""


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


int64s = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)


@st.composite
def mutated_pickles(draw: st.DrawFn) -> bytes:
    """Valid request streams with a few bytes replaced, inserted (hostile opcodes among them)
    or deleted."""
    lists = draw(st.lists(st.lists(int64s, max_size=12), min_size=1, max_size=3))
    protocol_version = draw(st.sampled_from(PROTOCOLS))
    data = bytearray(b"".join(pickle.dumps(v, protocol=protocol_version) for v in lists))
    hostile = st.sampled_from(
        [
            b"r\xff\xff\xff\x7f",
            b"q\xff",
            b"p4194304\n",
            b"\x8b\x88\x13\x00\x00",
            b"\x8a\x09",
            b"L" + b"9" * 30,
            b"h\x05",
            b"\x95\xff\xff\xff\xff\xff\xff\xff\x7f",
            b"c__builtin__\neval\n",
            b"(",
            b"e",
            b".",
        ]
    )
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        if kind == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(hostile | st.binary(min_size=1, max_size=6))
        else:
            del data[at : at + draw(st.integers(1, 4))]
    return bytes(data)
