"""The state service: registry, answers, sorted list, observers."""

from __future__ import annotations

import random

import pytest
from twisted.internet.task import Clock

from numd.service import ClientRecord, IdInUse, NumberService, StateObserver


def test_register_new_and_returning(state: NumberService, clock: Clock) -> None:
    """A new ID starts at 0; after a report and a disconnect it resumes at that report."""
    assert state.register(10) == 0
    state.report(10, 55)
    clock.advance(2)
    state.disconnect(10)
    record = state.clients[10]
    assert (record.number, record.connected, record.last_seen) == (55, False, clock.seconds())
    assert state.register(10) == 55
    assert state.clients[10].connected


def test_register_live_id_is_refused(state: NumberService) -> None:
    """A connected ID cannot register twice."""
    state.register(1)
    with pytest.raises(IdInUse):
        state.register(1)
    assert state.connected_count == 1


@pytest.mark.parametrize("client_id", [-1, 10_001])
def test_register_out_of_range(state: NumberService, client_id: int) -> None:
    """IDs outside 0-10000 are refused."""
    with pytest.raises(ValueError):
        state.register(client_id)


def test_give_parity_and_range(state: NumberService) -> None:
    """even gives 0-98 even, odd gives 1-99 odd, and the answer is remembered."""
    state.register(2)
    evens = {state.give(2, "even") for _ in range(3000)}
    odds = {state.give(2, "odd") for _ in range(3000)}
    assert evens == set(range(0, 99, 2))
    assert odds == set(range(1, 100, 2))
    assert state.clients[2].last_given in odds


def test_seed_makes_answers_reproducible(clock: Clock) -> None:
    """The same seed gives the same answers."""
    runs = []
    for _ in range(2):
        s = NumberService(clock, random.Random(123))
        s.register(0)
        runs.append([s.give(0, "odd") for _ in range(20)])
    assert runs[0] == runs[1]


def test_merge_keeps_duplicates_sorted(state: NumberService) -> None:
    """Merged values stay sorted with duplicates; clear empties the list."""
    state.merge([5, 1, 5])
    state.merge([3])
    assert list(state.values) == [1, 3, 5, 5]
    state.clear()
    assert len(state.values) == 0


@pytest.mark.parametrize("bad", [2**63, -(2**63) - 1, True])
def test_merge_refuses_non_64_bit(state: NumberService, bad: int) -> None:
    """A value outside 64-bit range (or a bool) is refused and nothing is merged."""
    with pytest.raises(ValueError):
        state.merge([1, bad])
    assert len(state.values) == 0


class Recorder(StateObserver):
    """Notes the kind of every change it is told of."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def registered(self, record: ClientRecord) -> None:
        self.seen.append("register")

    def disconnected(self, record: ClientRecord) -> None:
        self.seen.append("disconnect")

    def reported(self, record: ClientRecord) -> None:
        self.seen.append("report")

    def given(self, record: ClientRecord) -> None:
        self.seen.append("give")

    def merged(self, values: list[int]) -> None:
        self.seen.append("merge")

    def cleared(self) -> None:
        self.seen.append("clear")


def test_observers_see_every_change(state: NumberService) -> None:
    """Observers are told of each change, in order, until removed."""
    observer = Recorder()
    seen = observer.seen
    state.add_observer(observer)
    state.register(1)
    state.report(1, 2)
    state.give(1, "even")
    state.merge([1])
    state.clear()
    state.disconnect(1)
    state.remove_observer(observer)
    state.register(1)
    assert seen == ["register", "report", "give", "merge", "clear", "disconnect"]


def test_observers_of_some_kinds_see_only_those(state: NumberService) -> None:
    """An observer whose class overrides some kinds is called for those only, and the
    service keeps no call for the kinds nobody follows."""
    seen: list[str] = []

    class ListOnly(StateObserver):
        def merged(self, values: list[int]) -> None:
            seen.append("merge")

        def cleared(self) -> None:
            seen.append("clear")

    state.add_observer(ListOnly())
    state.register(1)
    state.give(1, "odd")
    state.merge([3])
    state.report(1, 9)
    state.clear()
    assert seen == ["merge", "clear"]
    assert state._reported == () and state._given == ()


def test_observers_run_in_the_order_they_were_added(state: NumberService) -> None:
    """Two observers of one kind are told in the order they were added, and a removed one
    no more."""
    order: list[str] = []

    class Named(StateObserver):
        def __init__(self, name: str) -> None:
            self.name = name

        def reported(self, record: ClientRecord) -> None:
            order.append(self.name)

    first, second = Named("first"), Named("second")
    state.add_observer(first)
    state.add_observer(second)
    state.register(1)
    state.report(1, 2)
    state.remove_observer(first)
    state.report(1, 3)
    assert order == ["first", "second", "second"]


def test_record_as_dict(state: NumberService) -> None:
    """A record serialises with every field the registry keeps."""
    state.register(4)
    assert state.clients[4].as_dict() == {
        "id": 4,
        "number": 0,
        "last_given": None,
        "connected": True,
        "last_seen": 1000.0,
    }
