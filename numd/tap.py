"""``twistd numd``: the service tree of the daemon, built from its `Options`.

twistd's plugin finds `Options` and `makeService` here. This module only wires:
the options and their checks live in `numd.options`, the process policy (the
open-file limit, the garbage collector) in `numd.process`, and each part in its
own package. `makeService` builds every part first, then the `Daemon` from them,
then adds the services in the order they start, so one function shows the whole
tree and the order of its start and stop.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorCore, IReactorTime

from numd.counter.legacy_array import LegacyArrayFactory
from numd.counter.protocol import CounterFactory
from numd.http.api import NumdApi
from numd.http.dashboard import Dashboard
from numd.http.metrics import Metrics
from numd.http.site import ApiSite
from numd.messagelog import MessageLog
from numd.options import Options
from numd.process import CollectionTuning, check_open_files
from numd.service import NumberService
from numd.signals import (
    ExitZeroOnSignal,
    ReopenLogsOnHangup,
    StartupError,
    reopen_log_file,
    twistd_log_file,
)
from numd.startup.announce import COUNTER, HTTP_API, LEGACY_ARRAY, StartupLog, http_details
from numd.startup.preflight import StartupReport, before_start
from numd.stats import Stats
from numd.store.database import StoreError
from numd.store.redis.connection import describe
from numd.store.redis.figures import metric_values
from numd.store.redis.startup import open_shared_state, unreachable
from numd.store.redis.state import SharedState
from numd.store.service import Store, make_store
from numd.systemd import SystemdNotifier, serving_status

__all__ = ["Daemon", "Options", "makeService"]

STOP_GRACE = 2.0
"""Seconds the daemon waits on stop for its live counter connections to close."""


class Daemon(MultiService):
    """The numd service tree, with handles on the parts other layers need.

    It is given every part, built, by `makeService`, and builds none itself.
    On start it checks the open-file limit against the listeners' caps and
    tunes the garbage collector (`numd.process`); on stop it closes the live
    connections before its services stop, and gives the collector back.
    """

    def __init__(
        self,
        *,
        state: NumberService,
        message_log: MessageLog,
        stats: Stats,
        counter_factory: CounterFactory,
        store: Store | None,
        metrics: Metrics,
        api: NumdApi,
        site: ApiSite,
        legacy_array_factory: LegacyArrayFactory | None,
        clock: IReactorTime,
        collections: CollectionTuning | None = None,
        startup_report: StartupReport | None = None,
        startup_log: StartupLog | None = None,
    ) -> None:
        super().__init__()
        self._clock = clock
        self._startup_report = startup_report
        """Under a daemonizing twistd: where a start-up failure is written whole."""
        self._startup_log = startup_log
        """Says numd's version and files at start (each listener says where it listens)."""
        self._collections = collections if collections is not None else CollectionTuning()
        self.state = state
        self.message_log = message_log
        self.stats = stats
        """The counter protocol's counts."""
        self.counter_factory = counter_factory
        self.store = store
        """None with ``--db :memory:``."""
        self.metrics = metrics
        self.api = api
        self.site = site
        self.legacy_array_factory = legacy_array_factory
        """None unless ``--legacy-array-listen`` is given."""
        self.listeners: list[IService] = []
        """The listening services: on stop they stop accepting first."""

    def privilegedStartService(self) -> None:
        """Bind the listeners; a busy or forbidden port, or an unusable database, ends start-up
        with a clear message (whole on the terminal, also when twistd has forked)."""
        try:
            self._privileged_start()
        except StartupError as e:
            if self._startup_report is not None:
                self._startup_report.failed(str(e))
            raise

    def _privileged_start(self) -> None:
        if self._startup_log is not None:
            self._startup_log.starting()
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
        except StoreError as e:
            raise StartupError(f"numd: {e}") from None

    def startService(self) -> None:
        """Start every service, then keep full garbage collections rare and short.

        The state loaded at start-up is frozen out of full collections, which
        come rarely (`numd.process.CollectionTuning` says why and by how much).
        """
        super().startService()
        self._collections.tune()
        if self._startup_report is not None:
            self._startup_report.started()

    def stopService(self) -> defer.Deferred[None]:
        """Close live connections first (at most `STOP_GRACE` s), then stop the services in reverse order.

        So the disconnects are logged before the message log is flushed and closed.
        """
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        # Stop accepting first: a client that connects now waits in the listening socket's
        # queue, which under socket activation the next numd takes over, instead of being
        # accepted here and closed with the rest.
        for listener in self.listeners:
            await defer.maybeDeferred(listener.stopService)
        await self.counter_factory.close_all(self._clock, timeout=STOP_GRACE)
        await super().stopService()
        self._collections.restore()


