"""An independent, deliberately simple model of the counter protocol's replies.

Used by the hypothesis and atheris tests to check the real protocol: it uses
regular expressions on the whole stream rather than the protocol's incremental
framing, so a framing bug shows up as a disagreement.
"""

from __future__ import annotations

import re

_TOKEN_END = re.compile(rb"\r\n|\n| ")
_INT = re.compile(rb"-?(0|[1-9][0-9]*)")
_ARRAY = re.compile(rb"\[-?(0|[1-9][0-9]*)(,-?(0|[1-9][0-9]*))*\]")
_REPLY = re.compile(
    rb"-?(0|[1-9][0-9]*)|\[(-?(0|[1-9][0-9]*)(,-?(0|[1-9][0-9]*))*(,\.\.\.\]/[0-9]+|\]))|\[\]"
    rb"|error:[a-z-]+"
)


def _int64(token: bytes) -> bool:
    return bool(_INT.fullmatch(token)) and -(2**63) <= int(token) < 2**63


def complete_tokens(stream: bytes) -> list[bytes]:
    """The non-empty tokens of `stream` that have their delimiter."""
    parts = _TOKEN_END.split(stream)
    return [t for t in parts[:-1] if t]


def expected_replies(tokens: list[bytes]) -> list[str]:
    """The kind of reply each token of a registered client gets, in order (reports get none)."""
    kinds: list[str] = []
    for token in tokens:
        if token in (b"even", b"odd"):
            kinds.append(token.decode())
        elif token.startswith(b"["):
            ok = (
                bool(_ARRAY.fullmatch(token))
                and all(_int64(v) for v in token[1:-1].split(b","))
                and token.count(b",") < 1000
            )
            kinds.append("array" if ok else "error:bad-array")
        elif _int64(token):
            continue
        else:
            kinds.append("error:bad-token")
    return kinds


def reply_matches(reply: bytes, kind: str) -> bool:
    """Whether one reply token is of the expected kind."""
    if kind == "even":
        return bool(_INT.fullmatch(reply)) and 0 <= int(reply) <= 98 and int(reply) % 2 == 0
    if kind == "odd":
        return bool(_INT.fullmatch(reply)) and 1 <= int(reply) <= 99 and int(reply) % 2 == 1
    if kind == "array":
        return reply.startswith(b"[") and bool(_REPLY.fullmatch(reply))
    return reply == kind.encode()


def well_formed(reply: bytes) -> bool:
    """Whether a reply token is one the protocol may send at all."""
    return bool(_REPLY.fullmatch(reply))
