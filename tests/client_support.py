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
