"""The HTTP API's `Site`: the wire-level guards, a capped body, a connection cap, an optional access log.

twisted.web's `Site` reads a request body into a temporary file however large it
is, serves as many connections as arrive, writes one access-log line per request
to the daemon's own log, and lets Klein answer a path that is not UTF-8 in plain
text. `ApiSite` changes each of those for an API that must survive a careless or
hostile client: bodies are held in memory up to the cap only, connections past
`max_connections` get a JSON 503 (`numd.http.channel.TooManyConnections`), every
request runs under the guards of `numd.http.channel`, requests are only counted
unless an access log is asked for, and a bad path is a JSON 400.

The defaults here are those of ``twistd numd``'s HTTP options (`numd.options`).
"""

from __future__ import annotations

import io
import os
from typing import Any

from twisted.logger import Logger
from twisted.python.logfile import LogFile
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from numd.http.answers import json_response
from numd.http.channel import GuardedChannel, GuardedRequest, TooManyConnections
from numd.stats import Stats

DEFAULT_MAX_BODY = 64 * 1024
"""Largest request body accepted, in bytes; a larger one gets 413."""
DEFAULT_REQUEST_TIMEOUT = 10.0
"""Seconds a request's line, headers and body may take to arrive; then 408."""
DEFAULT_IDLE_TIMEOUT = 60.0
"""Seconds an HTTP connection may sit idle between requests before it is closed."""
DEFAULT_MAX_CONNECTIONS = 256
"""HTTP connections open at once (event streams included); the next one gets 503 and is closed.

Each one holds a file descriptor: without a cap, a few hundred idle or slow
sockets took every descriptor and new counter clients were reset."""
ACCESS_LOG_MAX_BYTES = 10 * 1024 * 1024
"""Size at which the access log (``--access-log``) is rotated."""
ACCESS_LOG_FILES = 5
"""Rotated access log files kept."""


class _CappedBody(io.BytesIO):
    """A request body file that keeps at most ``cap + 1`` bytes (enough to see overflow)."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self._room = cap + 1

    def write(self, data: bytes) -> int:  # type: ignore[override]  # Twisted writes bytes only
        if self._room > 0:
            kept = data[: self._room]
            self._room -= len(kept)
            super().write(kept)
        return len(data)


class ApiSite(Site):
    """A `Site` that refuses big bodies, slow requests and connections past its cap early.

    See `numd.http.channel` for the wire-level checks: every request must arrive
    within `request_timeout` seconds from its first byte; request bodies are
    held in memory up to the API's cap only; a malformed request gets a JSON
    error. A connection idle for `idle_timeout` seconds between requests is
    closed; past `max_connections` open connections a new one gets a JSON 503
    and is closed at once. `stats` counts connections (``opened``, ``closed``,
    ``refused``) and refusals by error code (exported under ``protocol="http"``).

    Requests are written to an access log (combined log format, rotated by
    size) only when `access_log` names a file: by default they are only counted
    in ``/metrics``, since twisted.web's default of one line per request in the
    daemon's own log costs more than serving a small GET.
    """

    _logger = Logger()  # not `log`: that is Site's access-log method
    noisy = False
    """No "Starting factory <... at 0x...>" lines: the start-up log says where it listens."""
    requestFactory = GuardedRequest
    protocol = GuardedChannel  # type: ignore[assignment]  # no ALPN/HTTP/2 wrapper: HTTP/1.1 only

    def __init__(
        self,
        resource: IResource,
        max_body: int = DEFAULT_MAX_BODY,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        access_log: str | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, timeout=idle_timeout, logPath=access_log, **kwargs)
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.connections: set[GuardedChannel] = set()
        self.stats = Stats()
        self._full = False

    def buildProtocol(self, addr: Any) -> Any:
        """A channel, or past `max_connections` open ones, a JSON 503 and a close.

        The first refusal after the cap is reached is logged; every one is counted.
        """
        if len(self.connections) >= self.max_connections:
            self.stats.connections["refused"] += 1
            self.stats.errors["too-many-connections"] += 1
            if not self._full:
                self._full = True
                self._logger.warn(
                    "{count} HTTP connections are open: refusing new ones until one closes "
                    "(--api-max-connections)",
                    count=len(self.connections),
                )
            return TooManyConnections(self.max_connections)
        self._full = False
        return super().buildProtocol(addr)

    def startFactory(self) -> None:
        """Open the access log if one is configured; else log no requests."""
        super().startFactory()
        if not self.logPath:
            self._logFile = None

    def _openLogFile(self, path: str | bytes) -> LogFile:
        return LogFile.fromFullPath(
            os.fsdecode(path), rotateLength=ACCESS_LOG_MAX_BYTES, maxRotatedFiles=ACCESS_LOG_FILES
        )

    def getContentFile(self, length: int | None) -> io.BytesIO:
        """Twisted's hook for where a request body goes: a capped in-memory file."""
        return _CappedBody(self.max_body)

    def getResourceFor(self, request: IRequest) -> IResource:
        """The API, or a JSON 400 for a path that is not UTF-8 (Klein would answer in plain text)."""
        try:
            for segment in request.postpath:
                segment.decode("utf-8")
        except UnicodeDecodeError:
            return _BadPath()
        return super().getResourceFor(request)


class _BadPath(Resource):
    """Answers any request with a JSON 400: the path is not valid UTF-8."""

    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        return json_response(
            request,
            {"error": "bad-path", "message": "the path is not valid UTF-8"},
            400,
        )
