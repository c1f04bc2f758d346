"""The "numd on Redis" part of the bench (``bench/bench.py --only redis``).

numd with its state in Redis (``--db redis://...``) against embedded numd (its
default SQLite store), side by side in one run, with the harness of the rest of
the bench: the same ``bench/loadgen`` loads, the same samplers, every server
thread on `bench.SERVER_CORE` and the load generators on `bench.LOAD_CORE`.
redis-server is a server thread too: it runs on the server's core, at the
servers' niceness, so numd on Redis never borrows the load generator's core for
its store (embedded numd's SQLite writer thread is on the server's core as well).

Each run starts a fresh redis-server (`RedisProcess`: 127.0.0.1, a free port, a
temporary directory, ``appendonly yes`` with ``appendfsync everysec``, no RDB
snapshots) and fresh numd instances, and stops them afterwards. What is measured:

- **10,000 counter clients** on the real schedule, connecting at the bench's 5,000 a
  second and at `SLOW_RAMP`, then 3,000 clients (a load one core carries in every kind),
  on one instance of each kind and split over two instances of numd on one
  redis-server (``loadgen --ports``): tail latency, drops, and CPU per counter message
  (a report or a request the clients sent), numd's and Redis's apart and summed;
- **flood**: 100 connections keeping 64 requests in flight (peak throughput, CPU per
  request at saturation);
- **arrays and pages**: the list filled to 10^6 values, then arrays of 10-20 values
  one at a time (reply latency, CPU per array), then ``wrk`` on a small GET and on a
  page of 1,000 values;
- **registration**: 16 connections each connecting, registering with the next ID,
  closing at the start number and connecting again (``loadgen --mode register``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench
from bench import Sampler, Server, boost_server, fill_list, free_port, loadgen, log, run_wrk

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
APPENDFSYNC = "everysec"
"""Redis's fsync policy in every run: the AOF is written at once and fsynced once a second
(what docs/scaling.md recommends besides ``always``)."""
REDIS_SETTINGS = [
    "--appendonly",
    "yes",
    "--appendfsync",
    APPENDFSYNC,
    "--save",
    "",
    "--maxmemory-policy",
    "noeviction",
]
"""Every redis-server option the bench sets besides the address and the directory: the AOF on
(fsynced every second), RDB snapshots off (a snapshot forks a child on the server's core in the
middle of a run), no eviction (as a deployment must run it). Everything else is Redis's default."""
SLOW_RAMP = 500.0
"""Connects per second that numd on Redis registers as they come (its registration rate on the
server's one core, measured here, is a few times this), besides the rest of the bench's 5,000:
a burst of 10,000 connects at 5,000 a second asks for more claims than Redis-backed numd can
make in its command timeout, and the steady state is to be measured apart from that."""
REGISTER_CONNECTIONS = 16
"""Connections cycling through connect, register, close at once in the registration run."""
LABELS = ("numd", "numd on Redis", "numd on Redis, 2 instances")
"""The kinds of server compared: embedded numd (SQLite), one instance on Redis, two on one Redis."""
HIREDIS = bench.PROJECT_VENV / "hiredis"
"""hiredis, installed beside the bench venv by bench/run (``pip install --target``)."""
HIREDIS_LABELS = ("numd on Redis + hiredis", "numd on Redis + hiredis, 2 instances")
"""numd on Redis with hiredis on its path: txredisapi then parses Redis's replies with hiredis
instead of its own Python parser, which pauses the connection and waits for the next reactor
turn after every bulk string. Run once per load, for comparison (numd does not depend on it)."""


