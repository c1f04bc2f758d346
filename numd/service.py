"""The numd state: the client registry, the shared sorted list and the random source.

`NumberService` is the only object that changes this state, and it is only ever
called from the reactor thread. It knows nothing of bytes, HTTP or files:
protocols and routes parse their input, call it, and format its answers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from sortedcontainers import SortedList
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

Parity = Literal["even", "odd"]

MIN_CLIENT_ID = 0
MAX_CLIENT_ID = 10_000
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
RANDOM_VALUE_MIN = 1000
RANDOM_VALUE_MAX = 10_000


class IdInUse(Exception):
    """A client tried to register an ID that already has a live connection."""


@dataclass
class ClientRecord:
    """What the registry remembers about one client ID."""

    client_id: int
    number: int = 0
    """The last number the client reported (its start number when it returns)."""
    last_given: int | None = None
    """The last even/odd number the server handed it, or None."""
    connected: bool = False
    last_seen: float = 0.0
    """Reactor time of the client's last message or connection change."""

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready copy of the record."""
        return {
            "id": self.client_id,
            "number": self.number,
            "last_given": self.last_given,
            "connected": self.connected,
            "last_seen": self.last_seen,
        }


ChangeObserver = Callable[[str, object], None]
CHANGE_KINDS = ("register", "disconnect", "report", "give", "merge", "clear")
"""The kinds of change observers are told of."""


class NumberService(Service):
    """Holds the registry and the sorted list; every change goes through here.

    Observers added with `add_observer` are called synchronously after each
    change with a kind (``"register"``, ``"disconnect"``, ``"report"``,
    ``"give"``, ``"merge"``, ``"clear"``) and a payload, so that the message log,
    metrics, the store or a dashboard can follow along without driving it.
    """

    name = "numd-state"

    def __init__(self, clock: IReactorTime, rng: random.Random | None = None) -> None:
        self._clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.clients: dict[int, ClientRecord] = {}
        self.values: SortedList = SortedList()
        self._observers: dict[str, list[ChangeObserver]] = {}
        """The observers of each kind of change."""
        self._when_durable: Callable[[], Deferred[None] | None] | None = None

    # -- observers -----------------------------------------------------------

    def add_observer(self, observer: ChangeObserver, kinds: Iterable[str] = CHANGE_KINDS) -> None:
        """Call `observer(kind, payload)` after every change of these kinds (all by default)."""
        for kind in kinds:
            if kind not in CHANGE_KINDS:
                raise ValueError(f"unknown change kind {kind!r}")
            # A new list: a loop running over the old one is not disturbed.
            self._observers[kind] = [*self._observers.get(kind, ()), observer]

    def remove_observer(self, observer: ChangeObserver) -> None:
        """Stop calling `observer`."""
        for kind, observers in self._observers.items():
            self._observers[kind] = [o for o in observers if o != observer]

    def _changed(self, kind: str, payload: object) -> None:
        for observer in self._observers.get(kind, ()):
            observer(kind, payload)

    # -- durability ------------------------------------------------------------

    def set_durability(self, when_durable: Callable[[], Deferred[None] | None] | None) -> None:
        """Install the store's hook: `when_durable()` fires once every change so far is on disk.

        None removes it (the store stopped): changes are answered at once again.
        """
        self._when_durable = when_durable

    @property
    def waits_for_durability(self) -> bool:
        """Whether a store is installed: answers to changes must wait for `when_durable`."""
        return self._when_durable is not None

    def when_durable(self) -> Deferred[None] | None:
        """A Deferred firing when every change made so far is stored, or None if nothing waits.

        Callers answer a change (an array merge, an add, a clear) only after this
        fires, so an acknowledged change survives a crash. Without a store there is
        nothing to wait for and this is None.
        """
        if self._when_durable is None:
            return None
        return self._when_durable()

    # -- the registry ----------------------------------------------------------

    @property
    def connected_count(self) -> int:
        """How many registered clients have a live connection."""
        return sum(1 for record in self.clients.values() if record.connected)

    def register(self, client_id: int) -> int:
        """Mark `client_id` connected and return its start number.

        A new ID starts at 0; a returning one resumes at the last number it
        reported. Raises `IdInUse` if that ID is connected already.
        """
        if not MIN_CLIENT_ID <= client_id <= MAX_CLIENT_ID:
            raise ValueError(f"client id {client_id} is outside 0-10000")
        record = self.clients.get(client_id)
        if record is None:
            record = self.clients[client_id] = ClientRecord(client_id)
        elif record.connected:
            raise IdInUse(client_id)
        record.connected = True
        record.last_seen = self._clock.seconds()
        self._changed("register", record)
        return record.number

    def disconnect(self, client_id: int) -> None:
        """Mark `client_id` disconnected; its record stays for its comeback."""
        record = self.clients[client_id]
        record.connected = False
        record.last_seen = self._clock.seconds()
        self._changed("disconnect", record)

    def report(self, client_id: int, number: int) -> None:
        """Record `number` as the current number of `client_id`."""
        record = self.clients[client_id]
        record.number = number
        record.last_seen = self._clock.seconds()
        self._changed("report", record)

    def give(self, client_id: int, parity: Parity) -> int:
        """Draw a uniformly random even (0-98) or odd (1-99) number for a client."""
        # random() is uniform on [0, 1): int(random() * 50) is uniform on 0-49.
        number = 2 * int(self.rng.random() * 50) + (parity == "odd")
        record = self.clients[client_id]
        record.last_given = number
        record.last_seen = self._clock.seconds()
        self._changed("give", record)
        return number

    def give_many(self, client_id: int, odd: list[bool]) -> list[int]:
        """`give` for several requests of one client at once (True: odd), in order; one change."""
        random = self.rng.random  # the same draw as `give`
        numbers = [2 * int(random() * 50) + o for o in odd]
        record = self.clients[client_id]
        record.last_given = numbers[-1]
        record.last_seen = self._clock.seconds()
        self._changed("give", record)
        return numbers

    # -- the sorted list -------------------------------------------------------

    def merge(self, values: Iterable[int]) -> list[int]:
        """Add every value (duplicates kept) to the sorted list; return them."""
        added = list(values)
        for value in added:
            if isinstance(value, bool) or not INT64_MIN <= value <= INT64_MAX:
                raise ValueError(f"{value!r} is not a 64-bit integer")
        self.values.update(added)
        self._changed("merge", added)
        return added

    def add_random(self) -> int:
        """Add one uniformly random integer in 1000-10000 to the sorted list; return it.

        This is what the older sorted-list server's "add value" did.
        """
        value = self.rng.randint(RANDOM_VALUE_MIN, RANDOM_VALUE_MAX)
        self.merge([value])
        return value

    def clear(self) -> None:
        """Empty the sorted list."""
        self.values.clear()
        self._changed("clear", None)
