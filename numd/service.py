"""The numd state: the client registry, the shared sorted list and the random source.

`NumberService` is the only object that changes this state, and it is only ever
called from the reactor thread. It knows nothing of bytes, HTTP or files:
protocols and routes parse their input, call it, and format its answers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, overload

from sortedcontainers import SortedList
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from numd.counter.tokens import INT64_MAX, INT64_MIN, MAX_CLIENT_ID, MIN_CLIENT_ID

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_CLIENT_ID",
    "MIN_CLIENT_ID",
    "ClientRecord",
    "IdInUse",
    "NumberService",
    "Parity",
    "SortedValues",
    "StateObserver",
    "StateUnavailable",
]

Parity = Literal["even", "odd"]

RANDOM_VALUE_MIN = 1000
RANDOM_VALUE_MAX = 10_000


class IdInUse(Exception):
    """A client tried to register an ID that already has a live connection."""


class StateUnavailable(Exception):
    """The shared state (Redis) cannot be reached now: the change was not acknowledged.

    Clients see ``error:unavailable`` (counter) or 503 ``unavailable`` (HTTP).
    """


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


class StateObserver:
    """What an observer of `NumberService` is told: one method per kind of change.

    Each is called synchronously right after its change, on the reactor thread,
    in the order the observers were added. The defaults do nothing, and the
    service calls only the methods an observer's class overrides, so following
    some kinds of change costs nothing for the others. Observers must not
    change the state.
    """

    def registered(self, record: ClientRecord) -> None:
        """`record`'s client registered (it is connected now)."""

    def disconnected(self, record: ClientRecord) -> None:
        """`record`'s client lost its connection (its record stays)."""

    def reported(self, record: ClientRecord) -> None:
        """`record`'s client reported a new number."""

    def given(self, record: ClientRecord) -> None:
        """`record`'s client was given an even/odd number (`record.last_given`)."""

    def merged(self, values: list[int]) -> None:
        """`values` were added to the sorted list."""

    def cleared(self) -> None:
        """The sorted list was emptied."""


_CLIENT_CHANGES = ("registered", "disconnected", "reported", "given")
_LIST_CHANGES = ("merged", "cleared")


