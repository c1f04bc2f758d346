"""Test clients for numd's HTTP side: raw connections in memory or over loopback, parsed answers."""

from __future__ import annotations

import json
import socket
from typing import Any

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransportWithDisconnection

from numd.http.answers import json_body
from numd.http.site import ApiSite


def call(resource: Any, method: str, url: str, **kwargs: Any) -> tuple[int, Any, Any]:
    """Status, headers and body text of one request through StubTreq."""
    stub = StubTreq(resource)
    results: list[Any] = []
    d = stub.request(method, url, **kwargs)
    d.addCallback(lambda r: r.text().addCallback(lambda body: (r.code, r.headers, body)))
    d.addBoth(results.append)
    stub.flush()
    return results[0]  # type: ignore[no-any-return]


async def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the non-blocking `sock` reads until the server closes (5 s at most)."""
    received = b""
    deadline = reactor.seconds() + 5
    while reactor.seconds() < deadline:
        await deferLater(reactor, 0.01)
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            continue
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server did not close; got {received!r}")


class Wire:
    """One HTTP connection to a site, in memory: bytes in, the raw answer out."""

    def __init__(self, site: ApiSite, port: int = 40000) -> None:
        self.transport = StringTransportWithDisconnection()
        self.protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        """The client sends `data` (in one read)."""
        self.protocol.dataReceived(data)

    @property
    def closed(self) -> bool:
        """Whether the server closed (or is closing) the connection."""
        return not self.transport.connected or bool(self.transport.disconnecting)

    def answers(self) -> list[Answer]:
        """Every complete answer written so far."""
        return parse_answers(self.transport.value())


class Answer:
    """One HTTP response: status, headers (lower-case names) and body (de-chunked)."""

    def __init__(self, status: int, headers: dict[bytes, list[bytes]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def header(self, name: bytes) -> bytes | None:
        """The only value of header `name` (None if absent; an error if repeated)."""
        values = self.headers.get(name.lower(), [])
        assert len(values) <= 1, (name, values)
        return values[0] if values else None

    def json(self) -> Any:
        """The body as JSON, which must be numd's compact encoding."""
        document = json.loads(self.body)
        assert self.body == json_body(document), self.body
        return document

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.headers!r} {self.body!r}>"


def parse_answers(raw: bytes) -> list[Answer]:
    """The complete responses in `raw`, in order."""
    answers = []
    while b"\r\n\r\n" in raw:
        head, raw = raw.split(b"\r\n\r\n", 1)
        status_line, *lines = head.split(b"\r\n")
        version, status, _reason = status_line.split(b" ", 2)
        assert version == b"HTTP/1.1", status_line
        headers: dict[bytes, list[bytes]] = {}
        for line in lines:
            name, _, value = line.partition(b": ")
            headers.setdefault(name.lower(), []).append(value)
        if headers.get(b"transfer-encoding") == [b"chunked"]:
            body = b""
            while True:
                size_line, raw = raw.split(b"\r\n", 1)
                size = int(size_line, 16)
                body, raw = body + raw[:size], raw[size + 2 :]
                if size == 0:
                    break
        else:
            length = int(headers.get(b"content-length", [b"0"])[0])
            assert len(raw) >= length, "incomplete body"
            body, raw = raw[:length], raw[length:]
        answers.append(Answer(int(status), headers, body))
    return answers


def assert_json_error(answer: Answer, status: int, code: str, *, closes: bool = True) -> None:
    """`answer` is numd's JSON error `code` with `status` (and Connection: close if `closes`)."""
    assert answer.status == status, answer
    assert answer.header(b"Content-Type") == b"application/json", answer
    document = answer.json()
    assert set(document) == {"error", "message"} and document["error"] == code, document
    assert document["message"]
    if closes:
        assert answer.header(b"Connection") == b"close", answer


GET = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
POST = b"POST /api/v1/values HTTP/1.1\r\nHost: 127.0.0.1\r\n"
