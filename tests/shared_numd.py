"""Several real ``twistd -n numd --db redis://...`` instances sharing one redis-server, and the
blocking HTTP and counter helpers that talk to them.

Used by tests/test_redis_e2e.py, tests/test_haproxy.py and bench/redis_propagation.py.
Every socket has a timeout and every wait a deadline, so nothing here can hang a test.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from .daemon import Daemon, recv_tokens, running_numd
from .redis_server import RedisServer

READY_TIMEOUT = 15.0
"""Seconds an instance may take to answer ``/readyz`` with 200 after it listens."""


def redis_url(server: RedisServer, db: int = 0) -> str:
    """The ``--db`` value that points numd at `server`."""
    return f"redis://127.0.0.1:{server.port}/{db}"


def http_json(
    port: int, path: str, method: str = "GET", body: Any = None, timeout: float = 5.0
) -> tuple[int, Any]:
    """The status and the parsed JSON body of one request to 127.0.0.1:`port` (any status)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def readyz(port: int) -> tuple[int, Any]:
    """``/readyz``'s status and body, or (0, reason) if the HTTP port does not answer."""
    try:
        return http_json(port, "/readyz", timeout=2.0)
    except OSError as e:
        return 0, str(e)


def wait_until(what: Callable[[], Any], timeout: float, interval: float = 0.02) -> float:
    """Poll `what` until it returns something true; the seconds it took. AssertionError, saying
    what the last poll returned, if `timeout` passes first."""
    started = time.monotonic()
    last = None
    while True:
        last = what()
        if last:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true within {timeout} s; last: {last!r}")
        time.sleep(interval)


def wait_ready(daemon: Daemon, timeout: float = READY_TIMEOUT) -> float:
    """Wait until `daemon`'s ``/readyz`` answers 200 (its Redis reached, its copy loaded); if it
    exits instead, fail with the end of its output."""

    def ready() -> bool:
        if daemon.process.poll() is not None:
            tail = "\n".join(daemon.output.read_text(errors="replace").splitlines()[-5:])
            raise AssertionError(f"numd exited with {daemon.process.returncode}:\n{tail}")
        return readyz(daemon.api_port)[0] == 200

    return wait_until(ready, timeout, interval=0.05)


START_ATTEMPTS = 3
"""Starts of an instance on new free ports when another process took one meanwhile."""


@contextmanager
def ready_instance(directory: Path, *args: str) -> Iterator[Daemon]:
    """`running_numd` in `directory` with `args`, once its ``/readyz`` answers 200. Started
    again on new ports if another process took one of its free ports before it bound them
    (several test runs share the machine); killed on the way out."""
    for attempt in range(1, START_ATTEMPTS + 1):
        with ExitStack() as stack:
            try:
                daemon = stack.enter_context(running_numd(directory, *args))
                wait_ready(daemon)
            except (RuntimeError, TimeoutError, AssertionError):
                output = (directory / "twistd.out").read_text(errors="replace")
                if attempt == START_ATTEMPTS or "cannot listen" not in output:
                    raise
                continue
            yield daemon
            return


@contextmanager
def shared_instances(
    directory: Path, redis: RedisServer, *args: str, count: int = 2
) -> Iterator[list[Daemon]]:
    """`count` numd instances on `redis`, each in its own subdirectory of `directory` (``a``,
    ``b``, ...) with `args`, each answering ``/readyz`` with 200. All are killed on the way out,
    whatever happened."""
    with ExitStack() as stack:
        daemons = []
        for name in "abcdefgh"[:count]:
            (directory / name).mkdir()
            daemons.append(
                stack.enter_context(
                    ready_instance(directory / name, "--db", redis_url(redis), *args)
                )
            )
        yield daemons


def all_values(port: int, limit: int = 1000) -> list[int]:
    """The whole sorted list of the instance whose HTTP port is `port`, page by page."""
    values: list[int] = []
    while True:
        status, page = http_json(port, f"/api/v1/values?offset={len(values)}&limit={limit}")
        assert status == 200, page
        values += page["values"]
        if len(values) >= page["size"] or not page["values"]:
            return values


def client_number(port: int, client_id: int) -> int | None:
    """The number client `client_id` last reported, as the instance on `port` shows it."""
    status, record = http_json(port, f"/api/v1/clients/{client_id}")
    return record["number"] if status == 200 else None


def register(daemon: Daemon, client_id: int, timeout: float = 5.0) -> tuple[socket.socket, bytes]:
    """A new counter connection to `daemon` that sent `client_id`, and the reply it got."""
    sock = daemon.connect(timeout)
    try:
        sock.sendall(b"%d " % client_id)
        (reply,) = recv_tokens(sock, 1)
    except BaseException:
        sock.close()
        raise
    return sock, reply


def refused_and_closed(sock: socket.socket) -> bool:
    """Whether the server closed `sock` (after its refusal): EOF or a reset."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
