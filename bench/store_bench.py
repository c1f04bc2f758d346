"""What the durable store costs: acknowledged adds per second with the store on and with ``--db :memory:``.

Usage: ``python bench/store_bench.py [--duration 5] [--rounds 3] [--json]``

Both daemons run in one go, alternately, on the same machine and with the same
options (``--reply-cap 64``, so replies stay small and the list's size does not
matter). The load is bench/loadgen's flood mode with one-value arrays: every
reply is the acknowledgement of one add, which numd sends only once the add is
committed when the store is on. Two loads:

- ``50x8``: 50 connections keeping 8 arrays each in flight (group commit at work);
- ``1x1``: one connection, one array at a time (each add waits for its own commit).

It also times loading 10^6 values into a fresh service. Prints a Markdown
section (or JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# The daemons import numd from this checkout too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

from tests.daemon import free_port, running_numd  # noqa: E402

LOADS = {"50x8": (50, 8), "1x1": (1, 1)}


def build_loadgen(directory: Path) -> Path:
    """Compile bench/loadgen.c into `directory` (the same command bench/run uses)."""
    binary = directory / "loadgen"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(binary), str(REPO / "bench" / "loadgen.c"), "-lm"],
        check=True,
        timeout=120,
    )
    return binary


def acked_adds_per_second(
    loadgen: Path, directory: Path, db: str, load: str, duration: float
) -> dict:
    """Run one daemon with `--db db` under one load; return the loadgen's figures."""
    clients, window = LOADS[load]
    directory.mkdir(parents=True, exist_ok=True)
    api_port = free_port()
    with running_numd(
        directory,
        "--db", db,
        "--reply-cap", "64",
        "--api-listen", f"tcp:{api_port}:interface=127.0.0.1",
    ) as numd:  # fmt: skip
        result = subprocess.run(
            [
                str(loadgen),
                "--mode",
                "flood",
                "--port",
                str(numd.port),
                "--clients",
                str(clients),
                "--window",
                str(window),
                "--array-share",
                "1",
                "--array-min",
                "1",
                "--array-max",
                "1",
                "--duration",
                str(duration),
                "--seed",
                "7",
            ],  # fmt: skip
            capture_output=True,
            check=True,
            timeout=duration + 60,
        )
        figures = json.loads(result.stdout)
        numd.stop()
    if figures["error_replies"] or figures["bad_replies"]:
        raise RuntimeError(f"numd answered errors under load: {figures}")
    return {
        "adds_per_s": figures["replies_per_s"] - figures["registered"] / figures["window_s"],
        "p50_ms": figures["latency"]["arrays"].get("p50_ms"),
        "p99_ms": figures["latency"]["arrays"].get("p99_ms"),
    }


def load_seconds(directory: Path, count: int = 1_000_000) -> float:
    """Seconds to load `count` values (all distinct) from a database into a fresh service."""
    from twisted.internet.task import Clock

    from numd.service import NumberService
    from numd.store.batch import Batch
    from numd.store.database import Database
    from numd.store.service import Store

    path = str(directory / "million.db")
    db = Database(path)
    batch = Batch()
    rng = random.Random(3)
    batch.merge(rng.sample(range(-(2**40), 2**40), count))  # in random order: load sorts them
    db.write(batch)
    db.close()
    service = NumberService(Clock())
    started = time.perf_counter()
    Store(service, path, Clock()).load()
    elapsed = time.perf_counter() - started
    assert len(service.values) == count
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per configuration")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="numd-store-bench-") as tmp:
        work = Path(tmp)
        loadgen = build_loadgen(work)
        runs: dict[str, dict[str, list[dict]]] = {
            load: {"store": [], "memory": []} for load in LOADS
        }
        for round_number in range(args.rounds):
            for load in LOADS:
                for mode in ("store", "memory"):
                    directory = work / f"{load}-{mode}-{round_number}"
                    db = str(directory / "numd.db") if mode == "store" else ":memory:"
                    runs[load][mode].append(
                        acked_adds_per_second(loadgen, directory, db, load, args.duration)
                    )
        million = load_seconds(work)
    summary = {
        load: {
            mode: {
                key: statistics.median(run[key] for run in results)
                for key in ("adds_per_s", "p50_ms", "p99_ms")
            }
            for mode, results in modes.items()
        }
        for load, modes in runs.items()
    }
    if args.json:
        print(json.dumps({"load_1e6_values_s": million, "runs": runs, "median": summary}, indent=2))
        return
    print(report(summary, million, args))


def report(summary: dict, million: float, args: argparse.Namespace) -> str:
    """A Markdown section with the figures (for docs/durability.md or docs/performance.md)."""
    lines = [
        "## Durable store",
        "",
        (
            f"`python bench/store_bench.py --duration {args.duration:g} --rounds {args.rounds}` "
            f"({time.strftime('%Y-%m-%d')}): the same daemon with the SQLite store "
            "(`--db numd.db`, WAL, `synchronous=FULL`) and with `--db :memory:`, alternately, "
            "under bench/loadgen's flood of one-value arrays (each reply acknowledges one add, "
            "sent only after its commit); `--reply-cap 64`; medians of the rounds."
        ),
        "",
        "| load | store: acked adds/s | memory: acked adds/s | store / memory | store p50 / p99 ms | memory p50 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for load, modes in summary.items():
        store, memory = modes["store"], modes["memory"]
        ratio = store["adds_per_s"] / memory["adds_per_s"]
        lines.append(
            f"| {load} | {store['adds_per_s']:,.0f} | {memory['adds_per_s']:,.0f} | {ratio:.0%} "
            f"| {store['p50_ms']:.2f} / {store['p99_ms']:.2f} | {memory['p50_ms']:.2f} / {memory['p99_ms']:.2f} |"
        )
    lines += ["", f"Loading 10^6 values at start-up: {million:.2f} s."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
