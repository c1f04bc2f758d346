"""Command-line options of ``twistd numd`` and the checks that keep a bad value from starting.

Every option is validated here, before twistd daemonizes, so a bad value ends
with a one-line usage error rather than a traceback in a log.

Each default is defined once, beside the code that uses it (the counter
protocol's in `numd.counter.protocol`, the HTTP site's in `numd.http.site`, the
message log's in `numd.messagelog`, ...), and imported here; only the defaults
that nothing but these options uses (the endpoints, the file names) live here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from numd.counter.legacy_array import DEFAULT_IDLE_TIMEOUT as LEGACY_ARRAY_IDLE_TIMEOUT
from numd.counter.legacy_array import DEFAULT_MAX_BYTES as LEGACY_ARRAY_MAX_BYTES
from numd.counter.legacy_array import DEFAULT_MAX_CLIENTS as LEGACY_ARRAY_MAX_CLIENTS
from numd.counter.protocol import (
    DEFAULT_CONNECTION_BUDGET,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_TOKEN_LENGTH,
    DEFAULT_QUIET_TIME,
    DEFAULT_REPLY_CAP,
    DEFAULT_TAKEOVER_TIME,
    DEFAULT_WRITE_STALL_TIMEOUT,
    MIN_CONNECTION_BUDGET,
    MIN_REPLY_CAP,
)
from numd.http.guard import is_loopback_name
from numd.http.site import (
    ACCESS_LOG_FILES,
    ACCESS_LOG_MAX_BYTES,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_TIMEOUT,
)
from numd.messagelog import DEFAULT_MAX_BYTES as MESSAGE_LOG_MAX_BYTES
from numd.messagelog import DEFAULT_MAX_FILES as MESSAGE_LOG_FILES
from numd.signals import TwistdOptions
from numd.store.redis.address import (
    DEFAULT_PREFIX,
    PASSWORD_ENV,
    RedisConfigError,
    redis_config,
)
from numd.store.redis.scripts import DEFAULT_LEASE_TIME
from numd.store.redis.startup import DEFAULT_REDIS_STARTUP, REDIS_STARTUP_POLICIES
from numd.store.service import DEFAULT_SYNC, MEMORY, SYNC_POLICIES
from numd.systemd import inherited_is_local, inherited_socket, is_systemd_endpoint
from numd.tls.endpoints import check_tls_listeners

DEFAULT_LISTEN = "tcp:2004:interface=127.0.0.1"
"""The counter protocol's endpoint when no ``--listen`` is given."""
DEFAULT_API_LISTEN = "tcp:8080:interface=127.0.0.1"
"""The HTTP API's endpoint (``--api-listen``)."""
DEFAULT_MESSAGE_LOG = "numd-messages.log"
"""The message log's file (``--message-log``), relative to twistd's working directory."""
DEFAULT_DB = "numd.db"
"""The store's SQLite file (``--db``), relative to twistd's working directory."""
API_TOKEN_ENV = "NUMD_API_TOKEN"
"""Environment variable that may hold the API token (never a command-line value)."""


def _checked(name: str, convert: Callable[[str], Any], minimum: float | None = None) -> Any:
    """A coercer for option `name` whose errors name the option and the rule."""

    def coerce(value: str) -> Any:
        try:
            number = convert(value)
        except ValueError:
            kind = "an integer" if convert is int else "a number"
            raise ValueError(f"--{name}: {value!r} is not {kind}") from None
        if minimum is not None and not number >= minimum:
            raise ValueError(f"--{name}: must be at least {minimum}, not {value!r}")
        return number

    return _undocumented(coerce)


