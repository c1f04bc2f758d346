"""The numd counter client: registration, reports every 500 ms, even/odd requests, reconnects.

`CounterClientProtocol` speaks one connection of the counter protocol (see
``docs/protocol.md``): it sends its ID, takes the server's start number as its
number, then reports ``number += increment`` every `REPORT_INTERVAL` seconds and,
every 3-5 s (uniformly random, re-drawn each time), asks ``even`` or ``odd``;
the answer becomes the new increment. At most one request is outstanding; one
left unanswered for `request_timeout` seconds is given up (its late answer, if
it ever comes, is recognised by its place in the reply order and dropped).

`CounterClient` is the client as a service: ``c`` (`connect`) starts a
`ClientService` that reconnects with backoff when the connection is lost, ``s``
(`shutdown`) stops it and every timer, ``q`` quits. The ID, number and
increment live in a `CounterState` that outlives connections. Each retry says
why the last attempt failed or the last connection ended (`connection_problem`:
``connection refused``, ``timed out``, ``no route to host``, ...).

Time comes from an injected `IReactorTime`, randomness from an injected
`random.Random`, so tests drive everything with `task.Clock`.
"""

from __future__ import annotations

import os
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from numd.client.output import ClientOutput, CounterState
from numd.client.tls import tls_failure
from numd.counter.framing import TokenReceiver
from numd.counter.tokens import parse_integer
from numd.timers import cancel

ParityChoice = Literal["even", "odd", "random"]

REPORT_INTERVAL = 0.5
"""Seconds between two reports."""
REQUEST_DELAY = (3.0, 5.0)
"""Bounds of the uniformly random delay before each even/odd request."""
REQUEST_TIMEOUT = 2.5
"""Seconds an even/odd request (or the registration) may stay unanswered."""

HELP = "commands: c = connect, s = shut the connection down, q = quit"


@dataclass
class _Pending:
    """A request whose reply token has not arrived yet (replies come in request order)."""

    kind: Literal["start", "even", "odd"]
    timeout: IDelayedCall | None = None
    abandoned: bool = False


