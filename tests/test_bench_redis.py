"""The bench's Redis part (bench/redis_bench.py, bench/report_redis.py) and the load
generator's modes it relies on (``--ports``, ``--mode register`` in bench/loadgen.c).

The load generator is built with the machine's gcc into a temporary directory; without gcc
(or without redis-server, for the tests that start one) those tests skip, saying why.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from .daemon import ROOT, Daemon, running_numd
from .redis_server import skip_without_redis

BENCH = ROOT / "bench"


def bench_module(name: str) -> ModuleType:
    """A module of bench/ (which is not a package: its scripts import each other by name)."""
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bench/loadgen built from its source, as bench/run builds it."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found (Debian package gcc): bench/loadgen cannot be built")
    binary = tmp_path_factory.mktemp("loadgen") / "loadgen"
    subprocess.run(
        [gcc, "-O2", "-Wall", "-o", str(binary), str(BENCH / "loadgen.c"), "-lm"],
        check=True,
        timeout=60,
    )
    return binary


def run_loadgen(binary: Path, *args: str) -> dict[str, Any]:
    """One bounded loadgen run; its JSON."""
    done = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout)


def received_reports(daemon: Daemon) -> float:
    """How many counter reports a running numd counted (``/metrics``)."""
    url = f"http://127.0.0.1:{daemon.api_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("numd_messages_received_total") and 'kind="report"' in line
    )


@pytest.fixture
def two_daemons(tmp_path: Path) -> Iterator[tuple[Daemon, Daemon]]:
    """Two embedded numd instances on free ports."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_numd(tmp_path / "a", "--db", ":memory:") as a:
        with running_numd(tmp_path / "b", "--db", ":memory:") as b:
            yield a, b


def test_loadgen_spreads_its_clients_over_every_port_given(
    loadgen: Path, two_daemons: tuple[Daemon, Daemon]
) -> None:
    """With ``--ports A,B`` the clients go to both servers (client i to the (i mod 2)-th), and
    every one of them registers and is answered: one run, one set of figures, two instances."""
    a, b = two_daemons
    result = run_loadgen(
        loadgen,
        *("--ports", f"{a.port},{b.port}", "--clients", "10", "--duration", "1"),
        *("--report-ms", "100", "--req-min-ms", "100", "--req-max-ms", "200", "--grace", "2"),
    )
    assert (result["connected"], result["registered"]) == (10, 10)
    assert (result["drops"], result["unanswered"], result["error_replies"]) == (0, 0, 0)
    assert received_reports(a) > 0 and received_reports(b) > 0


def test_loadgen_register_mode_connects_registers_and_closes_again_and_again(
    loadgen: Path, tmp_path: Path
) -> None:
    """``--mode register`` cycles each connection through connect, register, close: far more
    registrations than connections, each a fresh connection, all answered without errors."""
    with running_numd(tmp_path, "--db", ":memory:", "--no-message-log") as daemon:
        result = run_loadgen(
            loadgen,
            *("--port", str(daemon.port), "--mode", "register", "--clients", "4"),
            *("--duration", "1"),
        )
    assert result["registered"] > 4 * 5
    assert result["connected"] == result["registered"] == result["replies"]
    assert result["latency"]["register"]["count"] == result["registered"]
    assert (result["drops"], result["error_replies"], result["bad_replies"]) == (0, 0, 0)
    assert (result["unanswered"], result["connect_failures"]) == (0, 0)
    assert result["replies_per_s"] > 0


