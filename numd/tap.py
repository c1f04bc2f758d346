"""``twistd numd``: the service tree of the daemon, built from its `Options`.

twistd's plugin finds `Options` and `makeService` here; the options themselves
and their checks live in `numd.options`.
"""

from __future__ import annotations

import gc
import random
import resource
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger

from numd.counter.legacy_array import LegacyArrayFactory
from numd.counter.protocol import CounterFactory
from numd.http.api import NumdApi
from numd.http.dashboard import Dashboard
from numd.http.metrics import Metrics
from numd.http.site import ApiSite
from numd.messagelog import MessageLog
from numd.options import Options
from numd.service import NumberService
from numd.signals import (
    ExitZeroOnSignal,
    ReopenLogsOnHangup,
    StartupError,
    reopen_log_file,
    twistd_log_file,
)
from numd.stats import Stats
from numd.store.service import Store, make_store

__all__ = ["Daemon", "Options", "check_open_files", "makeService"]

_log = Logger()
NEW_OBJECTS_GC = 200
"""Container allocations (net) that start a generation-0 collection (Python's default is 700)."""
YOUNG_GC_AFTER = 1
"""Generation-0 collections between two generation-1 ones (Python's default is 10)."""
FULL_GC_AFTER = 5000
"""Generation-1 collections between two full ones (Python's default is 10)."""
RESERVED_FILES = 64
"""Open files numd needs besides its client connections (listeners, logs, store)."""


