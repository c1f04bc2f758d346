"""Helpers the store's test modules share: a store started as twistd starts it, a reload, a fired check."""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from numd.service import NumberService
from numd.store.service import Store


def started(state: NumberService, path: str, clock: Clock, writer: Any, **kwargs: Any) -> Store:
    """A store on `path` following `state`, started as twistd would start it."""
    store = Store(state, path, clock, run=writer, **kwargs)
    store.privilegedStartService()
    store.startService()
    return store


def reloaded(path: str) -> NumberService:
    """A fresh service filled from a copy of the files at `path` as they are now.

    That is what a restart after kill -9 at this moment would load (the running
    store keeps the file locked, so the copy is what can be opened).
    """
    copy = path + ".copy"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(copy + suffix):
            os.remove(copy + suffix)
    for suffix in ("", "-wal"):
        if os.path.exists(path + suffix):
            shutil.copyfile(path + suffix, copy + suffix)
    fresh = NumberService(Clock())
    store = Store(fresh, copy, Clock(), run=maybeDeferred)
    store.load()
    store.startService()
    store.stopService()
    return fresh


def fired(d: Deferred[Any] | None) -> bool:
    """Whether `d` has fired (successfully)."""
    results: list[object] = []
    assert d is not None
    d.addBoth(results.append)
    return bool(results) and results[0] is None