def test_loadgen_refuses_a_bad_port_list(loadgen: Path) -> None:
    """A port list that is not numbers separated by commas is a usage error (whose text names
    the option), not a run."""
    done = subprocess.run(
        [str(loadgen), "--ports", "12,x"], capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 2
    assert "[--ports P1,P2,...]" in done.stderr


def test_the_bench_redis_server_runs_on_loopback_with_the_aof_fsynced_every_second(
    tmp_path: Path,
) -> None:
    """The bench's redis-server listens on 127.0.0.1 only, appends every change to its AOF
    (fsynced once a second), takes no RDB snapshots, evicts nothing; stopping it ends the
    process and removes its directory."""
    skip_without_redis()
    redis_bench = bench_module("redis_bench")
    redis = redis_bench.RedisProcess(tmp_path).start()
    try:
        settings = {
            key: redis.cli("CONFIG", "GET", key).splitlines()[-1]
            for key in ("bind", "appendonly", "appendfsync", "maxmemory-policy", "dir")
        }
        save = redis.cli("CONFIG", "GET", "save").splitlines()
        assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
        assert redis.info()["aof_enabled"] == "1"
        process = redis.proc
    finally:
        redis.stop()
    assert settings == {
        "bind": "127.0.0.1",
        "appendonly": "yes",
        "appendfsync": "everysec",
        "maxmemory-policy": "noeviction",
        "dir": str(redis.directory),
    }
    assert save == ["save"] or save[1:] == [""]
    assert process.poll() is not None
    assert not redis.directory.exists()


def test_cpu_per_message_adds_every_instance_and_redis() -> None:
    """CPU per message counts every numd instance's CPU and Redis's apart, then their sum,
    per message the clients sent."""
    redis_bench = bench_module("redis_bench")
    windows = {
        "numd0": {"cpu_cores": 0.3},
        "numd1": {"cpu_cores": 0.2},
        "redis": {"cpu_cores": 0.1},
    }
    per = redis_bench.per_message({"sent_per_s": 10_000.0}, windows)
    assert per["numd"] == pytest.approx(50.0)
    assert per["redis"] == pytest.approx(10.0)
    assert per["total"] == pytest.approx(60.0)
    embedded = redis_bench.per_message({"sent_per_s": 10_000.0}, {"numd0": {"cpu_cores": 0.3}})
    assert (embedded["numd"], embedded["redis"]) == (pytest.approx(30.0), None)
    assert embedded["total"] == pytest.approx(30.0)


def two_instance_run(p99: float, drops: int = 0, rep: int = 1) -> dict[str, Any]:
    """A result of the two-instance point as bench/redis_bench.py records it."""
    return {
        "server_kind": "numd on Redis, 2 instances",
        "rep": rep,
        "clients": 10000,
        "ramp_per_s": 500.0,
        "connected": 10000,
        "connect_failures": 0,
        "drops": drops,
        "unanswered": 0,
        "error_replies": 0,
        "bad_replies": 0,
        "latency": {"steady": {"p99_ms": p99, "p99_9_ms": 2 * p99}},
        "cpu_us_per_message": {"numd": 40.0, "redis": 10.0, "total": 50.0},
        "metrics": [{"numd_redis_unavailable_total": 0.0}, {"numd_redis_unavailable_total": 3.0}],
    }


@pytest.mark.parametrize(
    ("runs", "verdict"),
    [
        ([(4.2, 0), (3.0, 0), (9.0, 0)], "**met**"),
        ([(4.2, 1), (3.0, 0), (9.0, 0)], "**NOT met**"),
        ([(5.0, 0)], "**NOT met**"),
    ],
    ids=["median-under-5ms", "median-run-dropped", "at-5ms"],
)
def test_the_two_instance_target_takes_the_median_run(
    runs: list[tuple[float, int]], verdict: str
) -> None:
    """The target (p99 under 5 ms and no drops, 10,000 clients over two instances) is judged on
    the run with the median p99, and is not met by a run that dropped a client."""
    bench_module("report")
    report_redis = bench_module("report_redis")
    redis = {
        "schedule": [two_instance_run(p99, drops, n) for n, (p99, drops) in enumerate(runs, 1)]
    }
    row, run = report_redis.two_instances({**redis, "clients": 10000}, (10000, 500.0))
    assert row[-1] == verdict
    assert run["latency"]["steady"]["p99_ms"] == sorted(p for p, _ in runs)[(len(runs) - 1) // 2]
    assert report_redis.error_kinds(run) == "`numd_redis_unavailable_total` 3"


def test_the_page_says_why_redis_was_not_measured() -> None:
    """Without redis-server the section says so in one line instead of a table of dashes."""
    report_redis = bench_module("report_redis")
    text = report_redis.section({"redis": {"skipped": "/usr/bin/redis-server not found"}})
    assert text.splitlines()[-1] == "Not measured: /usr/bin/redis-server not found."


def test_only_the_hiredis_runs_put_hiredis_on_numd_path(tmp_path: Path) -> None:
    """txredisapi uses hiredis whenever it can import it, so hiredis is on the path of the
    "+ hiredis" runs' numd and of no other (the bench's probes are on every one's)."""
    redis_bench = bench_module("redis_bench")
    help_ = "--db --api-listen --max-clients"
    plain = redis_bench.Instances(tmp_path, help_, None, count=2).servers
    fast = redis_bench.Instances(tmp_path, help_, None, hiredis=True).servers
    probes = str(BENCH / "gcprobe")
    assert [s.pythonpath for s in plain] == [[probes], [probes]]
    assert [s.pythonpath for s in fast] == [[probes, str(redis_bench.HIREDIS)]]


def test_the_hiredis_rows_compare_each_load_with_numd_on_redis() -> None:
    """The hiredis comparison sets each load's hiredis run against numd on Redis at the same
    load (CPU per message and its ratio), and says so when a run cut most clients off."""
    report_redis = bench_module("report_redis")

    def run(kind: str, total: float, drops: int = 0) -> dict[str, Any]:
        return {
            **two_instance_run(50.0, drops),
            "server_kind": kind,
            "cpu_us_per_message": {"numd": total - 5, "redis": 5.0, "total": total},
        }

    redis = {
        "schedule": [
            run("numd on Redis, 2 instances", 40.0),
            run("numd on Redis + hiredis, 2 instances", 30.0),
            run("numd on Redis", 40.0, drops=9000),
            run("numd on Redis + hiredis", 20.0),
        ]
    }
    rows = report_redis.hiredis_rows(redis)
    cpu = {row[0]: row[1:] for row in rows if "CPU per counter message" in row[0]}
    one = "10,000 counter clients connecting at 500/s, one instance: CPU per counter message, us"
    two = one.replace("one instance", "two instances")
    assert cpu[two] == [
        "numd 35.00 + Redis 5.00 = 40.00",
        "numd 25.00 + Redis 5.00 = 30.00",
        "0.75x",
    ]
    assert cpu[one] == [
        "- (9,000 of 10,000 clients cut off)",
        "numd 15.00 + Redis 5.00 = 20.00",
        "",
    ]


def test_stalls_are_the_steady_window_reactor_callbacks_by_kind(tmp_path: Path) -> None:
    """Only callbacks inside the steady window count, by kind, with how many took 2, 5 and
    10 ms or more, the longest and their total."""
    redis_bench = bench_module("redis_bench")
    log = tmp_path / "stalls.log"
    log.write_text("10.0 io 3.0\n11.0 io 12.0\n11.2 io 2.5\n11.5 timers 6.0\n20.0 io 50.0\n")
    server = SimpleNamespace(stall_log=log)
    assert redis_bench.stalls(server, [10.5, 15.0]) == {
        "io": {"2ms": 2, "5ms": 1, "10ms": 1, "max_ms": 12.0, "total_ms": 14.5},
        "timers": {"2ms": 1, "5ms": 1, "10ms": 0, "max_ms": 6.0, "total_ms": 6.0},
    }
    assert redis_bench.stalls(SimpleNamespace(stall_log=tmp_path / "none"), [0, 1]) is None


def test_a_run_counts_as_saturated_by_how_busy_its_core_was() -> None:
    """The servers' core busy (whoever kept it busy) over the steady window decides the mark;
    a run without that figure falls back on the servers' own CPU."""
    redis_bench = bench_module("redis_bench")
    report_redis = bench_module("report_redis")
    core = redis_bench.CoreSampler(0)
    core.samples = [(0.0, 100, 1000), (1.0, 150, 1100), (2.0, 245, 1200), (3.0, 300, 1300)]
    assert core.busy(0.5, 2.5) == pytest.approx(0.95)
    assert core.busy(5.0, 6.0) is None
    light = {"instances": [{"cpu_cores": 0.3}], "redis": {"cpu_cores": 0.1}}
    assert report_redis.saturated({**light, "server_core_busy": 0.95}) == " (core 0 busy 95 %)"
    assert report_redis.saturated({**light, "server_core_busy": 0.5}) == ""
    assert report_redis.saturated({**light, "redis": {"cpu_cores": 0.7}}) == (
        " (core 0 saturated: 1.00 cores)"
    )
    assert redis_bench.core_times(0)[1] > 0


PINNING = """
import os, subprocess, sys
sys.path.insert(0, sys.argv[1])
import bench
bench._pin(bench.LOAD_CORE)
server = subprocess.Popen(["sleep", "5"], preexec_fn=bench.boost_server)
load = subprocess.Popen(["sleep", "5"], preexec_fn=bench.boost)
print(sorted(os.sched_getaffinity(server.pid)), sorted(os.sched_getaffinity(load.pid)))
server.kill(), load.kill(), server.wait(), load.wait()
"""


def test_a_server_started_by_the_pinned_driver_runs_on_the_server_core() -> None:
    """The driver pins itself to the load core first; the servers it starts still go to the
    server's core (a child inherits the driver's affinity, which must not decide), the load
    generators to the load core."""
    if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("needs cores 0 and 1")
    done = subprocess.run(
        [sys.executable, "-c", PINNING, str(BENCH)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.split("\n")[0] == "[0] [1]"
