"""The HTTP API: Klein routes over the shared sorted list and the client registry.

Routes (all answers JSON unless said otherwise; ``docs/api.md`` has curl examples
and ``numd/http/openapi.json`` the exact schema, served at ``/openapi.json``):

- ``GET /api/v1/values?offset=&limit=&min=&max=``: one page of the sorted list
- ``POST /api/v1/values``: add an integer or an array of integers (JSON body),
  or with no body one random integer in 1000-10000
- ``DELETE /api/v1/values``: clear the list
- ``GET /api/v1/clients?offset=&limit=``: one page of the registry, by ID
- ``GET /api/v1/clients/<id>``: one client, 404 if unknown
- ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus text),
  ``GET /openapi.json``
- ``GET /`` (with ``/static/dashboard.css`` and ``/static/dashboard.js``): the live
  dashboard page; ``GET /api/v1/snapshot`` (JSON) and ``GET /api/v1/events``
  (Server-Sent Events) carry what it shows (see `numd.http.dashboard`)
- with ``legacy_routes``, the older server's plain-text ``/get_array``,
  ``/add_value`` and ``/clean_array``

Every handler runs on the reactor thread and reaches the state only through the
`NumberService` given to the constructor. Errors are JSON objects
``{"error": <code>, "message": <text>}`` with a 4xx status; an unexpected
exception is logged with its traceback and answered with a bare 500.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import Any, TypeVar

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from numd.http.dashboard import Dashboard
from numd.http.guard import (
    Guard,
    GuardedChannel,
    GuardedRequest,
    TooManyConnections,
    json_response,
)
from numd.http.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from numd.http.metrics import Metrics
from numd.messagelog import MessageLog
from numd.service import INT64_MAX, INT64_MIN, NumberService
from numd.stats import Stats

API_PREFIX = "/api/v1"
DEFAULT_LIMIT = 100
"""Values or clients in one page when the request gives no ``limit``."""
MAX_LIMIT = 1000
"""The largest ``limit`` accepted, so a huge list is never sent whole by accident."""
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

JSON_TYPE = b"application/json"
LEGACY_TYPE = b"text/html; charset=utf-8"
LEGACY_PATHS = frozenset({"/get_array", "/add_value", "/clean_array"})

_QUERY_INT = re.compile(rb"-?[0-9]{1,20}")

_app = Klein()
"""The routes of `NumdApi` (bound per instance as ``NumdApi.app``)."""

ReadyCheck = Callable[[], bool]
_Handler = TypeVar("_Handler", bound=Callable[..., Any])


STATE_CHANGING_METHODS = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
LEGACY_STATE_CHANGING_PATHS = frozenset({b"/add_value", b"/clean_array"})


def changes_state(request: IRequest) -> bool:
    """Whether a request may change state: a write method, or a legacy GET that writes."""
    if request.method in STATE_CHANGING_METHODS:
        return True
    path = request.path.split(b"?", 1)[0].rstrip(b"/")  # type: ignore[attr-defined]
    return path in LEGACY_STATE_CHANGING_PATHS


class ApiError(Exception):
    """An error answered as ``{"error": code, "message": message}`` with `status`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


_json = json_response


def _query_int(
    request: IRequest, name: str, default: int | None, low: int, high: int
) -> int | None:
    """The last ``name=`` query value as an integer in low-high, or `default`."""
    raw = request.args.get(name.encode("ascii"))  # type: ignore[attr-defined]
    if not raw:
        return default
    text = raw[-1]
    if _QUERY_INT.fullmatch(text) is None:
        raise ApiError(400, "bad-parameter", f"{name} must be an integer")
    value = int(text)
    if not low <= value <= high:
        raise ApiError(400, "bad-parameter", f"{name} must be between {low} and {high}")
    return value


_JSON_KINDS = {
    bool: "boolean",
    float: "float",
    str: "string",
    type(None): "null",
    list: "nested array",
    dict: "object",
}
"""How `parse_values` names what it got instead of an integer."""