class NumberService(Service):
    """Holds the registry and the sorted list; every change goes through here.

    Observers (`StateObserver`) added with `add_observer` are told of each
    change, so that the store, the array reply cache or the dashboard can follow
    along without driving it. Reads go through methods too (`list_size`,
    `values_page`, `client`, `clients_page`...): `docs/architecture.md` lists what
    a second implementation of the state must provide.
    """

    name = "numd-state"

    applies_later = False
    """Whether a change shows in this object's reads only once `when_durable` fires (the
    shared state: its changes come back through Redis's change stream). Answers that
    show the state after a change are then built when it fires, not when it is made."""

    def __init__(self, clock: IReactorTime, rng: random.Random | None = None) -> None:
        self._clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.clients: dict[int, ClientRecord] = {}
        self.values: SortedList = SortedList()
        self._observers: list[StateObserver] = []
        self._registered: tuple[Callable[[ClientRecord], None], ...] = ()
        self._disconnected: tuple[Callable[[ClientRecord], None], ...] = ()
        self._reported: tuple[Callable[[ClientRecord], None], ...] = ()
        self._given: tuple[Callable[[ClientRecord], None], ...] = ()
        self._merged: tuple[Callable[[list[int]], None], ...] = ()
        self._cleared: tuple[Callable[[], None], ...] = ()
        self._when_durable: Callable[[], Deferred[None] | None] | None = None

    # -- observers -----------------------------------------------------------

    def add_observer(self, observer: StateObserver) -> None:
        """Tell `observer` of every change of the kinds its class overrides, after those added before."""
        self._observers.append(observer)
        self._bind()

    def remove_observer(self, observer: StateObserver) -> None:
        """Stop telling `observer` of changes."""
        self._observers = [o for o in self._observers if o is not observer]
        self._bind()

    def _bind(self) -> None:
        """Keep, per kind of change, the bound methods to call (new tuples: a loop over
        the old ones, from an observer that adds or removes one, is not disturbed)."""
        for name in (*_CLIENT_CHANGES, *_LIST_CHANGES):
            calls = tuple(
                getattr(o, name)
                for o in self._observers
                if getattr(type(o), name) is not getattr(StateObserver, name)
            )
            setattr(self, "_" + name, calls)

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
        for call in self._registered:
            call(record)
        return record.number

    def claim(self, client_id: int) -> int | Deferred[int]:
        """`register`, for a connection: the start number, or (shared state) a Deferred of it.

        Fails (or raises) `IdInUse`, or `StateUnavailable` when the shared state
        cannot be reached.
        """
        return self.register(client_id)

    def disconnect(self, client_id: int) -> None:
        """Mark `client_id` disconnected; its record stays for its comeback."""
        record = self.clients[client_id]
        record.connected = False
        record.last_seen = self._clock.seconds()
        for call in self._disconnected:
            call(record)

    def report(self, client_id: int, number: int) -> None:
        """Record `number` as the current number of `client_id`."""
        record = self.clients[client_id]
        record.number = number
        record.last_seen = self._clock.seconds()
        for call in self._reported:
            call(record)

    def give(self, client_id: int, parity: Parity) -> int:
        """Draw a uniformly random even (0-98) or odd (1-99) number for a client."""
        # random() is uniform on [0, 1): int(random() * 50) is uniform on 0-49.
        number = 2 * int(self.rng.random() * 50) + (parity == "odd")
        record = self.clients[client_id]
        record.last_given = number
        record.last_seen = self._clock.seconds()
        for call in self._given:
            call(record)
        return number

    def record_given(self, client_id: int, number: int) -> None:
        """Record `number` as the last one given to `client_id`, drawn elsewhere (by another
        instance sharing the state); observers are told as for `give`."""
        record = self.clients[client_id]
        record.last_given = number
        record.last_seen = self._clock.seconds()
        for call in self._given:
            call(record)

    def give_many(self, client_id: int, odd: list[bool]) -> list[int]:
        """`give` for several requests of one client at once (True: odd), in order; one change."""
        random = self.rng.random  # the same draw as `give`
        numbers = [2 * int(random() * 50) + o for o in odd]
        record = self.clients[client_id]
        record.last_given = numbers[-1]
        record.last_seen = self._clock.seconds()
        for call in self._given:
            call(record)
        return numbers

    # -- the sorted list -------------------------------------------------------

    def merge(self, values: Iterable[int]) -> list[int]:
        """Add every value (duplicates kept) to the sorted list; return them."""
        added = list(values)
        for value in added:
            if isinstance(value, bool) or not INT64_MIN <= value <= INT64_MAX:
                raise ValueError(f"{value!r} is not a 64-bit integer")
        self.values.update(added)
        for call in self._merged:
            call(added)
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
        for call in self._cleared:
            call()

    # -- reads -----------------------------------------------------------------

    @property
    def list_size(self) -> int:
        """How many values the sorted list holds."""
        return len(self.values)

    def value_at(self, index: int) -> int:
        """The value at `index` of the sorted list (negative counts from the end)."""
        return int(self.values[index])

    def values_slice(self, start: int, stop: int) -> list[int]:
        """The values from `start` to `stop` (exclusive) of the sorted list."""
        return list(self.values.islice(start, stop))

    def all_values(self) -> list[int]:
        """The whole sorted list (for the older server's clients, which want it whole)."""
        return list(self.values)

    def count_below(self, value: int) -> int:
        """How many values of the list are smaller than `value`."""
        return int(self.values.bisect_left(value))

    def values_page(
        self, offset: int, limit: int, low: int | None = None, high: int | None = None
    ) -> tuple[int, list[int]]:
        """One page of the values within `low`-`high` (each None: unbounded).

        Returns how many values are in the range, and `limit` of them from `offset`.
        """
        values = self.values
        start = 0 if low is None else values.bisect_left(low)
        stop = len(values) if high is None else values.bisect_right(high)
        stop = max(start, stop)
        first = min(start + offset, stop)
        return stop - start, list(values.islice(first, min(first + limit, stop)))

    @property
    def known_count(self) -> int:
        """How many client IDs the registry knows, connected or not."""
        return len(self.clients)

    def client(self, client_id: int) -> ClientRecord | None:
        """The record of `client_id`, or None if the registry has never seen it."""
        return self.clients.get(client_id)

    def clients_page(self, offset: int = 0, limit: int | None = None) -> list[ClientRecord]:
        """Records ordered by client ID: `limit` of them (all when None) from `offset`."""
        ids = sorted(self.clients)
        chosen = ids[offset:] if limit is None else ids[offset : offset + limit]
        return [self.clients[client_id] for client_id in chosen]

    def record_for(self, client_id: int) -> ClientRecord:
        """The record of `client_id`, a new one (number 0, disconnected) if the registry has
        none yet: for a change made elsewhere (another instance) that this copy applies."""
        record = self.clients.get(client_id)
        if record is None:
            record = self.clients[client_id] = ClientRecord(client_id)
        return record

    def clients_by_id(self, client_ids: Iterable[int]) -> list[ClientRecord]:
        """The records of those of `client_ids` the registry knows, in the order given."""
        clients = self.clients
        return [clients[i] for i in client_ids if i in clients]

    def instances(self) -> list[dict[str, object]] | None:
        """The numd instances sharing this state, each as it describes itself (None: this
        process alone holds it)."""
        return None

    # -- restoring -------------------------------------------------------------

    def restore(self, values: Iterable[int], clients: Iterable[ClientRecord]) -> None:
        """Replace the state with a stored one (at start-up, before any connection).

        Observers are not told: what is restored is what they were told of before.
        Every restored client is disconnected.
        """
        self.values.clear()
        self.values.update(values)
        self.clients.clear()
        for record in clients:
            record.connected = False
            self.clients[record.client_id] = record


class SortedValues(Sequence[int]):
    """A service's sorted list as a read-only sequence, read through the service's methods
    (`list_size`, `value_at`, `values_slice`, `count_below`), for code that formats or
    summarises a sorted sequence (array replies, the dashboard's histogram)."""

    def __init__(self, service: NumberService) -> None:
        self._service = service

    def __len__(self) -> int:
        return self._service.list_size

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("only contiguous slices")
            return self._service.values_slice(start, stop)
        return self._service.value_at(index)

    def bisect_left(self, value: int) -> int:
        """How many values are smaller than `value` (as `SortedList.bisect_left`)."""
        return self._service.count_below(value)
