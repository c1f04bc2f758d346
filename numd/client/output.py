"""What the numd client shows a person or a script: a status line, JSON events, or errors only.

Three modes, chosen by ``numd-client`` options:

- ``status`` (default): a status line on stderr (connected or not, ID, number,
  increment). When stderr is a terminal it is redrawn in place; otherwise plain
  lines are printed, one per change of connection or increment and at most one
  per `line_interval` seconds for reports alone, so a log file stays readable.
- ``json`` (``--json``): one JSON object per line on stdout for every event,
  for scripts. Nothing else is written to stdout.
- ``quiet`` (``--quiet``): only errors, on stderr.

Answers to what a person typed (help, "already connected", the array mode's
question) are shown in every mode: the person asked for them.

This is user output, not logging: the streams are injected so that tests can
read them, and operational logs go through `twisted.logger` as usual.

The status line and typed input never share a row. The terminal echoes what a
person types where the cursor is, and the client only reads it once Enter is
pressed; so the cursor never rests at the end of the status line. The status
line is drawn with a newline after it, which leaves the cursor at the start of
the row below (where typing appears), and redrawn in place from there: cursor
saved, one row up, line cleared and written, cursor restored (``ESC 7``,
``ESC [A``, ``ESC 8``), so half-typed keys stay as they are. Once a typed line
has been read (`line_typed`: Enter moved the cursor down a row), the next status
line is drawn afresh below it: the typed command stays on its own row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, TextIO

from twisted.internet.interfaces import IReactorTime

Mode = Literal["status", "json", "quiet"]

_CLEAR_LINE = "\r\x1b[K"
"""Back to the row's start, and clear the row."""
_REDRAW_ABOVE = "\x1b7\x1b[A" + _CLEAR_LINE
"""Save the cursor, go one row up, clear that row (then write the line, then `_RESTORE`)."""
_RESTORE = "\x1b8"
"""Back to the saved cursor."""
_UP = "\x1b[A"


@dataclass
class CounterState:
    """The counter client's own state; it outlives connections so that a reconnect resumes."""

    client_id: int
    number: int = 0
    """The client's number: the server's start number plus every increment since."""
    increment: int = 1
    """What each report adds; the last even/odd answer, 1 before the first."""
    connected: bool = False
    """True once the server accepted the ID, until the connection is lost."""


class ClientOutput:
    """Writes the client's events for a person (status line), a script (JSON) or neither (quiet)."""

    def __init__(
        self,
        mode: Mode,
        stdout: TextIO,
        stderr: TextIO,
        clock: IReactorTime,
        live: bool | None = None,
        line_interval: float = 5.0,
    ) -> None:
        self.mode = mode
        self.stdout = stdout
        self.stderr = stderr
        self._clock = clock
        self.live = _isatty(stderr) if live is None else live
        """Redraw the status line in place (stderr is a terminal)."""
        self.line_interval = line_interval
        self._shown = ""
        self._above = False
        """The live status line is on the row just above the cursor (where typing shows)."""
        self._last_line_at: float | None = None

    # -- counter events ----------------------------------------------------------

    def status(self, event: str, state: CounterState, **fields: object) -> None:
        """Show a counter event: ``connected``, ``report``, ``answer``, ``retrying``, ..."""
        if self.mode == "json":
            self._json(
                event,
                id=state.client_id,
                connected=state.connected,
                number=state.number,
                increment=state.increment,
                **fields,
            )
            return
        if self.mode == "quiet":
            return
        line = _status_line(event, state, fields)
        if self.live:
            self._shown = line
            if self._above:
                self.stderr.write(_REDRAW_ABOVE + line + _RESTORE)
            else:
                self.stderr.write(_CLEAR_LINE + line + "\n")
                self._above = True
            self.stderr.flush()
            return
        now = self._clock.seconds()
        if (
            event == "report"
            and self._last_line_at is not None
            and now - self._last_line_at < self.line_interval
        ):
            return
        self._last_line_at = now
        self._line(line)

    # -- everything else ---------------------------------------------------------

    def say(self, text: str) -> None:
        """Answer what a person typed (help, refusals, questions); shown in every mode."""
        if self.mode == "json":
            self._json("message", text=text)
        else:
            self._line(text)

    def error(self, text: str) -> None:
        """Report an error; shown in every mode."""
        if self.mode == "json":
            self._json("error", message=text)
        else:
            self._line(f"numd-client: error: {text}")

    def result(self, event: str, text: str, **fields: object) -> None:
        """Show a result (the array mode's sorted list): `text` on stdout, or a JSON event."""
        if self.mode == "json":
            self._json(event, **fields)
        elif self.mode == "status":
            self._end_live_line()
            self.stdout.write(text + "\n")
            self.stdout.flush()

    def line_typed(self) -> None:
        """A line typed on the terminal was read: Enter moved the cursor a row down, so the next
        status line is drawn afresh, below the typed command."""
        self._above = False

    def close(self) -> None:
        """End the in-place status line so the shell prompt starts clean; plain lines from now on."""
        self._end_live_line()
        self._shown = ""
        self.live = False

    # -- writing -----------------------------------------------------------------

    def _json(self, event: str, **fields: object) -> None:
        record = {"event": event, "t": round(self._clock.seconds(), 3), **fields}
        self.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.stdout.flush()

    def _line(self, text: str) -> None:
        """A whole line on stderr; a live status line is redrawn below it (and the cursor below that)."""
        if not self._shown:
            self.stderr.write(text + "\n")
        elif self._above:  # over the status line, then the status line over the typing row
            self.stderr.write(_UP + _CLEAR_LINE + text + "\n" + _CLEAR_LINE + self._shown + "\n")
        else:
            self.stderr.write(_CLEAR_LINE + text + "\n" + self._shown + "\n")
            self._above = True
        self.stderr.flush()

    def _end_live_line(self) -> None:
        """Leave the cursor at the start of a clear row below the status line."""
        if self._above:
            self.stderr.write(_CLEAR_LINE)
            self.stderr.flush()
            self._above = False


def _status_line(event: str, state: CounterState, fields: dict[str, object]) -> str:
    where = "connected" if state.connected else "not connected"
    line = f"{where:<13} id={state.client_id} number={state.number} increment={state.increment}"
    if event == "retrying":
        why = f"{fields['reason']}; " if fields.get("reason") else ""
        line += f" ({why}retry {fields['attempt']} in {fields['delay']:.1f} s)"
    elif event not in ("report", "connected"):
        details = " ".join(f"{key}={value}" for key, value in fields.items())
        line += f" ({event}{': ' + details if details else ''})"
    return line


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
