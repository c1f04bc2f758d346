"""Counters of what the daemon's listeners did, for logs, metrics and tests.

Plain counters changed on the reactor thread; the metrics module reads them there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Stats:
    """Message and error counts, keyed by message kind or error reason."""

    received: Counter[str] = field(default_factory=Counter)
    """Messages received on the counter protocol, by kind (id, report, even, ...)."""
    sent: Counter[str] = field(default_factory=Counter)
    """Messages sent on the counter protocol, by kind (start, even, odd, array, error)."""
    errors: Counter[str] = field(default_factory=Counter)
    """Protocol errors, by reason (bad-token, bad-id, too-long, ...)."""
    connections: Counter[str] = field(default_factory=Counter)
    """Connection events (opened, closed, refused, idle-kick, ...)."""

    def count(self, kind: str, received: int = 1, sent: int = 0) -> None:
        """Count messages of `kind`: `received` in, `sent` out (a request answered at once is both).

        The one place the listeners count their messages. A zero count leaves its
        counter untouched, so no kind shows up with nothing counted.
        """
        if received:
            self.received[kind] += received
        if sent:
            self.sent[kind] += sent
