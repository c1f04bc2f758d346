"""Tests for the counter client: timers on `task.Clock`, reconnects, the prompt, and the real server."""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from numd.client.console import CommandPrompt, PromptService
from numd.client.counter import HELP, CounterClient, ParityChoice
from numd.client.output import ClientOutput, CounterState, Mode
from numd.client.testing import MemoryServerEndpoint, StringEndpoint
from numd.counter.protocol import CounterFactory
from numd.messagelog import MessageLog
from numd.service import NumberService
from numd.stats import Stats

CLIENT_ID = 5287


class Harness:
    """A counter client on a fake clock, a `StringEndpoint` and captured output."""

    def __init__(
        self,
        parity: ParityChoice = "random",
        request_timeout: float = 2.5,
        mode: Mode = "json",
        keep_running_without_input: bool = False,
    ) -> None:
        self.clock = Clock()
        self.endpoint = StringEndpoint()
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.output = ClientOutput(mode, self.stdout, self.stderr, self.clock, live=False)
        self.quits: list[int] = []
        self.state = CounterState(CLIENT_ID)
        self.client = CounterClient(
            self.endpoint,
            self.state,
            self.output,
            self.clock,
            random.Random(4),
            parity=parity,
            on_quit=self.quits.append,
            keep_running_without_input=keep_running_without_input,
            request_timeout=request_timeout,
        )

    def connect(self, start: int = 0) -> None:
        """Type ``c`` and answer the registration with `start`."""
        self.client.command("c")
        assert self.endpoint.transport.value() == b"%d " % CLIENT_ID
        self.endpoint.transport.clear()
        self.endpoint.protocol.dataReceived(b"%d " % start)

    def sent(self) -> list[bytes]:
        """Tokens written on the latest connection since the last call."""
        data = self.endpoint.transport.value()
        self.endpoint.transport.clear()
        return data.split()

    def events(self) -> list[dict[str, object]]:
        """JSON events written so far."""
        return [json.loads(line) for line in self.stdout.getvalue().splitlines()]


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


def typed(h: Harness) -> CommandPrompt:
    """A prompt on a fake standard input, driving the harness's client."""
    prompt = CommandPrompt(h.client)
    prompt.makeConnection(StringTransport())
    return prompt


def messages(h: Harness) -> list[object]:
    """The texts of the messages (answers to typed commands) printed so far."""
    return [e["text"] for e in h.events() if e["event"] == "message"]


def test_prompt_c_connects_and_c_again_says_so() -> None:
    """``c`` connects; ``c`` while connected says so and opens no second connection."""
    h = Harness()
    stdin = typed(h)
    stdin.dataReceived(b"c\n")
    h.endpoint.protocol.dataReceived(b"0 ")
    stdin.dataReceived(b"c\r\n")
    assert messages(h) == ["already connected"]
    assert h.endpoint.attempts == 1


def test_prompt_s_shuts_down_and_s_again_says_so() -> None:
    """``s`` shuts the connection down; ``s`` while disconnected says so and changes nothing."""
    h = Harness()
    stdin = typed(h)
    stdin.dataReceived(b"s\n")
    assert messages(h) == ["not connected"]
    stdin.dataReceived(b"c\n")
    h.endpoint.protocol.dataReceived(b"0 ")
    stdin.dataReceived(b"s\n")
    assert not h.state.connected
    assert h.clock.getDelayedCalls() == []
    stdin.dataReceived(b"s\n")
    assert messages(h) == ["not connected", "not connected"]


def test_prompt_other_input_prints_help() -> None:
    """Anything but c, s or q gets the one-line help; empty lines are ignored."""
    h = Harness(mode="status")
    stdin = typed(h)
    stdin.dataReceived(b"hello\n\n")
    assert h.stderr.getvalue() == HELP + "\n"
    assert h.endpoint.attempts == 0


def test_prompt_q_quits() -> None:
    """``q`` quits with status 0."""
    h = Harness()
    typed(h).dataReceived(b"q\n")
    assert h.quits == [0]


def test_end_of_input_quits() -> None:
    """The end of standard input quits, like ``q``."""
    h = Harness()
    typed(h).connectionLost(Failure(ConnectionLost()))
    assert h.quits == [0]


def test_end_of_input_with_connect_keeps_running() -> None:
    """With --connect (no terminal, e.g. daemonized) the end of input does not quit."""
    h = Harness(keep_running_without_input=True)
    typed(h).connectionLost(Failure(ConnectionLost()))
    assert h.quits == []


def test_prompt_service_reads_standard_input_through_the_reactor() -> None:
    """The prompt reads commands from a file descriptor when the reactor says it is readable."""
    h = Harness()
    reactor = MemoryReactorClock()
    read_end, write_end = os.pipe()
    try:
        service = PromptService(reactor, h.client, fd=read_end)
        service.startService()
        (reader,) = reactor.readers
        os.write(write_end, b"c\n")
        reader.doRead()
        assert h.endpoint.attempts == 1
        os.close(write_end)
        write_end = -1
        reader.doRead()
        assert h.quits == [0]
        assert reactor.readers == set()
        service.stopService()
    finally:
        os.close(read_end)
        if write_end != -1:
            os.close(write_end)


# -- output -----------------------------------------------------------------------------


