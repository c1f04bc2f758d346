"""A counter client on a fake clock and a `StringEndpoint`, for the client's tests."""

from __future__ import annotations

import io
import json
import random

from twisted.internet.task import Clock

from numd.client.counter import CounterClient, ParityChoice
from numd.client.output import ClientOutput, CounterState, Mode
from numd.client.testing import StringEndpoint

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


class Screen:
    """A terminal, as far as the client drives one: rows of characters and a cursor.

    It understands exactly what the status line writes (CR, LF, ``ESC [K`` clear
    to the end of the row, ``ESC [A`` one row up, ``ESC 7`` / ``ESC 8`` save and
    restore the cursor) and prints everything else where the cursor is, as a
    terminal does with the echo of typed keys.
    """

    def __init__(self) -> None:
        self.rows: list[list[str]] = [[]]
        self.row = 0
        self.col = 0
        self.saved = (0, 0)

    def feed(self, text: str) -> None:
        """Show `text` (output, or the echo of typed keys)."""
        i = 0
        while i < len(text):
            if text.startswith("\x1b[K", i):
                del self.rows[self.row][self.col :]
                i += 3
            elif text.startswith("\x1b[A", i):
                self.row = max(0, self.row - 1)
                i += 3
            elif text.startswith("\x1b7", i):
                self.saved = (self.row, self.col)
                i += 2
            elif text.startswith("\x1b8", i):
                self.row, self.col = self.saved
                i += 2
            elif text[i] == "\r":
                self.col = 0
                i += 1
            elif text[i] == "\n":  # the terminal's output mapping: a newline also returns
                self.row += 1
                self.col = 0
                while len(self.rows) <= self.row:
                    self.rows.append([])
                i += 1
            else:
                assert text[i] != "\x1b", f"escape sequence not modelled: {text[i : i + 4]!r}"
                cells = self.rows[self.row]
                cells.extend(" " * (self.col + 1 - len(cells)))
                cells[self.col] = text[i]
                self.col += 1
                i += 1

    def lines(self) -> list[str]:
        """The rows as text, without trailing blanks."""
        return ["".join(cells).rstrip() for cells in self.rows]