def parse_values(body: bytes) -> list[int]:
    """The integers of a JSON body: one integer, or an array of one or more.

    Raises `ApiError` (400) for bad JSON, booleans, floats, strings, ``null``,
    nested arrays and values outside the 64-bit signed range.
    """
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "bad-json", "the body is not UTF-8") from None
    except (ValueError, RecursionError):
        raise ApiError(400, "bad-json", "the body is not valid JSON") from None
    items = document if isinstance(document, list) else [document]
    if not items:
        raise ApiError(400, "bad-value", "the array is empty; send at least one integer")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            kind = _JSON_KINDS.get(type(item), type(item).__name__)
            raise ApiError(
                400,
                "bad-value",
                f"expected an integer or an array of integers, got a {kind}",
            )
        if not INT64_MIN <= item <= INT64_MAX:
            raise ApiError(400, "bad-value", f"{item} is outside the 64-bit signed range")
    return items


class _CappedBody(io.BytesIO):
    """A request body file that keeps at most ``cap + 1`` bytes (enough to see overflow)."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self._room = cap + 1

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self._room > 0:
            kept = data[: self._room]
            self._room -= len(kept)
            super().write(kept)
        return len(data)


class ApiSite(Site):
    """A `Site` that refuses big bodies, slow requests and connections past its cap early.

    See `numd.http.guard` for the wire-level checks: every request must arrive
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
            os.fsdecode(path), rotateLength=10 * 1024 * 1024, maxRotatedFiles=5
        )

    def getContentFile(self, length: int | None) -> io.BytesIO:
        """Twisted's hook for where a request body goes: a capped in-memory file."""
        return _CappedBody(self.max_body)

    def getResourceFor(self, request: IRequest) -> IResource:
        """The API, or a JSON 400 for a path that is not UTF-8 (Klein would answer in plain text)."""
        try:
            for segment in request.postpath:  # type: ignore[attr-defined]
                segment.decode("utf-8")
        except UnicodeDecodeError:
            return _BadPath()
        return super().getResourceFor(request)  # type: ignore[no-any-return]


class _BadPath(Resource):
    """Answers any request with a JSON 400: the path is not valid UTF-8."""

    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        return _json(
            request,
            {"error": "bad-path", "message": "the path is not valid UTF-8"},
            400,
        )


def _route(url: str, *methods: str) -> Callable[[_Handler], _Handler]:
    """`NumdApi.app.route` plus counting the request under the route's pattern."""

    label = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", url)

    def decorate(handler: _Handler) -> _Handler:
        @functools.wraps(handler)
        def counted(self: NumdApi, request: IRequest, **kwargs: Any) -> Any:
            self._count(request, label)
            return handler(self, request, **kwargs)

        return _app.route(url, methods=list(methods))(counted)  # type: ignore[return-value]

    return decorate


