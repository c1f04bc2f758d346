"""The baseline: a minimal Twisted `LineReceiver` server speaking numd's tokens.

This is the "naive Twisted server" every numd figure is compared with. It answers
the same tokens as numd, the plain way, with nothing else:

- the first integer on a connection (the ID) gets ``0``; later integers are
  reports and get no reply;
- ``even`` / ``odd`` get a random even (0-98) / odd (1-99) number;
- ``[a,b,...]`` is merged into one shared `SortedList` and answered with the
  sorted list, cut at the same reply cap as numd (``[1,2,...]/N``);
- anything else gets ``error:bad-token``.

No registry, no message log, no limits, Twisted's defaults everywhere
(listen backlog 50, Nagle on): ``python bench/baseline_server.py --port 2104``.

With ``--http-port``, a minimal Klein app serves the same list as JSON
(``GET /api/v1/values?offset=&limit=`` and ``POST /api/v1/values`` with a JSON
integer or array), the baseline for numd's HTTP API figures.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any

from sortedcontainers import SortedList
from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

REPLY_CAP = 64 * 1024


def format_values(values: SortedList, cap: int = REPLY_CAP) -> bytes:
    """The sorted list as one token of at most `cap` bytes, as numd cuts it."""
    size = len(values)
    body = ",".join(map(str, values.islice(0, min(size, cap // 2))))
    if len(body) + 2 <= cap and cap // 2 >= size:
        return b"[" + body.encode() + b"]"
    suffix = f",...]/{size}"
    body = body[: body.rfind(",", 0, cap - len(suffix))]
    return ("[" + body + suffix).encode()


class Baseline(LineReceiver):
    """One connection: tokens are ended by a space."""

    delimiter = b" "
    MAX_LENGTH = 32 * 1024
    registered = False

    def lineReceived(self, line: bytes) -> None:
        """Answer one token."""
        if not line:
            return
        factory = self.factory
        if line == b"even":
            self.sendLine(b"%d" % (2 * factory.rng.randrange(50)))
        elif line == b"odd":
            self.sendLine(b"%d" % (2 * factory.rng.randrange(50) + 1))
        elif line[:1] == b"[":
            try:
                values = [int(v) for v in line[1:-1].split(b",")]
            except ValueError:
                self.sendLine(b"error:bad-array")
                return
            factory.values.update(values)
            self.sendLine(format_values(factory.values))
        else:
            try:
                int(line)
            except ValueError:
                self.sendLine(b"error:bad-token")
                return
            if not self.registered:
                self.registered = True
                self.sendLine(b"0")


def http_site(values: SortedList) -> Any:
    """A minimal Klein site over `values`: one page per GET, a merge per POST."""
    from klein import Klein
    from twisted.web.server import Site

    app = Klein()

    @app.route("/api/v1/values", methods=["GET"])
    def get_values(request: Any) -> bytes:
        offset = int(request.args.get(b"offset", [b"0"])[0])
        limit = min(int(request.args.get(b"limit", [b"100"])[0]), 1000)
        page = list(values.islice(offset, offset + limit))
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"size": len(values), "offset": offset, "values": page}).encode()

    @app.route("/api/v1/values", methods=["POST"])
    def add_values(request: Any) -> bytes:
        body = json.loads(request.content.read())
        added = body if isinstance(body, list) else [body]
        values.update(added)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"added": added, "size": len(values)}).encode()

    return Site(app.resource())


def main() -> None:
    """Listen on 127.0.0.1 and run until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=2104)
    parser.add_argument("--http-port", type=int, default=0, help="also serve JSON over HTTP")
    args = parser.parse_args()
    factory = Factory.forProtocol(Baseline)
    factory.rng = random.Random()
    factory.values = SortedList()
    reactor.listenTCP(args.port, factory, interface="127.0.0.1")
    if args.http_port:
        reactor.listenTCP(args.http_port, http_site(factory.values), interface="127.0.0.1")
    print(f"baseline listening on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
