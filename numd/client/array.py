"""The array mode of the numd client (``numd-client --array``), the older design's client.

It sends a random array of 10-20 integers in 0-100 (``[17,3,3,90] ``), prints the
sorted list the server returns, asks ``Continue? (y/n)`` and repeats on ``y``;
with ``--count N`` it sends N arrays without asking. A reply that is not a valid
array token (an ``error:`` token, garbage, nothing within the timeout, a lost
connection) is reported clearly; it is never retried: with ``--count`` the run
stops there with exit status 1, at the prompt the person decides.

The server's reply is the whole sorted list, ``[1,2,3]``, or, past its reply cap,
the first values and the total size: ``[1,2,3,...]/1000000``.
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from numd.client.counter import connection_problem
from numd.client.output import ClientOutput
from numd.client.tls import tls_failure
from numd.counter.framing import TokenReceiver

ARRAY_SIZE = (10, 20)
"""Bounds (inclusive) of the number of values in each array sent."""
VALUE_RANGE = (0, 100)
"""Bounds (inclusive) of each value sent."""
REPLY_TIMEOUT = 10.0
"""Seconds to wait for the connection, and for each reply."""

_REPLY = re.compile(
    rb"\[(?P<body>-?[0-9]+(?:,-?[0-9]+)*)?(?:(?P<cut>,\.\.\.\]/(?P<total>[0-9]+))|\])"
)


class BadReply(Exception):
    """The server's answer to an array is not a valid array reply."""


@dataclass
class ArrayReply:
    """A parsed array reply: the values it holds and the size of the whole list."""

    values: list[int]
    total: int
    """The size of the server's whole sorted list (more than ``len(values)`` when cut)."""

    @property
    def cut(self) -> bool:
        """True when the list was too long for one reply and only its start came."""
        return self.total > len(self.values)


def parse_array_reply(token: bytes) -> ArrayReply:
    """Parse ``[1,2,3]`` or ``[1,2,3,...]/N``; raise `BadReply` saying what is wrong."""
    if token.startswith(b"error:"):
        raise BadReply("server said " + token.decode("ascii", "replace"))
    match = _REPLY.fullmatch(token)
    if match is None:
        raise BadReply(f"not an array reply: {token[:60]!r}")
    body = match.group("body")
    values = [int(part) for part in body.split(b",")] if body else []
    if any(a > b for a, b in zip(values, values[1:])):
        raise BadReply(f"the list is not sorted: {token[:60]!r}")
    if match.group("cut") is None:
        return ArrayReply(values, len(values))
    total = int(match.group("total"))
    if total <= len(values):
        raise BadReply(f"a cut list says its size is {total}, but holds {len(values)} values")
    return ArrayReply(values, total)


def random_array(rng: random.Random) -> list[int]:
    """10-20 random integers in 0-100."""
    return [rng.randint(*VALUE_RANGE) for _ in range(rng.randint(*ARRAY_SIZE))]


def format_array(values: list[int]) -> bytes:
    """The wire token for `values` (without its delimiter)."""
    return b"[" + b",".join(b"%d" % value for value in values) + b"]"


class ArrayClientProtocol(TokenReceiver):
    """Sends arrays and hands each reply token to the request it answers (replies come in order)."""

    log = Logger()
    MAX_LENGTH = 4 * 1024 * 1024
    """Generous: the server's reply cap is configurable (64 KiB by default)."""

    def __init__(self, clock: IReactorTime, timeout: float = REPLY_TIMEOUT) -> None:
        self._clock = clock
        self.timeout = timeout
        self._waiting: deque[Deferred[bytes]] = deque()
        self.lost: Failure | None = None
        """Why the connection ended, once it has."""

    def send_array(self, values: list[int]) -> Deferred[bytes]:
        """Send `values`; fire with the reply token, or fail (timeout, lost connection)."""
        reply: Deferred[bytes] = Deferred()
        if self.lost is not None:
            reply.errback(self.lost)
            return reply
        self._waiting.append(reply)
        self.transport.write(format_array(values) + b" ")
        # A reply that comes after the timeout still holds its place in the queue,
        # so it is dropped instead of being taken as the answer to the next array.
        reply.addTimeout(self.timeout, self._clock)
        return reply

    def tokenReceived(self, token: bytes) -> None:
        """Fire the oldest waiting request with this token."""
        if not self._waiting:
            self.log.warn("unexpected token from the server: {token!r}", token=token[:60])
            return
        reply = self._waiting.popleft()
        if reply.called:
            self.log.info("late reply dropped: {token!r}", token=token[:60])
            return
        reply.callback(token)

    def lineLengthExceeded(self, token: bytes) -> None:
        """A reply longer than `MAX_LENGTH`: fail the request and hang up."""
        if self._waiting and not self._waiting[0].called:
            self._waiting.popleft().errback(BadReply(f"reply longer than {self.MAX_LENGTH} bytes"))
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Fail every request still waiting."""
        self.lost = reason if reason is not None else Failure(ConnectionDone())
        waiting, self._waiting = self._waiting, deque()
        for reply in waiting:
            if not reply.called:
                reply.errback(reason)


class YesNoPrompt:
    """The array mode's prompt: answers ``Continue? (y/n)`` from typed lines."""

    def __init__(self, output: ClientOutput) -> None:
        self.output = output
        self._answer: Deferred[bool] | None = None
        self._ended = False

    def ask(self, question: str) -> Deferred[bool]:
        """Ask; fire with True for ``y``, False for ``n``, ``q`` or the end of input."""
        answer: Deferred[bool] = Deferred()
        if self._ended:
            answer.callback(False)
            return answer
        self.output.say(question)
        self._answer = answer
        return answer

    def command(self, line: str) -> None:
        """Take a typed line as the answer, or ask again."""
        word = line.strip().lower()
        if self._answer is None:
            if word:
                self.output.say("please wait for the question")
            return
        if word in ("y", "yes"):
            self._give(True)
        elif word in ("n", "no", "q"):
            self._give(False)
        else:
            self.output.say("please answer y or n")

    def input_ended(self) -> None:
        """No more answers: this one, and every later one, is no."""
        self._ended = True
        if self._answer is not None:
            self._give(False)

    def _give(self, value: bool) -> None:
        answer, self._answer = self._answer, None
        assert answer is not None
        answer.callback(value)


