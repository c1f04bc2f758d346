"""Protections in front of the HTTP API: Host allowlist, bearer token, CORS, body cap, deadlines.

Two layers, so each check happens as early as it can:

- `GuardedRequest` works on the wire: a body announced or grown past the cap
  gets 413 and the connection is closed without reading the rest, and a request
  whose line, headers and body take longer than the request timeout (a slow
  loris) gets 408 and is closed.
- `Guard` wraps the API resource: a Host header that is not a loopback name or a
  configured one gets 403 (against DNS rebinding); with a token set, every
  request that changes state must carry ``Authorization: Bearer <token>``
  (compared in constant time) or gets 401 with ``WWW-Authenticate``; CORS
  headers are sent only for configured origins.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from numd.timers import cancel

JSON_TYPE = b"application/json"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def json_response(request: IRequest, body: object, status: int = 200) -> bytes:
    """Set the status and JSON headers on `request`; return `body` as JSON bytes."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE)
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, separators=(",", ":")).encode("utf-8") + b"\n"


def _raw_json_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": code, "message": message}).encode("utf-8") + b"\n"
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


# -- the wire: body cap and request deadline ---------------------------------------


class GuardedRequest(Request):
    """A request refused as early as possible when too big or too slow.

    Its site must have `max_body` (bytes) and `request_timeout` (seconds) and a
    `reactor` (`twisted.web.server.Site` has one).
    """

    log = Logger()
    _refused = False
    _body_bytes = 0
    _deadline: IDelayedCall | None = None

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        site = channel.site
        self._max_body: int = site.max_body
        self._deadline = site.reactor.callLater(site.request_timeout, self._too_slow)

    def gotLength(self, length: int | None) -> None:
        """Refuse at once a body whose announced length is over the cap."""
        if length is not None and length > self._max_body:
            self._refuse(413, "Payload Too Large", "body-too-large",
                         f"the body is larger than {self._max_body} bytes")  # fmt: skip
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """Count the body as it arrives; refuse it the moment it passes the cap."""
        if self._refused:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self._max_body:
            self._refuse(413, "Payload Too Large", "body-too-large",
                         f"the body is larger than {self._max_body} bytes")  # fmt: skip
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The whole request arrived in time: stop its deadline and handle it."""
        self._cancel_deadline()
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        """Stop the deadline of a request whose connection went away."""
        self._cancel_deadline()
        super().connectionLost(reason)

    def _too_slow(self) -> None:
        self._deadline = None
        self.log.info("closing a request from {peer}: not received within the request timeout",
                      peer=self.getClientAddress())  # fmt: skip
        self._refuse(408, "Request Timeout", "request-timeout",
                     "the request line, headers and body did not all arrive in time")  # fmt: skip

    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        if self._refused:
            return
        self._refused = True
        self._cancel_deadline()
        transport = self.channel.transport
        transport.write(_raw_json_response(status, reason, code, message))
        transport.loseConnection()

    def _cancel_deadline(self) -> None:
        cancel(self._deadline)
        self._deadline = None


# -- the resource: Host, token, CORS ------------------------------------------------


def host_name(host_header: bytes | None) -> str | None:
    """The name part of a Host header (no port, no brackets), lower-cased; None if absent."""
    if not host_header:
        return None
    host = host_header.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host


def is_loopback_name(name: str) -> bool:
    """Whether `name` is a loopback address or a loopback host name."""
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Guard(Resource):
    """Checks Host, the bearer token and CORS before the wrapped (leaf) resource renders."""

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        wrapped: IResource,
        *,
        changes_state: Callable[[IRequest], bool],
        token: str | None = None,
        allowed_hosts: Iterable[str] = (),
        cors_origins: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._changes_state = changes_state
        self._token = token.encode("utf-8") if token else None
        hosts = {h.lower() for h in allowed_hosts}
        self._any_host = "*" in hosts
        self._allowed_hosts = frozenset(hosts - {"*"})
        self._cors_origins = frozenset(cors_origins)

    def host_allowed(self, request: IRequest) -> bool:
        """Loopback names, the configured names, or any with ``*``."""
        if self._any_host:
            return True
        name = host_name(request.getHeader(b"host"))
        return name is not None and (is_loopback_name(name) or name in self._allowed_hosts)

    def authorized(self, request: IRequest) -> bool:
        """True without a token; else whether the request carries it (constant-time check)."""
        if self._token is None:
            return True
        header = request.getHeader(b"authorization") or b""
        scheme, _, credentials = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credentials.strip(), self._token)

    def render(self, request: IRequest) -> Any:
        """Answer 403/401/CORS preflight here, or let the API answer."""
        if not self.host_allowed(request):
            host = request.getHeader(b"host")
            self.log.warn("refused a request for Host {host!r}", host=host)
            return json_response(
                request,
                {"error": "host-not-allowed",
                 "message": "this Host is not served here (allow it with --allowed-host)"},
                403,
            )  # fmt: skip
        origin = request.getHeader(b"origin")
        cors = origin is not None and origin.decode("latin-1") in self._cors_origins
        if cors:
            assert origin is not None
            request.setHeader(b"Access-Control-Allow-Origin", origin)
            request.setHeader(b"Vary", b"Origin")
            if request.method == b"OPTIONS" and request.getHeader(b"access-control-request-method"):
                request.setResponseCode(204)
                request.setHeader(b"Access-Control-Allow-Methods", b"GET, POST, DELETE")
                request.setHeader(b"Access-Control-Allow-Headers", b"Authorization, Content-Type")
                request.setHeader(b"Access-Control-Max-Age", b"600")
                return b""
        if self._changes_state(request) and not self.authorized(request):
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="numd"')
            return json_response(
                request,
                {"error": "unauthorized",
                 "message": "this request changes state: send Authorization: Bearer <token>"},
                401,
            )  # fmt: skip
        return self._wrapped.render(request)
