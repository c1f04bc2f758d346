"""The client's prompt (`numd.client.console`): c, s, q, help, end of input, standard input
read through the reactor."""

from __future__ import annotations

import os

from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from numd.client.console import CommandPrompt, PromptService
from numd.client.counter import HELP

from .client_support import Harness


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


def test_each_line_read_is_announced_before_its_command() -> None:
    """`on_line` hears of every line (an over-long one too) before the handler acts on it, so the
    status line can move below what was typed before anything answers it."""
    h = Harness()
    calls: list[object] = []
    prompt = CommandPrompt(h.client, on_line=lambda: calls.append(len(messages(h))))
    prompt.makeConnection(StringTransport())
    prompt.dataReceived(b"s\n" + b"x" * 2000 + b"\n")
    assert calls == [0, 1]  # each before its answer
    assert messages(h) == ["not connected", HELP]
