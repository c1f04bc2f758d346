"""The HTTP API's routes and errors, driven in memory through a real `Site` with `StubTreq`."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure

from numd.http.api import MAX_LIMIT, NumdApi
from numd.http.site import DEFAULT_MAX_BODY
from numd.messagelog import MessageLog
from numd.service import INT64_MAX, INT64_MIN, NumberService

from .http_client import call

BASE = "http://numd.test"


@dataclass
class Reply:
    """A finished response: status, headers and body."""

    code: int
    headers: Any
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header `name`, decoded, or None."""
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self) -> Any:
        """The body as JSON (the Content-Type must say JSON)."""
        assert self.header("Content-Type") == "application/json"
        return json.loads(self.body)


class Client:
    """Calls the API through `StubTreq` and returns finished `Reply`s synchronously."""

    def __init__(self, api: NumdApi) -> None:
        self.api = api
        self._treq = StubTreq(api.resource())

    def request(self, method: str, path: str, **kwargs: Any) -> Reply:
        """One request; the in-memory server answers it before this returns."""
        results: list[Any] = []
        d = self._treq.request(method, BASE + path, **kwargs)
        d.addCallback(
            lambda response: response.content().addCallback(
                lambda body: Reply(response.code, response.headers, body)
            )
        )
        d.addBoth(results.append)
        self._treq.flush()
        (result,) = results
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def get(self, path: str, **kwargs: Any) -> Reply:
        """GET `path`."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, data: bytes | None = None, **kwargs: Any) -> Reply:
        """POST `data` (raw bytes) to `path`."""
        if data is not None:
            kwargs["data"] = data
        return self.request("POST", path, **kwargs)


@pytest.fixture
def service() -> NumberService:
    """A state service on a fake clock, with a seeded random source."""
    clock = Clock()
    clock.advance(1_700_000_000)
    return NumberService(clock, random.Random(11))


@pytest.fixture
def message_log(tmp_path: Path) -> MessageLog:
    """A message log (not started; it counts as writable)."""
    return MessageLog(str(tmp_path / "messages.log"), Clock())


@pytest.fixture
def make_client(service: NumberService, message_log: MessageLog) -> Callable[..., Client]:
    """Builds a `Client` for a `NumdApi` made with the given keyword arguments."""

    def make(**kwargs: Any) -> Client:
        return Client(NumdApi(service, message_log=message_log, **kwargs))

    return make


@pytest.fixture
def client(make_client: Callable[..., Client]) -> Client:
    """A client of an API with the default settings (no legacy routes)."""
    return make_client()


# -- reading the sorted list ------------------------------------------------------------


def test_get_values_of_an_empty_list(client: Client) -> None:
    """An empty list reads as size 0 and no values, with the default paging echoed."""
    reply = client.get("/api/v1/values")
    assert reply.code == 200
    assert reply.json() == {
        "size": 0,
        "matched": 0,
        "offset": 0,
        "limit": 100,
        "values": [],
    }


def test_get_values_are_sorted_with_duplicates(client: Client, service: NumberService) -> None:
    """Values come back in ascending order, duplicates kept."""
    service.merge([5, -2, 5, 9])
    assert client.get("/api/v1/values").json()["values"] == [-2, 5, 5, 9]


def test_get_values_pages_with_offset_and_limit(client: Client, service: NumberService) -> None:
    """offset skips values and limit bounds the page; size is always the whole list."""
    service.merge(range(10))
    assert client.get("/api/v1/values?offset=3&limit=4").json() == {
        "size": 10,
        "matched": 10,
        "offset": 3,
        "limit": 4,
        "values": [3, 4, 5, 6],
    }
    assert client.get("/api/v1/values?offset=8&limit=4").json()["values"] == [8, 9]
    assert client.get("/api/v1/values?offset=50").json()["values"] == []
    assert client.get("/api/v1/values?limit=0").json()["values"] == []


def test_get_values_default_and_maximum_limit(client: Client, service: NumberService) -> None:
    """Without limit a page holds 100 values; limit may not exceed 1000."""
    service.merge(range(2000))
    assert len(client.get("/api/v1/values").json()["values"]) == 100
    assert len(client.get(f"/api/v1/values?limit={MAX_LIMIT}").json()["values"]) == MAX_LIMIT
    reply = client.get(f"/api/v1/values?limit={MAX_LIMIT + 1}")
    assert reply.code == 400
    assert reply.json()["error"] == "bad-parameter"


def test_get_values_filters_by_min_and_max(client: Client, service: NumberService) -> None:
    """min and max are inclusive bounds; matched counts the values within them."""
    service.merge([1, 3, 3, 5, 7, 9])
    body = client.get("/api/v1/values?min=3&max=7").json()
    assert (body["matched"], body["values"]) == (4, [3, 3, 5, 7])
    assert client.get("/api/v1/values?min=4").json()["values"] == [5, 7, 9]
    assert client.get("/api/v1/values?max=3").json()["values"] == [1, 3, 3]
    body = client.get("/api/v1/values?min=3&max=9&offset=1&limit=2").json()
    assert (body["size"], body["matched"], body["values"]) == (6, 5, [3, 5])


def test_get_values_with_min_above_max_is_empty(client: Client, service: NumberService) -> None:
    """An empty range is not an error: it matches nothing."""
    service.merge([1, 2, 3])
    body = client.get("/api/v1/values?min=3&max=1").json()
    assert (body["matched"], body["values"]) == (0, [])


@pytest.mark.parametrize(
    "query",
    [
        "offset=-1",
        "offset=x",
        "limit=1.5",
        "limit=-1",
        "min=abc",
        "min=",
        f"max={INT64_MAX + 1}",
        f"min={INT64_MIN - 1}",
        "max=" + "9" * 30,
    ],
)
def test_get_values_rejects_bad_parameters(client: Client, query: str) -> None:
    """A parameter that is not an integer in its range gets 400 and a JSON message."""
    reply = client.get(f"/api/v1/values?{query}")
    assert reply.code == 400
    body = reply.json()
    assert body["error"] == "bad-parameter"
    assert query.split("=")[0] in body["message"]


def test_get_values_accepts_the_64_bit_bounds(client: Client, service: NumberService) -> None:
    """min and max may be the extremes of the 64-bit range."""
    service.merge([INT64_MIN, 0, INT64_MAX])
    body = client.get(f"/api/v1/values?min={INT64_MIN}&max={INT64_MAX}").json()
    assert body["values"] == [INT64_MIN, 0, INT64_MAX]


# -- adding values ------------------------------------------------------------------------


def test_post_one_integer(client: Client, service: NumberService) -> None:
    """A JSON integer is added; the answer says what was added and the new size."""
    service.merge([1])
    reply = client.post("/api/v1/values", b"42")
    assert reply.code == 200
    assert reply.json() == {"added": [42], "size": 2}
    assert list(service.values) == [1, 42]


def test_post_an_array_of_integers(client: Client, service: NumberService) -> None:
    """A JSON array is added whole, duplicates kept; `added` keeps the order given."""
    reply = client.post(
        "/api/v1/values", b"[9, 3, 3, -7]", headers={"Content-Type": "application/json"}
    )
    assert reply.json() == {"added": [9, 3, 3, -7], "size": 4}
    assert list(service.values) == [-7, 3, 3, 9]


def test_post_the_64_bit_extremes(client: Client, service: NumberService) -> None:
    """The smallest and largest 64-bit integers are accepted."""
    reply = client.post("/api/v1/values", json.dumps([INT64_MIN, INT64_MAX]).encode())
    assert reply.code == 200
    assert list(service.values) == [INT64_MIN, INT64_MAX]


def test_post_without_body_adds_a_random_value(client: Client, service: NumberService) -> None:
    """No body adds one random integer in 1000-10000, like the older server's add_value."""
    expected = random.Random(11).randint(1000, 10000)
    reply = client.post("/api/v1/values")
    assert reply.json() == {"added": [expected], "size": 1}
    for _ in range(50):
        (value,) = client.post("/api/v1/values", b"  \n").json()["added"]
        assert 1000 <= value <= 10000
    assert len(service.values) == 51


