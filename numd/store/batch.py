"""The changes one commit writes, folded as they arrive, and who waits for that commit.

A batch is what group commit is made of: the store fills the pending batch on
the reactor thread, hands it whole to the writer, and starts the next one, so it
has no locks and knows nothing of SQL or threads. It keeps the *result* of the
changes rather than their list (a clear drops the adds before it, a client's
later row replaces its earlier one), so the writer's work is bounded by what the
file must end up holding, not by how many changes arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.defer import Deferred

from numd.store.schema import ClientRow


@dataclass
class Batch:
    """Changes written together in one transaction.

    A clear throws away every value change before it, so a batch is "maybe empty
    the list first, then add these values": a clear followed by adds in one batch
    leaves exactly those adds, and adds followed by a clear leave nothing.
    """

    cleared: bool = False
    values: list[int] = field(default_factory=list)
    """The values added (after the clear, if any), duplicates kept."""
    clients: dict[int, ClientRow] = field(default_factory=dict)
    """The latest row of each client changed in this batch."""
    changes: int = 0
    """How many service changes this batch holds (merges, clears, client rows)."""
    waiters: list[Deferred[None]] = field(default_factory=list)
    """Fired when the batch is committed (errbacked if it fails)."""

    def __bool__(self) -> bool:
        """Whether the batch holds any change (a commit of it would write something)."""
        return self.changes > 0

    def merge(self, values: list[int]) -> None:
        """Add `values` (duplicates kept)."""
        self.values += values
        self.changes += 1

    def clear(self) -> None:
        """Empty the list: earlier adds in this batch no longer matter."""
        self.cleared = True
        self.values.clear()
        self.changes += 1

    def client(self, client_id: int, row: ClientRow) -> None:
        """Record the latest state of one client."""
        self.clients[client_id] = row
        self.changes += 1

    def put_clients(self, rows: dict[int, ClientRow]) -> None:
        """Record the latest state of several clients."""
        self.clients.update(rows)
        self.changes += len(rows)

    def then(self, later: Batch) -> None:
        """Append `later`'s changes to this batch's (in that order); waiters are taken over."""
        if later.cleared:
            self.cleared = True
            self.values = later.values
        else:
            self.values += later.values
        self.clients.update(later.clients)
        self.changes += later.changes
        self.waiters = later.waiters

    def waiter(self) -> Deferred[None]:
        """A Deferred that fires once this batch is committed."""
        d: Deferred[None] = Deferred()
        self.waiters.append(d)
        return d
