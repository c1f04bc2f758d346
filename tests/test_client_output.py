"""What the client shows (`numd.client.output`): the status line on a terminal and off it,
quiet mode and JSON events."""

from __future__ import annotations

import io

from twisted.internet.task import Clock

from numd.client.output import ClientOutput, CounterState

from .client_support import CLIENT_ID, Harness, Screen


def test_status_line_redraws_in_place_on_a_terminal() -> None:
    """On a terminal the status line is redrawn in place, messages print above it, and closing
    ends it. The cursor rests on the row below the status line (where typing shows): the line
    is redrawn from there, cursor saved, one row up, and back."""
    clock = Clock()
    err = io.StringIO()
    output = ClientOutput("status", io.StringIO(), err, clock, live=True)
    state = CounterState(7, number=3, increment=5, connected=True)
    output.status("report", state)
    state.number = 8
    output.status("report", state)
    output.say("hi")
    output.close()
    state.connected = False
    output.status("disconnected", state)  # e.g. the connection closing after Ctrl-C
    assert err.getvalue() == (
        "\r\x1b[Kconnected     id=7 number=3 increment=5\n"
        "\x1b7\x1b[A\r\x1b[Kconnected     id=7 number=8 increment=5\x1b8"
        "\x1b[A\r\x1b[Khi\n\r\x1b[Kconnected     id=7 number=8 increment=5\n"
        "\r\x1b[K"
        "not connected id=7 number=8 increment=5 (disconnected)\n"
    )
    screen = Screen()
    screen.feed(err.getvalue())
    assert screen.lines() == [
        "hi",
        "connected     id=7 number=8 increment=5",
        "not connected id=7 number=8 increment=5 (disconnected)",
        "",
    ]


def test_typed_keys_never_join_the_status_line() -> None:
    """Keys typed while the status line is redrawn stay on their own row, whole; once the line
    is read (Enter), the next status line is drawn below it (issue 16: ``increment=52s``)."""
    clock = Clock()
    err = io.StringIO()
    output = ClientOutput("status", io.StringIO(), err, clock, live=True)
    screen = Screen()
    state = CounterState(7, number=3, increment=52, connected=True)

    def show(event: str = "report") -> None:
        err.seek(0)
        err.truncate()
        output.status(event, state)
        screen.feed(err.getvalue())

    show("connected")
    screen.feed("s")  # the terminal echoes a key, not yet read by the client
    state.number += 52
    show()
    assert screen.lines() == ["connected     id=7 number=55 increment=52", "s"]
    screen.feed("\r\n")  # Enter: echoed, then the line is read
    output.line_typed()
    state.connected = False
    show("shutdown")
    assert screen.lines() == [
        "connected     id=7 number=55 increment=52",
        "s",
        "not connected id=7 number=55 increment=52 (shutdown)",
        "",
    ]


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