@pytest.mark.parametrize(
    "body,fragment",
    [
        (b"{", "not valid JSON"),
        (b"[1, 2", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"NaN", "float"),
        (b"true", "boolean"),
        (b"[1, false]", "boolean"),
        (b"1.5", "float"),
        (b"[1, 2.0]", "float"),
        (b"1e3", "float"),
        (b'"7"', "string"),
        (b"null", "null"),
        (b'{"values": [1]}', "object"),
        (b"[[1]]", "nested array"),
        (b"[]", "empty"),
        (str(INT64_MAX + 1).encode(), "64-bit"),
        (f"[0, {INT64_MIN - 1}]".encode(), "64-bit"),
        (b"[" * 100_00 + b"]" * 100_00, "not valid JSON"),
    ],
)
def test_post_rejects_bad_bodies(
    client: Client, service: NumberService, body: bytes, fragment: str
) -> None:
    """Bad JSON and anything but 64-bit integers get 400 with a message, and nothing is added."""
    reply = client.post("/api/v1/values", body)
    assert reply.code == 400
    assert reply.json()["error"] in {"bad-json", "bad-value"}
    assert fragment in reply.json()["message"]
    assert len(service.values) == 0


def test_post_body_over_the_cap_is_413(client: Client, service: NumberService) -> None:
    """A body one byte over the cap (64 KiB) gets 413; one at the cap is accepted."""
    at_cap = b"[1]".ljust(DEFAULT_MAX_BODY, b" ")
    assert client.post("/api/v1/values", at_cap).code == 200
    reply = client.post("/api/v1/values", at_cap + b" ")
    assert reply.code == 413
    assert reply.json()["error"] == "body-too-large"
    assert list(service.values) == [1]


