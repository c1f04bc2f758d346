"""Opening the shared state in Redis for the daemon: its connections, its instance name, and
what start-up does while Redis is down (``--redis-startup``).

``wait`` (the default): numd starts, says in one line that Redis is not reachable,
and keeps trying with backoff; ``/readyz`` says not-ready, and requests that need
Redis get ``error:unavailable`` / 503, until it is reached. ``exit``: start-up checks
that Redis's address accepts a connection first, and ends with exit status 1 and
one line saying why if it does not (for a supervisor that should see the failure).
"""

from __future__ import annotations

import os
import random
import secrets
import socket
from typing import Any

from numd.store.redis.address import RedisConfig, SentinelAddress, TcpAddress
from numd.store.redis.connection import DEFAULT_CONNECT_TIMEOUT, connect
from numd.store.redis.lua import SCRIPTS
from numd.store.redis.scripts import DEFAULT_LEASE_TIME, Keys, StateScripts
from numd.store.redis.state import SharedState

DEFAULT_REDIS_STARTUP = "wait"
REDIS_STARTUP_POLICIES = ("wait", "exit")


def instance_name() -> str:
    """A name for this numd instance, new on each start: host, process, and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def open_shared_state(
    config: RedisConfig,
    reactor: Any,
    rng: random.Random | None = None,
    lease_time: float = DEFAULT_LEASE_TIME,
) -> SharedState:
    """The shared state in `config`'s Redis, with its two connections (changes, and the
    change stream's blocking reads), which connect once the state service starts."""
    scripts = [script.source for script in SCRIPTS.values()]
    redis = connect(config, reactor, start=False, preload=scripts)
    follower_redis = connect(config, reactor, start=False)
    changes = StateScripts(redis, instance_name(), Keys(config.prefix))
    return SharedState(reactor, changes, redis, follower_redis, rng, lease_time)


def unreachable(config: RedisConfig, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> str | None:
    """Why Redis's address (or every sentinel's) does not accept a connection, or None if it does.

    Only the connection is tried, before the reactor runs; whether Redis then
    takes numd's password and database is found on the first real connection.
    """
    address = config.address
    if isinstance(address, TcpAddress):
        targets: list[Any] = [(socket.AF_UNSPEC, (address.host, address.port))]
    elif isinstance(address, SentinelAddress):
        targets = [(socket.AF_UNSPEC, sentinel) for sentinel in address.sentinels]
    else:
        targets = [(socket.AF_UNIX, address.path)]
    reasons = []
    for family, where in targets:
        try:
            if family == socket.AF_UNIX:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(timeout)
                    s.connect(where)
            else:
                socket.create_connection(where, timeout=timeout).close()
            return None
        except OSError as e:
            reasons.append(e.strerror or str(e))
    return "; ".join(dict.fromkeys(reasons))
