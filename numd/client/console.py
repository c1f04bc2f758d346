"""The client's prompt: commands read line by line from standard input.

`CommandPrompt` turns lines into calls on a `CommandHandler` (the counter client
takes ``c``/``s``/``q``, the array mode takes ``y``/``n``) and reports the end of
input. `PromptService` feeds it from a file descriptor (standard input) through
the reactor.

Why not `twisted.internet.stdio.StandardIO`: it switches standard input and
output to non-blocking mode, and on a terminal standard input, output and error
share one open file description, so the flag leaks to stderr and stdout too.
The client writes its status line and JSON events with ordinary blocking writes
(they are small and must not be lost), and a non-blocking stdout piped into a
slow reader makes those writes fail with `BlockingIOError`. Reading the
descriptor only when the reactor says it is readable needs no such flag.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Protocol as TypingProtocol

from twisted.application.service import Service
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer


class CommandHandler(TypingProtocol):
    """What a prompt drives."""

    def command(self, line: str) -> None:
        """Act on one typed line (without its line ending)."""

    def input_ended(self) -> None:
        """Standard input was closed (end of file, Ctrl-D)."""


class CommandPrompt(LineReceiver):
    """Reads commands, one per line, and hands them to a `CommandHandler`.

    `on_line`, if given, is called before each line is handed on (the status
    line learns that Enter moved the terminal's cursor a row down).
    """

    delimiter = b"\n"
    MAX_LENGTH = 1024

    def __init__(
        self, handler: CommandHandler, on_line: Callable[[], object] | None = None
    ) -> None:
        self.handler = handler
        self.on_line = on_line

    def lineReceived(self, line: bytes) -> None:
        """Pass the line on, decoded, without a trailing carriage return."""
        if self.on_line is not None:
            self.on_line()
        self.handler.command(line.rstrip(b"\r").decode("utf-8", "replace"))

    def lineLengthExceeded(self, line: bytes) -> None:
        """An over-long line is not a command: answer it like any unknown one."""
        if self.on_line is not None:
            self.on_line()
        self.handler.command("?")

    def connectionLost(self, reason: Failure | None = None) -> None:
        """End of input."""
        self.handler.input_ended()


@implementer(IReadDescriptor)
class _DescriptorReader:
    """Reads a file descriptor when the reactor says it is readable; also the prompt's transport."""

    log = Logger()
    disconnecting = False

    def __init__(self, reactor: IReactorFDSet, fd: int, prompt: CommandPrompt) -> None:
        self._reactor = reactor
        self._fd = fd
        self._prompt = prompt
        self._reading = False

    def start(self) -> None:
        self._prompt.makeConnection(self)
        self._reading = True
        self._reactor.addReader(self)

    def stop(self) -> None:
        if self._reading:
            self._reading = False
            self._reactor.removeReader(self)

    # the prompt's transport
    def loseConnection(self) -> None:
        if self._reading:
            self.stop()
            self._prompt.connectionLost(Failure(ConnectionDone()))

    # IReadDescriptor
    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "numd-client-prompt"

    def doRead(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno == errno.EINTR:
                return
            self.log.warn("standard input failed: {error}", error=e)
            data = b""
        if data:
            self._prompt.dataReceived(data)
        else:
            self.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.loseConnection()


class PromptService(Service):
    """Feeds a `CommandPrompt` from standard input (or another descriptor) while running.

    `on_line` is called as each line is read (see `CommandPrompt`).
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorFDSet,
        handler: CommandHandler,
        fd: int = 0,
        on_line: Callable[[], object] | None = None,
    ) -> None:
        self._reactor = reactor
        self._handler = handler
        self._fd = fd
        self._on_line = on_line
        self._reader: _DescriptorReader | None = None

    def startService(self) -> None:
        """Start reading; a closed descriptor counts as an input that has already ended."""
        super().startService()
        prompt = CommandPrompt(self._handler, self._on_line)
        try:
            os.fstat(self._fd)
        except OSError:
            self.log.info("no standard input; no prompt")
            prompt.connectionLost(Failure(ConnectionDone()))
            return
        self._reader = _DescriptorReader(self._reactor, self._fd, prompt)
        self._reader.start()

    def stopService(self) -> None:
        """Stop reading (without reporting an end of input)."""
        super().stopService()
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