def test_body_cap_is_configurable(make_client: Callable[..., Client]) -> None:
    """max_body sets the cap."""
    client = make_client(max_body=10)
    assert client.post("/api/v1/values", b"[1,2,3,4]").code == 200
    assert client.post("/api/v1/values", b"[1,2,3,4,5]").code == 413


# -- clearing -------------------------------------------------------------------------------


def test_delete_clears_the_list(client: Client, service: NumberService) -> None:
    """DELETE empties the list and says how many values went and the new size, 0."""
    service.merge([1, 2, 3])
    reply = client.request("DELETE", "/api/v1/values")
    assert reply.code == 200
    assert reply.json() == {"removed": 3, "size": 0}
    assert len(service.values) == 0


# -- the registry ---------------------------------------------------------------------------


def test_clients_list_is_paged_by_id(client: Client, service: NumberService) -> None:
    """Clients come ordered by ID with every field the registry keeps, paged."""
    for client_id in (30, 4, 5000, 17):
        service.register(client_id)
    service.report(17, 1080)
    service.give(17, "odd")
    service.disconnect(30)
    body = client.get("/api/v1/clients").json()
    assert body["total"] == 4
    assert [c["id"] for c in body["clients"]] == [4, 17, 30, 5000]
    record = body["clients"][1]
    assert record == service.clients[17].as_dict()
    assert set(record) == {"id", "number", "last_given", "connected", "last_seen"}
    assert (record["number"], record["connected"]) == (1080, True)
    assert record["last_given"] % 2 == 1
    assert body["clients"][2]["connected"] is False
    page = client.get("/api/v1/clients?offset=1&limit=2").json()
    assert (page["total"], page["offset"], page["limit"]) == (4, 1, 2)
    assert [c["id"] for c in page["clients"]] == [17, 30]
    assert client.get("/api/v1/clients?limit=1001").code == 400


def test_one_client_by_id(client: Client, service: NumberService) -> None:
    """A known ID answers with its record, last_given null until it was given a number."""
    service.register(5287)
    service.report(5287, 12)
    reply = client.get("/api/v1/clients/5287")
    assert reply.code == 200
    assert reply.json() == {
        "id": 5287,
        "number": 12,
        "last_given": None,
        "connected": True,
        "last_seen": 1_700_000_000.0,
    }


@pytest.mark.parametrize("path", ["/api/v1/clients/9", "/api/v1/clients/10001"])
def test_unknown_client_is_404(client: Client, path: str) -> None:
    """An ID the registry has never seen gets 404 with a JSON message."""
    reply = client.get(path)
    assert reply.code == 404
    assert reply.json() == {
        "error": "unknown-client",
        "message": f"no client with ID {path.rsplit('/', 1)[1]}",
    }


@pytest.mark.parametrize(
    "path", ["/api/v1/clients/abc", "/api/v1/clients/-1", "/nowhere", "/api/v2/values"]
)
def test_unknown_paths_are_json_404(client: Client, path: str) -> None:
    """A path no route matches gets a JSON 404."""
    reply = client.get(path)
    assert reply.code == 404
    assert reply.json() == {"error": "not-found", "message": "no such route"}


