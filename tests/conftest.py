"""Shared fixtures: a fake clock, a state service, a message log, a counter factory."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from numd.counter.protocol import CounterFactory
from numd.messagelog import MessageLog
from numd.service import NumberService
from numd.stats import Stats

from .redis_server import RedisServer, skip_without_redis


@pytest.fixture
def clock() -> Clock:
    """A fake reactor clock starting at t=1000."""
    c = Clock()
    c.advance(1000)
    return c


@pytest.fixture
def state(clock: Clock) -> NumberService:
    """A state service with a seeded random source."""
    return NumberService(clock, random.Random(4))


@pytest.fixture
def log_clock() -> Clock:
    """The message log's own fake clock, so its flush timer stays out of protocol tests."""
    return Clock()


@pytest.fixture
def message_log(tmp_path: Path, log_clock: Clock):
    """A running message log in a temporary directory, stopped after the test."""
    log = MessageLog(str(tmp_path / "messages.log"), log_clock)
    log.startService()
    yield log
    if log.running:
        log.stopService()


@pytest.fixture
def factory(state: NumberService, message_log: MessageLog, clock: Clock) -> CounterFactory:
    """A counter factory on the fake clock with the default limits."""
    return CounterFactory(state, message_log, Stats(), clock)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, with every write fsynced to its append-only file
    (skipped, with the reason, without redis-server)."""
    skip_without_redis()
    server = RedisServer(tmp_path / "redis", appendfsync="always").start()
    yield server
    if server.process is not None:
        os.kill(server.pid, signal.SIGCONT)  # in case a test left it stopped
    server.stop()
