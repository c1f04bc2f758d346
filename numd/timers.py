"""Small helpers for delayed calls (`IDelayedCall`)."""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall


def cancel(call: IDelayedCall | None) -> None:
    """Cancel `call` if it is set and has not run or been cancelled yet."""
    if call is not None and call.active():
        call.cancel()
