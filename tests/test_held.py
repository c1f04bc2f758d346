"""The held-reply queue (`numd.counter.held`): replies go out in request order, each once its
change is stored; a failed store marks its replies failed and tells the owner once."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from numd.counter.held import HeldReplies, HeldReply


class Owner:
    """Records what the queue tells its owner."""

    def __init__(self) -> None:
        self.ready = 0
        self.failures: list[tuple[Failure, int]] = []
        self.queue = HeldReplies(self.on_ready, self.on_failure)

    def on_ready(self) -> None:
        """Replies became ready."""
        self.ready += 1

    def on_failure(self, failure: Failure, replies: int) -> None:
        """A change was not stored."""
        self.failures.append((failure, replies))

    def release(self) -> list[HeldReply]:
        """Every reply that may go out now, in order."""
        released = []
        while (held := self.queue.pop_ready()) is not None:
            released.append(held)
        return released


def tokens(replies: list[HeldReply]) -> list[bytes]:
    """The bytes of `replies`."""
    return [held.token for held in replies]


def test_a_reply_with_nothing_to_wait_for_goes_at_once() -> None:
    """Without a Deferred a reply is ready; the queue counts its bytes until it is taken."""
    owner = Owner()
    owner.queue.append("start", b"0")
    owner.queue.append("even", b"42")
    assert (len(owner.queue), owner.queue.bytes) == (2, 3)
    assert [(h.kind, h.token) for h in owner.release()] == [("start", b"0"), ("even", b"42")]
    assert (len(owner.queue), owner.queue.bytes) == (0, 0)
    assert owner.ready == 0


def test_replies_behind_a_held_one_wait_and_keep_their_order() -> None:
    """A reply behind one whose change is not stored yet waits for it, even if it is ready,
    and even if a later change is stored first."""
    owner = Owner()
    first: Deferred[None] = Deferred()
    second: Deferred[None] = Deferred()
    owner.queue.append("array", b"[1]", first)
    owner.queue.append("odd", b"7")
    owner.queue.append("array", b"[1,2]", second)
    assert owner.release() == []
    second.callback(None)
    assert owner.ready == 1
    assert owner.release() == []
    first.callback(None)
    assert owner.ready == 2
    assert tokens(owner.release()) == [b"[1]", b"7", b"[1,2]"]
    assert owner.queue.bytes == 0


def test_a_change_already_stored_calls_back_at_once() -> None:
    """A Deferred that has fired makes its reply ready inside `append`."""
    owner = Owner()
    owner.queue.append("array", b"[3]", succeed(None))
    assert owner.ready == 1
    assert tokens(owner.release()) == [b"[3]"]


def test_one_wait_covers_every_reply_held_since_the_last() -> None:
    """Replies held during a read wait for the one Deferred the read ends with; without one
    they are ready at once, and the owner, which releases them itself, is not called."""
    owner = Owner()
    owner.queue.hold("array", b"[1]")
    owner.queue.append("even", b"8")
    owner.queue.hold("array", b"[1,2]")
    assert owner.queue.unwaited
    durable: Deferred[None] = Deferred()
    owner.queue.wait(durable)
    assert not owner.queue.unwaited
    owner.queue.hold("array", b"[1,2,3]")
    assert owner.release() == []
    durable.callback(None)
    assert owner.ready == 1
    assert tokens(owner.release()) == [b"[1]", b"8", b"[1,2]"]
    owner.queue.wait(None)
    assert owner.ready == 1
    assert tokens(owner.release()) == [b"[1,2,3]"]


def test_a_failed_store_marks_its_replies_failed_and_tells_the_owner_once() -> None:
    """Each reply that waited for a change that was not stored becomes a ready, failed entry
    (its own bytes still counted until taken); the owner hears of it once, with the count."""
    owner = Owner()
    owner.queue.hold("array", b"[1]")
    owner.queue.hold("array", b"[1,2]")
    owner.queue.append("odd", b"3")
    owner.queue.wait(fail(OSError("disk full")))
    ((failure, replies),) = owner.failures
    assert failure.check(OSError) and replies == 2
    assert owner.ready == 0
    assert owner.queue.bytes == len(b"[1][1,2]3")
    released = owner.release()
    assert [(h.token, h.failed) for h in released] == [
        (b"[1]", True),
        (b"[1,2]", True),
        (b"3", False),
    ]
    assert owner.queue.bytes == 0


def test_clear_drops_everything_and_a_late_answer_finds_nothing() -> None:
    """After `clear` the queue is empty; the store answering later releases nothing."""
    owner = Owner()
    durable: Deferred[None] = Deferred()
    owner.queue.append("array", b"[1]", durable)
    owner.queue.hold("array", b"[2]")
    owner.queue.clear()
    assert (len(owner.queue), owner.queue.bytes, owner.queue.unwaited) == (0, 0, False)
    durable.callback(None)
    assert owner.release() == []