def check_open_files(
    max_clients: int, *, api_max_connections: int = 0, legacy_max_clients: int = 0
) -> int:
    """Raise the open-file soft limit to the hard limit; warn if it cannot fit every listener's cap.

    The caps are `max_clients` (counter protocol), `api_max_connections` (HTTP
    API) and `legacy_max_clients` (the legacy array listener, 0 when it is
    off), plus `RESERVED_FILES`. Returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            _log.warn(
                "cannot raise the open-file limit from {soft} to {hard}: {e}",
                soft=soft,
                hard=hard,
                e=e,
            )
    caps = [("--max-clients", max_clients), ("--api-max-connections", api_max_connections),
            ("--legacy-array-max-clients", legacy_max_clients)]  # fmt: skip
    connections = max_clients + api_max_connections + legacy_max_clients
    needed = connections + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < needed:
        _log.warn(
            "{caps} need about {needed} open files but the limit is {soft}: connections "
            "past about {usable} in all will fail to be accepted",
            caps=" + ".join(f"{option} {cap}" for option, cap in caps if cap),
            max_clients=max_clients,
            api_max_connections=api_max_connections,
            legacy_max_clients=legacy_max_clients,
            needed=needed,
            soft=soft,
            usable=max(soft - RESERVED_FILES, 0),
        )
    return soft


class Daemon(MultiService):
    """The numd service tree, with handles on the parts other layers need."""

    store: Store | None
    metrics: Metrics
    api: NumdApi
    site: ApiSite
    legacy_array_factory: LegacyArrayFactory | None

    def __init__(
        self,
        state: NumberService,
        message_log: MessageLog,
        stats: Stats,
        counter_factory: CounterFactory,
        clock: IReactorTime,
    ) -> None:
        super().__init__()
        self._clock = clock
        self._gc_thresholds: tuple[int, int, int] | None = None
        self.state = state
        self.message_log = message_log
        self.stats = stats
        self.counter_factory = counter_factory

    def privilegedStartService(self) -> None:
        """Bind the listeners; a busy or forbidden port ends start-up with a clear message."""
        legacy = self.legacy_array_factory
        check_open_files(
            self.counter_factory.max_clients,
            api_max_connections=self.site.max_connections,
            legacy_max_clients=0 if legacy is None else legacy.max_clients,
        )
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            where = f"{e.interface or '*'}:{e.port}"
            raise StartupError(f"numd: cannot listen on {where}: {e.socketError}") from None

    def startService(self) -> None:
        """Start every service, then keep full garbage collections rare and short.

        A full collection walks every object the daemon holds, on the reactor
        thread: with 10,000 clients it stalls every client for 50-100 ms (measured
        by the bench). The registry and the list loaded at start-up live as long
        as the process, so they are frozen out of those passes; and a full pass is
        considered after `FULL_GC_AFTER` generation-1 passes, so it comes every few
        minutes, not several times a minute. Young passes are kept small: one per
        `NEW_OBJECTS_GC` new containers instead of 700, and generation 1 after every
        `YOUNG_GC_AFTER` + 1 of them instead of 11. While the list grows by
        1,000-value arrays, about one new sublist of 1,000-2,000 values survives per
        array, and a young pass walks every value of the young ones: with Python's
        defaults one took 21-29 ms after a bulk load of 10^6 values, now about 5 ms.
        Reference counting still frees everything that is not in a cycle at once.
        """
        super().startService()
        gc.collect()
        gc.freeze()
        self._gc_thresholds = gc.get_threshold()
        gc.set_threshold(NEW_OBJECTS_GC, YOUNG_GC_AFTER, FULL_GC_AFTER)

    def stopService(self) -> defer.Deferred[None]:
        """Close live connections first (at most 2 s), then stop the services in reverse order.

        So the disconnects are logged before the message log is flushed and closed.
        """
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await self.counter_factory.close_all(self._clock, timeout=2.0)
        await super().stopService()
        gc.unfreeze()
        if self._gc_thresholds is not None:
            gc.set_threshold(*self._gc_thresholds)
            self._gc_thresholds = None


def _add_http_api(top: Daemon, config: Options, reactor: Any) -> None:
    """Add the HTTP API's site and, if asked for, the legacy array listener to `top`.

    Sets ``top.metrics``, ``top.api``, ``top.site`` and ``top.legacy_array_factory``
    (None unless ``--legacy-array-listen`` is given).
    """
    state, factory = top.state, top.counter_factory
    metrics = Metrics(state, top.message_log)
    metrics.add_stats("counter", top.stats)
    counter_ports = len(config["listen"])
    ready_checks = {"counter_listeners": lambda: factory.numPorts >= counter_ports}
    legacy: LegacyArrayFactory | None = None
    if config["legacy-array-listen"] is not None:
        legacy = listener = LegacyArrayFactory(
            state,
            max_bytes=config["legacy-array-max-bytes"],
            max_clients=config["legacy-array-max-clients"],
            idle_timeout=config["legacy-array-idle-timeout"],
            write_stall_timeout=config["write-stall-timeout"],
            budget=config["connection-budget"],
            clock=reactor,
        )
        metrics.add_stats("legacy-array", listener.stats)
        ready_checks["legacy_array_listener"] = lambda: listener.numPorts >= 1
        strports.service(config["legacy-array-listen"], listener, reactor=reactor).setServiceParent(
            top
        )
    api = NumdApi(
        state,
        message_log=top.message_log,
        metrics=metrics,
        legacy_routes=bool(config["legacy-routes"]),
        max_body=config["max-body"],
        ready_checks=ready_checks,
        degraded_checks=top.store.checks() if top.store is not None else None,
        token=config["api-token"],
        allowed_hosts=config["allowed-host"],
        cors_origins=config["cors-origin"],
        request_timeout=config["request-timeout"],
        max_connections=config["api-max-connections"],
        access_log=config["access-log"],
        dashboard=Dashboard(
            state, reactor, stats=[top.stats] + ([legacy.stats] if legacy is not None else [])
        ),
    )
    site = api.site(reactor)
    api.ready_checks["api_listener"] = lambda: site.numPorts >= 1
    strports.service(config["api-listen"], site, reactor=reactor).setServiceParent(top)
    top.metrics, top.api, top.site, top.legacy_array_factory = metrics, api, site, legacy


def makeService(config: Options, reactor: Any = None) -> Daemon:
    """Build the daemon: state, message log, counter listeners.

    Services start in that order and stop in reverse, after the live
    connections are closed, so the state service stops last.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    clock: IReactorTime = reactor

    state = NumberService(clock, random.Random(config["seed"]))
    message_log = MessageLog(
        config["message-log"],
        clock,
        max_bytes=config["message-log-max-bytes"],
        max_files=config["message-log-files"],
        enabled=not config["no-message-log"],
    )
    stats = Stats()
    factory = CounterFactory(
        state,
        message_log,
        stats,
        clock,
        quiet_time=config["quiet-time"],
        reply_cap=config["reply-cap"],
        max_token_length=config["max-token-length"],
        max_clients=config["max-clients"],
        idle_timeout=config["idle-timeout"],
        write_stall_timeout=config["write-stall-timeout"],
        connection_budget=config["connection-budget"],
        takeover_time=config["takeover-time"],
    )
    top = Daemon(state, message_log, stats, factory, clock)
    state.setServiceParent(top)
    message_log.setServiceParent(top)
    # Loads the database in privilegedStartService, before any listener binds.
    top.store = make_store(state, config["db"], reactor, sync=config["sync"])
    if top.store is not None:
        top.store.setServiceParent(top)
    for description in config["listen"]:
        strports.service(description, factory, reactor=reactor).setServiceParent(top)
    _add_http_api(top, config, reactor)
    if IReactorCore.providedBy(reactor):
        ExitZeroOnSignal(reactor).setServiceParent(top)
        site = top.site
        ReopenLogsOnHangup(
            reactor,
            [
                message_log.reopen,
                reopen_log_file(twistd_log_file),
                reopen_log_file(lambda: getattr(site, "logFile", None)),  # --access-log
            ],
        ).setServiceParent(top)
    return top