class CounterClientProtocol(TokenReceiver):
    """One connection of the counter client; its timers live exactly as long as it does."""

    log = Logger()
    MAX_LENGTH = 64
    """Counter replies are short integers or error tokens; anything longer is nonsense."""

    def __init__(self, client: CounterClient) -> None:
        self.client = client
        self.state = client.state
        self._clock = client.clock
        self._expected: deque[_Pending] = deque()
        self._request: _Pending | None = None
        self._request_timer: IDelayedCall | None = None
        self._reporter = LoopingCall(self._report)
        self._reporter.clock = self._clock
        self._end_reason: str | None = None
        """Why this side ends the connection, when it does (a refused registration, ...)."""

    # -- connection ----------------------------------------------------------------

    def connectionMade(self) -> None:
        """Register: send the ID and wait (at most the request timeout) for the start number."""
        self._send(b"%d" % self.state.client_id, _Pending("start"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Stop every timer and forget pending requests; the state keeps number and ID."""
        self.stop_reading_tokens()
        if self._reporter.running:
            self._reporter.stop()
        cancel(self._request_timer)
        self._request_timer = None
        for pending in self._expected:
            cancel(pending.timeout)
        self._expected.clear()
        self._request = None
        was_connected = self.state.connected
        self.state.connected = False
        if was_connected:
            self.log.info(
                "disconnected from the server: {reason}",
                reason=reason.getErrorMessage() if isinstance(reason, Failure) else reason,
            )
        if self._end_reason is not None:
            why = self._end_reason
        elif isinstance(reason, Failure):
            why = connection_problem(reason.value)
        else:
            why = "connection closed"
        self.client.connection_ended(self, was_connected, why)

    def lineLengthExceeded(self, token: bytes) -> None:
        """The server sent an over-long token: report it and drop the connection."""
        self.client.output.error(f"server sent an over-long token ({token[:32]!r}...)")
        self._end_reason = "server sent an over-long token"
        self.transport.loseConnection()

    # -- replies ---------------------------------------------------------------------

    def tokenReceived(self, token: bytes) -> None:
        """Match the token with the oldest pending request and act on it."""
        if not self._expected:
            self.log.warn("unexpected token from the server: {token!r}", token=token)
            self.client.output.error(f"unexpected token from the server: {token[:32]!r}")
            return
        pending = self._expected.popleft()
        cancel(pending.timeout)
        if pending.abandoned:
            self.log.info(
                "late answer {token!r} to an abandoned {kind} request dropped",
                token=token,
                kind=pending.kind,
            )
            return
        if pending.kind == "start":
            self._started(token)
        else:
            self._answered(pending, token)

    def _started(self, token: bytes) -> None:
        start = parse_integer(token)
        if start is None:
            self.client.output.error(f"registration refused: {_describe(token)}")
            self._end_reason = f"registration refused: {_describe(token)}"
            self.transport.loseConnection()
            return
        self.state.number = start
        self.state.connected = True
        self.log.info(
            "registered as {client_id}, starting at {start}",
            client_id=self.state.client_id,
            start=start,
        )
        self.client.output.status("connected", self.state)
        self._reporter.start(REPORT_INTERVAL, now=False)
        self._arm_request_timer()

    def _answered(self, pending: _Pending, token: bytes) -> None:
        self._request = None
        value = parse_integer(token)
        parity = "even" if pending.kind == "even" else "odd"
        if value is None or value % 2 != (parity == "odd"):
            self.client.output.error(f"bad answer to {parity}: {_describe(token)}")
            return
        self.state.increment = value
        self.client.output.status("answer", self.state, asked=parity)

    # -- timers ----------------------------------------------------------------------

    def _report(self) -> None:
        self.state.number += self.state.increment
        self.transport.write(b"%d " % self.state.number)
        self.client.output.status("report", self.state)

    def _arm_request_timer(self) -> None:
        low, high = self.client.request_delay
        delay = self.client.rng.uniform(low, high)
        self._request_timer = self._clock.callLater(delay, self._ask)

    def _ask(self) -> None:
        self._arm_request_timer()
        if self._request is not None:
            self.log.info("previous request still unanswered; not asking again yet")
            return
        parity = self.client.choose_parity()
        self._request = _Pending(parity)
        self._send(parity.encode("ascii"), self._request)

    def _send(self, token: bytes, pending: _Pending) -> None:
        pending.timeout = self._clock.callLater(
            self.client.request_timeout, self._timed_out, pending
        )
        self._expected.append(pending)
        self.transport.write(token + b" ")

    def _timed_out(self, pending: _Pending) -> None:
        pending.timeout = None
        pending.abandoned = True
        if pending.kind == "start":
            self.log.warn("no start number from the server; reconnecting")
            self.client.output.error(
                f"no answer to registration within {self.client.request_timeout} s"
            )
            self._end_reason = "no answer to registration"
            self.transport.loseConnection()
            return
        self._request = None
        self.log.warn(
            "no answer to {kind} within {timeout} s; giving up on it",
            kind=pending.kind,
            timeout=self.client.request_timeout,
        )
        self.client.output.status("timeout", self.state, asked=pending.kind)


class CounterClientFactory(Factory):
    """Builds a `CounterClientProtocol` for each connection of one `CounterClient`."""

    noisy = False

    def __init__(self, client: CounterClient) -> None:
        self.client = client

    def buildProtocol(self, addr: IAddress | None) -> CounterClientProtocol:
        """A protocol sharing the client's state, clock and output."""
        return CounterClientProtocol(self.client)


class CounterClient(Service):
    """The counter client: connects on ``c``, shuts down on ``s``, reconnects with backoff.

    `on_quit` is called (with exit status 0) when the person types ``q`` or,
    unless `keep_running_without_input`, when standard input ends.
    """

    log = Logger()
    name = "numd-client"

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        state: CounterState,
        output: ClientOutput,
        clock: IReactorTime,
        rng: random.Random,
        parity: ParityChoice = "random",
        on_quit: Callable[[int], object] = lambda status: None,
        connect_at_start: bool = False,
        keep_running_without_input: bool = False,
        request_timeout: float = REQUEST_TIMEOUT,
        request_delay: tuple[float, float] = REQUEST_DELAY,
        retry_policy: Callable[[int], float] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.state = state
        self.output = output
        self.clock = clock
        self.rng = rng
        self.parity = parity
        self.on_quit = on_quit
        self.connect_at_start = connect_at_start
        self.keep_running_without_input = keep_running_without_input
        self.request_timeout = request_timeout
        self.request_delay = request_delay
        self.retry_policy = (
            retry_policy
            if retry_policy is not None
            else backoffPolicy(
                initialDelay=0.5, factor=2.0, maxDelay=30.0, jitter=lambda: rng.random() / 4
            )
        )
        self.factory = CounterClientFactory(self)
        self._connector: ClientService | None = None
        self._unregistered_in_a_row = 0
        self._problem = "unknown"
        """Why the last connection attempt failed or the last connection ended."""

    # -- commands --------------------------------------------------------------------

    def command(self, line: str) -> None:
        """Act on one line typed at the prompt: ``c``, ``s``, ``q``; anything else gets help."""
        word = line.strip().lower()
        if word == "c":
            self.connect()
        elif word == "s":
            self.shutdown()
        elif word == "q":
            self.quit()
        elif word:
            self.output.say(HELP)

    def input_ended(self) -> None:
        """Standard input is closed: quit, unless the client runs unattended (``--connect``)."""
        if self.keep_running_without_input:
            self.log.info("standard input closed; running on without a prompt")
            return
        self.log.info("standard input closed; quitting (--connect runs without input)")
        self.quit()

    def connect(self) -> None:
        """Start connecting (and reconnecting) to the server, unless already doing so."""
        if self._connector is not None:
            if self.state.connected:
                self.output.say("already connected")
            else:
                self.output.say("already connecting; type s to stop trying")
            return
        self.output.status("connecting", self.state)
        self._unregistered_in_a_row = 0
        self._connector = ClientService(
            _NotingFailures(self.endpoint, self._connect_failed),
            self.factory,
            retryPolicy=self._retry_delay,
            clock=self.clock,
        )
        self._connector.startService()

    def shutdown(self) -> Deferred[None]:
        """Close the connection and stop retrying; the ID and number are kept."""
        if self._connector is None:
            self.output.say("not connected")
            return succeed(None)
        connector, self._connector = self._connector, None
        stopped = connector.stopService()
        self.output.status("shutdown", self.state)
        return stopped

    def quit(self) -> None:
        """Leave: `on_quit` stops the process, which stops this service and its connection."""
        self.on_quit(0)

    # -- service ---------------------------------------------------------------------

    def startService(self) -> None:
        """Show the commands, and connect at once with ``--connect``."""
        super().startService()
        if self.connect_at_start:
            self.connect()

    def stopService(self) -> Deferred[None]:
        """Close the connection; fires once it is closed."""
        super().stopService()
        if self._connector is None:
            return succeed(None)
        return self.shutdown()

    # -- called by the protocol and ClientService ------------------------------------

    def choose_parity(self) -> Literal["even", "odd"]:
        """The parity to ask for next: the configured one, or a fair coin for ``random``."""
        if self.parity == "random":
            return "even" if self.rng.random() < 0.5 else "odd"
        return self.parity

    def connection_ended(
        self, protocol: CounterClientProtocol, was_connected: bool, problem: str
    ) -> None:
        """A connection is gone (lost, refused at registration, or shut down), for `problem`."""
        self._problem = problem
        if was_connected:
            self._unregistered_in_a_row = 0
            self.output.status("disconnected", self.state)
        else:
            self._unregistered_in_a_row += 1

    def _retry_delay(self, attempt: int) -> float:
        """The retry policy, counting connections refused at registration as failed attempts.

        `ClientService` resets its count of failed attempts whenever TCP connects,
        so a server that keeps answering ``error:id-in-use`` would be retried at
        the first delay forever. (Its ``prepareConnection`` hook would count them,
        but a connection lost while being prepared raises ``NoTransition`` inside
        `ClientService` as of Twisted 26.10.)
        """
        delay = self.retry_policy(attempt + self._unregistered_in_a_row)
        self.output.status(
            "retrying", self.state, attempt=attempt, delay=round(delay, 3), reason=self._problem
        )
        return delay

    def _connect_failed(self, reason: Failure) -> None:
        self._problem = connection_problem(reason.value)
        self.log.info("cannot connect: {problem}", problem=self._problem)


@implementer(IStreamClientEndpoint)
class _NotingFailures:
    """An endpoint that tells `failed` why each failed connection attempt failed."""

    def __init__(self, endpoint: IStreamClientEndpoint, failed: Callable[[Failure], None]) -> None:
        self._endpoint = endpoint
        self._failed = failed

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect through the wrapped endpoint; a failure is noted and passed on."""
        connecting: Deferred[IProtocol] = self._endpoint.connect(protocolFactory)
        return connecting.addErrback(self._noted)

    def _noted(self, reason: Failure) -> Failure:
        self._failed(reason)
        return reason


def connection_problem(problem: BaseException | None) -> str:
    """Why a connection attempt failed or a connection ended, in a few words.

    ``connection refused``, ``timed out``, ``no route to host``, ``host name not
    found``, ``connection lost``, ``closed by the server``; else the error's own
    message, shortened.
    """
    if problem is None:
        return "unknown"
    refused = tls_failure(problem)
    if refused is not None:
        return refused
    summary = getattr(problem, "summary", None)  # several servers' reasons (`FailoverEndpoint`)
    if isinstance(summary, str):
        return summary
    if isinstance(problem, (error.DNSLookupError, error.UnknownHostError)):
        return "host name not found"
    if isinstance(problem, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(problem, (error.TCPTimedOutError, error.TimeoutError, defer.TimeoutError)):
        return "timed out"
    if isinstance(problem, error.ConnectError) and isinstance(problem.osError, int):
        return os.strerror(problem.osError).lower()  # e.g. "no route to host"
    if isinstance(problem, error.NoRouteError):
        return "no route to host"
    if isinstance(problem, error.ConnectionDone):
        return "closed by the server"
    if isinstance(problem, error.ConnectionLost):
        return "connection lost"
    if isinstance(problem, TimeoutError):
        return "timed out"
    message = str(problem).strip().splitlines()[0] if str(problem).strip() else ""
    return (message or type(problem).__name__)[:80]


def _describe(token: bytes) -> str:
    if token.startswith(b"error:"):
        return "server said " + token.decode("ascii", "replace")
    return f"{token[:32]!r}"
