"""Log files survive outside rotation: a real `twistd -n numd`, SIGHUP after a move, and
Debian's real `logrotate` run with the configuration numd ships (contrib/logrotate/numd)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from .daemon import ROOT, Daemon, recv_tokens, running_numd

pytestmark = pytest.mark.timeout(90)

LOGROTATE = "/usr/sbin/logrotate"
SHIPPED = ROOT / "contrib" / "logrotate" / "numd"

needs_logrotate = pytest.mark.skipif(
    not os.access(LOGROTATE, os.X_OK),
    reason="Debian's logrotate is not installed (apt-get install logrotate)",
)


def wait_until(
    condition: Callable[[], object], what: str, numd: Daemon | None = None, timeout: float = 10.0
) -> None:
    """Return once `condition()` is true; fail after `timeout` seconds, or at once if `numd` exits."""
    deadline = time.monotonic() + timeout
    while not condition():
        if numd is not None and numd.process.poll() is not None:
            raise AssertionError(f"numd exited ({numd.process.returncode}) waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def records(path: Path) -> list[dict]:
    """Every record of a message log file (gzipped or not); each line must parse."""
    if not path.exists():
        return []
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    assert b"\0" not in data
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def summary(found: list[dict]) -> Counter[tuple[int | None, str]]:
    """How many records there are of each (client ID, direction or event)."""
    return Counter((r["id"], r["dir"] if r["dir"] != "event" else r["event"]) for r in found)


def session(numd: Daemon, client_id: int, requests: int) -> None:
    """One client: registers `client_id`, asks `odd` `requests` times (pipelined), hangs up."""
    with numd.connect() as sock:
        sock.sendall(b"%d " % client_id)
        assert len(recv_tokens(sock, 1)) == 1
        sock.sendall(b"odd " * requests)
        assert len(recv_tokens(sock, requests)) == requests


def expected(client_id: int, requests: int) -> Counter[tuple[int | None, str]]:
    """The records of one `session` of `requests` requests (its ID token is logged before
    the ID is known)."""
    return Counter(
        {
            (None, "connect"): 1,
            (None, "in"): 1,
            (client_id, "register"): 1,
            (client_id, "out"): requests + 1,
            (client_id, "in"): requests,
            (client_id, "disconnect"): 1,
        }
    )


PROBE = Counter({(None, "connect"): 1, (None, "disconnect"): 1})
"""The records of the connection that found numd listening (`wait_for_port`)."""


def logged(log: Path, client_id: int) -> bool:
    """Whether a finished `session` of `client_id` has all reached `log` (its disconnect)."""
    return summary(records(log))[(client_id, "disconnect")] == 1


def open_files(pid: int) -> set[str]:
    """The files process `pid` has open (Linux's /proc)."""
    paths = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            paths.add(os.readlink(fd))
        except OSError:
            pass
    return paths


def http_get(numd: Daemon, path: str) -> int:
    """GET `path` from numd's API; the status."""
    with urllib.request.urlopen(f"http://127.0.0.1:{numd.api_port}{path}", timeout=5) as r:
        return r.status


def test_sighup_after_a_move_reopens_every_log_and_keeps_serving(tmp_path: Path) -> None:
    """`mv` of the message log, the access log and twistd's log, then SIGHUP: numd keeps
    serving, the moved files are closed and hold the earlier records whole, new files at
    the original paths get the later ones, and nothing is lost."""
    with running_numd(
        tmp_path, "--access-log", "access.log", twistd_args=["--logfile", "twistd.log"]
    ) as numd:
        log = numd.message_log
        session(numd, 1, 50)
        assert http_get(numd, "/healthz") == 200
        wait_until(lambda: logged(log, 1), "the first session's records")
        moved = {name: tmp_path / f"{name}.moved" for name in ("access.log", "twistd.log")}
        moved[log.name] = tmp_path / "messages.moved"
        for name, target in moved.items():
            os.rename(tmp_path / name, target)
        numd.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: (
                all((tmp_path / name).exists() for name in moved)
                and not {str(p) for p in moved.values()} & open_files(numd.process.pid)
            ),
            "new files at the original paths and the moved ones closed",
            numd,
        )
        assert numd.process.poll() is None
        session(numd, 2, 70)
        assert http_get(numd, "/readyz") == 200
        wait_until(lambda: logged(log, 2), "the second session's records")
        assert numd.stop(signal.SIGTERM) == 0
    assert summary(records(moved[log.name])) == expected(1, 50) + PROBE
    assert summary(records(log)) == expected(2, 70)
    old_access = moved["access.log"].read_text().splitlines()
    new_access = (tmp_path / "access.log").read_text().splitlines()
    assert ["/healthz" in line for line in old_access] == [True]
    assert ["/readyz" in line for line in new_access] == [True]
    old_twistd = moved["twistd.log"].read_text()
    new_twistd = (tmp_path / "twistd.log").read_text()
    assert "received SIGHUP" in old_twistd and "log files reopened" in new_twistd
    assert "Traceback" not in old_twistd + new_twistd + numd.output.read_text()


def shipped_config(log_dir: Path, pidfile: Path) -> str:
    """contrib/logrotate/numd with its paths moved into a test's directories."""
    text = SHIPPED.read_text()
    assert "/var/log/numd/*.log {" in text and "/run/numd/numd.pid" in text
    return text.replace("/var/log/numd", str(log_dir)).replace("/run/numd/numd.pid", str(pidfile))