class RedisProcess:
    """One redis-server for one run: 127.0.0.1, a free port, its own temporary directory, the AOF
    on (`REDIS_SETTINGS`), pinned to the server's core at the servers' niceness (`boost_server`);
    `stop` ends it by PID and removes the directory."""

    def __init__(self, workdir: Path) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="redis-", dir=workdir))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """numd's ``--db`` for this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """The server's process ID."""
        assert self.proc is not None, "not started"
        return self.proc.pid

    def cli(self, *command: str) -> str:
        """What ``redis-cli`` prints for `command` against this server ("" if it fails)."""
        done = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port), *command],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    def info(self) -> dict[str, str]:
        """Redis's ``INFO`` as a dict of strings."""
        out = {}
        for line in self.cli("INFO").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                out[key.strip()] = value.strip()
        return out

    def start(self) -> RedisProcess:
        """Start on a free port and wait (at most 10 s) until it answers PING; retry once on
        another port."""
        for _ in range(2):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--dir",
                    str(self.directory),
                    "--logfile",
                    str(self.directory / "redis.log"),
                    "--daemonize",
                    "no",
                    "--protected-mode",
                    "yes",
                    *REDIS_SETTINGS,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=boost_server,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self.cli("PING") == "PONG":
                    return self
                time.sleep(0.05)
            self._end()
        log_path = self.directory / "redis.log"
        tail = log_path.read_text(errors="replace")[-800:] if log_path.exists() else ""
        raise RuntimeError(f"redis-server did not start:\n{tail}")

    def _end(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s), then remove the directory."""
        self._end()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def available() -> str | None:
    """Why the Redis part cannot run here, or None if it can."""
    if not Path(REDIS_SERVER).exists():
        return f"{REDIS_SERVER} not found (Debian package redis-server)"
    if not Path(REDIS_CLI).exists():
        return f"{REDIS_CLI} not found (Debian package redis-tools)"
    return None


def wait_ready(server: Server, seconds: float = 30) -> bool:
    """Poll numd's ``/readyz`` until it answers 200 (on Redis: connected and the copy loaded)."""
    port = getattr(server, "api_port", 0)
    if not port:
        return True
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.05)
    return False


class Instances:
    """The numd instances of one run (embedded, or on `redis`), started and stopped together."""

    def __init__(
        self,
        workdir: Path,
        numd_help: str,
        redis: RedisProcess | None,
        count: int = 1,
        api: bool = False,
        max_clients: int | None = None,
        hiredis: bool = False,
    ) -> None:
        self.servers = []
        for n in range(count):
            home = Path(tempfile.mkdtemp(prefix=f"numd{n}-", dir=workdir))
            server = Server("numd", home, numd_help, api=api, max_clients=max_clients)
            if hiredis:
                server.pythonpath.append(str(HIREDIS))
            if redis is not None:
                at = server.argv.index("--db")
                server.argv[at + 1] = redis.url
                server.db, server.keep_db = None, True
            self.servers.append(server)

    def __enter__(self) -> list[Server]:
        try:
            for server in self.servers:
                server.start()
                if not wait_ready(server):
                    raise RuntimeError(f"numd on port {server.port} never became ready")
        except BaseException:
            self.__exit__()
            raise
        return self.servers

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)


METRICS = ("numd_redis_", "numd_protocol_errors")
"""The ``/metrics`` series kept after each run: Redis's refusals, timeouts and batches, and the
error replies by kind (so an error count in a table can be explained)."""


def numd_metrics(servers: list[Server]) -> list[dict[str, float]]:
    """Every instance's `METRICS` series (name with labels: value), read from ``/metrics``."""
    out = []
    for server in servers:
        series: dict[str, float] = {}
        try:
            url = f"http://127.0.0.1:{server.api_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as answer:
                text = answer.read().decode()
        except (OSError, AttributeError):
            text = ""
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if line.startswith(METRICS) and not name.endswith("_created"):
                try:
                    series[name] = float(value)
                except ValueError:
                    continue
        out.append(series)
    return out


def core_times(core: int) -> tuple[int, int]:
    """(busy, total) clock ticks of `core` since boot, from ``/proc/stat`` (idle and iowait are
    not busy; everything else is, other processes and interrupts included)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                ticks = [int(x) for x in line.split()[1:]]
                return sum(ticks) - ticks[3] - ticks[4], sum(ticks)
    raise ValueError(f"no cpu{core} in /proc/stat")


class CoreSampler(threading.Thread):
    """Samples (monotonic time, busy ticks, total ticks) of one core every `interval` s: how
    busy the servers' core was, whoever kept it busy (the servers' own CPU does not show a core
    saturated by them and other processes together)."""

    def __init__(self, core: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.core = core
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                busy, total = core_times(self.core)
            except (OSError, ValueError):
                return
            self.samples.append((time.monotonic(), busy, total))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        """Stop sampling."""
        self._halt.set()
        self.join()

    def busy(self, start: float, end: float) -> float | None:
        """The share of the core's time that was busy between two monotonic times."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2 or inside[-1][2] == inside[0][2]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][2] - inside[0][2])


