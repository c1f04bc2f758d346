"""Where numd's state lives: a ``--db`` value parsed into the embedded store or a Redis address.

``--db numd.db`` and ``--db :memory:`` keep the embedded SQLite store (`parse_db`
returns None). A Redis URL picks Redis:

- ``redis://host:port/N`` and ``rediss://host:port/N`` (TLS); the port defaults to
  6379 and the database number to 0;
- ``unix:///path/redis.sock``, optionally ``?db=N``;
- ``redis+sentinel://h1:26379,h2:26379/MASTERNAME/N`` for a replicated Redis that
  Sentinel fails over (sentinel ports default to 26379).

A value that names one of these schemes but does not fit it is an error that names
the value: a typo must not quietly become a SQLite file called ``redis:/...``.

The password never comes from the command line, where ``ps`` and shell history show
it (as for the API token): it comes from ``--redis-password-file`` or
``$NUMD_REDIS_PASSWORD``, and a URL that carries one is refused (the message shows the
URL with the password masked). A user name is not a secret and may be in the URL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_PREFIX = "numd:"
"""Key prefix of one numd deployment (``--redis-prefix``), so several can share one Redis."""
PASSWORD_ENV = "NUMD_REDIS_PASSWORD"
"""Environment variable that may hold the Redis password (never a command-line value)."""

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_BAD_PORT = "the port is not a number from 1 to 65535"
_SECRET_QUERY = re.compile(r"(?i)\b(password|pass|auth|token)=[^&#]*")


class RedisConfigError(ValueError):
    """A ``--db``, ``--redis-prefix`` or password value that cannot work; the message says why."""


@dataclass(frozen=True)
class TcpAddress:
    """A Redis server reached over TCP (``redis://``), or over TLS (``rediss://``)."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    tls: bool = False
    username: str | None = None


@dataclass(frozen=True)
class UnixAddress:
    """A Redis server reached through its Unix socket (``unix://``)."""

    path: str
    db: int = 0
    username: str | None = None


@dataclass(frozen=True)
class SentinelAddress:
    """A primary that Sentinel names and fails over (``redis+sentinel://``)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None


RedisAddress = TcpAddress | UnixAddress | SentinelAddress


@dataclass(frozen=True)
class RedisConfig:
    """Everything needed to reach numd's state in Redis."""

    address: RedisAddress
    password: str | None = None
    prefix: str = DEFAULT_PREFIX


def parse_db(value: str) -> RedisAddress | None:
    """The Redis address a ``--db`` value names, or None for the embedded store (a path, ``:memory:``).

    Raises `RedisConfigError`, naming the value (its password masked), when it
    names a Redis scheme but does not fit it.
    """
    match = _SCHEME.match(value)
    if match is None:
        return None
    scheme = match.group(1).lower()
    if scheme not in SCHEMES:
        if scheme.startswith("redis"):
            raise _error(value, f"unknown scheme {scheme}://; use one of {_scheme_list()}")
        return None  # a file name with a colon in it
    if not value[match.end() :].startswith("//"):
        raise _error(value, f"expected {scheme}://...")
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unclosed [ of an IPv6 address
        raise _error(value, "not a valid URL") from None
    if parts.password is not None:
        raise RedisConfigError(
            f"--db: {_masked(value)!r} carries a password; put it in --redis-password-file "
            f"or ${PASSWORD_ENV} instead (a command line is visible to every local user)"
        )
    if parts.fragment:
        raise _error(value, "a #fragment means nothing here")
    username = unquote(parts.username) if parts.username else None
    if scheme == "unix":
        return _unix(value, parts.netloc, parts.path, parts.query, username)
    if scheme == "redis+sentinel":
        if parts.query:
            raise _error(value, "no ?query is accepted; the database number is the last path part")
        return _sentinel(value, parts.netloc, parts.path, username)
    if parts.query:
        raise _error(value, "no ?query is accepted; the database number is the path: /N")
    if not parts.hostname:
        raise _error(value, f"no host; expected {scheme}://host:port/N")
    try:
        port = parts.port
    except ValueError:
        raise _error(value, _BAD_PORT) from None
    return TcpAddress(
        host=parts.hostname,
        port=_port(value, port, DEFAULT_PORT),
        db=_db_from_path(value, parts.path),
        tls=scheme == "rediss",
        username=username,
    )


def check_prefix(value: str) -> str:
    """A ``--redis-prefix`` value if it can prefix keys: not empty, no spaces or control characters."""
    if not value:
        raise RedisConfigError("--redis-prefix: must not be empty")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise RedisConfigError(
            f"--redis-prefix: {value!r} has spaces or control characters; use e.g. {DEFAULT_PREFIX}"
        )
    return value


def read_password(path: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The Redis password from `path` (``--redis-password-file``), else ``$NUMD_REDIS_PASSWORD``.

    None when neither is set. Surrounding whitespace (a file's final newline) is
    dropped; a file that holds nothing else is an error.
    """
    if path is None:
        env = os.environ if environ is None else environ
        return env.get(PASSWORD_ENV, "").strip() or None
    try:
        with open(path, encoding="utf-8") as f:
            password = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise RedisConfigError(f"--redis-password-file: cannot read {path}: {e}") from None
    if not password:
        raise RedisConfigError(f"--redis-password-file: {path} is empty")
    if "\n" in password:
        raise RedisConfigError(f"--redis-password-file: {path} must hold one line")
    return password


def redis_config(
    db: str,
    password_file: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    environ: Mapping[str, str] | None = None,
) -> RedisConfig | None:
    """The Redis configuration the options describe, or None for the embedded store."""
    address = parse_db(db)
    if address is None:
        return None
    return RedisConfig(address, read_password(password_file, environ), check_prefix(prefix))


def _unix(value: str, netloc: str, path: str, query: str, username: str | None) -> UnixAddress:
    """The Unix-socket address of a ``unix://`` value."""
    if netloc.rpartition("@")[2] or not path.startswith("/"):
        raise _error(value, "expected an absolute socket path: unix:///path/to/redis.sock")
    if path == "/" or path.endswith("/"):
        raise _error(value, "the path names a directory, not a socket")
    db = 0
    if query:
        try:
            fields = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise _error(value, "expected ?db=N") from None
        names = [name for name, _ in fields]
        if names != ["db"]:
            raise _error(value, "the only query accepted is ?db=N")
        db = _db(value, fields[0][1])
    return UnixAddress(path=unquote(path), db=db, username=username)


def _sentinel(value: str, netloc: str, path: str, username: str | None) -> SentinelAddress:
    """The Sentinel address of a ``redis+sentinel://`` value."""
    hosts = netloc.rpartition("@")[2]
    if not hosts:
        raise _error(value, "no sentinel; expected redis+sentinel://h1:26379,h2:26379/MASTERNAME/N")
    sentinels = []
    for item in hosts.split(","):
        try:
            one = urlsplit("//" + item)
            host, port = one.hostname, one.port
        except ValueError:
            raise _error(value, f"sentinel {item!r}: {_BAD_PORT}") from None
        if not host:
            raise _error(value, f"sentinel {item!r} has no host")
        sentinels.append((host, _port(value, port, DEFAULT_SENTINEL_PORT)))
    names = path.split("/")[1:]
    if not names or not names[0]:
        raise _error(value, "no master name; expected redis+sentinel://hosts/MASTERNAME/N")
    if len(names) > 2 or (len(names) == 2 and not names[1]):
        raise _error(value, "expected /MASTERNAME or /MASTERNAME/N after the sentinels")
    master = unquote(names[0])
    if any(c.isspace() or not c.isprintable() for c in master):
        raise _error(value, f"master name {master!r} has spaces or control characters")
    db = _db(value, names[1]) if len(names) == 2 else 0
    return SentinelAddress(sentinels=tuple(sentinels), master=master, db=db, username=username)


def _db_from_path(value: str, path: str) -> int:
    """The database number of a ``redis://`` path: ``""``, ``"/"`` (both 0) or ``"/N"``."""
    if path in ("", "/"):
        return 0
    return _db(value, path[1:])


def _db(value: str, text: str) -> int:
    """A database number: decimal digits only."""
    if not (text.isascii() and text.isdigit()):
        raise _error(value, f"database {text!r} is not a number (expected /N, e.g. /0)")
    return int(text)


def _port(value: str, port: int | None, default: int) -> int:
    """A port, or `default` when none was given; 0 cannot be connected to."""
    if port is None:
        return default
    if port == 0:
        raise _error(value, _BAD_PORT)
    return port


def _error(value: str, why: str) -> RedisConfigError:
    """The error for a ``--db`` value that does not fit its scheme (any password in it masked)."""
    return RedisConfigError(f"--db: {_masked(value)!r}: {why}")


def _masked(value: str) -> str:
    """`value` fit for a message: its user info and any ``password=`` in its query masked.

    All the user info goes (``scheme://***@host...``): a password may hold ``/`` or
    ``:``, so what follows the last ``@`` is the only part known not to be secret.
    """
    scheme, sep, rest = value.partition("//")
    if sep and "@" in rest:
        value = f"{scheme}//***@{rest.rpartition('@')[2]}"
    return _SECRET_QUERY.sub(r"\1=***", value)


def _scheme_list() -> str:
    """The accepted schemes, for messages."""
    return ", ".join(f"{s}://" for s in SCHEMES)
