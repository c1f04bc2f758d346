"""The writer thread: work runs in order off the reactor thread, at a lower priority; in place
with a reactor that takes no calls from threads."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from numd.writer import WRITER_NICENESS, Writer


def test_with_a_fake_clock_work_runs_in_place_at_once() -> None:
    """A reactor without threads (a test's Clock): work runs synchronously, in order."""
    writer = Writer(Clock(), "test-writer")
    writer.start()
    done: list[int] = []
    results = [writer.run(lambda i=i: done.append(i) or i) for i in range(3)]
    assert done == [0, 1, 2]
    assert [d.result for d in results] == [0, 1, 2]
    assert not writer.threaded
    writer.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
@pytest_twisted.ensureDeferred
async def test_work_runs_in_order_on_one_lower_priority_thread() -> None:
    """With the real reactor, work runs on one thread of its own, in the order given, and that
    thread is WRITER_NICENESS nicer than the reactor thread, so the reactor is scheduled first."""
    writer = Writer(reactor, "test-writer")
    writer.start()
    try:
        seen: list[tuple[int, int, int]] = []

        def job(i: int) -> None:
            tid = threading.get_native_id()
            seen.append((i, tid, os.getpriority(os.PRIO_PROCESS, tid)))

        for i in range(5):
            writer.run(lambda i=i: job(i))
        await writer.run(lambda: None).addTimeout(5, reactor)
    finally:
        writer.stop()
    assert [i for i, _, _ in seen] == [0, 1, 2, 3, 4]
    assert len({tid for _, tid, _ in seen}) == 1
    assert seen[0][1] != threading.get_native_id()
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert {nice for _, _, nice in seen} == {min(19, mine + WRITER_NICENESS)}
