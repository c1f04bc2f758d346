"""`cancel`: stops a delayed call that is still pending, and accepts one that ran or none."""

from __future__ import annotations

from twisted.internet.task import Clock

from numd.timers import cancel


def test_cancel_stops_a_pending_call_and_accepts_spent_ones() -> None:
    """A pending call is cancelled; one that already ran, one already cancelled, and None are fine."""
    clock = Clock()
    ran: list[str] = []
    pending = clock.callLater(1, ran.append, "pending")
    spent = clock.callLater(0, ran.append, "spent")
    clock.advance(0)
    cancel(pending)
    cancel(pending)
    cancel(spent)
    cancel(None)
    clock.advance(2)
    assert ran == ["spent"]
    assert not clock.getDelayedCalls()
