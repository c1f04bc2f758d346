"""``twistd numd``: command-line options and the service tree of the daemon."""

from __future__ import annotations

import os
import random
import re
import resource
from collections.abc import Callable
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from numd.api import DEFAULT_MAX_BODY, NumdApi
from numd.dashboard import Dashboard
from numd.http_guard import is_loopback_name
from numd.legacy_array import DEFAULT_MAX_BYTES as LEGACY_ARRAY_MAX_BYTES
from numd.legacy_array import LegacyArrayFactory
from numd.messagelog import MessageLog
from numd.metrics import Metrics
from numd.protocol import MIN_REPLY_CAP, CounterFactory
from numd.service import NumberService
from numd.signals import ExitZeroOnSignal, StartupError
from numd.stats import Stats
from numd.store import DEFAULT_SYNC, MEMORY, SYNC_POLICIES, Store, make_store

DEFAULT_LISTEN = "tcp:2004:interface=127.0.0.1"
DEFAULT_API_LISTEN = "tcp:8080:interface=127.0.0.1"
API_TOKEN_ENV = "NUMD_API_TOKEN"
"""Environment variable that may hold the API token (never a command-line value)."""


def _checked(name: str, convert: Callable[[str], Any], minimum: float | None = None) -> Any:
    """A coercer for option `name` whose errors name the option and the rule."""

    def coerce(value: str) -> Any:
        try:
            number = convert(value)
        except ValueError:
            raise ValueError(f"--{name}: {value!r} is not a valid {convert.__name__}") from None
        if minimum is not None and not number >= minimum:
            raise ValueError(f"--{name}: must be at least {minimum}, not {value}")
        return number

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def _one_of(name: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    """A coercer for option `name` that accepts only `choices`."""

    def coerce(value: str) -> str:
        if value not in choices:
            raise ValueError(f"--{name}: {value!r} is not one of {', '.join(choices)}")
        return value

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


class Options(usage.Options):
    """Options of ``twistd numd`` (and of ``numd.tac``, which takes the defaults)."""

    synopsis = "[options]"
    longdesc = (
        "numd serves counter clients (space-ended tokens over TCP) and a shared "
        "sorted list of integers. Endpoints are Twisted endpoint strings."
    )

    optParameters: list[list[Any]] = [
        [
            "message-log",
            None,
            "numd-messages.log",
            "File that receives one JSON line per message and connection event.",
        ],
        [
            "message-log-max-bytes",
            None,
            10 * 1024 * 1024,
            "Rotate the message log when it reaches this size in bytes.",
            _checked("message-log-max-bytes", int, 1),
        ],
        [
            "message-log-files",
            None,
            5,
            "How many rotated message log files to keep.",
            _checked("message-log-files", int, 1),
        ],
        [
            "db",
            None,
            "numd.db",
            "SQLite file that keeps the registry and the sorted list across "
            f"restarts ({MEMORY} keeps nothing).",
        ],
        [
            "sync",
            None,
            DEFAULT_SYNC,
            "When client reports reach the disk: everysec (batched once a second; "
            "a crash loses at most about a second of reports) or always (in the "
            "next commit). Merges, adds and clears are always stored before they "
            "are answered.",
            _one_of("sync", SYNC_POLICIES),
        ],
        [
            "seed",
            None,
            None,
            "Seed for the even/odd answers, to make them reproducible.",
            _checked("seed", int),
        ],
        [
            "quiet-time",
            None,
            0.1,
            "Seconds of silence after which 1-5 digits with no delimiter from a "
            "new connection are taken as an old client's ID.",
            _checked("quiet-time", float, 0.001),
        ],
        [
            "reply-cap",
            None,
            64 * 1024,
            "Largest array reply in bytes; a longer sorted list is cut and marked with its size.",
            _checked("reply-cap", int, MIN_REPLY_CAP),
        ],
        [
            "max-token-length",
            None,
            32 * 1024,
            "Longest token accepted, in bytes; a longer one gets error:too-long "
            "and the connection is closed.",
            _checked("max-token-length", int, 64),
        ],
        [
            "max-clients",
            None,
            12_000,
            "Most counter connections open at once; the next one gets "
            "error:too-many-clients and is closed.",
            _checked("max-clients", int, 1),
        ],
        [
            "idle-timeout",
            None,
            120.0,
            "Seconds of silence after which a counter connection is closed "
            "(clients report every 0.5 s).",
            _checked("idle-timeout", float, 1),
        ],
        [
            "write-stall-timeout",
            None,
            30.0,
            "Seconds a client may leave its replies unread (numd stops reading "
            "from it meanwhile) before it is cut off.",
            _checked("write-stall-timeout", float, 0.1),
        ],
        [
            "api-listen",
            None,
            DEFAULT_API_LISTEN,
            "HTTP API endpoint (JSON API under /api/v1, /healthz, /readyz, "
            "/metrics, /openapi.json).",
        ],
        [
            "max-body",
            None,
            DEFAULT_MAX_BODY,
            "Largest HTTP request body in bytes; a larger one gets 413.",
            _checked("max-body", int, 1),
        ],
        [
            "request-timeout",
            None,
            10.0,
            "Seconds an HTTP request's line, headers and body may take to arrive; "
            "a slower one gets 408 and is closed.",
            _checked("request-timeout", float, 0.1),
        ],
        [
            "access-log",
            None,
            None,
            "File for an HTTP access log (combined format, rotated at 10 MiB, 5 kept); "
            "by default requests are only counted in /metrics.",
        ],
        [
            "api-token-file",
            None,
            None,
            f"File holding the API token (or set ${API_TOKEN_ENV}). With a token, "
            "every HTTP request that changes state needs Authorization: Bearer <token>.",
        ],
        [
            "legacy-array-listen",
            None,
            None,
            "Endpoint for the older server's pickle array clients, e.g. "
            "tcp:6000:interface=127.0.0.1 (off unless given).",
        ],
        [
            "legacy-array-max-bytes",
            None,
            LEGACY_ARRAY_MAX_BYTES,
            "Largest pickled request accepted on the legacy array listener; a "
            "larger one closes the connection.",
            _checked("legacy-array-max-bytes", int, 16),
        ],
    ]

    optFlags: list[list[Any]] = [
        [
            "allow-remote",
            None,
            "Allow listening on non-loopback interfaces without an API token "
            "(the counter protocol never has authentication).",
        ],
        [
            "legacy-routes",
            None,
            "Serve the older server's plain-text routes /get_array, /add_value and "
            "/clean_array (they change state on GET).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["allowed-host"] = []
        self["cors-origin"] = []
        self["api-token"] = None

    def opt_listen(self, endpoint: str) -> None:
        """Counter protocol endpoint (repeatable) [default: tcp:2004:interface=127.0.0.1]"""
        self["listen"].append(endpoint)

    def opt_allowed_host(self, name: str) -> None:
        """Host name the HTTP API answers besides the loopback names (repeatable; * for any)"""
        self["allowed-host"].append(name.lower())

    def opt_cors_origin(self, origin: str) -> None:
        """Origin allowed to call the HTTP API from a browser (repeatable) [default: none]"""
        self["cors-origin"].append(origin)

    def postOptions(self) -> None:
        """Fill in defaults and reject values that cannot work, with a clear message."""
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        self["listen"] = [_with_backlog(d) for d in self["listen"]]
        for description in self["listen"]:
            _check_endpoint(description)
        _check_endpoint(self["api-listen"])
        if self["legacy-array-listen"] is not None:
            _check_endpoint(self["legacy-array-listen"])
        directory = os.path.dirname(os.path.abspath(self["message-log"]))
        if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
            raise usage.UsageError(
                f"--message-log: directory {directory} does not exist or is not writable"
            )
        self["api-token"] = _read_api_token(self["api-token-file"])
        _check_exposure(self)
        if self["db"] != MEMORY:
            directory = os.path.dirname(os.path.abspath(self["db"]))
            if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
                raise usage.UsageError(
                    f"--db: directory {directory} does not exist or is not writable"
                )


def _read_api_token(path: str | None) -> str | None:
    """The API token from --api-token-file, else from $NUMD_API_TOKEN, else None."""
    if path is None:
        token = os.environ.get(API_TOKEN_ENV, "").strip()
        return token or None
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise usage.UsageError(f"--api-token-file: cannot read {path}: {e}") from None
    if not token or any(c.isspace() for c in token):
        raise usage.UsageError(
            f"--api-token-file: {path} must hold one token (no spaces), not be empty"
        )
    return token


def endpoint_is_loopback(description: str) -> bool:
    """Whether a server endpoint string listens on loopback (or a local socket) only."""
    parts = re.split(r"(?<!\\):", description)
    kind = parts[0].lower()
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    interface = ""
    for part in parts[1:]:
        if part.startswith("interface="):
            interface = part[len("interface=") :].replace("\\:", ":")
    return bool(interface) and is_loopback_name(interface.lower())


def _check_exposure(config: Options) -> None:
    """Refuse to listen beyond loopback without protection, with a message that says what to do."""
    if config["allow-remote"]:
        return
    counter = list(config["listen"])
    if config["legacy-array-listen"] is not None:
        counter.append(config["legacy-array-listen"])
    for description in counter:
        if not endpoint_is_loopback(description):
            raise usage.UsageError(
                f"refusing to listen on {description}: it is not a loopback interface and "
                "the counter protocol has no authentication; pass --allow-remote to do it anyway"
            )
    if not endpoint_is_loopback(config["api-listen"]) and config["api-token"] is None:
        raise usage.UsageError(
            f"refusing to serve the HTTP API on {config['api-listen']}: it is not a loopback "
            f"interface; set an API token (--api-token-file or ${API_TOKEN_ENV}) or pass "
            "--allow-remote"
        )


LISTEN_BACKLOG = 4096
"""Listen backlog for TCP endpoints that set none (Twisted's default of 50 makes
thousands of clients connecting at once wait seconds)."""


def _with_backlog(description: str) -> str:
    """`description` with ``backlog=4096`` added if it is a TCP endpoint without one."""
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


def _check_endpoint(description: str) -> None:
    from twisted.internet import reactor

    try:
        serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError(f"bad endpoint {description!r}: {e}") from e


_log = Logger()
RESERVED_FILES = 64
"""Open files numd needs besides its client connections (listeners, logs, store)."""


def check_open_files(max_clients: int) -> int:
    """Raise the open-file soft limit to the hard limit; warn if it cannot fit `max_clients`.

    Returns the soft limit now in force.
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
    if soft != resource.RLIM_INFINITY and soft < max_clients + RESERVED_FILES:
        _log.warn(
            "--max-clients {max_clients} needs about {needed} open files but the limit is "
            "{soft}: connections past about {usable} will fail to be accepted",
            max_clients=max_clients,
            needed=max_clients + RESERVED_FILES,
            soft=soft,
            usable=max(soft - RESERVED_FILES, 0),
        )
    return soft


class Daemon(MultiService):
    """The numd service tree, with handles on the parts other layers need."""

    store: Store | None
    metrics: Metrics
    api: NumdApi
    site: Site
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
        self.state = state
        self.message_log = message_log
        self.stats = stats
        self.counter_factory = counter_factory

    def privilegedStartService(self) -> None:
        """Bind the listeners; a busy or forbidden port ends start-up with a clear message."""
        check_open_files(self.counter_factory.max_clients)
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            where = f"{e.interface or '*'}:{e.port}"
            raise StartupError(f"numd: cannot listen on {where}: {e.socketError}") from None

    def stopService(self) -> defer.Deferred[None]:
        """Close live connections first (at most 2 s), then stop the services in reverse order.

        So the disconnects are logged before the message log is flushed and closed.
        """
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await self.counter_factory.close_all(self._clock, timeout=2.0)
        await super().stopService()


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
        legacy = listener = LegacyArrayFactory(state, max_bytes=config["legacy-array-max-bytes"])
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
        token=config["api-token"],
        allowed_hosts=config["allowed-host"],
        cors_origins=config["cors-origin"],
        request_timeout=config["request-timeout"],
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
    return top
