"""The API resource's guard: which Host may be served, who may change state, which origins.

`Guard` wraps the API's Klein resource, so these checks run once a request is
complete and parsed (the connection-level ones, in `numd.http.channel`, come
first):

- more than one Host header, or a Host that is not a host name or address with
  an optional port (userinfo such as ``localhost:80@evil.example`` included),
  gets 400; a Host that is not a loopback name or a configured one gets 403:
  a web page's script that reached numd through DNS rebinding names the
  attacker's host, not numd's;
- with a token set, every request that changes state must carry
  ``Authorization: Bearer <token>`` (compared in constant time) or gets 401
  with ``WWW-Authenticate``; which requests change state is the API's to say
  (`numd.http.api.changes_state`);
- CORS headers are sent only for configured origins, so by default no other
  site's script can read an answer.

Its answers have the shape of every numd error (`numd.http.answers`).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from numd.http.answers import json_response

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})

_HOST = re.compile(rb"(?:\[[0-9A-Za-z:.%_~-]+\]|[0-9A-Za-z.%_~!$&'()*+,;=-]*)(?::[0-9]*)?")
"""RFC 9110's ``Host = uri-host [ ":" port ]``: a name or an address (IPv6 in brackets), no userinfo."""


def host_problem(values: Sequence[bytes] | None) -> str | None:
    """What is wrong with a request's Host header lines (`values`), or None if nothing is.

    More than one Host header, userinfo (anything with ``@``, such as
    ``localhost:80@evil.example``, which must not pass as ``localhost``) and
    anything that is not a host name or address with an optional port are
    wrong. No Host at all is left to the allowlist.
    """
    if not values:
        return None
    if len(values) > 1:
        return "the request has more than one Host header"
    value = values[0]
    if b"@" in value:
        return "the Host header has userinfo (@); send only a host name or address and a port"
    if _HOST.fullmatch(value) is None:
        return "the Host header is not a host name or address with an optional port"
    return None


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
    """Checks Host, the bearer token and CORS before the wrapped (leaf) resource renders.

    A malformed or repeated Host is refused even with ``*`` in the allowed hosts.
    """

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
        """Answer 400/403/401/CORS preflight here, or let the API answer."""
        hosts = request.requestHeaders.getRawHeaders(b"host")
        problem = host_problem(hosts)
        if problem is not None:
            self.log.info("refused a request with Host {hosts!r}: {problem}",
                          hosts=[h.decode("latin-1") for h in hosts or ()], problem=problem)  # fmt: skip
            return json_response(request, {"error": "bad-host", "message": problem}, 400)
        if not self.host_allowed(request):
            host = request.getHeader(b"host")
            self.log.warn("refused a request for Host {host!r}",
                          host=None if host is None else host.decode("latin-1"))  # fmt: skip
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