def run_logrotate(config_text: str, directory: Path) -> None:
    """Run Debian's logrotate once, forced, with its own state file; it must succeed quietly."""
    config = directory / "logrotate.conf"
    config.write_text(config_text)
    result = subprocess.run(
        [LOGROTATE, "-f", "-s", str(directory / "logrotate.state"), str(config)],
        capture_output=True,
        timeout=30,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, b"")


def only(pattern: str, directory: Path) -> Path:
    """The one file in `directory` that matches `pattern`."""
    (found,) = directory.glob(pattern)
    return found


MAX_BUSY = 20_000
"""At most this many requests from the client that keeps asking while logrotate runs."""


@needs_logrotate
def test_logrotate_with_the_shipped_configuration_loses_no_record(tmp_path: Path) -> None:
    """logrotate -f with contrib/logrotate/numd (move, create, SIGHUP through the pidfile)
    while a client keeps asking: the rotated file is whole, the new file gets the later
    records, and together they hold every record of the exchange; the access log and
    twistd's log are rotated too, and numd keeps serving."""
    log_dir, run_dir = tmp_path / "log", tmp_path / "run"
    log_dir.mkdir()
    run_dir.mkdir()
    log, pidfile = log_dir / "numd-messages.log", run_dir / "numd.pid"
    with running_numd(
        tmp_path,
        "--message-log",
        str(log),
        "--access-log",
        str(log_dir / "access.log"),
        twistd_args=["--pidfile", str(pidfile), "--logfile", str(log_dir / "twistd.log")],
    ) as numd:
        assert int(pidfile.read_text()) == numd.process.pid
        session(numd, 1, 200)
        assert http_get(numd, "/healthz") == 200
        wait_until(lambda: logged(log, 1), "the first session's records")
        rotation_done = threading.Event()
        sent: list[int] = []  # one entry per request answered
        errors: list[BaseException] = []

        def busy() -> None:
            """Ask one request at a time until 100 are answered after the rotation."""
            try:
                with numd.connect() as sock:
                    sock.sendall(b"2 ")
                    recv_tokens(sock, 1)
                    after = 0
                    while after < 100 and len(sent) < MAX_BUSY:
                        after += rotation_done.is_set()
                        sock.sendall(b"odd ")
                        assert len(recv_tokens(sock, 1)) == 1
                        sent.append(1)
            except BaseException as e:  # noqa: BLE001 - reported by the test below
                errors.append(e)

        thread = threading.Thread(target=busy, name="busy client")
        thread.start()
        try:
            wait_until(
                lambda: summary(records(log))[(2, "in")] or errors, "the busy client's records"
            )
            run_logrotate(shipped_config(log_dir, pidfile), tmp_path)
        finally:
            rotation_done.set()
            thread.join(30)
        assert not thread.is_alive() and errors == [] and len(sent) < MAX_BUSY
        session(numd, 3, 200)
        assert http_get(numd, "/readyz") == 200
        wait_until(lambda: logged(log, 3), "the last session's records")
        assert numd.process.poll() is None
        assert numd.stop(signal.SIGTERM) == 0
    rotated = only("numd-messages.log-*", log_dir)
    before, after = summary(records(rotated)), summary(records(log))
    assert before + after == expected(1, 200) + expected(2, len(sent)) + expected(3, 200) + PROBE
    assert before[(1, "in")] == 200 and before[(2, "in")] > 0
    assert after[(2, "in")] >= 100 and after[(3, "in")] == 200
    assert "/healthz" in only("access.log-*", log_dir).read_text()
    assert "/readyz" in (log_dir / "access.log").read_text()
    assert "log files reopened" in (log_dir / "twistd.log").read_text()
    assert "Traceback" not in only("twistd.log-*", log_dir).read_text()


def copytruncate_config(log_dir: Path, pidfile: Path) -> str:
    """The shipped configuration's commented alternative: copytruncate, no create, no signal."""
    text = shipped_config(log_dir, pidfile)
    start, end = text.index("    postrotate\n"), text.index("    endscript\n")
    text = text[:start] + text[end + len("    endscript\n") :]
    assert "    create\n" in text and "    # copytruncate\n" in text
    return text.replace("    create\n", "").replace("    # copytruncate\n", "    copytruncate\n")


@needs_logrotate
def test_logrotate_copytruncate_leaves_no_hole(tmp_path: Path) -> None:
    """With the copytruncate alternative, no SIGHUP: the copy holds the records before, the
    truncated file the records after, from its first byte (no NUL bytes, whole lines)."""
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    log = log_dir / "numd-messages.log"
    with running_numd(tmp_path, "--message-log", str(log)) as numd:
        session(numd, 1, 100)
        wait_until(lambda: logged(log, 1), "the first session's records")
        run_logrotate(copytruncate_config(log_dir, tmp_path / "no.pid"), tmp_path)
        assert log.stat().st_size == 0
        session(numd, 2, 100)
        wait_until(lambda: logged(log, 2), "the second session's records")
        assert numd.stop(signal.SIGTERM) == 0
    assert summary(records(only("numd-messages.log-*", log_dir))) == expected(1, 100) + PROBE
    assert log.read_bytes().startswith(b'{"t":')
    assert summary(records(log)) == expected(2, 100)
