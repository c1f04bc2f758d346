"""Tests for the client's array mode: reply parsing, the run against the real server, bad replies."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sortedcontainers import SortedList
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from numd.client.array import (
    ArrayClient,
    ArrayReply,
    BadReply,
    YesNoPrompt,
    parse_array_reply,
    random_array,
)
from numd.client.console import CommandPrompt
from numd.client.output import ClientOutput, Mode
from numd.client.testing import MemoryServerEndpoint, StringEndpoint
from numd.counter.protocol import CounterFactory
from numd.counter.replies import format_values
from numd.messagelog import MessageLog
from numd.service import NumberService
from numd.stats import Stats


def test_parse_whole_and_cut_replies() -> None:
    """A whole list and a list cut at the reply cap both parse, with the total size."""
    assert parse_array_reply(b"[3,3,17,90]") == ArrayReply([3, 3, 17, 90], 4)
    assert parse_array_reply(b"[]") == ArrayReply([], 0)
    cut = parse_array_reply(b"[-5,1,2,...]/1000000")
    assert cut == ArrayReply([-5, 1, 2], 1000000)
    assert cut.cut


@pytest.mark.parametrize(
    "token, reason",
    [
        (b"error:bad-array", "server said error:bad-array"),
        (b"42", "not an array reply"),
        (b"[1,2", "not an array reply"),
        (b"[1,,2]", "not an array reply"),
        (b"[3,1]", "not sorted"),
        (b"[1,2,...]/2", "says its size is 2"),
    ],
)
def test_invalid_replies_say_what_is_wrong(token: bytes, reason: str) -> None:
    """Anything but a sorted array token is rejected with a reason a person can read."""
    with pytest.raises(BadReply, match=reason):
        parse_array_reply(token)


@given(
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=0, max_size=300),
    st.integers(64, 4096),
)
def test_every_server_reply_parses(values: list[int], cap: int) -> None:
    """Whatever the list and the reply cap, the server's reply token parses to its start and size."""
    sorted_values = SortedList(values)
    reply = parse_array_reply(format_values(sorted_values, cap))
    assert reply.total == len(values)
    assert reply.values == list(sorted_values[: len(reply.values)])


def test_random_arrays_have_10_to_20_values_in_0_to_100() -> None:
    """Arrays sent hold 10-20 integers in 0-100, and all those sizes occur."""
    rng = random.Random(0)
    arrays = [random_array(rng) for _ in range(500)]
    assert {len(a) for a in arrays} == set(range(10, 21))
    assert min(min(a) for a in arrays) == 0 and max(max(a) for a in arrays) == 100


class Run:
    """An array client on a fake clock against `endpoint`, with captured output."""

    def __init__(
        self, endpoint: object, clock: Clock, count: int | None, mode: Mode = "json"
    ) -> None:
        self.stdout, self.stderr = io.StringIO(), io.StringIO()
        self.output = ClientOutput(mode, self.stdout, self.stderr, clock, live=False)
        self.prompt = YesNoPrompt(self.output)
        self.quits: list[int] = []
        self.client = ArrayClient(
            endpoint,  # type: ignore[arg-type]
            self.output,
            clock,
            random.Random(9),
            self.prompt,
            count=count,
            on_quit=self.quits.append,
            timeout=10,
        )

    def events(self) -> list[dict[str, object]]:
        """JSON events written so far."""
        return [json.loads(line) for line in self.stdout.getvalue().splitlines()]


def real_server(tmp_path: Path) -> tuple[NumberService, MemoryServerEndpoint, Clock]:
    """The real counter protocol and service, reachable through an in-memory endpoint."""
    clock = Clock()
    service = NumberService(clock, random.Random(1))
    factory = CounterFactory(service, MessageLog(str(tmp_path / "m.log"), clock), Stats(), clock)
    return service, MemoryServerEndpoint(factory, clock), clock


