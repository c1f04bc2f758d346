"""Runs numd and the baseline server under load and writes the results as JSON.

Called by ``bench/run`` (which builds ``loadgen`` and the bench venv first);
``bench/report.py`` turns the JSON into ``docs/performance.md`` and the plot.

Every server is started fresh for each run, on free ports of 127.0.0.1, and
stopped with SIGTERM afterwards. While a run goes, a sampler reads the server's
CPU time and RSS from ``/proc/PID/stat`` and ``/proc/PID/status`` every 0.25 s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PROJECT_VENV = BENCH / ".venv"
"""The bench venv: numd installed from a snapshot of the work tree, matplotlib, py-spy."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def log(message: str) -> None:
    """Progress on stderr, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


NUMD_EXTRA: list[str] = []
"""Extra numd options for every numd run (``--numd-args``), for experiments."""

NICE = -5
"""Niceness of the servers under test and the load generator (both alike): the
machine is shared with other engineers' test runs, and a higher priority keeps
their bursts from being measured as server latency. Ignored when not permitted."""


SERVER_CORE = 0
"""The core every server under test runs on, all its threads (numd's reactor and its
log and store writer threads alike): a thread started later inherits the process's
affinity, so no figure borrows the load generator's core."""
LOAD_CORE = 1
"""The core of the load generators (loadgen, wrk, the paced HTTP client)."""


CORES = frozenset(os.sched_getaffinity(0))
"""The cores this bench may use, read once at import, before the driver pins itself: a server
started by the driver inherits the driver's affinity (`LOAD_CORE`), so `_pin` must not judge
the server's core by the caller's own affinity (until that was fixed, every server ran on the
load core)."""


def _pin(core: int) -> None:
    """Pin the calling process (and every thread it starts later) to `core`, if it exists."""
    if core in CORES and len(CORES) > 1:
        os.sched_setaffinity(0, {core})


def boost() -> None:
    """In a load generator before exec: run at `NICE` if allowed, on `LOAD_CORE`."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
    except OSError:
        pass
    _pin(LOAD_CORE)


def boost_server() -> None:
    """In a server under test before exec: run at `NICE` if allowed, on `SERVER_CORE`."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
    except OSError:
        pass
    _pin(SERVER_CORE)


_taken: set[int] = set()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now, below the ephemeral range.

    Ports the kernel hands out to client sockets (32768-60999 here) are avoided:
    the load generator's tens of thousands of connections use them, and a server
    told to listen on one of them can find it taken.
    """
    import random

    for _ in range(1000):
        port = random.randrange(20000, 32000)
        if port in _taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port
    raise RuntimeError("no free port in 20000-32000")


def wait_listening(port: int, deadline: float, proc: subprocess.Popen[bytes]) -> bool:
    """Poll 127.0.0.1:port every 5 ms until it accepts, the process dies or time runs out."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.005)
    return False


# -- servers --------------------------------------------------------------------------


