"""The numd client's wiring: ``twistd numd-client`` (plugin) and the ``numd-client`` command.

Both parse the same `Options` and run the same service tree, built by
`build_client`: the counter client (or, with ``--array``, the array client) plus
the prompt reading standard input. `makeService` is the plugin's entry point and
`main` the console script's; they are the only places that pick up the global
reactor.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import react
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import usage

from numd.client.array import REPLY_TIMEOUT, ArrayClient, YesNoPrompt
from numd.client.console import PromptService
from numd.client.counter import HELP, REQUEST_TIMEOUT, CounterClient
from numd.client.failover import FailoverEndpoint
from numd.client.output import ClientOutput, CounterState, Mode
from numd.client.tls import check_trust_roots
from numd.counter.tokens import MAX_CLIENT_ID, MIN_CLIENT_ID
from numd.signals import ExitZeroOnSignal, TwistdOptions, exit_on_usage_error

DEFAULT_SERVER = "tcp:127.0.0.1:2004"


def _number(option: str, value: str, convert: Callable[[str], Any]) -> Any:
    """`value` converted, or a `ValueError` that names `option` and quotes `value`."""
    try:
        return convert(value)
    except ValueError:
        kind = "an integer" if convert is int else "a number"
        raise ValueError(f"--{option}: {value!r} is not {kind}") from None


def _client_id(value: str) -> int:
    number: int = _number("id", value, int)
    if not MIN_CLIENT_ID <= number <= MAX_CLIENT_ID:
        raise ValueError(f"--id: must be {MIN_CLIENT_ID}-{MAX_CLIENT_ID}, not {value!r}")
    return number


def _count(value: str) -> int:
    number: int = _number("count", value, int)
    if number < 1:
        raise ValueError(f"--count: must be at least 1, not {value!r}")
    return number


def _timeout(value: str) -> float:
    number: float = _number("timeout", value, float)
    if not number > 0:
        raise ValueError(f"--timeout: must be more than 0, not {value!r}")
    return number


class Options(TwistdOptions):
    """Options of ``twistd numd-client`` and of the ``numd-client`` command (the same).

    Under twistd a usage mistake prints two lines and exits 2 (`TwistdOptions`);
    `main` does the same for the command.
    """

    synopsis = "[options]"
    longdesc = (
        "A numd counter client: registers its ID, reports its number every 500 ms and "
        "asks for even/odd increments every 3-5 s. Type c to connect, s to shut the "
        "connection down, q to quit. With --array it is the older design's client, "
        "sending random arrays and printing the sorted list the server returns."
    )

    optParameters: list[list[Any]] = [
        [
            "server",
            None,
            DEFAULT_SERVER,
            "Server endpoint (a Twisted client endpoint string; tls:HOST:PORT for a TLS "
            "listener, with trustRoots=DIR for a CA of your own); several, comma-separated, "
            "for numd instances sharing their state: the client fails over between them.",
        ],
        [
            "id",
            None,
            None,
            "Client ID, 0-10000 [default: random, kept for the life of the process].",
            _client_id,
        ],
        ["parity", None, "random", "Ask the server for even, odd or random numbers."],
        [
            "count",
            None,
            None,
            "With --array: send this many arrays, without asking to continue.",
            _count,
        ],
        [
            "timeout",
            None,
            None,
            f"Seconds to wait for an answer [default: {REQUEST_TIMEOUT} for even/odd "
            f"and registration, {REPLY_TIMEOUT} for arrays].",
            _timeout,
        ],
    ]
    optFlags: list[list[Any]] = [
        [
            "connect",
            None,
            "Connect at start without waiting for c (and keep running when standard input ends).",
        ],
        ["json", None, "Print one JSON event per line on stdout instead of the status line."],
        ["quiet", None, "Print only errors (and answers to what is typed)."],
        ["array", None, "Array mode: send random arrays, print the sorted lists returned."],
    ]

    def postOptions(self) -> None:
        """Draw the ID when none is given; reject combinations that cannot work."""
        if self["id"] is None:
            self["id"] = random.randint(MIN_CLIENT_ID, MAX_CLIENT_ID)
        if self["parity"] not in ("even", "odd", "random"):
            raise usage.UsageError(f"--parity must be even, odd or random, not {self['parity']!r}")
        if self["json"] and self["quiet"]:
            raise usage.UsageError("--json and --quiet exclude each other")
        if self["count"] is not None and not self["array"]:
            raise usage.UsageError("--count needs --array")
        self["servers"] = [s.strip() for s in self["server"].split(",")]
        for server in self["servers"]:
            try:
                check_trust_roots(server)
                # Only parses the description: no reactor is needed for that.
                clientFromString(None, server)
            except TypeError as e:  # Twisted's endpoint class was given too few or too many parts
                raise usage.UsageError(
                    f"--server: bad endpoint {server!r}: a part is missing or extra "
                    f"(e.g. {DEFAULT_SERVER})"
                ) from e
            except (ValueError, KeyError, OSError) as e:
                raise usage.UsageError(f"--server: bad endpoint {server!r}: {e}") from e

    @property
    def mode(self) -> Mode:
        """How the client shows what happens: ``json``, ``quiet`` or ``status``."""
        if self["json"]:
            return "json"
        if self["quiet"]:
            return "quiet"
        return "status"


class _CloseOutput(Service):
    """Stops last: ends the in-place status line so the shell prompt starts on a fresh line."""

    def __init__(self, output: ClientOutput) -> None:
        self._output = output

    def stopService(self) -> None:
        super().stopService()
        self._output.close()


def build_client(
    config: Options,
    reactor: Any,
    on_quit: Callable[[int], object],
    stdout: TextIO,
    stderr: TextIO,
    stdin_fd: int | None = 0,
    rng: random.Random | None = None,
) -> MultiService:
    """The client's service tree; `on_quit(status)` is called when the client is done.

    `reactor` provides `IReactorTime`, `IReactorTCP` (or whatever the endpoint
    needs) and `IReactorFDSet` for the prompt; `stdin_fd` None means no prompt.
    """
    rng = rng if rng is not None else random.Random()
    output = ClientOutput(config.mode, stdout, stderr, reactor)
    endpoint = FailoverEndpoint([(s, clientFromString(reactor, s)) for s in config["servers"]])
    top = MultiService()
    _CloseOutput(output).setServiceParent(top)
    client: ArrayClient | CounterClient
    if config["array"]:
        prompt = YesNoPrompt(output)
        client = ArrayClient(
            endpoint,
            output,
            reactor,
            rng,
            prompt,
            count=config["count"],
            on_quit=on_quit,
            timeout=config["timeout"] or REPLY_TIMEOUT,
        )
        handler: YesNoPrompt | CounterClient = prompt
        wants_prompt = config["count"] is None
    else:
        client = handler = CounterClient(
            endpoint,
            CounterState(config["id"]),
            output,
            reactor,
            rng,
            parity=config["parity"],
            on_quit=on_quit,
            connect_at_start=config["connect"],
            keep_running_without_input=config["connect"],
            request_timeout=config["timeout"] or REQUEST_TIMEOUT,
        )
        wants_prompt = True
        if stdin_fd is not None and _isatty(stdin_fd):
            output.say(HELP)
    client.setServiceParent(top)
    if wants_prompt and stdin_fd is not None:
        # What is typed on a terminal is echoed there: the status line moves out of its way.
        typed = output.line_typed if _isatty(stdin_fd) else None
        PromptService(reactor, handler, stdin_fd, on_line=typed).setServiceParent(top)
    return top


def makeService(config: Options, reactor: Any = None) -> MultiService:
    """The ``twistd numd-client`` service: quitting stops the reactor (and twistd)."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor

    def quit(status: int) -> None:
        if reactor.running:
            reactor.stop()

    service = build_client(config, reactor, quit, sys.stdout, sys.stderr)
    if IReactorCore.providedBy(reactor):
        ExitZeroOnSignal(reactor).setServiceParent(service)
    return service


async def _run(reactor: Any, config: Options) -> None:
    """Run the client until it quits; a non-zero status becomes the exit code."""
    done: Deferred[int] = Deferred()

    def quit(status: int) -> None:
        if not done.called:
            done.callback(status)

    service = build_client(config, reactor, quit, sys.stdout, sys.stderr)

    def stop() -> Deferred[None] | None:
        return service.stopService() if service.running else None

    # Ctrl-C or SIGTERM stop the reactor: close the connection on the way out.
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    service.startService()
    status = await done
    stopping = stop()
    if stopping is not None:
        await stopping
    if status:
        raise SystemExit(status)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``numd-client`` console script: the same client, without twistd."""
    config = Options()
    config.synopsis = "Usage: numd-client [options]"
    try:
        config.parseOptions(list(argv) if argv is not None else sys.argv[1:])
    except usage.UsageError as e:
        exit_on_usage_error(e, "numd-client")
    # What the person should see goes through the client's output; the log only
    # shows what would otherwise vanish: unhandled errors.
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.critical)],
            )
        ],
        redirectStandardIO=False,
    )
    react(_run, [config])


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False