class NumdApi:
    """The HTTP API of one numd daemon.

    `legacy_routes` turns on the older server's plain-text routes (they change
    state on GET, so they are off by default). `ready_checks` names the checks
    that ``/readyz`` runs besides the message log, e.g. one per listener; a false
    one makes numd ``not-ready``. `degraded_checks` names those that, when false,
    leave numd serving but ``degraded`` (the store's, like the message log's).
    `dashboard` serves the live page and its data (`numd.http.dashboard`); without
    one, its routes answer 404.
    """

    app = _app
    log = Logger()

    def __init__(
        self,
        service: NumberService,
        *,
        message_log: MessageLog | None = None,
        metrics: Metrics | None = None,
        legacy_routes: bool = False,
        max_body: int = DEFAULT_MAX_BODY,
        ready_checks: Mapping[str, ReadyCheck] | None = None,
        degraded_checks: Mapping[str, ReadyCheck] | None = None,
        token: str | None = None,
        allowed_hosts: Iterable[str] = (),
        cors_origins: Iterable[str] = (),
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        dashboard: Dashboard | None = None,
        access_log: str | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.service = service
        self.message_log = message_log
        self.metrics = metrics if metrics is not None else Metrics(service, message_log)
        self.legacy_routes = legacy_routes
        self.max_body = max_body
        self.ready_checks = dict(ready_checks or {})
        self.degraded_checks = dict(degraded_checks or {})
        self.token = token
        self.allowed_hosts = tuple(allowed_hosts)
        self.cors_origins = tuple(cors_origins)
        self.request_timeout = request_timeout
        self.dashboard = dashboard
        self.access_log = access_log
        self.max_connections = max_connections
        self._openapi = _openapi_document(legacy_routes)

    def resource(self) -> IResource:
        """The Klein resource serving every route."""
        return self.app.resource()

    def guarded_resource(self) -> IResource:
        """The routes behind the Host allowlist, the token check and CORS."""
        return Guard(
            self.resource(),
            changes_state=changes_state,
            token=self.token,
            allowed_hosts=self.allowed_hosts,
            cors_origins=self.cors_origins,
        )

    def site(self, reactor: IReactorTime | None = None) -> ApiSite:
        """A `Site` for this API: guarded routes, bodies capped at `max_body`, deadlines, a connection cap.

        Its connection and refusal counts are exported in ``/metrics`` under ``protocol="http"``.
        """
        kwargs: dict[str, Any] = {} if reactor is None else {"reactor": reactor}
        site = ApiSite(
            self.guarded_resource(),
            max_body=self.max_body,
            request_timeout=self.request_timeout,
            access_log=self.access_log,
            max_connections=self.max_connections,
            **kwargs,
        )
        self.metrics.add_stats("http", site.stats)
        return site

    # -- plumbing ------------------------------------------------------------------

    def _count(self, request: IRequest, route: str) -> None:
        if getattr(request, "_numd_route", None) is not None:
            return
        request._numd_route = route  # type: ignore[attr-defined]
        counter = self.metrics.http_requests

        def finished(result: object) -> None:
            counter[(route, request.code)] += 1  # type: ignore[attr-defined]

        request.notifyFinish().addBoth(finished)  # type: ignore[attr-defined]

    def _check_body_size(self, request: IRequest) -> None:
        content = request.content
        if content is None:
            return
        position = content.tell()
        size = content.seek(0, io.SEEK_END)
        content.seek(position)
        if size > self.max_body:
            raise ApiError(413, "body-too-large", f"the body is larger than {self.max_body} bytes")

    def _when_stored(self, body: bytes) -> bytes | Deferred[bytes]:
        """`body`, once the change just made is stored (at once without a store).

        If storing fails the answer is 503: the change is in memory but may not
        survive a restart.
        """
        durable = self.service.when_durable()
        if durable is None:
            return body

        def failed(failure: Failure) -> bytes | Failure:
            if failure.check(CancelledError):
                return failure  # the client went away; Klein drops the answer
            self.log.failure("storing a change failed", failure)
            raise ApiError(
                503,
                "not-stored",
                "the change was made but could not be stored; it may be lost on restart",
            )

        return durable.addCallbacks(lambda _: body, failed)

    def _require_legacy(self) -> None:
        if not self.legacy_routes:
            raise NotFound()

    # -- the sorted list -------------------------------------------------------------

    @_route(API_PREFIX + "/values", "GET")
    def get_values(self, request: IRequest) -> bytes:
        """One page of the sorted list, optionally restricted to min <= value <= max."""
        offset = _query_int(request, "offset", 0, 0, INT64_MAX)
        limit = _query_int(request, "limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
        low = _query_int(request, "min", None, INT64_MIN, INT64_MAX)
        high = _query_int(request, "max", None, INT64_MIN, INT64_MAX)
        assert offset is not None and limit is not None
        matched, page = self.service.values_page(offset, limit, low, high)
        return _json(
            request,
            {
                "size": self.service.list_size,
                "matched": matched,
                "offset": offset,
                "limit": limit,
                "values": page,
            },
        )

    @_route(API_PREFIX + "/values", "POST")
    def add_values(self, request: IRequest) -> bytes | Deferred[bytes]:
        """Add the JSON body's integer(s), or one random 1000-10000 with no body."""
        self._check_body_size(request)
        body = request.content.read() if request.content is not None else b""
        if body.strip():
            added = self.service.merge(parse_values(body))
        else:
            added = [self.service.add_random()]
        return self._when_stored(_json(request, {"added": added, "size": self.service.list_size}))

    @_route(API_PREFIX + "/values", "DELETE")
    def clear_values(self, request: IRequest) -> bytes | Deferred[bytes]:
        """Empty the sorted list."""
        removed = self.service.list_size
        self.service.clear()
        return self._when_stored(
            _json(request, {"removed": removed, "size": self.service.list_size})
        )

    # -- the registry ----------------------------------------------------------------

    @_route(API_PREFIX + "/clients", "GET")
    def get_clients(self, request: IRequest) -> bytes:
        """One page of the client registry, ordered by client ID."""
        offset = _query_int(request, "offset", 0, 0, INT64_MAX)
        limit = _query_int(request, "limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
        assert offset is not None and limit is not None
        return _json(
            request,
            {
                "total": self.service.known_count,
                "offset": offset,
                "limit": limit,
                "clients": [r.as_dict() for r in self.service.clients_page(offset, limit)],
            },
        )

    @_route(API_PREFIX + "/clients/<int:client_id>", "GET")
    def get_client(self, request: IRequest, client_id: int) -> bytes:
        """One client's record, or 404 for an ID the registry has never seen."""
        record = self.service.client(client_id)
        if record is None:
            raise ApiError(404, "unknown-client", f"no client with ID {client_id}")
        return _json(request, record.as_dict())

    # -- operations --------------------------------------------------------------------

    @_route("/healthz", "GET")
    def healthz(self, request: IRequest) -> bytes:
        """The process is alive and its reactor answers."""
        return _json(request, {"status": "ok"})

    @_route("/readyz", "GET")
    def readyz(self, request: IRequest) -> bytes:
        """Every listener is up, the store stores and the message log is writable (else 503).

        The status is ``ready``, ``not-ready`` (a listener is down) or
        ``degraded`` (serving, but changes are not being stored or the message
        log is dropping records); ``checks`` says which check is false.
        """
        checks = {name: bool(check()) for name, check in sorted(self.ready_checks.items())}
        degraded = {name: bool(check()) for name, check in sorted(self.degraded_checks.items())}
        if self.message_log is not None:
            degraded["message_log_writable"] = self.message_log.writable
        if not all(checks.values()):
            status = "not-ready"
        elif not all(degraded.values()):
            status = "degraded"
        else:
            status = "ready"
        checks.update(degraded)
        return _json(
            request, {"status": status, "checks": checks}, 200 if status == "ready" else 503
        )

    @_route("/metrics", "GET")
    def metrics_text(self, request: IRequest) -> bytes:
        """Prometheus text exposition, read from live state on the reactor thread."""
        request.setHeader(b"Content-Type", METRICS_CONTENT_TYPE.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return self.metrics.render()

    @_route("/openapi.json", "GET")
    def openapi(self, request: IRequest) -> bytes:
        """The OpenAPI 3 document of the routes this daemon serves."""
        request.setHeader(b"Content-Type", JSON_TYPE)
        return self._openapi

    # -- the dashboard (numd.http.dashboard) -----------------------------------------------------

    def _dashboard(self) -> Dashboard:
        if self.dashboard is None:
            raise NotFound()
        return self.dashboard

    @_route("/", "GET")
    def dashboard_page(self, request: IRequest) -> bytes:
        """The live dashboard page."""
        return self._dashboard().static(request, "index.html")

    @_route("/static/dashboard.css", "GET")
    def dashboard_css(self, request: IRequest) -> bytes:
        """The dashboard's style sheet."""
        return self._dashboard().static(request, "dashboard.css")

    @_route("/static/dashboard.js", "GET")
    def dashboard_js(self, request: IRequest) -> bytes:
        """The dashboard's script."""
        return self._dashboard().static(request, "dashboard.js")

    @_route(API_PREFIX + "/snapshot", "GET")
    def snapshot(self, request: IRequest) -> bytes:
        """Clients, totals and the list's histogram, as the event stream starts with."""
        return _json(request, self._dashboard().snapshot())

    @_route(API_PREFIX + "/events", "GET")
    def events(self, request: IRequest) -> Deferred[bytes] | bytes:
        """Server-Sent Events: a snapshot, then the coalesced changes; 503 past the stream cap."""
        dashboard = self._dashboard()
        stream = dashboard.open_stream(request)
        if stream is None:
            request.setHeader(b"Retry-After", b"5")
            raise ApiError(
                503,
                "too-many-streams",
                f"{dashboard.max_streams} event streams are open already; try again later",
            )
        return stream

    # -- the older server's routes -------------------------------------------------------

    @_route("/get_array", "GET")
    def legacy_get_array(self, request: IRequest) -> bytes:
        """The whole sorted list, as the older server printed it."""
        self._require_legacy()
        return _legacy(
            request,
            "REST API Server[EndPoint = get_array] response : "
            f"Array Size: {self.service.list_size}, Array: {_old_repr(self.service)}",
        )

    @_route("/add_value", "GET", "POST")
    def legacy_add_value(self, request: IRequest) -> bytes | Deferred[bytes]:
        """Add one random integer in 1000-10000, as the older server did."""
        self._require_legacy()
        value = self.service.add_random()
        text = (
            "REST API Server[EndPoint = add_value] response : "
            f"Added random integer: {value}, New Size: {self.service.list_size}, "
            f"New Array: {_old_repr(self.service)}"
        )
        return self._when_stored(_legacy(request, text))

    @_route("/clean_array", "GET", "DELETE")
    def legacy_clean_array(self, request: IRequest) -> bytes | Deferred[bytes]:
        """Empty the sorted list, as the older server did."""
        self._require_legacy()
        self.service.clear()
        text = (
            "REST API Server [EndPoint = clean_array] : "
            f"Cleansed int array, New Size: {self.service.list_size}, "
            f"New Array: {_old_repr(self.service)}"
        )
        return self._when_stored(_legacy(request, text))

    # -- errors ------------------------------------------------------------------------------

    @app.handle_errors(ApiError)
    def _api_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, ApiError)
        return _json(request, {"error": error.code, "message": error.message}, error.status)

    @app.handle_errors(HTTPException)
    def _http_error(self, request: IRequest, failure: Failure) -> bytes:
        self._count(request, "(unmatched)")
        error = failure.value
        assert isinstance(error, HTTPException)
        path = request.path.decode("utf-8", "replace")  # type: ignore[attr-defined]
        if isinstance(error, MethodNotAllowed) and not (
            path in LEGACY_PATHS and not self.legacy_routes
        ):
            allowed = sorted(error.valid_methods or ())
            request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
            method = request.method.decode("ascii", "replace")  # type: ignore[attr-defined]
            return _json(
                request,
                {
                    "error": "method-not-allowed",
                    "message": f"{method} is not allowed here; use {', '.join(allowed)}",
                },
                405,
            )
        if isinstance(error, (NotFound, MethodNotAllowed)):
            return _json(request, {"error": "not-found", "message": "no such route"}, 404)
        status = error.code or 500
        for name, value in error.get_response().headers.items():
            if name.lower() == "location":
                request.setHeader(b"Location", value.encode("utf-8"))
        return _json(
            request,
            {"error": "http-error", "message": error.description or error.name},
            status,
        )

    @app.handle_errors(Exception)
    def _unexpected_error(self, request: IRequest, failure: Failure) -> bytes:
        self._count(request, "(unmatched)")
        self.log.failure(
            "unexpected error answering {method} {path}",
            failure,
            method=request.method,  # type: ignore[attr-defined]
            path=request.path,  # type: ignore[attr-defined]
        )
        return _json(request, {"error": "internal", "message": "internal server error"}, 500)


def _old_repr(service: NumberService) -> str:
    """The list as the older server printed its `SortedList`: ``SortedList([1, 2, 3])``."""
    return f"SortedList({service.all_values()!r})"


def _legacy(request: IRequest, text: str) -> bytes:
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", LEGACY_TYPE)
    return text.encode("utf-8")


def _openapi_document(legacy_routes: bool) -> bytes:
    """The packaged OpenAPI document, without the legacy paths unless they are served."""
    text = resources.files("numd.http").joinpath("openapi.json").read_text("utf-8")
    document = json.loads(text)
    if not legacy_routes:
        document["paths"] = {
            path: item
            for path, item in document["paths"].items()
            if not item.get("x-numd-legacy", False)
        }
    return json.dumps(document, indent=2).encode("utf-8") + b"\n"
