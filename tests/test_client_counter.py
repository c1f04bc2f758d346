"""The counter client (`numd.client.counter`): registration, reports every 500 ms, even/odd
requests, timeouts and reconnects, on a fake clock and a `StringEndpoint`."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, error
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from numd.client.counter import ParityChoice, connection_problem

from .client_support import CLIENT_ID, Harness


def test_registration_sends_id_and_takes_start_number() -> None:
    """On connecting the client sends its ID and takes the server's answer as its number."""
    h = Harness()
    h.connect(start=1080)
    assert h.state.connected
    assert h.state.number == 1080
    assert h.events()[-1]["event"] == "connected"


def test_ten_seconds_give_twenty_reports() -> None:
    """In 10 s of fake time the client reports exactly 20 times, number += increment each time."""
    h = Harness()
    h.connect(start=1080)
    h.clock.pump([0.25] * 40)
    reports = [int(token) for token in h.sent() if token not in (b"even", b"odd")]
    assert reports == list(range(1081, 1101))
    assert h.state.number == 1100


def test_request_delays_fall_in_three_to_five_seconds() -> None:
    """Each even/odd request comes a uniformly random 3-5 s after the previous one (or registration)."""
    h = Harness()
    h.connect()
    times = [h.clock.seconds()]
    for _ in range(2000):
        h.clock.advance(0.125)
        for token in h.sent():
            if token in (b"even", b"odd"):
                times.append(h.clock.seconds())
                h.endpoint.protocol.dataReceived(b"2 " if token == b"even" else b"3 ")
    delays = [b - a for a, b in zip(times, times[1:])]
    assert len(delays) >= 50
    assert all(3.0 - 0.125 <= d <= 5.0 + 0.125 for d in delays)
    assert min(delays) < 3.5 and max(delays) > 4.5


def test_request_timer_draws_delays_in_three_to_five_seconds() -> None:
    """The request timer is always armed 3-5 s ahead (checked exactly on the clock's calls)."""
    h = Harness(parity="even")
    h.connect()
    for _ in range(50):
        request_timer = [
            call
            for call in h.clock.getDelayedCalls()
            if getattr(call.func, "__name__", "") == "_ask"
        ]
        assert len(request_timer) == 1
        delay = request_timer[0].getTime() - h.clock.seconds()
        assert 3.0 <= delay <= 5.0
        h.clock.advance(delay)
        assert h.sent()[-1] == b"even"
        h.endpoint.protocol.dataReceived(b"4 ")


def test_answer_changes_the_increment() -> None:
    """The server's answer to even/odd becomes the amount added at each report."""
    h = Harness(parity="odd")
    h.connect(start=100)
    h.clock.pump([0.5] * 10)
    tokens = h.sent()
    assert b"odd" in tokens
    number = h.state.number
    h.endpoint.protocol.dataReceived(b"37 ")
    assert h.state.increment == 37
    h.clock.advance(0.5)
    assert h.sent()[-1] == b"%d" % (number + 37)
    assert h.events()[-2]["event"] == "answer"


@pytest.mark.parametrize("parity", ["even", "odd"])
def test_parity_option_fixes_the_request(parity: ParityChoice) -> None:
    """With --parity even (or odd) every request asks for that parity."""
    h = Harness(parity=parity)
    h.connect()
    requests = []
    for _ in range(200):
        h.clock.advance(0.25)
        for token in h.sent():
            if token in (b"even", b"odd"):
                requests.append(token)
                h.endpoint.protocol.dataReceived(b"2 " if parity == "even" else b"3 ")
    assert len(requests) > 5
    assert set(requests) == {parity.encode()}


def test_random_parity_asks_both() -> None:
    """With --parity random the client asks for even and for odd numbers."""
    h = Harness(parity="random")
    h.connect()
    requests = set()
    for _ in range(800):
        h.clock.advance(0.25)
        for token in h.sent():
            if token in (b"even", b"odd"):
                requests.add(token)
                h.endpoint.protocol.dataReceived(b"2 " if token == b"even" else b"3 ")
    assert requests == {b"even", b"odd"}