def _one_of(name: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    """A coercer for option `name` that accepts only `choices`."""

    def coerce(value: str) -> str:
        if value not in choices:
            raise ValueError(f"--{name}: {value!r} is not one of {', '.join(choices)}")
        return value

    return _undocumented(coerce)


_Coerce = TypeVar("_Coerce", bound=Callable[[str], Any])


def _undocumented(coerce: _Coerce) -> _Coerce:
    """`coerce` with an empty ``coerceDoc``, which `usage.Options` would add to the option's help."""
    setattr(coerce, "coerceDoc", "")  # noqa: B010 - a function attribute mypy does not know
    return coerce


class Options(TwistdOptions):
    """Options of ``twistd numd`` (and of ``numd.tac``, which takes the defaults).

    Under twistd a usage mistake prints two lines and exits 2 (`TwistdOptions`).
    """

    synopsis = "[options]"
    longdesc = (
        "numd serves counter clients (space-ended tokens over TCP) and a shared "
        "sorted list of integers. Endpoints are Twisted endpoint strings."
    )

    optParameters: list[list[Any]] = [
        [
            "message-log",
            None,
            DEFAULT_MESSAGE_LOG,
            "File that receives one JSON line per message and connection event.",
        ],
        [
            "message-log-max-bytes",
            None,
            MESSAGE_LOG_MAX_BYTES,
            "Rotate the message log when it reaches this size in bytes.",
            _checked("message-log-max-bytes", int, 1),
        ],
        [
            "message-log-files",
            None,
            MESSAGE_LOG_FILES,
            "How many rotated message log files to keep.",
            _checked("message-log-files", int, 1),
        ],
        [
            "db",
            None,
            DEFAULT_DB,
            "SQLite file that keeps the registry and the sorted list across "
            f"restarts ({MEMORY} keeps nothing); or Redis, shared by several instances: "
            "redis://host:port/N, rediss://host:port/N (TLS), unix:///path/redis.sock?db=N, "
            "redis+sentinel://h1:26379,h2:26379/MASTER/N (docs/scaling.md).",
        ],
        [
            "redis-password-file",
            None,
            None,
            f"File holding the Redis password (else ${PASSWORD_ENV}; never on the command line).",
        ],
        [
            "redis-prefix",
            None,
            DEFAULT_PREFIX,
            "Prefix of numd's Redis keys, so several numd deployments can share one Redis.",
        ],
        [
            "lease-time",
            None,
            DEFAULT_LEASE_TIME,
            "With Redis: seconds after which the IDs of an instance that died (or of a "
            "silent connection) are free for another instance.",
            _checked("lease-time", float, 0.5),
        ],
        [
            "redis-startup",
            None,
            DEFAULT_REDIS_STARTUP,
            "With Redis down at start-up: wait (serve once it is up; /readyz says "
            "not-ready until then) or exit (status 1, with one line saying why).",
            _one_of("redis-startup", REDIS_STARTUP_POLICIES),
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
            DEFAULT_QUIET_TIME,
            "Seconds of silence after which 1-5 digits with no delimiter from a "
            "new connection are taken as an old client's ID.",
            _checked("quiet-time", float, 0.001),
        ],
        [
            "reply-cap",
            None,
            DEFAULT_REPLY_CAP,
            "Largest array reply in bytes; a longer sorted list is cut and marked with its size.",
            _checked("reply-cap", int, MIN_REPLY_CAP),
        ],
        [
            "max-token-length",
            None,
            DEFAULT_MAX_TOKEN_LENGTH,
            "Longest token accepted, in bytes; a longer one gets error:too-long "
            "and the connection is closed.",
            _checked("max-token-length", int, 64),
        ],
        [
            "max-clients",
            None,
            DEFAULT_MAX_CLIENTS,
            "Most counter connections open at once; the next one gets "
            "error:too-many-clients and is closed.",
            _checked("max-clients", int, 1),
        ],
        [
            "idle-timeout",
            None,
            DEFAULT_IDLE_TIMEOUT,
            "Seconds without a complete token after which a counter connection is "
            "closed (counter clients report every 0.5 s).",
            _checked("idle-timeout", float, 1),
        ],
        [
            "write-stall-timeout",
            None,
            DEFAULT_WRITE_STALL_TIMEOUT,
            "Seconds a client (counter or legacy array) may leave its replies unread "
            "(numd stops reading from it meanwhile) before it is cut off.",
            _checked("write-stall-timeout", float, 0.1),
        ],
        [
            "connection-budget",
            None,
            DEFAULT_CONNECTION_BUDGET,
            "Bytes one counter (or legacy array) connection may hold in numd (replies "
            "not yet written, input not yet handled, its log records not yet written); "
            "past it numd handles none of its requests until they drain.",
            _checked("connection-budget", int, MIN_CONNECTION_BUDGET),
        ],
        [
            "takeover-time",
            None,
            DEFAULT_TAKEOVER_TIME,
            "Seconds a registered connection may stay silent before a new connection "
            "for the same ID takes the ID over (the old one is closed) instead of "
            "getting error:id-in-use.",
            _checked("takeover-time", float, 0.5),
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
            DEFAULT_REQUEST_TIMEOUT,
            "Seconds an HTTP request's line, headers and body may take to arrive, "
            "from its first byte; a slower one gets 408 and is closed.",
            _checked("request-timeout", float, 0.1),
        ],
        [
            "api-max-connections",
            None,
            DEFAULT_MAX_CONNECTIONS,
            "Most HTTP connections open at once (event streams included); the next "
            "one gets 503 too-many-connections and is closed.",
            _checked("api-max-connections", int, 1),
        ],
        [
            "access-log",
            None,
            None,
            "File for an HTTP access log (combined format, rotated at "
            f"{ACCESS_LOG_MAX_BYTES // 2**20} MiB, {ACCESS_LOG_FILES} kept); "
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
        [
            "legacy-array-max-clients",
            None,
            LEGACY_ARRAY_MAX_CLIENTS,
            "Most connections open at once on the legacy array listener; the next "
            "is closed at once.",
            _checked("legacy-array-max-clients", int, 1),
        ],
        [
            "legacy-array-idle-timeout",
            None,
            LEGACY_ARRAY_IDLE_TIMEOUT,
            "Seconds of silence after which a legacy array connection is closed "
            "(off unless given: the older server never timed out, and its client "
            "loops forever on a closed socket).",
            _checked("legacy-array-idle-timeout", float, 1),
        ],
    ]

    optFlags: list[list[Any]] = [
        [
            "no-message-log",
            None,
            "Turn the message log off: no file, no record formatted (for benchmarks "
            "or when another layer records traffic).",
        ],
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
        """Counter protocol endpoint (repeatable) [default: DEFAULT_LISTEN]"""
        self["listen"].append(endpoint)

    # --help shows the docstring: name the default from its one definition.
    opt_listen.__doc__ = f"Counter protocol endpoint (repeatable) [default: {DEFAULT_LISTEN}]"

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
        check_tls_listeners(self)  # before Twisted's ssl: parser reads the files
        for description in self["listen"]:
            _check_endpoint("listen", description)
        _check_endpoint("api-listen", self["api-listen"])
        if self["legacy-array-listen"] is not None:
            _check_endpoint("legacy-array-listen", self["legacy-array-listen"])
        if not self["no-message-log"]:
            _check_directory("message-log", self["message-log"])
        self["api-token"] = _read_api_token(self["api-token-file"])
        _check_exposure(self)
        try:
            self["redis"] = redis_config(
                self["db"], self["redis-password-file"], self["redis-prefix"]
            )
        except RedisConfigError as e:
            raise usage.UsageError(str(e)) from None
        # Only now, so that every message above quotes the endpoints as typed.
        self["listen"] = [_with_backlog(d) for d in self["listen"]]
        if self["redis"] is None and self["db"] != MEMORY:
            _check_directory("db", self["db"])


def _read_api_token(path: str | None) -> str | None:
    """The API token from --api-token-file, else from $NUMD_API_TOKEN, else None."""
    if path is None:
        token = os.environ.get(API_TOKEN_ENV, "").strip()
        return token or None
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise usage.UsageError(f"--api-token-file: cannot read {path!r}: {reason}") from None
    if not token or any(c.isspace() for c in token):
        raise usage.UsageError(
            f"--api-token-file: {path!r} must hold one token (no spaces), not be empty"
        )
    return token


def endpoint_is_loopback(description: str) -> bool:
    """Whether a server endpoint string listens on loopback (or a local socket) only."""
    parts = re.split(r"(?<!\\):", description)
    kind = parts[0].lower()
    if kind == "unix":
        return True
    if kind == "systemd":  # judged by the address the inherited socket is bound to
        return inherited_is_local(description)
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
    """`description` with ``backlog=4096`` added if it is a TCP (or TLS) endpoint without one."""
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "ssl") and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


def _check_endpoint(option: str, description: str) -> None:
    """A usage error naming `option` and quoting `description` unless it is a server endpoint."""
    from twisted.internet import reactor

    try:
        if is_systemd_endpoint(description):
            inherited_socket(description, reactor)
        serverFromString(reactor, description)
    except TypeError as e:  # Twisted's endpoint class was given too few or too many parts
        raise usage.UsageError(
            f"--{option}: bad endpoint {description!r}: a part is missing or extra "
            f"(e.g. {DEFAULT_LISTEN})"
        ) from e
    except (ValueError, KeyError) as e:
        raise usage.UsageError(f"--{option}: bad endpoint {description!r}: {e}") from e


def _check_directory(option: str, path: str) -> None:
    """A usage error naming `option` and quoting `path` unless its directory is writable."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise usage.UsageError(
            f"--{option}: directory {directory} (of {path!r}) does not exist or is not writable"
        )
