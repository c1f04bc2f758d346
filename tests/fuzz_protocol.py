"""An atheris harness for the counter protocol: ``python tests/fuzz_protocol.py -runs=N``.

Each input is cut into reads at fuzzer-chosen points and fed, after the
registration ``b"5 "``, to a real `CounterProtocol` on a `StringTransport`. The
protocol must never raise, every reply must be well formed, and, unless the
connection was closed for a too-long token, the replies must agree in number and
kind with `tests.reference_model`.
"""

from __future__ import annotations

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import atheris  # noqa: E402

with atheris.instrument_imports():
    from twisted.internet.task import Clock

    from numd.counter.protocol import CounterFactory
    from numd.messagelog import MessageLog
    from numd.service import NumberService
    from numd.stats import Stats

from tests.counter_client import FakeClient  # noqa: E402
from tests.reference_model import complete_tokens, expected_replies, reply_matches  # noqa: E402


def check(data: bytes) -> None:
    """Feed one fuzzer input to a fresh connection and check the replies."""
    fdp = atheris.FuzzedDataProvider(data)
    cuts = sorted(fdp.ConsumeIntListInRange(fdp.ConsumeIntInRange(0, 6), 0, 4096))
    stream = b"5 " + fdp.ConsumeBytes(fdp.remaining_bytes())
    clock = Clock()
    factory = CounterFactory(
        NumberService(clock, random.Random(0)),
        MessageLog(os.devnull, clock),
        Stats(),
        clock,
        max_token_length=512,
    )
    client = FakeClient(factory)
    replies: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)]):
        if start < end:
            replies += client.send(stream[start:end])
    values = list(factory.service.values)
    assert values == sorted(values)
    if factory.stats.errors["too-long"]:
        assert replies[-1] == b"error:too-long"
        return
    tokens = complete_tokens(stream)
    kinds = ["start", *expected_replies(tokens[1:])]
    assert replies[0] == b"0", replies
    assert len(replies) == len(kinds), (tokens, replies)
    for reply, kind in zip(replies[1:], kinds[1:]):
        assert reply_matches(reply, kind), (reply, kind)


if __name__ == "__main__":
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()