def sampled(
    pids: dict[str, int], run: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """`run` (a loadgen run) with the CPU and RSS of every process in `pids` sampled; each
    process's figures over loadgen's steady window (its whole run where it has no ramp)."""
    samplers = {name: Sampler(pid) for name, pid in pids.items()}
    core = CoreSampler(bench.SERVER_CORE)
    for sampler in [*samplers.values(), core]:
        sampler.start()
    started, started_unix = time.monotonic(), time.time()
    result = run()
    for sampler in [*samplers.values(), core]:
        sampler.stop()
    ramp = max(0.0, result.get("ramp_s") or 0.0)
    window = result.get("window_s") or (time.monotonic() - started)
    result["steady_unix"] = [started_unix + ramp, started_unix + ramp + window]
    result["server_core_busy"] = core.busy(started + ramp, started + ramp + window)
    return result, {
        name: sampler.window(started + ramp, started + ramp + window)
        for name, sampler in samplers.items()
    }


def stalls(server: Server, steady: list[float]) -> dict[str, Any] | None:
    """The server's reactor callbacks of 2 ms or more in the steady window (`bench/gcprobe`),
    by kind (``io``: one socket's event; ``timers``: one pass over the due calls): how many
    took 2, 5 and 10 ms or more, the longest, and their total, in ms. Wall time: a callback
    during which the server's one core ran Redis or the other instance counts that too."""
    path = getattr(server, "stall_log", None)
    if path is None or not path.exists():
        return None
    out: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        try:
            t, kind, ms = line.split()
            at, took = float(t), float(ms)
        except ValueError:
            continue
        if not steady[0] <= at <= steady[1]:
            continue
        k = out.setdefault(kind, {"2ms": 0, "5ms": 0, "10ms": 0, "max_ms": 0.0, "total_ms": 0.0})
        k["2ms"] += 1
        k["5ms"] += took >= 5
        k["10ms"] += took >= 10
        k["max_ms"] = max(k["max_ms"], took)
        k["total_ms"] += took
    return out


def per_message(
    result: dict[str, Any], windows: dict[str, dict[str, Any]], rate_key: str = "sent_per_s"
) -> dict[str, Any]:
    """CPU per message in microseconds (messages: loadgen's `rate_key` over the window): every
    numd instance's summed, Redis's, and the sum of both."""
    rate = result.get(rate_key) or 0.0
    numd = sum(w.get("cpu_cores") or 0.0 for name, w in windows.items() if name != "redis")
    redis = windows["redis"].get("cpu_cores") if "redis" in windows else None
    if not rate:
        return {"numd": None, "redis": None, "total": None, "rate": rate}
    out = {"numd": numd / rate * 1e6, "redis": None, "total": numd / rate * 1e6, "rate": rate}
    if redis is not None:
        out["redis"] = redis / rate * 1e6
        out["total"] = (numd + redis) / rate * 1e6
    return out


def redis_figures(redis: RedisProcess | None, before: dict[str, str]) -> dict[str, Any] | None:
    """What Redis did in a run: commands, memory, AOF rewrites (from ``INFO``)."""
    if redis is None:
        return None
    info = redis.info()

    def number(d: dict[str, str], key: str) -> int:
        try:
            return int(d.get(key, "0"))
        except ValueError:
            return 0

    return {
        "commands": number(info, "total_commands_processed")
        - number(before, "total_commands_processed"),
        "used_memory_mb": number(info, "used_memory") / 2**20,
        "aof_rewrites": number(info, "aof_rewrites"),
        "aof_enabled": info.get("aof_enabled"),
        "appendfsync": redis.cli("CONFIG", "GET", "appendfsync").splitlines()[-1:],
    }


def _pids(servers: list[Server], redis: RedisProcess | None) -> dict[str, int]:
    pids = {f"numd{n}": s.pid for n, s in enumerate(servers)}
    if redis is not None:
        pids["redis"] = redis.pid
    return pids


def _with_redis(
    label: str, workdir: Path, body: Callable[[RedisProcess | None], dict[str, Any]]
) -> dict[str, Any]:
    """`body` with a fresh redis-server for the kinds on Redis (None for embedded numd)."""
    if label == "numd":
        return body(None)
    with RedisProcess(workdir) as redis:
        return body(redis)


def run_clients(
    label: str, clients: int, ramp: float, seconds: float, workdir: Path, help_: str
) -> dict[str, Any]:
    """`clients` counter clients on the real schedule (as in the schedule part), connecting at
    `ramp` per second, on one instance or split over two on one redis-server."""
    count = 2 if label.endswith("2 instances") else 1
    hiredis = label in HIREDIS_LABELS

    def body(redis: RedisProcess | None) -> dict[str, Any]:
        with Instances(
            workdir, help_, redis, count, max_clients=clients + 100, hiredis=hiredis
        ) as servers:
            before = redis.info() if redis else {}
            ports = ",".join(str(s.port) for s in servers)
            args = ["--clients", str(clients), "--duration", str(seconds), "--ramp", str(ramp)]
            args += ["--array-share", "0", "--seed", "7", "--ports", ports]
            result, windows = sampled(
                _pids(servers, redis), lambda: loadgen(servers[0].port, *args)
            )
            result["instances"] = [w for name, w in windows.items() if name != "redis"]
            for window, server in zip(result["instances"], servers):
                window["stalls"] = stalls(server, result["steady_unix"])
            result["redis"] = windows.get("redis")
            result["redis_info"] = redis_figures(redis, before)
            result["metrics"] = numd_metrics(servers)
            result["cpu_us_per_message"] = per_message(result, windows)
            return result

    return _with_redis(label, workdir, body)


def run_flood(cfg: argparse.Namespace, label: str, workdir: Path, help_: str) -> dict[str, Any]:
    """100 connections keeping 64 requests in flight, on one instance."""

    def body(redis: RedisProcess | None) -> dict[str, Any]:
        with Instances(workdir, help_, redis) as servers:
            args = ["--mode", "flood", "--clients", "100", "--window", "64"]
            args += ["--duration", str(cfg.flood_seconds), "--array-share", "0"]
            result, windows = sampled(
                _pids(servers, redis), lambda: loadgen(servers[0].port, *args)
            )
            result["instances"] = [w for name, w in windows.items() if name != "redis"]
            result["redis"] = windows.get("redis")
            result["cpu_us_per_message"] = per_message(result, windows, "replies_per_s")
            result["metrics"] = numd_metrics(servers)
            return result

    return _with_redis(label, workdir, body)


def run_list(cfg: argparse.Namespace, label: str, workdir: Path, help_: str) -> dict[str, Any]:
    """Fill the list to `cfg.list_values`, time `cfg.probes` arrays one at a time, then wrk
    a small GET and a page of 1,000 values from the middle of the list."""

    def body(redis: RedisProcess | None) -> dict[str, Any]:
        with Instances(workdir, help_, redis, api=True) as servers:
            server = servers[0]
            pids = _pids(servers, redis)
            started = time.monotonic()
            fill = fill_list(server.port, cfg.list_values)
            out: dict[str, Any] = {
                "fill": {
                    "values": fill["fill_values"],
                    "seconds": time.monotonic() - started,
                    "unanswered": fill["unanswered"],
                    "error_replies": fill["error_replies"],
                }
            }
            args = ["--mode", "flood", "--clients", "1", "--window", "1", "--array-share", "1"]
            args += ["--count", str(cfg.probes), "--duration", "120"]
            probe, windows = sampled(pids, lambda: loadgen(server.port, *args))
            replies = max(1, probe["replies"])
            numd_s = sum(w.get("cpu_s") or 0.0 for n, w in windows.items() if n != "redis")
            redis_s = windows["redis"].get("cpu_s") if "redis" in windows else None
            out["arrays"] = {
                "replies": probe["replies"],
                "errors": probe["error_replies"] + probe["bad_replies"],
                "unanswered": probe["unanswered"],
                "latency": probe["latency"]["arrays"],
                "max_reply_bytes": probe["max_reply_bytes"],
                "cpu_ms_per_array": {
                    "numd": numd_s * 1000 / replies,
                    "redis": None if redis_s is None else redis_s * 1000 / replies,
                },
            }
            base = f"http://127.0.0.1:{server.api_port}/api/v1/values"
            page = f"?offset={cfg.list_values // 2}&limit=1000"
            for name, url in (
                ("small_get", base + "?offset=0&limit=1"),
                ("page_1000", base + page),
            ):
                samplers = {n: Sampler(pid) for n, pid in pids.items()}
                for s in samplers.values():
                    s.start()
                t0 = time.monotonic()
                out[name] = run_wrk(url, cfg.http_seconds, workdir)
                for s in samplers.values():
                    s.stop()
                if out[name] is not None:
                    t1 = time.monotonic()
                    out[name]["cpu"] = {n: s.window(t0, t1) for n, s in samplers.items()}
            out["metrics"] = numd_metrics(servers)
            return out

    return _with_redis(label, workdir, body)


def run_register(cfg: argparse.Namespace, label: str, workdir: Path, help_: str) -> dict[str, Any]:
    """`REGISTER_CONNECTIONS` connections each connecting, registering and closing, again
    and again: registrations per second and the latency of one cycle."""

    def body(redis: RedisProcess | None) -> dict[str, Any]:
        with Instances(workdir, help_, redis, hiredis=label in HIREDIS_LABELS) as servers:
            args = ["--mode", "register", "--clients", str(REGISTER_CONNECTIONS)]
            args += ["--duration", str(cfg.register_seconds)]
            result, windows = sampled(
                _pids(servers, redis), lambda: loadgen(servers[0].port, *args)
            )
            result["instances"] = [w for name, w in windows.items() if name != "redis"]
            result["redis"] = windows.get("redis")
            result["cpu_us_per_message"] = per_message(result, windows, "replies_per_s")
            result["metrics"] = numd_metrics(servers)
            return result

    return _with_redis(label, workdir, body)


def hiredis_parser() -> str:
    """The reply parser txredisapi picks with `HIREDIS` on the path ("HiredisProtocol" when
    hiredis is there and loads; then the "+ hiredis" runs are made)."""
    done = subprocess.run(
        [
            str(bench.PROJECT_VENV / "bin" / "python"),
            "-c",
            "import txredisapi; print(txredisapi.RedisProtocol.__name__)",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(HIREDIS)),
        check=False,
    )
    return done.stdout.strip() or done.stderr.strip()[-200:]


def run(
    cfg: argparse.Namespace,
    workdir: Path,
    numd_help: str,
    out: dict[str, Any],
    save: Callable[[], None],
) -> None:
    """Every figure of the Redis part into `out`, embedded numd and numd on Redis alternately;
    `save` after each run."""
    why = available()
    if why is not None:
        log(f"redis: skipped: {why}")
        out["skipped"] = why
        return
    cfg.register_seconds = 3 if cfg.quick else 10
    clients, seconds = (2000, 8) if cfg.quick else (10000, 30)
    # (clients, connects per second, runs): the target's size at the bench's ramp; at a ramp
    # that registration keeps up with, `cfg.repeat` times; and fewer clients, a load that one
    # core carries in every kind, so that CPU per message is not capped by a saturated core.
    points = [
        (clients, cfg.ramp, 1),
        (clients, SLOW_RAMP, cfg.repeat),
        (clients * 3 // 10, SLOW_RAMP, 1),
    ]
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[:3]
    version = subprocess.run(
        [REDIS_SERVER, "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    out.update(
        {
            "machine": bench.machine(),
            "redis_version": next((w[2:] for w in version if w.startswith("v=")), None),
            "redis_settings": REDIS_SETTINGS,
            "loadavg_at_start": loadavg,
            "clients": clients,
            "seconds": seconds,
            "register_connections": REGISTER_CONNECTIONS,
            "register_seconds": cfg.register_seconds,
            "schedule": [],
            "flood": {},
            "register": {},
            "list": {},
        }
    )
    parser = hiredis_parser()
    out["hiredis_parser"] = parser
    with_hiredis = HIREDIS_LABELS[:1] if parser == "HiredisProtocol" else ()
    for size, ramp, reps in points:
        for rep in range(reps):
            for label in LABELS + (HIREDIS_LABELS if rep == 0 and with_hiredis else ()):
                log(
                    f"redis: {label}, {size} clients at {ramp:g}/s, {seconds} s "
                    f"(run {rep + 1}/{reps})"
                )
                r = run_clients(label, size, ramp, seconds, workdir, numd_help)
                r["server_kind"], r["rep"] = label, rep + 1
                out["schedule"].append(r)
                save()
    for label in LABELS[:2]:
        log(f"redis: {label}, flood W=64")
        out["flood"][label] = run_flood(cfg, label, workdir, numd_help)
        save()
    for label in LABELS[:2] + with_hiredis:
        log(f"redis: {label}, registrations")
        out["register"][label] = run_register(cfg, label, workdir, numd_help)
        save()
    for label in LABELS[:2]:
        log(f"redis: {label}, fill {cfg.list_values}, {cfg.probes} arrays, wrk")
        out["list"][label] = run_list(cfg, label, workdir, numd_help)
        save()
    with open("/proc/loadavg") as f:
        out["loadavg_at_end"] = f.read().split()[:3]