class ArrayClient(Service):
    """Runs the array mode once started; calls `on_quit` with the exit status when done."""

    log = Logger()
    name = "numd-client-array"

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        output: ClientOutput,
        clock: IReactorTime,
        rng: random.Random,
        prompt: YesNoPrompt,
        count: int | None = None,
        on_quit: Callable[[int], object] = lambda status: None,
        timeout: float = REPLY_TIMEOUT,
    ) -> None:
        self.endpoint = endpoint
        self.output = output
        self.clock = clock
        self.rng = rng
        self.prompt = prompt
        self.count = count
        self.on_quit = on_quit
        self.timeout = timeout
        self.protocol: ArrayClientProtocol | None = None
        self.done: Deferred[int] | None = None

    def startService(self) -> None:
        """Start the run; its exit status goes to `on_quit`."""
        super().startService()
        self.done = Deferred.fromCoroutine(self.run())
        self.done.addErrback(self._crashed).addCallback(self.on_quit)

    def stopService(self) -> None:
        """Close the connection, if open."""
        super().stopService()
        if self.protocol is not None and self.protocol.lost is None:
            self.protocol.transport.loseConnection()

    async def run(self) -> int:
        """Connect, then send arrays until the count is reached or the person says no."""
        connecting = connectProtocol(self.endpoint, ArrayClientProtocol(self.clock, self.timeout))
        connecting.addTimeout(self.timeout, self.clock)
        try:
            self.protocol = await connecting
        except Exception as e:
            self.output.error(f"cannot connect: {connection_problem(e)}")
            return 1
        status = 0
        sent = 0
        try:
            while self.running:
                if not await self._exchange(self.protocol):
                    status = 1
                    if self.count is not None or self.protocol.lost is not None:
                        return 1
                sent += 1
                if self.count is not None:
                    if sent >= self.count:
                        return status
                elif not await self.prompt.ask("Continue? (y/n)"):
                    return status
            return status
        finally:
            if self.protocol.lost is None:
                self.protocol.transport.loseConnection()

    async def _exchange(self, protocol: ArrayClientProtocol) -> bool:
        """Send one random array and show the reply; False if the reply was not valid."""
        values = random_array(self.rng)
        try:
            token = await protocol.send_array(values)
            reply = parse_array_reply(token)
        except Exception as e:
            self.log.warn("array exchange failed: {error}", error=_reason(e))
            self.output.error(f"no valid answer to {format_array(values).decode()}: {_reason(e)}")
            return False
        text = "[" + ",".join(map(str, reply.values))
        text += f",...] ({len(reply.values)} of {reply.total} values)" if reply.cut else "]"
        self.output.result(
            "array", text, sent=values, sorted=reply.values, total=reply.total, cut=reply.cut
        )
        return True

    def _crashed(self, failure: Failure) -> int:
        self.log.failure("array mode crashed", failure)
        self.output.error(f"array mode crashed: {failure.getErrorMessage()}")
        return 1


def _reason(error: BaseException) -> str:
    refused = tls_failure(error)
    if refused is not None:
        return refused
    if isinstance(error, (TimeoutError, CancelledError)):
        return "no answer in time"
    if isinstance(error, BadReply):
        return str(error)
    return str(error) or type(error).__name__