# -- methods ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path,allow",
    [
        ("PUT", "/api/v1/values", "DELETE, GET, HEAD, POST"),
        ("PATCH", "/api/v1/values", "DELETE, GET, HEAD, POST"),
        ("POST", "/api/v1/clients", "GET, HEAD"),
        ("DELETE", "/api/v1/clients/3", "GET, HEAD"),
        ("POST", "/healthz", "GET, HEAD"),
        ("OPTIONS", "/readyz", "GET, HEAD"),
        ("TRACE", "/metrics", "GET, HEAD"),
        ("FROB", "/openapi.json", "GET, HEAD"),
    ],
)
def test_wrong_method_is_405_with_allow(client: Client, method: str, path: str, allow: str) -> None:
    """A wrong method gets 405 with an Allow header (not Twisted's 501) and a JSON body."""
    reply = client.request(method, path)
    assert reply.code == 405
    assert reply.header("Allow") == allow
    assert reply.json()["error"] == "method-not-allowed"


def test_head_answers_like_get_without_a_body(client: Client) -> None:
    """HEAD on a GET route gets the same status and headers and no body."""
    reply = client.request("HEAD", "/healthz")
    assert (reply.code, reply.header("Content-Type"), reply.body) == (
        200,
        "application/json",
        b"",
    )


# -- health --------------------------------------------------------------------------------------


def test_healthz(client: Client) -> None:
    """/healthz answers 200 {"status": "ok"} while the process runs."""
    reply = client.get("/healthz")
    assert (reply.code, reply.json()) == (200, {"status": "ok"})


def test_readyz_when_ready(make_client: Callable[..., Client]) -> None:
    """/readyz is 200 when every check passes, and lists the checks."""
    client = make_client(ready_checks={"api_listener": lambda: True})
    reply = client.get("/readyz")
    assert reply.code == 200
    assert reply.json() == {
        "status": "ready",
        "checks": {"api_listener": True, "message_log_writable": True},
    }


def test_readyz_when_a_listener_is_down(make_client: Callable[..., Client]) -> None:
    """/readyz is 503 when a listener is not up."""
    client = make_client(ready_checks={"counter_listeners": lambda: False})
    reply = client.get("/readyz")
    assert reply.code == 503
    assert reply.json()["status"] == "not-ready"
    assert reply.json()["checks"]["counter_listeners"] is False


def test_readyz_when_the_message_log_is_not_writable(
    client: Client, message_log: MessageLog
) -> None:
    """/readyz is 503 "degraded" while the message log cannot be written."""
    message_log.writable = False
    reply = client.get("/readyz")
    assert reply.code == 503
    assert reply.json() == {"status": "degraded", "checks": {"message_log_writable": False}}


def test_readyz_is_degraded_while_a_degraded_check_fails(
    make_client: Callable[..., Client],
) -> None:
    """/readyz is 503 "degraded", naming the check, while a degraded check (the store's) is false."""
    writable = [False]
    client = make_client(
        ready_checks={"api_listener": lambda: True},
        degraded_checks={"store_writable": lambda: writable[0]},
    )
    reply = client.get("/readyz")
    assert reply.code == 503
    assert reply.json() == {
        "status": "degraded",
        "checks": {"api_listener": True, "store_writable": False, "message_log_writable": True},
    }
    writable[0] = True
    reply = client.get("/readyz")
    assert (reply.code, reply.json()["status"]) == (200, "ready")


def test_readyz_a_listener_down_outranks_degraded(make_client: Callable[..., Client]) -> None:
    """A listener down is "not-ready" even while a degraded check fails too; both are listed."""
    client = make_client(
        ready_checks={"counter_listeners": lambda: False},
        degraded_checks={"store_writable": lambda: False},
    )
    reply = client.get("/readyz")
    assert reply.code == 503
    assert reply.json() == {
        "status": "not-ready",
        "checks": {
            "counter_listeners": False,
            "store_writable": False,
            "message_log_writable": True,
        },
    }


# -- metrics and the document ----------------------------------------------------------------------


def test_metrics_route(client: Client, service: NumberService) -> None:
    """/metrics serves the Prometheus text format with live values, synchronously."""
    service.merge([1, 2, 3])
    reply = client.get("/metrics")
    assert reply.code == 200
    assert reply.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    assert b"\nnumd_list_size 3.0\n" in reply.body


def test_openapi_document_is_served(client: Client) -> None:
    """/openapi.json serves the OpenAPI 3 document, without the legacy paths by default."""
    reply = client.get("/openapi.json")
    assert reply.code == 200
    document = reply.json()
    assert document["openapi"].startswith("3.")
    assert "/api/v1/values" in document["paths"]
    assert "/get_array" not in document["paths"]


