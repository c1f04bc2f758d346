"""What the client shows (`numd.client.output`): the status line on a terminal and off it,
quiet mode and JSON events."""

from __future__ import annotations

import io

from twisted.internet.task import Clock

from numd.client.output import ClientOutput, CounterState

from .client_support import CLIENT_ID, Harness


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


def test_status_line_says_why_and_when_it_retries() -> None:
    """Not connected: the status line gives the reason of the last failure and the next retry."""
    err = io.StringIO()
    output = ClientOutput("status", io.StringIO(), err, Clock(), live=False)
    output.status("retrying", CounterState(7), attempt=2, delay=2.25, reason="connection refused")
    assert err.getvalue() == (
        "not connected id=7 number=0 increment=1 (connection refused; retry 2 in 2.2 s)\n"
    )


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
