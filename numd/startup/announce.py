"""The start-up log: which numd runs, which files it writes, and what it serves where.

An operator reading twistd's log (or the terminal of ``twistd -n numd``) should
not need the command line to know where numd is. At start-up `StartupLog` says,
each in one line of the ``numd`` log namespace::

    numd 0.1.0 starting (pid 4242)
    store: SQLite file /srv/numd/numd.db
    message log: /srv/numd/numd-messages.log
    counter protocol on 127.0.0.1:2004
    HTTP API on 127.0.0.1:8080: dashboard http://127.0.0.1:8080/, API http://127.0.0.1:8080/api/v1/

A listener's line comes once it listens, with the address it is actually bound
to (port 0 becomes the port the system chose): `StartupLog.listener` wraps the
listener's endpoint so that its ``listen`` says it. The factories themselves are
quiet (``noisy = False``), so no ``Starting factory <... at 0x7f...>`` lines.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from zope.interface import implementer

from numd import version
from numd.store.service import MEMORY

_log = Logger(namespace="numd")
"""Logs as ``[numd#info]``: these lines are about numd as a whole, not one of its classes."""

_UNSPECIFIED = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
"""An address that listens on every interface, and the one a browser on this host would use."""


class StartupLog:
    """Says at start-up what numd is, which files it writes and, as each listens, what it serves where."""

    def __init__(self, *, store: str, message_log: str | None, pid: int | None = None) -> None:
        self.store = store
        """``--db`` as given."""
        self.message_log = message_log
        """The message log's path, None with ``--no-message-log``."""
        self.pid = pid if pid is not None else os.getpid()

    def starting(self) -> None:
        """numd's version and pid, the store, the message log (before the store loads)."""
        _log.info("numd {version} starting (pid {pid})", version=version(), pid=self.pid)
        _log.info("store: {store}", store=store_text(self.store))
        _log.info(
            "message log: {message_log}",
            message_log="off (--no-message-log)"
            if self.message_log is None
            else os.path.abspath(self.message_log),
        )

    def listener(
        self,
        service: StreamServerEndpointService,
        what: str,
        description: str,
        details: Callable[[str], str] | None = None,
    ) -> StreamServerEndpointService:
        """`service` (listening on endpoint `description`), which logs "`what` on ADDRESS" once
        it listens.

        `details`, given the listener's base URL (``http://127.0.0.1:8080/``, or
        ``https://`` on an ``ssl:`` endpoint), adds to the line what is served there.
        """
        tls = description.lower().startswith("ssl:")
        kind = f"{what} (TLS)" if tls else what

        def say(port: IListeningPort) -> None:
            address = port.getHost()
            text = address_text(address)
            url = base_url(address, tls)
            if details is not None and url is not None:
                _log.info(
                    "{what} on {address}: {details}", what=kind, address=text, details=details(url)
                )
            else:
                _log.info("{what} on {address}", what=kind, address=text)

        service.endpoint = _Announced(service.endpoint, say)
        return service


COUNTER = "counter protocol"
LEGACY_ARRAY = "legacy array listener (the older server's pickle clients)"
HTTP_API = "HTTP API"


def http_details(legacy_routes: bool) -> Callable[[str], str]:
    """What the HTTP listener serves at its base URL: the dashboard, the API (and the legacy routes)."""

    def details(url: str) -> str:
        text = f"dashboard {url}, API {url}api/v1/"
        if legacy_routes:
            text += ", legacy routes /get_array, /add_value, /clean_array"
        return text

    return details


@implementer(IStreamServerEndpoint)
class _Announced:
    """An endpoint that calls `say` with its port once it listens."""

    def __init__(
        self, endpoint: IStreamServerEndpoint, say: Callable[[IListeningPort], None]
    ) -> None:
        self._endpoint = endpoint
        self._say = say

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen on the wrapped endpoint; say where once it does."""
        listening: Deferred[IListeningPort] = self._endpoint.listen(protocolFactory)
        return listening.addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self._say(port)
        return port


def address_text(address: IAddress) -> str:
    """``127.0.0.1:2004``, ``[::1]:2004``, ``unix:/run/numd.sock``; else the address's repr."""
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, UNIXAddress) and address.name is not None:
        name = address.name
        return "unix:" + (name.decode("utf-8", "replace") if isinstance(name, bytes) else name)
    return str(address)


def base_url(address: IAddress, tls: bool = False) -> str | None:
    """The URL a browser on this host opens for an HTTP listener bound to `address` (None if not TCP).

    A listener on every interface (``0.0.0.0``, ``::``) is shown at the loopback
    address, which it serves too and which the API's Host check always allows.
    """
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return None
    host = _UNSPECIFIED.get(address.host, address.host)
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{address.port}/"


def store_text(db: str) -> str:
    """What ``--db`` stores into, said for a person; a URL is shown without its password."""
    if db == MEMORY:
        return "none (--db :memory:; the state starts empty and is not kept)"
    if "://" in db:
        parts = urlsplit(db)
        netloc = parts.netloc.rpartition("@")[2]
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        return f"Redis at {url}, shared with the other numd instances on it"
    return f"SQLite file {os.path.abspath(db)}"