def test_openapi_document_lists_legacy_paths_when_served(
    make_client: Callable[..., Client],
) -> None:
    """With the legacy routes on, the document describes them too."""
    paths = make_client(legacy_routes=True).get("/openapi.json").json()["paths"]
    assert {"/get_array", "/add_value", "/clean_array"} <= set(paths)


# -- unexpected errors ---------------------------------------------------------------------------------


def test_unexpected_error_is_a_bare_500_logged_with_traceback(
    client: Client, service: NumberService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug answers 500 with a generic JSON body; the traceback goes to the log only."""

    def broken() -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(service, "clear", broken)
    events: list[dict[str, Any]] = []
    client.api.log = Logger(observer=events.append)
    reply = client.request("DELETE", "/api/v1/values")
    assert reply.code == 500
    assert reply.json() == {"error": "internal", "message": "internal server error"}
    assert b"secret" not in reply.body and b"Traceback" not in reply.body
    (event,) = events
    assert event["log_failure"].check(RuntimeError)
    assert "secret internal detail" in event["log_failure"].getTraceback()


def test_requests_are_counted_by_route_and_status(client: Client) -> None:
    """Each answered request is counted under its route pattern and status."""
    client.get("/api/v1/values")
    client.get("/api/v1/values?limit=x")
    client.get("/api/v1/clients/77")
    client.get("/api/v1/clients/78")
    client.get("/nowhere")
    client.request("PUT", "/healthz")
    assert client.api.metrics.http_requests == {
        ("/api/v1/values", 200): 1,
        ("/api/v1/values", 400): 1,
        ("/api/v1/clients/{client_id}", 404): 2,
        ("(unmatched)", 404): 1,
        ("(unmatched)", 405): 1,
    }


# -- the older server's routes ---------------------------------------------------------------------------


@pytest.fixture
def legacy(make_client: Callable[..., Client]) -> Client:
    """A client of an API with the legacy routes on."""
    return make_client(legacy_routes=True)


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/get_array"),
        ("GET", "/add_value"),
        ("POST", "/add_value"),
        ("GET", "/clean_array"),
        ("DELETE", "/clean_array"),
        ("PUT", "/clean_array"),
    ],
)
def test_legacy_routes_are_off_by_default(
    client: Client, service: NumberService, method: str, path: str
) -> None:
    """Without --legacy-routes the old paths are 404 (not 405) and change nothing."""
    service.merge([5])
    reply = client.request(method, path)
    assert reply.code == 404
    assert list(service.values) == [5]


def test_legacy_get_array(legacy: Client, service: NumberService) -> None:
    """/get_array prints the size and the list exactly as the older server did."""
    reply = legacy.get("/get_array")
    assert reply.code == 200
    assert reply.header("Content-Type") == "text/html; charset=utf-8"
    assert reply.body == (
        b"REST API Server[EndPoint = get_array] response : Array Size: 0, Array: SortedList([])"
    )
    service.merge([30, 1, 2000])
    assert legacy.get("/get_array").body == (
        b"REST API Server[EndPoint = get_array] response : "
        b"Array Size: 3, Array: SortedList([1, 30, 2000])"
    )


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_legacy_add_value(legacy: Client, service: NumberService, method: str) -> None:
    """GET or POST /add_value adds a random 1000-10000 and prints it with the new list."""
    service.merge([5])
    expected = random.Random(11).randint(1000, 10000)
    reply = legacy.request(method, "/add_value")
    assert reply.code == 200
    assert reply.header("Content-Type") == "text/html; charset=utf-8"
    assert reply.body.decode() == (
        "REST API Server[EndPoint = add_value] response : "
        f"Added random integer: {expected}, New Size: 2, New Array: SortedList([5, {expected}])"
    )


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_legacy_clean_array(legacy: Client, service: NumberService, method: str) -> None:
    """GET or DELETE /clean_array empties the list; note the space after "Server"."""
    service.merge([5, 6])
    reply = legacy.request(method, "/clean_array")
    assert reply.code == 200
    assert reply.header("Content-Type") == "text/html; charset=utf-8"
    assert reply.body == (
        b"REST API Server [EndPoint = clean_array] : "
        b"Cleansed int array, New Size: 0, New Array: SortedList([])"
    )
    assert len(service.values) == 0


def test_legacy_wrong_method_is_405(legacy: Client) -> None:
    """With the legacy routes on, a wrong method on them is 405 with Allow."""
    reply = legacy.request("PUT", "/get_array")
    assert (reply.code, reply.header("Allow")) == (405, "GET, HEAD")


# -- durability: changes are answered once stored ------------------------------------------------------------


class Durability:
    """A fake store hook: each change waits for a Deferred the test fires."""

    def __init__(self, service: NumberService) -> None:
        self.waiting: list[Deferred[None]] = []
        service.set_durability(self.when_durable)

    def when_durable(self) -> Deferred[None]:
        """A new Deferred for the changes so far."""
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        return d


@pytest.mark.parametrize(
    "method,path,data",
    [
        ("POST", "/api/v1/values", b"[3]"),
        ("POST", "/api/v1/values", None),
        ("DELETE", "/api/v1/values", None),
        ("GET", "/add_value", None),
        ("DELETE", "/clean_array", None),
    ],
)
def test_changes_are_answered_only_once_stored(
    make_client: Callable[..., Client],
    service: NumberService,
    method: str,
    path: str,
    data: bytes | None,
) -> None:
    """With a store, the answer to a change waits until the store says it is on disk."""
    durability = Durability(service)
    client = make_client(legacy_routes=True)
    results: list[Any] = []
    kwargs = {} if data is None else {"data": data}
    client._treq.request(method, BASE + path, **kwargs).addBoth(results.append)
    client._treq.flush()
    assert results == [] and len(durability.waiting) == 1
    durability.waiting[0].callback(None)
    client._treq.flush()
    assert results[0].code == 200


def test_a_change_that_cannot_be_stored_is_503(client: Client, service: NumberService) -> None:
    """If the store fails, the answer is 503 and says the change may be lost; it is logged."""
    durability = Durability(service)
    events: list[dict[str, Any]] = []
    client.api.log = Logger(observer=events.append)
    results: list[Any] = []
    client._treq.post(BASE + "/api/v1/values", data=b"5").addCallback(
        lambda r: r.json().addCallback(lambda body: (r.code, body))
    ).addBoth(results.append)
    client._treq.flush()
    durability.waiting[0].errback(OSError("disk full"))
    client._treq.flush()
    code, body = results[0]
    assert (code, body["error"]) == (503, "not-stored")
    assert "disk full" not in body["message"]
    assert events[0]["log_failure"].check(OSError)


# -- the query parser, through the routes (the body parser: tests/test_parsing.py) ---------------------


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=24))
def test_query_integers_are_strict(raw: bytes) -> None:
    """A query value is accepted only as a plain decimal integer within its range (empty is a 400)."""
    client = Client(NumdApi(NumberService(Clock())))
    reply = client.get("/api/v1/values?limit=" + quote_from_bytes(raw))
    text = raw.decode("latin-1")
    if re.fullmatch(r"-?[0-9]{1,20}", text) and 0 <= int(text) <= MAX_LIMIT:
        assert reply.code == 200 and reply.json()["limit"] == int(text)
    else:
        assert reply.code == 400 and reply.json()["error"] == "bad-parameter"


# 15. An unwritable message log: numd keeps serving, /readyz says degraded, a metric counts drops


def test_unwritable_message_log_keeps_serving(tmp_path: Path) -> None:
    """When the log cannot be written, clients are still answered, /readyz is degraded, drops are counted."""
    from numd.counter.protocol import CounterFactory
    from numd.http.metrics import Metrics
    from numd.messagelog import MessageLog
    from numd.stats import Stats

    from .counter_client import FakeClient

    clock = Clock()
    service = NumberService(clock, random.Random(1))
    log = MessageLog(str(tmp_path / "m.log"), clock)
    log.startService()
    stats = Stats()
    factory = CounterFactory(service, log, stats, clock)
    metrics = Metrics(service, log)
    metrics.add_stats("counter", stats)
    api = NumdApi(service, message_log=log, metrics=metrics)

    def disk_full(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    log._file.write = disk_full  # type: ignore[union-attr,method-assign]
    client = FakeClient(factory)
    assert client.send(b"1 odd ")[0] == b"0"
    log.flush()
    assert len(client.send(b"even [3] ")) == 2
    log.flush()
    code, _, body = call(api.guarded_resource(), "GET", "http://127.0.0.1/readyz")
    assert code == 503 and '"degraded"' in body
    _, _, text = call(api.guarded_resource(), "GET", "http://127.0.0.1/metrics")
    dropped = [
        line
        for line in text.splitlines()
        if line.startswith("numd_message_log_records_dropped_total")
    ]
    assert dropped and float(dropped[0].split()[-1]) >= 6
    log.stopService()
