"""The start-up log (`numd.startup.announce`): numd's version, its files, and one line per listener
with the address it is bound to and what it serves there; no factory noise."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from numd import version
from numd.startup.announce import address_text, base_url, store_text
from numd.tap import Options, makeService

from .daemon import free_port, running_numd


def numd_lines(output: str) -> list[str]:
    """The text of the lines numd logged under its own name (``[numd#info] ...``)."""
    return re.findall(r"^\S+ \[numd#info\] (.*)$", output, re.MULTILINE)


def test_a_real_twistd_numd_says_what_it_serves_where(tmp_path: Path) -> None:
    """`twistd -n numd` logs its version and pid, the store and message log paths, then one line
    per listener (counter, legacy array, HTTP API with the dashboard URL), and no
    ``Starting factory <...>`` lines."""
    legacy_port = free_port()
    with running_numd(
        tmp_path,
        "--legacy-array-listen",
        f"tcp:{legacy_port}:interface=127.0.0.1",
        "--legacy-routes",
    ) as numd:
        deadline = time.monotonic() + 10
        while "HTTP API on" not in numd.output.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert numd.stop(signal.SIGTERM) == 0
        pid = numd.process.pid
    output = numd.output.read_text()
    url = f"http://127.0.0.1:{numd.api_port}/"
    assert numd_lines(output) == [
        f"numd {version()} starting (pid {pid})",
        f"store: SQLite file {tmp_path}/numd.db",
        f"message log: {tmp_path}/numd-messages.log",
        f"counter protocol on 127.0.0.1:{numd.port}",
        f"legacy array listener (the older server's pickle clients) on 127.0.0.1:{legacy_port}",
        f"HTTP API on 127.0.0.1:{numd.api_port}: dashboard {url}, API {url}api/v1/, "
        "legacy routes /get_array, /add_value, /clean_array",
    ]
    assert "Starting factory" not in output
    assert "Stopping factory" not in output


def test_each_listener_says_the_port_it_is_bound_to(tmp_path: Path) -> None:
    """With a memory reactor: every counter listener, and the HTTP API with its dashboard URL;
    the store and the message log as numd was told (here: neither)."""
    options = Options()
    options.parseOptions(
        [
            "--db", ":memory:", "--no-message-log",
            "--listen", "tcp:2005:interface=127.0.0.1",
            "--listen", "tcp:2006:interface=127.0.0.1",
            "--api-listen", "tcp:8081:interface=127.0.0.1",
        ]
    )  # fmt: skip
    service = makeService(options, reactor=MemoryReactorClock())
    with capturedLogs() as events:
        service.privilegedStartService()
    lines = [formatEvent(e) for e in events if e.get("log_namespace") == "numd"]
    # A memory reactor's ports say they are bound to 0.0.0.0.
    assert lines[1:] == [
        "store: none (--db :memory:; the state starts empty and is not kept)",
        "message log: off (--no-message-log)",
        "counter protocol on 0.0.0.0:2005",
        "counter protocol on 0.0.0.0:2006",
        "HTTP API on 0.0.0.0:8081: dashboard http://127.0.0.1:8081/, API "
        "http://127.0.0.1:8081/api/v1/",
    ]
    assert lines[0].startswith(f"numd {version()} starting (pid ")


@pytest.mark.parametrize(
    "address,text,url",
    [
        (IPv4Address("TCP", "127.0.0.1", 8080), "127.0.0.1:8080", "http://127.0.0.1:8080/"),
        (IPv4Address("TCP", "0.0.0.0", 8080), "0.0.0.0:8080", "http://127.0.0.1:8080/"),
        (IPv6Address("TCP", "::1", 8080), "[::1]:8080", "http://[::1]:8080/"),
        (IPv6Address("TCP", "::", 8080), "[::]:8080", "http://[::1]:8080/"),
        (UNIXAddress(b"/run/numd.sock"), "unix:/run/numd.sock", None),
    ],
)
def test_addresses_and_urls(address: object, text: str, url: str | None) -> None:
    """A bound address as an operator reads it, and the URL a browser on the host opens."""
    assert address_text(address) == text  # type: ignore[arg-type]
    assert base_url(address) == url  # type: ignore[arg-type]


def test_store_text() -> None:
    """A file store by its absolute path, no store as such, a URL without its password."""
    assert store_text("numd.db") == f"SQLite file {Path.cwd()}/numd.db"
    assert (
        store_text("redis://:secret@db.example:6379/0")
        == "Redis at redis://db.example:6379/0, shared with the other numd instances on it"
    )
    assert (
        store_text("redis://user:pw@db.example/1")
        == "Redis at redis://db.example/1, shared with the other numd instances on it"
    )
