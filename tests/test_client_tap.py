"""Tests for the client's options, its twistd plugin and the service tree `makeService` builds."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage

from numd.client import tap as client_tap
from numd.client.array import ArrayClient
from numd.client.console import PromptService
from numd.client.counter import HELP, CounterClient
from numd.client.tap import Options, build_client, main, makeService


def parse(*args: str) -> Options:
    """The options parsed from `args`."""
    config = Options()
    config.parseOptions(list(args))
    return config


def test_defaults() -> None:
    """Without options: local server on 2004, random ID 0-10000, random parity, wait for c."""
    config = parse()
    client_id = config["id"]
    assert 0 <= client_id <= 10000
    assert {key: config[key] for key in config if key != "id"} == {
        "server": "tcp:127.0.0.1:2004",
        "servers": ["tcp:127.0.0.1:2004"],
        "parity": "random",
        "count": None,
        "timeout": None,
        "connect": 0,
        "json": 0,
        "quiet": 0,
        "array": 0,
    }
    assert config.mode == "status"


def test_every_option() -> None:
    """Every option is parsed to its typed value."""
    config = parse(
        "--server", "tcp:example.org:2005", "--id", "5287", "--parity", "odd",
        "--connect", "--json", "--timeout", "1.5",
    )  # fmt: skip
    assert (config["server"], config["id"], config["parity"]) == (
        "tcp:example.org:2005",
        5287,
        "odd",
    )
    assert (config["connect"], config.mode, config["timeout"]) == (1, "json", 1.5)
    array = parse("--array", "--count", "3", "--quiet")
    assert (array["array"], array["count"], array.mode) == (1, 3, "quiet")


@pytest.mark.parametrize(
    "args",
    [
        ["--id", "10001"],
        ["--id", "-1"],
        ["--id", "x"],
        ["--parity", "blue"],
        ["--json", "--quiet"],
        ["--count", "3"],
        ["--array", "--count", "0"],
        ["--server", "nope:1"],
        ["--server", "tcp:127.0.0.1"],
        ["--timeout", "0"],
    ],
)
def test_bad_options_are_refused(args: list[str]) -> None:
    """Values that cannot work are refused with a usage error, before anything starts."""
    with pytest.raises(usage.UsageError):
        parse(*args)


def test_plugin_is_discovered() -> None:
    """`twistd numd-client` finds the plugin, and it builds from this module."""
    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
    maker = makers["numd-client"]
    assert maker.options is Options
    assert maker.makeService is makeService


def test_connect_option_connects_at_start() -> None:
    """With --connect the service connects to the --server endpoint as soon as it starts."""
    reactor = MemoryReactorClock()
    service = makeService(parse("--connect", "--server", "tcp:127.0.0.1:2999", "--quiet"), reactor)
    service.startService()
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.0.1", 2999)]
    service.stopService()


def test_without_connect_it_waits_for_c() -> None:
    """Without --connect nothing connects until c is typed; the prompt reads standard input."""
    reactor = MemoryReactorClock()
    quits: list[int] = []
    service = build_client(parse(), reactor, quits.append, io.StringIO(), io.StringIO(), stdin_fd=0)
    children = list(service)
    assert any(isinstance(child, PromptService) for child in children)
    (client,) = [child for child in children if isinstance(child, CounterClient)]
    service.startService()
    assert reactor.tcpClients == []
    client.command("c")
    assert len(reactor.tcpClients) == 1
    client.command("q")
    assert quits == [0]
    service.stopService()


def test_array_count_mode_has_no_prompt() -> None:
    """--array --count N runs the array client and reads no standard input."""
    service = build_client(
        parse("--array", "--count", "2"), MemoryReactorClock(), print, io.StringIO(), io.StringIO()
    )
    kinds = {type(child) for child in service}
    assert ArrayClient in kinds and PromptService not in kinds


def test_quit_under_twistd_stops_the_reactor() -> None:
    """Under twistd, q stops the reactor, which stops the services and closes the connection."""
    reactor = MemoryReactorClock()
    reactor.running = True
    service = makeService(parse("--quiet"), reactor)
    (client,) = [child for child in service if isinstance(child, CounterClient)]
    client.command("q")
    assert reactor.hasStopped


def test_console_script_refuses_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    """`numd-client --parity blue` prints the problem and where the help is (not the whole help,
    issue 16), and exits with status 2."""
    with pytest.raises(SystemExit) as exited:
        main(["--parity", "blue"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--parity must be even, odd or random" in err
    assert "--server=" not in err
    assert err.splitlines()[-1] == "see `numd-client --help`"


def test_importing_the_client_does_not_install_a_reactor() -> None:
    """The client modules (as `twistd --help` and the plugin load them) leave the reactor alone."""
    code = (
        "import sys, numd.client.tap, numd.client.counter, numd.client.array, numd.client.console; "
        "sys.exit('twisted.internet.reactor' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(client_tap.__file__).parent.parent.parent)}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == 0


def test_on_a_terminal_typed_commands_stay_on_their_own_row(tmp_path: Path) -> None:
    """Through a real pseudo-terminal (its own echo of typed keys included): the status line is
    redrawn while a key is half typed, and the typed command stays on its own row, never glued
    to the status line."""
    import select

    from twisted.internet.testing import StringTransport

    from .client_support import Screen

    master, terminal = os.openpty()
    stderr = open(os.dup(terminal), "w", encoding="utf-8")  # noqa: SIM115 - closed below
    transcript = b""

    def shown(until: bytes) -> None:
        """Read the terminal until its output ends with `until` (at most 5 s)."""
        nonlocal transcript
        deadline = time.monotonic() + 5
        while not transcript.endswith(until):
            assert time.monotonic() < deadline, transcript
            if select.select([master], [], [], 0.1)[0]:
                transcript += os.read(master, 4096)

    try:
        reactor = MemoryReactorClock()
        service = build_client(
            parse("--id", "7"), reactor, print, io.StringIO(), stderr, stdin_fd=terminal
        )
        service.startService()
        (reader,) = reactor.getReaders()
        os.write(master, b"c\n")
        shown(b"c\r\n")
        reader.doRead()
        (connection,) = reactor.tcpClients
        server = connection[2].buildProtocol(None)
        server.makeConnection(StringTransport())
        server.dataReceived(b"3 ")
        os.write(master, b"s")  # typed, not yet entered
        shown(b"s")
        reactor.advance(0.5)  # a report redraws the status line
        shown(b"\x1b8")
        os.write(master, b"\n")
        shown(b"\r\n")
        reader.doRead()
        shown(b"(shutdown)\r\n")  # the terminal's own newline mapping
        service.stopService()
    finally:
        stderr.close()
        os.close(master)
        os.close(terminal)
    screen = Screen()
    screen.feed(transcript.decode())
    assert screen.lines() == [
        HELP,
        "c",
        "connected     id=7 number=4 increment=1",
        "s",
        "connected     id=7 number=4 increment=1 (shutdown)",  # until the close completes
        "",
    ]


def test_several_servers_are_comma_separated_and_each_checked() -> None:
    """``--server a,b``: both kept in order (the client fails over between them); a bad one is
    named in the usage error."""
    config = parse("--server", "tcp:127.0.0.1:2004, tcp:127.0.0.1:2005")
    assert config["servers"] == ["tcp:127.0.0.1:2004", "tcp:127.0.0.1:2005"]
    with pytest.raises(usage.UsageError, match="--server: bad endpoint 'tcp:nowhere'"):
        parse("--server", "tcp:127.0.0.1:2004,tcp:nowhere")
