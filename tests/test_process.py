"""numd.process: the open-file limit checked against every listener's cap, and the collector's tuning."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from numd.process import (
    FULL_GC_AFTER,
    NEW_OBJECTS_GC,
    RESERVED_FILES,
    YOUNG_GC_AFTER,
    CollectionTuning,
    check_open_files,
)


def test_open_file_limit_is_raised_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The soft open-file limit is raised to the hard one, with a warning when too low."""
    import resource

    from twisted.logger import LogLevel, globalLogPublisher

    limits = {"soft": 1024, "hard": 2048}
    monkeypatch.setattr(resource, "getrlimit", lambda _: (limits["soft"], limits["hard"]))
    monkeypatch.setattr(resource, "setrlimit", lambda _, v: limits.update(soft=v[0]))
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert check_open_files(100) == 2048
        assert not [e for e in events if e["log_level"] == LogLevel.warn]
        assert check_open_files(10_000) == 2048
    finally:
        globalLogPublisher.removeObserver(events.append)
    (warning,) = [e for e in events if e["log_level"] == LogLevel.warn]
    assert warning["max_clients"] == 10_000 and warning["soft"] == 2048


def test_open_file_check_counts_every_listeners_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counter clients, HTTP connections and legacy array clients all need a descriptor each."""
    import resource

    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    monkeypatch.setattr(resource, "getrlimit", lambda _: (2048, 2048))
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert check_open_files(2048 - RESERVED_FILES) == 2048
        assert not [e for e in events if e["log_level"] == LogLevel.warn]
        check_open_files(2048 - RESERVED_FILES, api_max_connections=1)
        check_open_files(1000, api_max_connections=256, legacy_max_clients=1000)
    finally:
        globalLogPublisher.removeObserver(events.append)
    first, second = [e for e in events if e["log_level"] == LogLevel.warn]
    assert (first["needed"], second["needed"]) == (2049, 1000 + 256 + 1000 + RESERVED_FILES)
    assert formatEvent(second).startswith(
        "--max-clients 1000 + --api-max-connections 256 + --legacy-array-max-clients 1000 "
        f"need about {2256 + RESERVED_FILES} open files but the limit is 2048"
    )


@pytest.fixture
def collector() -> Iterator[None]:
    """Whatever a test does to the garbage collector is undone after it."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("collector")
def test_tuning_freezes_what_lives_and_makes_full_collections_rare() -> None:
    """`tune` freezes the objects alive now and sets numd's thresholds; `restore` undoes both."""
    before = gc.get_threshold()
    kept = [[i] for i in range(10)]
    tuning = CollectionTuning()
    tuning.tune()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (NEW_OBJECTS_GC, YOUNG_GC_AFTER, FULL_GC_AFTER)
    assert not {id(o) for o in kept} & {id(o) for o in gc.get_objects(generation=2)}
    tuning.restore()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


@pytest.mark.usefixtures("collector")
def test_restore_without_tune_leaves_the_thresholds_alone() -> None:
    """Restoring what was never tuned unfreezes, but puts back no thresholds of its own."""
    gc.set_threshold(123, 4, 5)
    CollectionTuning().restore()
    assert gc.get_threshold() == (123, 4, 5)
    assert gc.get_freeze_count() == 0