def makeService(config: Options, reactor: Any = None) -> Daemon:
    """Build the daemon's parts from `config`, then the daemon from them.

    Services start in the order they are added here (state, message log, store,
    counter listeners, legacy array listener, HTTP API, signal handlers, and under
    systemd its notifier) and stop in reverse, after the live connections are
    closed, so the state service stops last.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    clock: IReactorTime = reactor
    legacy_listen = [config["legacy-array-listen"]] if config["legacy-array-listen"] else []
    # Under twistd: its files and numd's ports checked before it forks (numd.startup.preflight).
    startup_report = before_start(config, [*config["listen"], config["api-listen"], *legacy_listen])
    startup_log = StartupLog(
        store=config["db"],
        message_log=None if config["no-message-log"] else config["message-log"],
    )

    state = _state(config, reactor)
    message_log = MessageLog(
        config["message-log"],
        clock,
        max_bytes=config["message-log-max-bytes"],
        max_files=config["message-log-files"],
        enabled=not config["no-message-log"],
    )
    stats = Stats()
    counter_factory = CounterFactory(
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
    # Loads the database in privilegedStartService, before any listener binds.
    store = None
    if isinstance(state, SharedState):  # its leases follow the counter connections
        state.talking = counter_factory.talking
        state.lease_lost = counter_factory.leases_lost
        state.local_clients = lambda: len(counter_factory.owners)
    else:
        store = make_store(state, config["db"], reactor, sync=config["sync"])
    legacy = _legacy_array_factory(config, state, reactor)
    metrics = Metrics(state, message_log)
    metrics.add_stats("counter", stats)
    if legacy is not None:
        metrics.add_stats("legacy-array", legacy.stats)
    ready_checks = {"counter_listeners": _listening(counter_factory, len(config["listen"]))}
    if isinstance(state, SharedState):
        ready_checks["redis"] = lambda: state.ready
        metrics.add_values(lambda: metric_values(state))
    if legacy is not None:
        ready_checks["legacy_array_listener"] = _listening(legacy, 1)
    api = _api(config, state, message_log, metrics, ready_checks, store, stats, legacy, reactor)
    site = api.site(reactor)
    api.ready_checks["api_listener"] = _listening(site, 1)

    top = Daemon(
        state=state,
        message_log=message_log,
        stats=stats,
        counter_factory=counter_factory,
        store=store,
        metrics=metrics,
        api=api,
        site=site,
        legacy_array_factory=legacy,
        clock=clock,
        startup_report=startup_report,
        startup_log=startup_log,
    )
    services: list[IService] = [state, message_log]
    if store is not None:
        services.append(store)
    listen = startup_log.listener  # each listener says where it listens, once it does
    services += [
        listen(strports.service(d, counter_factory, reactor=reactor), COUNTER, d)
        for d in config["listen"]
    ]
    if legacy is not None:
        d = config["legacy-array-listen"]
        services.append(listen(strports.service(d, legacy, reactor=reactor), LEGACY_ARRAY, d))
    d = config["api-listen"]
    http = http_details(bool(config["legacy-routes"]))
    services.append(listen(strports.service(d, site, reactor=reactor), HTTP_API, d, http))
    if IReactorCore.providedBy(reactor):
        services += _signal_handlers(reactor, message_log, site)
    notifier = _systemd_notifier(api, counter_factory, state, reactor)
    if notifier is not None:  # last, so it starts after the store and the listeners
        services.append(notifier)
    for service in services:
        service.setServiceParent(top)
    top.listeners = [s for s in services if isinstance(s, StreamServerEndpointService)]
    return top


def _state(config: Options, reactor: Any) -> NumberService:
    """The embedded state, or the state shared through Redis when ``--db`` names one.

    With ``--redis-startup exit``, a Redis whose address accepts no connection ends
    start-up here, before twistd forks, with one line.
    """
    rng = random.Random(config["seed"])
    redis = config["redis"]
    if redis is None:
        return NumberService(reactor, rng)
    if config["redis-startup"] == "exit":
        why = unreachable(redis)
        if why is not None:
            raise StartupError(
                f"numd: cannot reach Redis at {describe(redis)}: {why} (--redis-startup exit)"
            )
    return open_shared_state(redis, reactor, rng, config["lease-time"])


def _legacy_array_factory(
    config: Options, state: NumberService, reactor: Any
) -> LegacyArrayFactory | None:
    """The legacy array listener's factory, or None unless ``--legacy-array-listen`` is given."""
    if config["legacy-array-listen"] is None:
        return None
    return LegacyArrayFactory(
        state,
        max_bytes=config["legacy-array-max-bytes"],
        max_clients=config["legacy-array-max-clients"],
        idle_timeout=config["legacy-array-idle-timeout"],
        write_stall_timeout=config["write-stall-timeout"],
        budget=config["connection-budget"],
        clock=reactor,
    )