def test_wrong_parity_answer_is_reported_and_ignored() -> None:
    """An odd answer to even (or any non-number) is reported and leaves the increment alone."""
    h = Harness(parity="even")
    h.connect()
    h.clock.advance(5)
    h.endpoint.protocol.dataReceived(b"7 ")
    assert h.state.increment == 1
    assert h.events()[-1]["event"] == "error"


@given(st.lists(st.binary(max_size=80), max_size=20))
def test_any_bytes_from_the_server_are_survived(chunks: list[bytes]) -> None:
    """Whatever bytes the server sends, the client neither raises nor takes a wrong-parity increment."""
    h = Harness(parity="odd")
    h.connect(start=0)
    h.clock.advance(5)
    for chunk in chunks:
        h.endpoint.protocol.dataReceived(chunk)
        h.clock.advance(0.5)
    assert h.state.increment == 1 or h.state.increment % 2 == 1
    if h.state.connected:  # (a token too long for the client makes it reconnect)
        before = h.state.number
        h.clock.advance(0.5)
        assert h.state.number == before + h.state.increment


def test_unanswered_request_is_given_up_and_its_late_answer_dropped() -> None:
    """A request unanswered after the timeout is abandoned; its late answer is not taken as the next one's."""
    h = Harness(parity="even", request_timeout=2.5)
    h.connect()
    h.clock.advance(5)
    assert b"even" in h.sent()
    h.clock.advance(2.5)
    assert h.events()[-1]["event"] == "timeout"
    h.clock.advance(5)  # the next request is out
    assert b"even" in h.sent()
    h.endpoint.protocol.dataReceived(b"40 ")  # late answer to the first request
    assert h.state.increment == 1
    h.endpoint.protocol.dataReceived(b"8 ")  # answer to the second
    assert h.state.increment == 8


def test_at_most_one_request_is_outstanding() -> None:
    """While a request is unanswered the client does not send another one."""
    h = Harness(parity="even", request_timeout=60)
    h.connect()
    h.clock.pump([0.25] * 200)  # 50 s: ten request timer firings
    assert h.sent().count(b"even") == 1
    h.endpoint.protocol.dataReceived(b"6 ")
    h.clock.advance(5)
    assert h.sent().count(b"even") == 1


def test_shutdown_stops_every_timer_and_keeps_the_number() -> None:
    """``s`` closes the connection and leaves no delayed call; ID and number are kept."""
    h = Harness()
    h.connect(start=50)
    h.clock.pump([0.25] * 30)
    number = h.state.number
    h.client.command("s")
    assert not h.endpoint.transport.connected
    assert h.clock.getDelayedCalls() == []
    assert not h.state.connected
    assert (h.state.client_id, h.state.number) == (CLIENT_ID, number)
    h.clock.advance(100)
    assert h.endpoint.attempts == 1


def test_lost_connection_is_retried_with_growing_delays_until_s() -> None:
    """A connection lost without ``s`` is retried, waiting longer each time; ``s`` stops the retries."""
    h = Harness()
    h.connect()
    h.endpoint.refusing = True
    h.endpoint.protocol.connectionLost(Failure(ConnectionLost()))
    assert not h.state.connected
    delays = []
    for attempt in range(2, 7):
        (retry,) = h.clock.getDelayedCalls()
        delays.append(retry.getTime() - h.clock.seconds())
        h.clock.advance(delays[-1])
        assert h.endpoint.attempts == attempt
    assert delays == sorted(delays) and len(set(delays)) == len(delays)
    assert [e["event"] for e in h.events()].count("retrying") == 6
    h.client.command("s")
    assert h.clock.getDelayedCalls() == []
    h.clock.advance(1000)
    assert h.endpoint.attempts == 6


