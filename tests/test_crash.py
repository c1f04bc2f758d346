"""Crash test: acknowledged adds and clears survive ``kill -9`` of a real ``twistd -n numd``.

Each round starts the daemon on the same database, checks what it loaded against
what earlier rounds were told, then adds unique values over the counter protocol
(one-value arrays ``[v] ``, several in flight; each reply acknowledges the oldest
unanswered array), sometimes clears the list over HTTP, and kills the daemon with
SIGKILL at a random moment. bench/crash_rounds.py runs many rounds of the same.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .daemon import Daemon, free_port, running_numd, wait_for_port

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def checkout_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Daemons started here import numd from this checkout, new modules included."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )


WINDOW = 16
"""Arrays in flight at once on the counter connection."""


@dataclass
class Model:
    """What clients were told about the sorted list, across crashes."""

    acked: set[int] = field(default_factory=set)
    """Values acknowledged since the last acknowledged clear: each must be stored, once."""
    maybe: set[int] = field(default_factory=set)
    """Values sent but not acknowledged before the crash: each may be stored, at most once."""
    next_value: int = 1
    rounds: int = 0
    acked_total: int = 0
    clears: int = 0

    def check(self, stored: list[int]) -> None:
        """Raise AssertionError unless `stored` holds every acknowledged value once and nothing unknown."""
        present = set(stored)
        assert len(stored) == len(present), f"{len(stored) - len(present)} values stored twice"
        lost = self.acked - present
        assert not lost, f"{len(lost)} acknowledged values lost, e.g. {sorted(lost)[:5]}"
        unknown = present - self.acked - self.maybe
        assert not unknown, (
            f"{len(unknown)} values stored that should not be, e.g. {sorted(unknown)[:5]}"
        )
        self.acked, self.maybe = present, set()


@contextmanager
def numd_with_api(directory: Path, *args: str) -> Iterator[tuple[Daemon, int]]:
    """`running_numd` with its HTTP API on a free port too; yields the daemon and the API port.

    Both ports are picked free but bound later, so another process (or the two picks
    landing on one port) can take one first: numd then exits at start-up, and this
    tries again with new ports, up to three times.
    """
    for attempt in range(3):
        with ExitStack() as stack:
            api_port = free_port()
            try:
                numd = stack.enter_context(
                    running_numd(
                        directory, *args, "--api-listen", f"tcp:{api_port}:interface=127.0.0.1"
                    )
                )
                wait_for_port(api_port, numd.process)
            except RuntimeError:
                if attempt == 2 or "cannot listen" not in (directory / "twistd.out").read_text():
                    raise
                continue
            yield numd, api_port
            return


def stored_values(api_port: int) -> list[int]:
    """The whole sorted list, page by page over the HTTP API."""
    values: list[int] = []
    while True:
        url = f"http://127.0.0.1:{api_port}/api/v1/values?offset={len(values)}&limit=1000"
        with urllib.request.urlopen(url, timeout=5) as response:
            page = json.load(response)
        values += page["values"]
        if len(values) >= page["size"] or not page["values"]:
            return values


def clear(api_port: int) -> None:
    """Clear the list over HTTP; returns once numd answered 200 (the clear is acknowledged)."""
    request = urllib.request.Request(f"http://127.0.0.1:{api_port}/api/v1/values", method="DELETE")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


class Adder:
    """A counter connection adding unique values, `WINDOW` arrays in flight."""

    def __init__(self, sock: socket.socket, model: Model) -> None:
        self.sock = sock
        self.model = model
        self.in_flight: list[int] = []
        self.buffer = b""

    def send_more(self) -> None:
        """Top the window up with new values."""
        fresh = range(self.model.next_value, self.model.next_value + WINDOW - len(self.in_flight))
        if fresh:
            self.model.next_value = fresh.stop
            self.in_flight += fresh
            self.sock.sendall(b"".join(b"[%d] " % value for value in fresh))

    def read_acks(self) -> None:
        """Read at least one reply; each acknowledges the oldest array in flight."""
        chunk = self.sock.recv(65536)
        assert chunk, "numd closed the connection"
        self.buffer += chunk
        *replies, self.buffer = self.buffer.split(b" ")
        for reply in replies:
            assert reply.startswith(b"["), f"numd answered {reply!r}"
            self.model.acked.add(self.in_flight.pop(0))
            self.model.acked_total += 1

    def drain(self) -> None:
        """Wait until every array in flight is acknowledged."""
        while self.in_flight:
            self.read_acks()


def crash_round(directory: Path, model: Model, rng: random.Random, sync: str = "everysec") -> None:
    """Start numd on ``directory/numd.db``, check it against `model`, add values, kill -9 it."""
    with numd_with_api(
        directory, "--db", str(directory / "numd.db"), "--sync", sync, "--reply-cap", "64"
    ) as (numd, api_port):
        model.check(stored_values(api_port))
        kill_at = time.monotonic() + rng.uniform(0.05, 0.6)
        clear_at = time.monotonic() + rng.uniform(0.0, 0.6) if rng.random() < 0.4 else None
        adder = Adder(numd.connect(timeout=5), model)
        try:
            while time.monotonic() < kill_at:
                if clear_at is not None and time.monotonic() >= clear_at:
                    adder.drain()
                    clear(api_port)
                    model.acked.clear()
                    model.clears += 1
                    clear_at = None
                adder.send_more()
                adder.read_acks()
            numd.process.send_signal(signal.SIGKILL)
            numd.process.wait(10)
            model.maybe = set(adder.in_flight)
        finally:
            adder.sock.close()
    model.rounds += 1


def final_check(directory: Path, model: Model) -> None:
    """Start numd once more and check it holds exactly what the last round left."""
    with numd_with_api(directory, "--db", str(directory / "numd.db")) as (numd, api_port):
        model.check(stored_values(api_port))
        assert numd.stop() == 0


def test_acknowledged_adds_and_clears_survive_kill_9(tmp_path: Path) -> None:
    """Over a few kill -9 rounds nothing acknowledged is lost, nothing is stored twice."""
    model = Model()
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    for number in range(5):
        crash_round(tmp_path, model, rng, sync="always" if number % 2 else "everysec")
    final_check(tmp_path, model)
    assert model.acked_total > 0, f"seed {seed}: no add was acknowledged"


def test_a_clear_survives_kill_9(tmp_path: Path) -> None:
    """An acknowledged clear right before the crash is still a clear after the restart."""
    model = Model()
    with numd_with_api(tmp_path, "--db", str(tmp_path / "numd.db")) as (numd, api_port):
        adder = Adder(numd.connect(timeout=5), model)
        try:
            adder.send_more()
            adder.drain()
            clear(api_port)
            model.acked.clear()
            numd.process.send_signal(signal.SIGKILL)
            numd.process.wait(10)
        finally:
            adder.sock.close()
    final_check(tmp_path, model)
    assert model.acked == set()


def test_a_corrupt_database_stops_twistd_with_one_line(tmp_path: Path) -> None:
    """`twistd -n numd` on a garbage file exits non-zero naming the file, with no traceback."""
    import subprocess

    from .daemon import TWISTD

    db = tmp_path / "numd.db"
    db.write_bytes(b"not a database at all\n" * 100)
    port, api_port = free_port(), free_port()
    result = subprocess.run(
        [
            *TWISTD,
            "-n",
            "--pidfile=",
            "numd",
            "--db",
            str(db),
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--api-listen",
            f"tcp:{api_port}:interface=127.0.0.1",
        ],  # fmt: skip
        cwd=tmp_path,
        capture_output=True,
        check=False,
        timeout=30,
    )
    out = (result.stdout + result.stderr).decode()
    assert result.returncode != 0
    assert f"numd: cannot use the database {db}: file is not a database" in out
    assert "Traceback" not in out
    assert "starting on" not in out, "no listener was started"


def test_sigterm_keeps_the_last_reports(tmp_path: Path) -> None:
    """A report made just before SIGTERM (inside the once-a-second window) is the start number after a restart."""
    from .daemon import recv_tokens

    db = str(tmp_path / "numd.db")
    for expected_start, report in ((b"0", b"1080"), (b"1080", b"1081")):
        with numd_with_api(tmp_path, "--db", db) as (numd, _):
            with numd.connect(timeout=5) as sock:
                sock.sendall(b"7 ")
                assert recv_tokens(sock, 1) == [expected_start]
                sock.sendall(report + b" even ")
                assert recv_tokens(sock, 1)[0].isdigit()
            assert numd.stop() == 0


@pytest.mark.parametrize("sync,window", [("everysec", 2.0), ("always", 1.0)])
def test_kill_9_loses_at_most_the_sync_window_of_reports(
    tmp_path: Path, sync: str, window: float
) -> None:
    """After kill -9 a returning client resumes from a number it reported within the policy's window of the crash.

    Under everysec that is about one second (plus a commit); the bounds leave room for a busy machine.
    """
    from .daemon import recv_tokens

    db = str(tmp_path / "numd.db")
    sent_at: dict[int, float] = {0: 0.0}
    with (
        numd_with_api(tmp_path, "--db", db, "--sync", sync) as (numd, _),
        numd.connect(timeout=5) as sock,
    ):
        sock.sendall(b"7 ")
        assert recv_tokens(sock, 1) == [b"0"]
        number, ends = 0, time.monotonic() + 3.5
        while time.monotonic() < ends:
            number += 1
            sock.sendall(b"%d " % number)
            sent_at[number] = time.monotonic()
            time.sleep(0.02)
        numd.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        numd.process.wait(10)
    with numd_with_api(tmp_path, "--db", db) as (numd, _):
        with numd.connect(timeout=5) as sock:
            sock.sendall(b"7 ")
            (start,) = recv_tokens(sock, 1)
        assert numd.stop() == 0
    assert int(start) in sent_at
    assert killed - sent_at[int(start)] < window, f"resumed at {start} of {number}"
