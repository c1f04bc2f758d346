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
exception is logged with its traceback and answered with a bare 500. `NumdApi.site`
serves the routes on an `ApiSite` (`numd.http.site`), behind the guards.
"""

from __future__ import annotations

import functools
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import Any, TypeVar, cast

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from numd.http.answers import JSON_TYPE, ApiError, json_response, legacy_repr, legacy_response
from numd.http.dashboard import Dashboard
from numd.http.guard import Guard
from numd.http.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from numd.http.metrics import Metrics
from numd.http.parsing import parse_values, query_int
from numd.http.site import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_TIMEOUT,
    ApiSite,
)
from numd.messagelog import MessageLog
from numd.service import INT64_MAX, INT64_MIN, NumberService, StateUnavailable

API_PREFIX = "/api/v1"
DEFAULT_LIMIT = 100
"""Values or clients in one page when the request gives no ``limit``."""
MAX_LIMIT = 1000
"""The largest ``limit`` accepted, so a huge list is never sent whole by accident."""
LEGACY_PATHS = frozenset({"/get_array", "/add_value", "/clean_array"})

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
    path = request.path.split(b"?", 1)[0].rstrip(b"/")
    return path in LEGACY_STATE_CHANGING_PATHS


def _route(url: str, *methods: str) -> Callable[[_Handler], _Handler]:
    """`NumdApi.app.route` plus counting the request under the route's pattern."""

    label = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", url)

    def decorate(handler: _Handler) -> _Handler:
        @functools.wraps(handler)
        def counted(self: NumdApi, request: IRequest, **kwargs: Any) -> Any:
            self._count(request, label)
            return handler(self, request, **kwargs)

        return _app.route(url, methods=list(methods))(counted)  # type: ignore[return-value]  # Klein types its wrapper, not ours

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
        setattr(request, "_numd_route", route)  # noqa: B010 - numd's mark on the request
        served = cast(Request, request)  # `code` and `notifyFinish` are Request's, not IRequest's
        counter = self.metrics.http_requests

        def finished(result: object) -> None:
            counter[(route, served.code)] += 1

        served.notifyFinish().addBoth(finished)

    def _check_body_size(self, request: IRequest) -> None:
        content = request.content
        if content is None:
            return
        position = content.tell()
        size = content.seek(0, io.SEEK_END)
        content.seek(position)
        if size > self.max_body:
            raise ApiError(413, "body-too-large", f"the body is larger than {self.max_body} bytes")

    def _when_stored(self, body: Callable[[], bytes]) -> bytes | Deferred[bytes]:
        """The answer `body()` builds once the change just made is stored (at once without a store).

        Built then, so the shared state (which shows a change once it is applied)
        answers with it. 503 if storing fails (the change may not survive a restart)
        or the shared state could not be reached (the change was not made).
        """
        durable = self.service.when_durable()
        if durable is None:
            return body()

        def failed(failure: Failure) -> bytes | Failure:
            if failure.check(CancelledError):
                return failure  # the client went away; Klein drops the answer
            if failure.check(StateUnavailable):
                raise ApiError(503, "unavailable", f"the change was not made: {failure.value}")
            self.log.failure("storing a change failed", failure)
            raise ApiError(
                503,
                "not-stored",
                "the change was made but could not be stored; it may be lost on restart",
            )

        return durable.addCallbacks(lambda _: body(), failed)

    def _require_legacy(self) -> None:
        if not self.legacy_routes:
            raise NotFound()

    # -- the sorted list -------------------------------------------------------------

    @_route(API_PREFIX + "/values", "GET")
    def get_values(self, request: IRequest) -> bytes:
        """One page of the sorted list, optionally restricted to min <= value <= max."""
        offset = query_int(request, "offset", 0, 0, INT64_MAX)
        limit = query_int(request, "limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
        low = query_int(request, "min", None, INT64_MIN, INT64_MAX)
        high = query_int(request, "max", None, INT64_MIN, INT64_MAX)
        assert offset is not None and limit is not None
        matched, page = self.service.values_page(offset, limit, low, high)
        return json_response(
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
        return self._when_stored(
            lambda: json_response(request, {"added": added, "size": self.service.list_size})
        )

    @_route(API_PREFIX + "/values", "DELETE")
    def clear_values(self, request: IRequest) -> bytes | Deferred[bytes]:
        """Empty the sorted list."""
        removed = self.service.list_size
        self.service.clear()
        return self._when_stored(
            lambda: json_response(request, {"removed": removed, "size": self.service.list_size})
        )

    # -- the registry ----------------------------------------------------------------

    @_route(API_PREFIX + "/clients", "GET")
    def get_clients(self, request: IRequest) -> bytes:
        """One page of the client registry, ordered by client ID."""
        offset = query_int(request, "offset", 0, 0, INT64_MAX)
        limit = query_int(request, "limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
        assert offset is not None and limit is not None
        return json_response(
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
        return json_response(request, record.as_dict())

    # -- operations --------------------------------------------------------------------

    @_route("/healthz", "GET")
    def healthz(self, request: IRequest) -> bytes:
        """The process is alive and its reactor answers."""
        return json_response(request, {"status": "ok"})

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
        return json_response(
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
        return json_response(request, self._dashboard().snapshot())

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
        return legacy_response(
            request,
            "REST API Server[EndPoint = get_array] response : "
            f"Array Size: {self.service.list_size}, Array: {legacy_repr(self.service.all_values())}",
        )

    @_route("/add_value", "GET", "POST")
    def legacy_add_value(self, request: IRequest) -> bytes | Deferred[bytes]:
        """Add one random integer in 1000-10000, as the older server did."""
        self._require_legacy()
        value = self.service.add_random()
        return self._when_stored(
            lambda: legacy_response(
                request,
                "REST API Server[EndPoint = add_value] response : "
                f"Added random integer: {value}, New Size: {self.service.list_size}, "
                f"New Array: {legacy_repr(self.service.all_values())}",
            )
        )

    @_route("/clean_array", "GET", "DELETE")
    def legacy_clean_array(self, request: IRequest) -> bytes | Deferred[bytes]:
        """Empty the sorted list, as the older server did."""
        self._require_legacy()
        self.service.clear()
        return self._when_stored(
            lambda: legacy_response(
                request,
                "REST API Server [EndPoint = clean_array] : "
                f"Cleansed int array, New Size: {self.service.list_size}, "
                f"New Array: {legacy_repr(self.service.all_values())}",
            )
        )

    # -- errors ------------------------------------------------------------------------------

    @app.handle_errors(ApiError)
    def _api_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, ApiError)
        return json_response(request, {"error": error.code, "message": error.message}, error.status)

    @app.handle_errors(HTTPException)
    def _http_error(self, request: IRequest, failure: Failure) -> bytes:
        self._count(request, "(unmatched)")
        error = failure.value
        assert isinstance(error, HTTPException)
        path = request.path.decode("utf-8", "replace")
        if isinstance(error, MethodNotAllowed) and not (
            path in LEGACY_PATHS and not self.legacy_routes
        ):
            allowed = sorted(error.valid_methods or ())
            request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
            method = request.method.decode("ascii", "replace")
            return json_response(
                request,
                {
                    "error": "method-not-allowed",
                    "message": f"{method} is not allowed here; use {', '.join(allowed)}",
                },
                405,
            )
        if isinstance(error, (NotFound, MethodNotAllowed)):
            return json_response(request, {"error": "not-found", "message": "no such route"}, 404)
        status = error.code or 500
        for name, value in error.get_response().headers.items():
            if name.lower() == "location":
                request.setHeader(b"Location", value.encode("utf-8"))
        return json_response(
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
            method=request.method,
            path=request.path,
        )
        return json_response(
            request, {"error": "internal", "message": "internal server error"}, 500
        )


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