def _api(
    config: Options,
    state: NumberService,
    message_log: MessageLog,
    metrics: Metrics,
    ready_checks: dict[str, Callable[[], bool]],
    store: Store | None,
    stats: Stats,
    legacy: LegacyArrayFactory | None,
    reactor: Any,
) -> NumdApi:
    """The HTTP API with its dashboard; ``/readyz`` also says whether the store stores."""
    return NumdApi(
        state,
        message_log=message_log,
        metrics=metrics,
        legacy_routes=bool(config["legacy-routes"]),
        max_body=config["max-body"],
        ready_checks=ready_checks,
        degraded_checks=store.checks() if store is not None else None,
        token=config["api-token"],
        allowed_hosts=config["allowed-host"],
        cors_origins=config["cors-origin"],
        request_timeout=config["request-timeout"],
        max_connections=config["api-max-connections"],
        access_log=config["access-log"],
        dashboard=Dashboard(
            state, reactor, stats=[stats] + ([legacy.stats] if legacy is not None else [])
        ),
    )


def _systemd_notifier(
    api: NumdApi, counter_factory: CounterFactory, state: NumberService, reactor: Any
) -> SystemdNotifier | None:
    """READY=1 once ``/readyz``'s readiness checks pass (every listener is up), then STATUS=
    lines and watchdog pings; None unless systemd asks for notifications (``$NOTIFY_SOCKET``)."""
    return SystemdNotifier.from_environment(
        reactor,
        ready=lambda: all(check() for check in api.ready_checks.values()),
        status=serving_status(
            lambda: len(counter_factory.connections), lambda: state.list_size, api.degraded_checks
        ),
    )


def _listening(factory: Any, ports: int) -> Callable[[], bool]:
    """A readiness check: `factory` listens on at least `ports` ports (a port starts it once bound)."""
    return lambda: factory.numPorts >= ports


def _signal_handlers(reactor: Any, message_log: MessageLog, site: ApiSite) -> list[IService]:
    """Exit 0 on SIGTERM/SIGINT; on SIGHUP reopen the message log, twistd's log and the access log."""
    return [
        ExitZeroOnSignal(reactor),
        ReopenLogsOnHangup(
            reactor,
            [
                message_log.reopen,
                reopen_log_file(twistd_log_file),
                reopen_log_file(lambda: getattr(site, "logFile", None)),  # --access-log
            ],
        ),
    ]