class Server:
    """numd (``twistd -n numd``) or the baseline, started fresh on free ports."""

    def __init__(
        self,
        kind: str,
        workdir: Path,
        numd_help: str,
        log_on: bool = True,
        api: bool = False,
        max_clients: int | None = None,
        db: Path | None = None,
    ) -> None:
        self.kind = kind
        self.port = free_port()
        self.http_port = free_port() if api else 0
        self.workdir = workdir
        self.log_on = log_on
        self.log_path = workdir / f"{kind}-messages.log"
        self.stdout = open(workdir / f"{kind}-stdout.txt", "ab")
        if kind == "baseline":
            self.argv = [
                str(PROJECT_VENV / "bin" / "python"),
                str(BENCH / "baseline_server.py"),
                "--port",
                str(self.port),
            ]
            if api:
                self.argv += ["--http-port", str(self.http_port)]
        else:
            self.argv = [
                str(PROJECT_VENV / "bin" / "twistd"),
                "-n",
                "--pidfile=",
                "--logfile",
                str(workdir / "numd-twistd.log"),
                "numd",
                "--listen",
                f"tcp:{self.port}:interface=127.0.0.1",
            ]
            if log_on:
                self.argv += ["--message-log", str(self.log_path)]
            else:
                self.argv += log_off_args(numd_help, workdir)
            if "--api-listen" in numd_help:
                http = self.http_port or free_port()
                self.http_port = http if api else 0
                self.api_port = http
                self.argv += ["--api-listen", f"tcp:{http}:interface=127.0.0.1"]
            if max_clients and "--max-clients" in numd_help:
                self.argv += ["--max-clients", str(max_clients)]
            self.argv += NUMD_EXTRA
            if "--db" in numd_help and "--db" not in NUMD_EXTRA:
                # numd's default store (SQLite), one fresh file per run unless one is given.
                self.keep_db = db is not None
                self.db = db or workdir / f"numd-{self.port}.db"
                self.argv += ["--db", str(self.db)]
        if not hasattr(self, "db"):
            self.db, self.keep_db = None, True
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        self.pythonpath = [str(BENCH / "gcprobe")]
        """The server's PYTHONPATH: the bench's probes, and what a run adds."""

    def start(self) -> None:
        """Start and wait until the counter port accepts (at most 30 s); retry once on new ports."""
        try:
            self._start()
        except RuntimeError as e:
            log(f"{self.kind} failed to start, retrying on other ports: {str(e)[-300:]}")
            old = (self.port, self.http_port)
            self.port, self.http_port = free_port(), free_port() if self.http_port else 0
            api_old = getattr(self, "api_port", 0)
            api_new = self.http_port or (free_port() if api_old else 0)
            self.argv = [a.replace(f"tcp:{old[0]}:", f"tcp:{self.port}:") for a in self.argv]
            if api_old:
                self.argv = [a.replace(f"tcp:{api_old}:", f"tcp:{api_new}:") for a in self.argv]
                self.api_port = api_new
            if self.kind == "baseline":
                self.argv = [
                    str(self.port)
                    if a == str(old[0])
                    else (str(self.http_port) if old[1] and a == str(old[1]) else a)
                    for a in self.argv
                ]
            self._start()

    def _start(self) -> None:
        started = time.monotonic()
        self.gc_log = self.workdir / f"{self.kind}-{self.port}-gc.log"
        self.stall_log = self.workdir / f"{self.kind}-{self.port}-stalls.log"
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(self.pythonpath),
            NUMD_BENCH_GC_LOG=str(self.gc_log),
            NUMD_BENCH_STALL_LOG=str(self.stall_log),
        )
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.workdir,
            stdout=self.stdout,
            stderr=subprocess.STDOUT,
            preexec_fn=boost_server,
            env=env,
        )
        if not wait_listening(self.port, started + 30, self.proc):
            self.stop()
            tails = []
            for name in (f"{self.kind}-stdout.txt", "numd-twistd.log"):
                path = self.workdir / name
                if path.exists():
                    tails.append(path.read_text(errors="replace")[-1500:])
            raise RuntimeError(
                f"{self.kind} did not start: {' '.join(self.argv)}\n" + "\n".join(tails)
            )
        self.startup_s = time.monotonic() - started
        if self.http_port:
            wait_listening(self.http_port, time.monotonic() + 10, self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for path in self.workdir.glob(f"{self.kind}-messages.log*"):
            path.unlink()
        if self.db is not None and not self.keep_db:
            for path in self.workdir.glob(self.db.name + "*"):
                path.unlink()

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def log_off_args(numd_help: str, workdir: Path) -> list[str]:
    """How to turn numd's message log off, if numd has a way."""
    if "--no-message-log" in numd_help:
        return ["--no-message-log"]
    # numd has no switch: the closest is a log on tmpfs that never rotates to disk.
    return [
        "--message-log",
        str(Path("/dev/shm") / f"numd-bench-{os.getpid()}.log"),
        "--message-log-max-bytes",
        str(1 << 30),
    ]


# -- sampling ---------------------------------------------------------------------------


def read_proc(pid: int) -> tuple[float, int]:
    """(CPU seconds used, RSS in KiB) of `pid`."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return cpu, rss


class Sampler(threading.Thread):
    """Samples (monotonic time, CPU seconds, RSS KiB) of a process every `interval` s."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                cpu, rss = read_proc(self.pid)
            except (OSError, StopIteration):
                return
            self.samples.append((time.monotonic(), cpu, rss))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def window(self, start: float, end: float) -> dict[str, Any]:
        """Average CPU (cores) and peak RSS between two monotonic times."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return {"cpu_cores": None, "rss_peak_kb": None}
        (t0, c0, _), (t1, c1, _) = inside[0], inside[-1]
        # Peak 1-second CPU, to see bursts.
        peak = 0.0
        j = 0
        for i in range(len(inside)):
            while inside[i][0] - inside[j][0] > 1.2:
                j += 1
            if i > j and inside[i][0] - inside[j][0] >= 0.8:
                peak = max(peak, (inside[i][1] - inside[j][1]) / (inside[i][0] - inside[j][0]))
        return {
            "cpu_cores": (c1 - c0) / (t1 - t0),
            "cpu_cores_peak_1s": peak,
            "cpu_s": c1 - c0,
            "rss_peak_kb": max(s[2] for s in inside),
            "rss_end_kb": inside[-1][2],
        }


# -- the load generator ---------------------------------------------------------------------


def loadgen(port: int, *args: str, timeout: float = 900) -> dict[str, Any]:
    """Run bench/loadgen against 127.0.0.1:port and return its JSON."""
    argv = [str(BENCH / "loadgen"), "--port", str(port), *args]
    done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False, preexec_fn=boost)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    result = json.loads(done.stdout)
    result["argv"] = " ".join(["loadgen", *argv[3:]])
    return result


def fill_list(port: int, values: int) -> dict[str, Any]:
    """Fill the server's list to `values` with loadgen's fill mode (arrays of 1,000 values)."""
    return loadgen(
        port,
        "--mode",
        "fill",
        "--fill-values",
        str(values),
        "--duration",
        "600",
        "--grace",
        "60",
    )


def measured(server: Server, *args: str) -> dict[str, Any]:
    """A loadgen run with the server's CPU and RSS sampled over its steady window."""
    idle_cpu, idle_rss = read_proc(server.pid)
    sampler = Sampler(server.pid)
    sampler.start()
    started = time.monotonic()
    started_wall = time.time()
    result = loadgen(server.port, *args)
    sampler.stop()
    ramp, window = result["ramp_s"], result["window_s"]
    result["server"] = sampler.window(started + ramp, started + ramp + window)
    result["server"]["rss_idle_kb"] = idle_rss
    whole = sampler.window(started, time.monotonic())
    result["server"]["cpu_s_whole_run"] = whole.get("cpu_s")
    result["server"]["gc"] = gc_summary(server, started_wall + ramp, started_wall + ramp + window)
    result["server"]["stalls"] = stall_summary(
        server, started_wall + ramp, started_wall + ramp + window
    )
    peak = result["server"].get("rss_peak_kb")
    if peak and result["connected"]:
        result["server"]["rss_per_connection_kb"] = (peak - idle_rss) / result["connected"]
    return result


def stall_summary(server: Server, start: float, end: float) -> dict[str, Any] | None:
    """The server's longest reactor callbacks between two Unix times (bench/gcprobe)."""
    path = getattr(server, "stall_log", None)
    if path is None or not path.exists():
        return None
    stalls = []
    for line in path.read_text().splitlines():
        try:
            t, _, ms = line.split()
            if start <= float(t) <= end:
                stalls.append(float(ms))
        except ValueError:
            continue
    return {"max_ms": max(stalls, default=0.0), "over_10ms": sum(1 for ms in stalls if ms > 10)}


def gc_summary(server: Server, start: float, end: float) -> dict[str, Any] | None:
    """The server's garbage collections between two Unix times (bench/gcprobe)."""
    path = getattr(server, "gc_log", None)
    if path is None or not path.exists():
        return None
    gen2, slow = [], []
    for line in path.read_text().splitlines():
        try:
            t, gen, ms = float(line.split()[0]), int(line.split()[1]), float(line.split()[2])
        except (ValueError, IndexError):
            continue
        if start <= t <= end:
            slow.append(ms)
            if gen == 2:
                gen2.append(ms)
    return {
        "gen2_count": len(gen2),
        "gen2_max_ms": max(gen2, default=0.0),
        "gen2_total_ms": sum(gen2),
        "max_ms": max(slow, default=0.0),
    }


# -- runs ------------------------------------------------------------------------------------


def run_schedule(
    cfg: argparse.Namespace,
    kind: str,
    clients: int,
    duration: float,
    workdir: Path,
    numd_help: str,
    extra: list[str] | None = None,
    array_share: float | None = None,
) -> dict[str, Any]:
    """N counter clients on the real schedule for `duration` s after the ramp."""
    server = Server(kind, workdir, numd_help, max_clients=clients + 100)
    if extra:
        server.argv += extra
    with server:
        share = cfg.array_share if array_share is None else array_share
        result = measured(
            server,
            "--clients",
            str(clients),
            "--duration",
            str(duration),
            "--ramp",
            str(cfg.ramp),
            "--array-share",
            str(share),
            "--seed",
            "7",
        )
        result["startup_s"] = server.startup_s
        return result


def run_flood(
    kind: str,
    window: int,
    connections: int,
    duration: float,
    workdir: Path,
    numd_help: str,
    log_on: bool = True,
    profile: Path | None = None,
) -> dict[str, Any]:
    """`connections` connections keeping `window` requests in flight each."""
    with Server(kind, workdir, numd_help, log_on=log_on) as server:
        spy = None
        if profile is not None:
            spy = start_profile(server.pid, profile, duration=max(2, duration - 3))
        result = measured(
            server,
            "--mode",
            "flood",
            "--clients",
            str(connections),
            "--window",
            str(window),
            "--duration",
            str(duration),
            "--array-share",
            "0",
        )
        if spy is not None:
            spy.wait(60)
            result["profile"] = summarize_profile(profile)
        result["log_on"] = log_on
        result["log_off_how"] = None if log_on else " ".join(log_off_args(numd_help, workdir))
        return result


def _post_values(port: int, values: list[int]) -> None:
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/values",
        data=json.dumps(values).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def _percentile_ms(ordered: list[float], p: float) -> float:
    """The `p` quantile of ascending `ordered` seconds, in milliseconds."""
    return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def run_fairness(workdir: Path, numd_help: str, seconds: float) -> dict[str, Any]:
    """numd under `bench/flood_arrays.py` (64 KiB sends of ``[1] `` on a list of 10,000 wide
    values, every reply at the 64 KiB cap): another client's ``even`` latency at 100 per
    second, and numd's RSS, with the flooder reading its replies and not reading them."""
    import socket

    out: dict[str, Any] = {}
    for mode in ("read", "hold"):
        with Server("numd", workdir, numd_help, api=True) as server:
            for start in range(0, 10_000, 1000):
                _post_values(server.http_port, list(range(10**12 + start, 10**12 + start + 1000)))
            polite = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            polite.sendall(b"1 ")
            polite.recv(100)
            _, rss_before = read_proc(server.pid)
            cpu_before, _ = read_proc(server.pid)
            flooder = subprocess.Popen(
                [
                    sys.executable,
                    str(BENCH / "flood_arrays.py"),
                    str(server.port),
                    str(seconds),
                    mode,
                ],
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=boost,
            )
            latencies: list[float] = []
            peak = rss_before
            start = time.monotonic()
            n = 0
            while time.monotonic() - start < seconds - 0.5:
                due = start + 0.3 + n / 100
                n += 1
                time.sleep(max(0.0, due - time.monotonic()))
                sent_at = time.perf_counter()
                polite.sendall(b"even ")
                reply = b""
                while not reply.endswith(b" "):
                    chunk = polite.recv(100)
                    if not chunk:
                        break
                    reply += chunk
                latencies.append(time.perf_counter() - sent_at)
                peak = max(peak, read_proc(server.pid)[1])
            cpu_after, _ = read_proc(server.pid)
            done, _ = flooder.communicate(timeout=seconds + 30)
            polite.close()
            chunks, received = (int(x) for x in done.split())
            latencies.sort()
            out[mode] = {
                "requests": len(latencies),
                "p50_ms": _percentile_ms(latencies, 0.50),
                "p99_ms": _percentile_ms(latencies, 0.99),
                "max_ms": 1000 * latencies[-1],
                "rss_before_kb": rss_before,
                "rss_growth_kb": peak - rss_before,
                "flood_chunks_sent": chunks,
                "flood_bytes_received": received,
                "server_cpu_s": cpu_after - cpu_before,
                "seconds": seconds,
            }
    return out


def run_arrays(
    kind: str, values: int, probes: int, workdir: Path, numd_help: str
) -> dict[str, Any]:
    """Fill the list to `values`, then time `probes` arrays of 10-20 values one at a time."""
    with Server(kind, workdir, numd_help) as server:
        started = time.monotonic()
        fill = fill_list(server.port, values)
        fill_s = time.monotonic() - started
        cpu0, _ = read_proc(server.pid)
        probe = measured(
            server,
            "--mode",
            "flood",
            "--clients",
            "1",
            "--window",
            "1",
            "--array-share",
            "1",
            "--count",
            str(probes),
            "--duration",
            "120",
        )
        cpu1, _ = read_proc(server.pid)
        probe["fill"] = {
            "values": values,
            "seconds": fill_s,
            "arrays": fill["arrays"],
            "max_reply_bytes": fill["max_reply_bytes"],
            "unanswered": fill["unanswered"],
        }
        probe["cpu_ms_per_array"] = (cpu1 - cpu0) * 1000 / max(1, probe["replies"])
        return probe


def run_startup(
    kind: str, workdir: Path, numd_help: str, repeat: int = 3, stored: int = 0
) -> dict[str, Any]:
    """Seconds from exec to the counter port accepting, best and worst of `repeat`.

    With `stored` (numd with a --db only), the store is first filled with that many
    values through the counter protocol, and every start loads them.
    """
    db = None
    out: dict[str, Any] = {"stored_values": 0}
    if stored:
        db = workdir / "startup.db"
        with Server(kind, workdir, numd_help, db=db) as server:
            fill = fill_list(server.port, stored)
        out["stored_values"] = fill["fill_values"]
    times = []
    for _ in range(repeat):
        server = Server(kind, workdir, numd_help, db=db)
        server.start()
        times.append(server.startup_s)
        if stored:
            # Accepting is not enough: the values must be there.
            out["first_array_reply"] = loadgen(
                server.port,
                "--mode",
                "flood",
                "--clients",
                "1",
                "--window",
                "1",
                "--array-share",
                "1",
                "--count",
                "1",
                "--duration",
                "30",
            )["max_reply_bytes"]
        server.stop()
    if db is not None:
        for path in workdir.glob(db.name + "*"):
            path.unlink()
    out.update({"runs": times, "min_s": min(times), "max_s": max(times)})
    return out


# -- profiling ---------------------------------------------------------------------------------


def start_profile(pid: int, out: Path, duration: float) -> subprocess.Popen[bytes] | None:
    """py-spy record of `pid` in raw (collapsed stack) format, if py-spy is there."""
    spy = BENCH / ".venv" / "bin" / "py-spy"
    if not spy.exists():
        return None
    return subprocess.Popen(
        [
            str(spy),
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(duration)),
            "-r",
            "250",
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any] | None:
    """Self and inclusive sample shares per function from a py-spy raw file."""
    if not path.exists():
        return None
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [
            re.sub(r" \(.*?/(site-packages|lib/python3[.0-9]*|main)/", " (", f)
            for f in stack.split(";")
        ]
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            incl_counts[frame] = incl_counts.get(frame, 0) + count
    if not total:
        return None

    def share(counts: dict[str, int], top: int = top) -> list[list[Any]]:
        best = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [[name, round(100 * n / total, 1)] for name, n in best]

    return {"samples": total, "self": share(self_counts), "inclusive": share(incl_counts, 60)}


# -- HTTP ------------------------------------------------------------------------------------------


WRK_POST = """wrk.method = "POST"
wrk.body = "[5]"
wrk.headers["Content-Type"] = "application/json"
"""


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/s and latency percentiles from `wrk --latency` output."""

    def ms(value: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    out: dict[str, Any] = {}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        out["requests_per_s"] = float(m.group(1))
    for pct in ("50", "90", "99"):
        if m := re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", text, re.M):
            out[f"p{pct}_ms"] = ms(m.group(1))
    if m := re.search(r"(\d+) requests in", text):
        out["requests"] = int(m.group(1))
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        out["non_2xx"] = int(m.group(1))
    errors = re.search(r"Socket errors: (.*)", text)
    out["socket_errors"] = errors.group(1) if errors else None
    return out


def run_wrk(
    url: str, seconds: int, workdir: Path, post: bool = False, connections: int = 16
) -> dict[str, Any] | None:
    """`wrk -t1` against `url`; None without wrk."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if post:
        script = workdir / "post.lua"
        script.write_text(WRK_POST)
        argv += ["-s", str(script)]
    done = subprocess.run(
        [*argv, url], capture_output=True, text=True, timeout=seconds + 60, preexec_fn=boost
    )
    result = parse_wrk(done.stdout)
    result["argv"] = " ".join(["wrk", *argv[1:], url])
    return result


def paced_gets(port: int, path: str, rate: float, seconds: float) -> dict[str, Any]:
    """GET `path` on one keep-alive connection `rate` times a second; latency from schedule."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies: list[float] = []
    errors = 0
    start = time.monotonic()
    n = 0
    while True:
        due = start + n / rate
        if due - start >= seconds:
            break
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors += 1
        except OSError:
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        latencies.append((time.monotonic() - due) * 1000)
        n += 1
    conn.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[max(0, int(len(latencies) * p + 0.999999) - 1)]

    return {
        "count": len(latencies),
        "errors": errors,
        "rate": rate,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1],
    }


def run_http(cfg: argparse.Namespace, kind: str, workdir: Path, numd_help: str) -> dict[str, Any]:
    """wrk on a small GET, a page of 1,000 from the filled list and a POST; then the page
    paced while `cfg.http_clients` counter clients run."""
    out: dict[str, Any] = {}
    with Server(kind, workdir, numd_help, api=True, max_clients=cfg.http_clients + 100) as server:
        base = f"http://127.0.0.1:{server.http_port}/api/v1/values"
        fill = fill_list(server.port, cfg.list_values)
        out["fill_values"] = fill["fill_values"]
        page = f"?offset={cfg.list_values // 2}&limit=1000"
        for name, url, post in (
            ("small_get", base + "?offset=0&limit=1", False),
            ("page_1000", base + page, False),
            ("post", base, True),
        ):
            sampler = Sampler(server.pid)
            sampler.start()
            started = time.monotonic()
            out[name] = run_wrk(url, cfg.http_seconds, workdir, post=post)
            sampler.stop()
            if out[name] is not None:
                out[name]["server"] = sampler.window(started, time.monotonic())
        # The page while counter clients run: the load in the background, the probe paced.
        result: dict[str, Any] = {}

        def background() -> None:
            result["load"] = loadgen(
                server.port,
                "--clients",
                str(cfg.http_clients),
                "--duration",
                str(cfg.http_seconds + 10),
                "--ramp",
                str(cfg.ramp),
                "--array-share",
                str(cfg.array_share),
            )

        thread = threading.Thread(target=background)
        thread.start()
        time.sleep(cfg.http_clients / cfg.ramp + 3)
        out["page_under_load"] = paced_gets(
            server.http_port, "/api/v1/values" + page, 20, cfg.http_seconds
        )
        thread.join()
        load = result.get("load", {})
        out["page_under_load"]["counter_load"] = {
            k: load.get(k) for k in ("clients", "connected", "drops", "unanswered", "error_replies")
        }
        out["page_under_load"]["counter_p99_ms"] = (
            load.get("latency", {}).get("steady", {}).get("p99_ms")
        )
    return out


# -- machine ---------------------------------------------------------------------------------------


def _output(argv: list[str]) -> str:
    """What a command prints on stdout (empty if it fails)."""
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    py = PROJECT_VENV / "bin" / "python"
    versions = _output(
        [
            str(py),
            "-c",
            "import sys, twisted, klein, sortedcontainers; print(sys.version.split()[0], "
            "twisted.__version__, klein.__version__, sortedcontainers.__version__)",
        ]
    ).split()
    commit = _output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).strip()
    dirty = _output(["git", "-C", str(ROOT), "status", "--porcelain", "numd"]).strip()
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[:3]
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[
        0
    ]
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": versions[0] if versions else None,
        "twisted": versions[1] if len(versions) > 1 else None,
        "klein": versions[2] if len(versions) > 2 else None,
        "sortedcontainers": versions[3] if len(versions) > 3 else None,
        "gcc": gcc,
        "nofile": list(__import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)),
        "somaxconn": Path("/proc/sys/net/core/somaxconn").read_text().strip(),
        "loadavg_at_start": loadavg,
        "numd_commit": commit + (" (numd/ modified in the work tree)" if dirty else ""),
        "numd_installed": (BENCH / ".venv" / "numd-installed.txt").read_text().strip()
        if (BENCH / ".venv" / "numd-installed.txt").exists()
        else None,
        "wrk": shutil.which("wrk") is not None,
    }


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description="numd load bench (see docs/performance.md)")
    parser.add_argument("--quick", action="store_true", help="small N, short runs (a few minutes)")
    parser.add_argument("--out", default=str(BENCH / "results" / "results.json"))
    parser.add_argument(
        "--only",
        default="",
        help="comma list: micro,startup,schedule,flood,fairness,arrays,http,redis",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the W=64 floods")
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="run the 10,000-client point this many times (interleaved); the report "
        "uses the median (default 3, 1 with --quick)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="update the --out file: replace only the parts run now (schedule points "
        "by number of clients)",
    )
    parser.add_argument(
        "--kinds",
        default="",
        help="schedule: only these server labels (separated by ;), e.g. 'numd, log on tmpfs' "
        "(with --merge the other runs stay)",
    )
    parser.add_argument("--numd-args", default="", help="extra numd options, e.g. '--db :memory:'")
    parser.add_argument(
        "--sweep",
        default="",
        help="clients:seconds list for the schedule runs, "
        "e.g. 5000:15,19000:15 (default 1000:30,5000:30,10000:60,19000:60)",
    )
    cfg = parser.parse_args()
    _pin(LOAD_CORE)  # this driver samples and sends paced requests: the load side
    sweep = cfg.sweep
    if cfg.quick:
        cfg.sweep = [(200, 8), (1000, 8), (2000, 10)]
        cfg.flood_seconds = 5
        cfg.list_values = 100_000
        cfg.probes = 300
        cfg.http_seconds = 5
        cfg.http_clients = 1000
        cfg.repeat = cfg.repeat or 1
    else:
        # The shared machine's speed drifts over minutes: the median of three
        # interleaved runs keeps one slow spell from deciding the targets.
        cfg.repeat = cfg.repeat or 3
        cfg.sweep = [(1000, 30), (5000, 30), (10000, 60), (19000, 60)]
        cfg.flood_seconds = 20
        cfg.list_values = 1_000_000
        cfg.probes = 2000
        cfg.http_seconds = 15
        cfg.http_clients = 10000
    NUMD_EXTRA.extend(cfg.numd_args.split())
    cfg.kinds = [k.strip() for k in cfg.kinds.split(";") if k.strip()]
    if sweep:
        cfg.sweep = [tuple(int(x) for x in item.split(":")) for item in sweep.split(",")]
    cfg.ramp = 5000.0
    cfg.array_share = 0.0
    cfg.mixed_share = 0.02
    only = set(filter(None, cfg.only.split(",")))

    def want(name: str) -> bool:
        return not only or name in only

    raw = subprocess.run(
        [str(PROJECT_VENV / "bin" / "twistd"), "numd", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    numd_help = raw.stdout + raw.stderr
    workdir = Path(tempfile.mkdtemp(prefix="numd-bench-"))
    out_path = Path(cfg.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    previous: dict[str, Any] = {}
    if cfg.merge and out_path.exists():
        previous = json.loads(out_path.read_text())
    results: dict[str, Any] = dict(previous)
    results.update(
        {
            "quick": cfg.quick,
            "machine": machine(),
            "settings": {
                "ramp_per_s": cfg.ramp,
                "array_share": cfg.array_share,
                "mixed_array_share": cfg.mixed_share,
                "sweep": cfg.sweep,
                "flood_seconds": cfg.flood_seconds,
                "list_values": cfg.list_values,
                "probes": cfg.probes,
                "http_seconds": cfg.http_seconds,
                "http_clients": cfg.http_clients,
            },
            "numd_features": {
                "api": "--api-listen" in numd_help,
                "log_off_switch": "--no-message-log" in numd_help,
                "max_clients": "--max-clients" in numd_help,
                "store": "--db" in numd_help,
            },
        }
    )
    if previous:
        results["machine_first_run"] = previous.get("machine_first_run", previous.get("machine"))

    def save() -> None:
        out_path.write_text(json.dumps(results, indent=1))

    started = time.monotonic()
    try:
        if want("micro"):
            log("in-process per-message cost (bench/microbench.py)")
            done = subprocess.run(
                [str(PROJECT_VENV / "bin" / "python"), str(BENCH / "microbench.py")],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            try:
                results["micro"] = json.loads(done.stdout)
            except ValueError:
                results["micro"] = {"error": done.stderr[-500:]}
            save()
        if want("startup"):
            log("start-up time")
            results["startup"] = {
                k: run_startup(k, workdir, numd_help) for k in ("baseline", "numd")
            }
            if "--db" in numd_help:
                log(f"start-up time with {cfg.list_values} stored values")
                results["startup"]["numd_stored"] = run_startup(
                    "numd", workdir, numd_help, stored=cfg.list_values
                )
            save()
        if want("schedule"):
            sizes = {clients for clients, _ in cfg.sweep}
            if cfg.kinds:
                results["schedule"] = [
                    r
                    for r in previous.get("schedule", [])
                    if r["clients"] not in sizes or r["server_kind"] not in cfg.kinds
                ]
            else:
                results["schedule"] = [
                    r for r in previous.get("schedule", []) if r["clients"] not in sizes
                ]
            target = 10000 if 10000 in sizes else cfg.sweep[-2 if len(cfg.sweep) > 1 else -1][0]
            for clients, seconds in cfg.sweep:
                reps = cfg.repeat if clients == target else 1
                for rep in range(reps):
                    kinds: list[tuple[str, list[str] | None, float | None]] = [
                        ("baseline", None, None),
                        ("numd", None, None),
                    ]
                    if clients == target and "--db" in numd_help:
                        # The same load with numd's SQLite store off, to show what the store costs.
                        kinds.append(("numd --db :memory:", ["--db", ":memory:"], None))
                    if clients == target and rep == 0 and cfg.mixed_share > 0:
                        # The same clients, a share of whose requests are arrays.
                        kinds += [
                            ("baseline +arrays", None, cfg.mixed_share),
                            ("numd +arrays", None, cfg.mixed_share),
                        ]
                    if clients == target and rep == 0:
                        # The message log on tmpfs: what writing it to the disk costs the tail.
                        tmpfs = [
                            "--message-log",
                            str(Path("/dev/shm") / f"numd-bench-{os.getpid()}.log"),
                            "--message-log-max-bytes",
                            str(1 << 30),
                        ]
                        kinds += [("numd, log on tmpfs", tmpfs, None)]
                        if "--db" in numd_help:
                            kinds += [
                                (
                                    "numd --db :memory:, log on tmpfs",
                                    tmpfs + ["--db", ":memory:"],
                                    None,
                                )
                            ]
                    if cfg.kinds:
                        kinds = [k for k in kinds if k[0] in cfg.kinds]
                    for label, extra, share in kinds:
                        log(
                            f"schedule {label} {clients} clients {seconds} s (run {rep + 1}/{reps})"
                        )
                        kind = "baseline" if label.startswith("baseline") else "numd"
                        r = run_schedule(
                            cfg,
                            kind,
                            clients,
                            seconds,
                            workdir,
                            numd_help,
                            extra=extra,
                            array_share=share,
                        )
                        r["server_kind"] = label
                        r["rep"] = rep + 1
                        results["schedule"].append(r)
                        save()
        if want("flood"):
            results["flood"] = []
            for window, log_on, kinds in (
                (64, True, ("baseline", "numd")),
                (64, False, ("numd",)),
                (1, True, ("baseline", "numd")),
            ):
                for kind in kinds:
                    log(f"flood {kind} W={window} log={'on' if log_on else 'off'}")
                    r = run_flood(
                        kind, window, 100, cfg.flood_seconds, workdir, numd_help, log_on=log_on
                    )
                    r["server_kind"] = kind
                    results["flood"].append(r)
                    save()
            if cfg.profile:
                # Separate runs, so that the sampling never touches the figures above.
                results["profiles"] = {}
                for kind in ("baseline", "numd"):
                    log(f"flood {kind} W=64 under py-spy")
                    prof = out_path.parent / f"profile-{kind}-w64.txt"
                    r = run_flood(
                        kind, 64, 100, max(cfg.flood_seconds, 10), workdir, numd_help, profile=prof
                    )
                    results["profiles"][kind] = {
                        "profile": r.get("profile"),
                        "replies_per_s": r["replies_per_s"],
                    }
                    save()
        if want("fairness") and results["numd_features"]["api"]:
            log("fairness: numd under a 64 KiB-per-send array flood")
            results["fairness"] = run_fairness(workdir, numd_help, 5 if cfg.quick else 10)
            save()
        if want("arrays"):
            results["arrays"] = {}
            for kind in ("baseline", "numd"):
                log(f"arrays {kind}: fill {cfg.list_values}, then {cfg.probes} arrays")
                results["arrays"][kind] = run_arrays(
                    kind, cfg.list_values, cfg.probes, workdir, numd_help
                )
                save()
        if want("http") and results["numd_features"]["api"]:
            results["http"] = {}
            for kind in ("baseline", "numd"):
                log(f"http {kind}")
                results["http"][kind] = run_http(cfg, kind, workdir, numd_help)
                save()
        if want("redis"):
            # bench/redis_bench.py imports this module as `bench`: the same one, not a copy.
            sys.modules.setdefault("bench", sys.modules[__name__])
            import redis_bench

            log("numd on Redis against embedded numd (bench/redis_bench.py)")
            results["redis"] = {}
            redis_bench.run(cfg, workdir, numd_help, results["redis"], save)
            save()
    finally:
        results["bench_seconds"] = previous.get("bench_seconds", 0) + time.monotonic() - started
        save()
        shutil.rmtree(workdir, ignore_errors=True)
        for path in Path("/dev/shm").glob(f"numd-bench-{os.getpid()}.log*"):
            path.unlink()
    log(f"results in {out_path}")


if __name__ == "__main__":
    main()
