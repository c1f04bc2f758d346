"""Replies held until the changes they answer are stored, released in request order.

numd answers a change (an array merged into the shared list) only once the
store has committed it, so an acknowledged change survives a crash; and a
connection's replies keep the order of its requests, so every reply behind a
held one waits too, even one that changed nothing. The counter protocol and the
legacy pickle listener both answer that way: `HeldReplies` is the one queue
that does it for both, and counts the bytes it holds, which each connection's
memory budget includes.

A reply goes in with the Deferred of its change's durability (`append`), or
without one when it has nothing to wait for. The counter protocol asks the store
once per read, however many changes the read made: it holds the read's
replies (`hold`) and hands over the one Deferred at the end of the read (`wait`).
The owner releases the ready replies at the head (`pop_ready`), when it is told
that some became ready.

One failure policy: when a change cannot be stored, the replies that waited for
it become failed entries (ready, `HeldReply.failed`), and the owner is told at
once, to log and count it. What a failed entry becomes is the owner's
choice: the counter protocol answers ``error:store-failed`` (``error:unavailable``
when the shared state could not be reached) in its place; the
legacy listener closes the connection, which drops the queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from numd.service import StateUnavailable


@dataclass(slots=True)
class HeldReply:
    """One reply in the queue: what it answers (`kind`, for the owner's counters) and its bytes."""

    kind: str
    token: bytes
    ready: bool = True
    """Whether it may go out once the replies before it have."""
    failed: bool = False
    """Its change could not be stored: the owner sends something else, or closes."""
    unavailable: bool = False
    """It failed because the shared state could not be reached (`StateUnavailable`)."""
    rebuild: Callable[[], bytes] | None = None
    """Builds the reply anew when it goes out (the shared state shows a change only once
    it is applied); `token` then only sizes it while it waits."""


class HeldReplies:
    """A connection's replies that wait for the store, or behind one that does, in request order.

    `on_ready` is called when replies became ready because a change was stored;
    `on_failure` with the failure and the number of replies it failed, once per
    change that could not be stored. Both may be called from inside `append`
    and `wait` when the Deferred has already fired, and after the connection
    closed (the owner then ignores them).
    """

    __slots__ = ("_queue", "_unwaited", "bytes", "_on_ready", "_on_failure")

    def __init__(
        self, on_ready: Callable[[], None], on_failure: Callable[[Failure, int], None]
    ) -> None:
        self._queue: deque[HeldReply] | None = None
        """None while nothing is held: most connections never hold a reply, and an
        empty deque costs about 600 bytes per connection."""
        self._unwaited: list[HeldReply] | None = None
        self.bytes = 0
        """Bytes of the replies in the queue (each reply's own bytes, whatever it becomes)."""
        self._on_ready = on_ready
        self._on_failure = on_failure

    def __len__(self) -> int:
        """The number of replies in the queue, ready or not."""
        return len(self._queue) if self._queue is not None else 0

    def _push(self, held: HeldReply) -> None:
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(held)
        self.bytes += len(held.token)

    def append(
        self,
        kind: str,
        token: bytes,
        durable: Deferred[None] | None = None,
        rebuild: Callable[[], bytes] | None = None,
    ) -> None:
        """Queue a reply that may go out once `durable` fires (None: once its turn comes)."""
        if durable is None:
            self._push(HeldReply(kind, token, rebuild=rebuild))
            return
        held = HeldReply(kind, token, ready=False, rebuild=rebuild)
        self._push(held)
        self._wait([held], durable)

    def hold(self, kind: str, token: bytes, rebuild: Callable[[], bytes] | None = None) -> None:
        """Queue a reply to a change whose durability the next `wait` brings."""
        held = HeldReply(kind, token, ready=False, rebuild=rebuild)
        self._push(held)
        if self._unwaited is None:
            self._unwaited = [held]
        else:
            self._unwaited.append(held)

    @property
    def unwaited(self) -> bool:
        """Whether replies were held since the last `wait`."""
        return bool(self._unwaited)

    def wait(self, durable: Deferred[None] | None) -> None:
        """The replies held since the last wait may go out once `durable` fires (None: now).

        With None, nothing is called back: the caller releases them itself.
        """
        held, self._unwaited = self._unwaited or [], None
        if durable is None:
            for reply in held:
                reply.ready = True
            return
        self._wait(held, durable)

    def _wait(self, held: list[HeldReply], durable: Deferred[None]) -> None:
        def stored(_: None) -> None:
            for reply in held:
                reply.ready = True
            self._on_ready()

        def failed(failure: Failure) -> None:
            unavailable = failure.check(StateUnavailable) is not None
            for reply in held:
                reply.ready = reply.failed = True
                reply.unavailable = unavailable
            self._on_failure(failure, len(held))

        durable.addCallbacks(stored, failed)

    def pop_ready(self) -> HeldReply | None:
        """Remove and return the reply at the head if it may go out now; else None."""
        queue = self._queue
        if queue and queue[0].ready:
            held = queue.popleft()
            self.bytes -= len(held.token)
            if held.rebuild is not None and not held.failed:
                held.token = held.rebuild()
            if not queue:
                self._queue = None
            return held
        return None

    def clear(self) -> None:
        """Drop every reply (the connection is going away); late answers of the store find none."""
        self._queue = None
        self._unwaited = None
        self.bytes = 0