def test_count_sends_that_many_arrays_and_prints_the_sorted_lists(tmp_path: Path) -> None:
    """--count 3 sends three arrays to the real server, prints each sorted list, exits 0."""
    service, endpoint, clock = real_server(tmp_path)
    run = Run(endpoint, clock, count=3)
    run.client.startService()
    endpoint.run(1)
    events = [e for e in run.events() if e["event"] == "array"]
    assert len(events) == 3
    merged: list[int] = []
    for event in events:
        merged += event["sent"]  # type: ignore[operator]
        assert event["sorted"] == sorted(merged)
    assert list(service.values) == sorted(merged)
    assert run.quits == [0]


def test_human_output_prints_the_sorted_list_on_stdout(tmp_path: Path) -> None:
    """Without --json each sorted list is one line on stdout."""
    service, endpoint, clock = real_server(tmp_path)
    run = Run(endpoint, clock, count=1, mode="status")
    run.client.startService()
    endpoint.run(1)
    assert run.stdout.getvalue() == "[" + ",".join(map(str, service.values)) + "]\n"


def test_continue_prompt_repeats_on_y_and_stops_on_n(tmp_path: Path) -> None:
    """Without --count the client asks Continue? (y/n): y sends another array, n ends the run."""
    service, endpoint, clock = real_server(tmp_path)
    run = Run(endpoint, clock, count=None)
    stdin = CommandPrompt(run.prompt)
    stdin.makeConnection(StringTransport())
    run.client.startService()
    endpoint.run(1)
    stdin.dataReceived(b"maybe\n")
    stdin.dataReceived(b"y\n")
    endpoint.run(1)
    stdin.dataReceived(b"n\n")
    endpoint.run(1)
    kinds = [e.get("text", e["event"]) for e in run.events()]
    assert kinds == [
        "array",
        "Continue? (y/n)",
        "please answer y or n",
        "array",
        "Continue? (y/n)",
    ]
    assert run.quits == [0]


def test_end_of_input_answers_no(tmp_path: Path) -> None:
    """When standard input ends at the question, the run ends."""
    service, endpoint, clock = real_server(tmp_path)
    run = Run(endpoint, clock, count=None)
    run.client.startService()
    endpoint.run(1)
    run.prompt.input_ended()
    assert run.quits == [0]


def test_invalid_reply_is_reported_once_and_not_retried() -> None:
    """A reply that is not an array is reported clearly; with --count the run stops with status 1."""
    clock = Clock()
    endpoint = StringEndpoint()
    run = Run(endpoint, clock, count=5)
    run.client.startService()
    assert endpoint.transport.value().startswith(b"[")
    endpoint.transport.clear()
    endpoint.protocol.dataReceived(b"error:bad-array ")
    assert run.quits == [1]
    (error,) = [e for e in run.events() if e["event"] == "error"]
    assert "server said error:bad-array" in str(error["message"])
    clock.advance(60)
    assert endpoint.transport.value() == b""
    assert endpoint.attempts == 1
    assert not endpoint.transport.connected


def test_no_reply_times_out(tmp_path: Path) -> None:
    """A server that does not answer an array is given up on after the timeout, status 1."""
    clock = Clock()
    endpoint = StringEndpoint()
    run = Run(endpoint, clock, count=2)
    run.client.startService()
    clock.advance(9)
    assert run.quits == []
    clock.advance(1)
    assert run.quits == [1]
    assert "no answer in time" in str(run.events()[-1]["message"])


def test_refused_connection_is_reported() -> None:
    """A server that cannot be reached is an error and exit status 1, without retries."""
    clock = Clock()
    endpoint = StringEndpoint()
    endpoint.refusing = True
    run = Run(endpoint, clock, count=1, mode="quiet")
    run.client.startService()
    assert run.quits == [1]
    assert run.stderr.getvalue().startswith("numd-client: error: cannot connect:")
    assert run.stderr.getvalue() == "numd-client: error: cannot connect: connection refused\n"
    assert endpoint.attempts == 1