def test_reconnect_resumes_with_the_same_id() -> None:
    """After a lost connection the client reconnects with its ID and takes the start number again."""
    h = Harness()
    h.connect(start=10)
    h.clock.pump([0.5] * 4)
    h.endpoint.protocol.connectionLost(Failure(ConnectionLost()))
    (retry,) = h.clock.getDelayedCalls()
    h.clock.advance(retry.getTime() - h.clock.seconds())
    assert len(h.endpoint.connections) == 2
    assert h.sent() == [b"%d" % CLIENT_ID]
    h.endpoint.protocol.dataReceived(b"14 ")
    assert h.state.connected and h.state.number == 14


def test_refused_registration_backs_off() -> None:
    """A server answering error:id-in-use is reported, and retried ever more slowly."""
    h = Harness()
    h.client.command("c")
    delays = []
    for _ in range(4):
        h.endpoint.protocol.dataReceived(b"error:id-in-use ")
        assert not h.endpoint.transport.connected
        (retry,) = h.clock.getDelayedCalls()
        delays.append(retry.getTime() - h.clock.seconds())
        h.clock.advance(delays[-1])
    assert delays == sorted(delays) and len(set(delays)) == len(delays)
    errors = [e for e in h.events() if e["event"] == "error"]
    assert "error:id-in-use" in str(errors[0]["message"])


def test_each_retry_says_why_the_client_is_not_connected() -> None:
    """The ``retrying`` event keeps its fields and adds the reason: a refused connection, a lost
    one, a refused registration, a registration without answer."""
    h = Harness(request_timeout=2.5)
    h.endpoint.refusing = True
    h.client.command("c")

    def retries() -> list[dict[str, object]]:
        return [e for e in h.events() if e["event"] == "retrying"]

    def retry_now() -> None:
        (retry,) = h.clock.getDelayedCalls()
        h.clock.advance(retry.getTime() - h.clock.seconds())

    (refused,) = retries()
    assert set(refused) == {"event", "t", "id", "connected", "number", "increment"} | {
        "attempt",
        "delay",
        "reason",
    }
    assert (refused["attempt"], refused["reason"]) == (1, "connection refused")
    h.endpoint.refusing = False
    retry_now()
    h.endpoint.protocol.dataReceived(b"3 ")
    h.endpoint.protocol.connectionLost(Failure(ConnectionLost()))
    assert retries()[-1]["reason"] == "connection lost"
    retry_now()
    h.endpoint.protocol.dataReceived(b"error:id-in-use ")
    assert retries()[-1]["reason"] == "registration refused: server said error:id-in-use"
    retry_now()
    h.clock.advance(2.5)
    assert retries()[-1]["reason"] == "no answer to registration"
    assert len(retries()) == 4


@pytest.mark.parametrize(
    "problem,words",
    [
        (error.ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (error.ConnectionRefusedError(), "connection refused"),
        (error.TCPTimedOutError(110, "Connection timed out"), "timed out"),
        (error.TimeoutError(), "timed out"),
        (defer.TimeoutError(), "timed out"),
        (error.ConnectError(113, "No route to host"), "no route to host"),
        (error.NoRouteError(101, "Network is unreachable"), "network is unreachable"),
        (error.DNSLookupError("no-such-host.invalid"), "host name not found"),
        (error.UnknownHostError(-2, "Name or service not known"), "host name not found"),
        (error.ConnectionLost(), "connection lost"),
        (error.ConnectionDone(), "closed by the server"),
        (ValueError("something else\nentirely"), "something else"),
    ],
)
def test_connection_problems_in_a_few_words(problem: BaseException, words: str) -> None:
    """Why a connection failed, said short enough for the status line."""
    assert connection_problem(problem) == words


def test_registration_without_answer_times_out_and_reconnects() -> None:
    """A server that never answers the ID is dropped after the timeout, and the client tries again."""
    h = Harness(request_timeout=2.5)
    h.client.command("c")
    h.clock.advance(2.5)
    assert not h.endpoint.transport.connected
    (retry,) = h.clock.getDelayedCalls()
    h.clock.advance(retry.getTime() - h.clock.seconds())
    assert h.endpoint.attempts == 2


# -- the prompt -------------------------------------------------------------------------