def test_status_line_redraws_in_place_on_a_terminal() -> None:
    """On a terminal the status line is redrawn in place, messages print above it, and closing ends it."""
    clock = Clock()
    err = io.StringIO()
    output = ClientOutput("status", io.StringIO(), err, clock, live=True)
    state = CounterState(7, number=3, increment=5, connected=True)
    output.status("report", state)
    output.say("hi")
    output.close()
    state.connected = False
    output.status("disconnected", state)  # e.g. the connection closing after Ctrl-C
    assert err.getvalue() == (
        "\r\x1b[Kconnected     id=7 number=3 increment=5"
        "\r\x1b[Khi\nconnected     id=7 number=3 increment=5\n"
        "not connected id=7 number=3 increment=5 (disconnected)\n"
    )


def test_status_lines_without_a_terminal_are_plain_and_sparse() -> None:
    """Without a terminal, status changes print plain lines; reports alone at most every 5 s."""
    clock = Clock()
    err = io.StringIO()
    output = ClientOutput("status", io.StringIO(), err, clock, live=False)
    state = CounterState(7, connected=True)
    output.status("connected", state)
    for _ in range(20):
        clock.advance(0.5)
        state.number += 1
        output.status("report", state)
    lines = err.getvalue().splitlines()
    assert lines == [
        "connected     id=7 number=0 increment=1",
        "connected     id=7 number=10 increment=1",
        "connected     id=7 number=20 increment=1",
    ]


def test_quiet_prints_only_errors() -> None:
    """--quiet shows errors and nothing of the counter's progress."""
    clock = Clock()
    out, err = io.StringIO(), io.StringIO()
    output = ClientOutput("quiet", out, err, clock)
    output.status("connected", CounterState(1, connected=True))
    output.result("array", "[1,2]")
    output.error("boom")
    assert out.getvalue() == ""
    assert err.getvalue() == "numd-client: error: boom\n"


def test_json_mode_prints_one_event_per_line() -> None:
    """--json writes one JSON object per event on stdout and nothing on stderr."""
    h = Harness(mode="json")
    h.connect(start=3)
    h.clock.advance(0.5)
    events = h.events()
    assert [e["event"] for e in events] == ["connecting", "connected", "report"]
    assert events[-1] == {
        "event": "report",
        "t": 0.5,
        "id": CLIENT_ID,
        "connected": True,
        "number": 4,
        "increment": 1,
    }
    assert h.stderr.getvalue() == ""


# -- with the real server protocol, through iosim -------------------------------------


class Server:
    """The real numd counter protocol and service, in memory."""

    def __init__(self, tmp_path: Path, clock: Clock) -> None:
        self.service = NumberService(clock, random.Random(1))
        self.log = MessageLog(str(tmp_path / "messages.log"), clock)
        self.factory = CounterFactory(self.service, self.log, Stats(), clock)


def real_client(
    tmp_path: Path, client_id: int = CLIENT_ID
) -> tuple[Server, MemoryServerEndpoint, CounterClient, Clock]:
    """A quiet counter client asking for odd numbers, wired in memory to a real server."""
    clock = Clock()
    server = Server(tmp_path, clock)
    endpoint = MemoryServerEndpoint(server.factory, clock)
    output = ClientOutput("quiet", io.StringIO(), io.StringIO(), clock)
    client = CounterClient(
        endpoint, CounterState(client_id), output, clock, random.Random(2), parity="odd"
    )
    return server, endpoint, client, clock


def test_client_and_server_agree(tmp_path: Path) -> None:
    """Against the real server the registry follows the client's reports and answers."""
    server, endpoint, client, clock = real_client(tmp_path)
    client.command("c")
    endpoint.run(12)
    record = server.service.clients[CLIENT_ID]
    assert record.connected
    assert record.number == client.state.number
    assert record.last_given is not None and record.last_given % 2 == 1
    assert client.state.increment == record.last_given
    assert client.state.number > 24


def test_client_resumes_after_reconnecting_to_the_server(tmp_path: Path) -> None:
    """After ``s`` and ``c`` the server hands back the client's last reported number."""
    server, endpoint, client, clock = real_client(tmp_path)
    client.command("c")
    endpoint.run(3)
    client.command("s")
    endpoint.run(1)
    assert not server.service.clients[CLIENT_ID].connected
    number = client.state.number
    client.state.number = -1  # whatever the client holds, the server's start number wins
    client.command("c")
    endpoint.run(0.25)
    assert client.state.connected
    assert client.state.number == number
    endpoint.run(1)
    assert server.service.clients[CLIENT_ID].number == client.state.number


def test_server_dropping_the_client_leads_to_a_reconnect(tmp_path: Path) -> None:
    """When the server closes the connection the client reconnects by itself and resumes."""
    server, endpoint, client, clock = real_client(tmp_path)
    client.command("c")
    endpoint.run(2)
    server.factory.close_all(clock, timeout=1)
    endpoint.run(0.25)
    assert not client.state.connected
    endpoint.run(3)
    assert client.state.connected
    assert endpoint.attempts == 2
    assert server.service.clients[CLIENT_ID].connected


def test_second_client_with_the_same_id_backs_off(tmp_path: Path) -> None:
    """A client whose ID is in use is refused by the server and retries with backoff."""
    server, endpoint, first, clock = real_client(tmp_path)
    second = CounterClient(
        endpoint,
        CounterState(CLIENT_ID),
        ClientOutput("quiet", io.StringIO(), io.StringIO(), clock),
        clock,
        random.Random(3),
    )
    first.command("c")
    endpoint.run(1)
    second.command("c")
    endpoint.run(30)
    assert first.state.connected and not second.state.connected
    assert 4 <= endpoint.attempts <= 7  # 1 + retries after ~1, 2, 4, 8, 16 s
    second.command("s")
    first.command("s")
    endpoint.run(1)
    assert clock.getDelayedCalls() == [] or all(
        getattr(call.func, "__name__", "") == "_timed_flush" for call in clock.getDelayedCalls()
    )
