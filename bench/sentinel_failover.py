"""What a Sentinel failover costs numd: acknowledged changes lost, and how long changes fail.

Usage: ``python bench/sentinel_failover.py [--runs 5] [--rate 1000] [--lag 5] [--only 1,3]``

Each run starts tests/redis_sentinel.py's group (a primary, a replica, three
sentinels with a quorum of 2 and ``down-after-milliseconds`` 1000, all on
127.0.0.1) with ``appendonly yes`` and the run's ``appendfsync``, connects one
`RedisClient` through the sentinels with numd's default timeouts and backoff, and
merges one new value at a time through `StateScripts` at a steady rate (at most
`--in-flight` merges waiting). A value is acknowledged when its merge script
returned. After `--before` seconds the primary is killed (SIGKILL); merges go on at
the same rate, failing while there is no primary, until one succeeds again, then
for `--after` seconds more. Then the new primary's sorted list is read and compared
with what was acknowledged:

- lost: acknowledged values that are not in it (asynchronous replication: the
  replica had not received them when the primary died);
- unavailable: from the kill to the first acknowledgement of a merge sent after it;
- reconnected: from the kill until the client's connection to the new primary.

The configurations:

- ``appendfsync always`` and ``appendfsync everysec``, the replica following the
  primary directly (on one machine it is well under a millisecond behind);
- ``everysec`` with a replication lag: the replica follows the primary through a
  relay that holds the stream (both ways) `--lag` milliseconds and drops what it
  holds when the primary dies, a model of a replica that is behind;
- the same, a merge acknowledged only once a ``WAIT 1`` sent after it says the
  replica has it (one WAIT at a time, covering every merge sent before it);
- ``everysec`` with ``min-replicas-to-write 1`` / ``min-replicas-max-lag 10``.

In the last two the killed primary is started again once the client is on the new
primary, as a service manager would restart it: with a single replica, the promoted
one accepts (or, with WAIT, acknowledges) changes only once the old primary has
come back as its replica.

Writes the table and ``bench/results/sentinel.json`` (with the machine's facts).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from numd.store.redis.address import redis_config  # noqa: E402
from numd.store.redis.connection import (  # noqa: E402
    DEFAULT_MAX_RECONNECT_DELAY,
    DEFAULT_RECONNECT_DELAY,
    DEFAULT_TIMEOUT,
    RedisClient,
    RedisUnavailable,
    connect,
)
from numd.store.redis.encoding import MemberEncoder, decode_members  # noqa: E402
from numd.store.redis.scripts import Keys, StateScripts  # noqa: E402
from tests.redis_sentinel import (  # noqa: E402
    DOWN_AFTER_MS,
    FAILOVER_TIMEOUT_MS,
    SentinelGroup,
    skip_without_sentinel,
)

RESULTS = REPO / "bench" / "results" / "sentinel.json"
TICK = 0.002
"""Seconds between two batches of merges sent (rate * TICK merges each)."""
DEADLINE = 60.0
"""Seconds after the kill by which changes must work again, or the run fails."""
MITIGATED = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "10")


@dataclass(frozen=True)
class Config:
    """One configuration of the group."""

    name: str
    appendfsync: str
    extra: tuple[str, ...] = ()
    restart: bool = False
    """Whether the old primary is started again once the client is on the new one."""
    lagged: bool = False
    """Whether the replica follows the primary through a `LaggingRelay`."""
    wait_replica: bool = False
    """Whether a merge is acknowledged only after ``WAIT 1`` says the replica has it."""


def configs(lag_ms: float) -> tuple[Config, ...]:
    """Every configuration, the lagging ones with a lag of `lag_ms` milliseconds."""
    return (
        Config("appendfsync always", "always"),
        Config("appendfsync everysec", "everysec"),
        Config(f"everysec, replica {lag_ms:g} ms behind", "everysec", lagged=True),
        Config(
            f"everysec, replica {lag_ms:g} ms behind, acknowledged after WAIT 1, "
            "old primary restarted after the failover",
            "everysec",
            lagged=True,
            wait_replica=True,
            restart=True,
        ),
        Config(
            "everysec + min-replicas-to-write 1, old primary restarted after the failover",
            "everysec",
            MITIGATED,
            restart=True,
        ),
    )


class LaggingRelay:
    """Relays TCP connections to 127.0.0.1:`target`, each chunk `lag` seconds late both ways.

    When either side closes, what the relay still holds is dropped and both sides are
    closed: the replica never gets the last `lag` seconds of what a killed primary
    sent. It runs an asyncio loop in a thread of its own, since the group starts
    (and waits for the replica to synchronise) while the reactor is blocked.
    """

    def __init__(self, lag: float) -> None:
        self.lag = lag
        self.target = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None

    def start(self, target: int) -> int:
        """Start relaying to `target`; the port to connect to instead."""
        self.target = target
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(5)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)

    async def _listen(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        held: set[asyncio.TimerHandle] = set()

        def deliver(
            handle: list[asyncio.TimerHandle], to: asyncio.StreamWriter, data: bytes
        ) -> None:
            held.discard(handle[0])
            to.write(data)

        async def pump(source: asyncio.StreamReader, to: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    handle: list[asyncio.TimerHandle] = []
                    handle.append(self.loop.call_later(self.lag, deliver, handle, to, data))
                    held.add(handle[0])
            except OSError:
                pass
            finally:
                for h in held:
                    h.cancel()
                held.clear()
                writer.transport.abort()
                up_writer.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


@dataclass
class Run:
    """What one run measured."""

    config: str
    acknowledged: int = 0
    lost: int = 0
    lost_values_before_kill_ms: list[float] = field(default_factory=list)
    """For each lost value, how long before the kill its merge was acknowledged (ms); negative
    when its reply, sent before the kill, was read after it (the bench is blocked while the
    killed primary exits)."""
    ack_p50_ms: float = 0.0
    ack_p99_ms: float = 0.0
    """Acknowledgement latency (merge sent to acknowledged) before the kill."""
    applied_unacknowledged: int = 0
    duplicates: int = 0
    failed: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)
    slowest_failure_ms: float = 0.0
    unavailable_s: float = 0.0
    reconnected_s: float = 0.0
    merges_per_s: float = 0.0


class Writer:
    """Merges one new value per merge at a steady rate, recording what was acknowledged when."""

    def __init__(
        self,
        redis: RedisClient,
        scripts: StateScripts,
        rate: float,
        in_flight: int,
        wait_replica: bool,
    ) -> None:
        self.redis = redis
        self.scripts = scripts
        self.wait_replica = wait_replica
        self.encoder = MemberEncoder()
        self.per_tick = max(1, round(rate * TICK))
        self.max_in_flight = in_flight
        self.next_value = 0
        self.waiting = 0
        self.acked: dict[int, float] = {}
        """Value -> when its merge was acknowledged (monotonic)."""
        self.sent_at: dict[int, float] = {}
        self.failures: list[tuple[float, float, str]] = []
        """(sent, failed, kind) of every failed merge."""
        self.loop = task.LoopingCall(self._tick)
        self.outcomes: dict[int, Any] = {}
        """Merge replies waiting for the WAIT that covers them."""
        self.uncovered: list[int] = []
        """Merges sent since the last WAIT."""
        self.waiting_for_replica = False

    def start(self) -> None:
        self.loop.start(TICK)

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()

    def _tick(self) -> None:
        sent: dict[int, Deferred[Any]] = {}
        for _ in range(self.per_tick):
            if self.waiting >= self.max_in_flight:
                break
            value = self.next_value
            self.next_value += 1
            self.waiting += 1
            self.sent_at[value] = time.monotonic()
            sent[value] = self.scripts.merge(self.encoder.encode_all([value]))
        if not self.wait_replica:
            for value, d in sent.items():
                d.addCallbacks(
                    self._acked, self._failed, callbackArgs=(value,), errbackArgs=(value,)
                )
        else:
            for value, d in sent.items():
                d.addBoth(_keep(self.outcomes, value))
            self.uncovered.extend(sent)
            if self.uncovered and not self.waiting_for_replica:
                self._after_wait(self.uncovered)
                self.uncovered = []

    def _after_wait(self, sent: list[int]) -> None:
        """Acknowledge the merges of `sent` once a ``WAIT 1`` behind them says a replica has
        them all. One WAIT at a time, covering every merge sent since the one before: a
        client blocked in WAIT holds its later commands, so a WAIT per merge would queue."""
        outcomes = self.outcomes
        self.waiting_for_replica = True

        def check(replicas: int) -> None:
            if replicas < 1:
                raise RedisUnavailable("WAIT: no replica has the changes")

        def finish(waited: Any) -> None:
            self.waiting_for_replica = False
            for value in sent:
                outcome = outcomes.pop(value, waited)
                if isinstance(outcome, Failure):
                    self._failed(outcome, value)
                elif isinstance(waited, Failure):
                    self._failed(waited, value)
                else:
                    self._acked(None, value)

        d = self.redis.execute_command(b"WAIT", b"1", b"500").addCallback(check)
        d.addBoth(finish)

    def _acked(self, _: object, value: int) -> None:
        self.waiting -= 1
        self.acked[value] = time.monotonic()

    def _failed(self, failure: Any, value: int) -> None:
        self.waiting -= 1
        kind = "RedisUnavailable" if failure.check(RedisUnavailable) else repr(failure.value)
        self.failures.append((self.sent_at[value], time.monotonic(), kind))

    def first_ack_sent_after(self, moment: float) -> float | None:
        """When the first merge sent after `moment` was acknowledged."""
        times = [t for v, t in self.acked.items() if self.sent_at[v] > moment]
        return min(times) if times else None


def _keep(outcomes: dict[int, Any], value: int) -> Any:
    """A callback that records a merge's outcome (result or Failure) under `value`."""

    def keep(outcome: Any) -> None:
        outcomes[value] = outcome

    return keep


async def sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def one_run(reactor: Any, config: Config, args: argparse.Namespace, where: Path) -> Run:
    """Start a group, write, kill the primary, wait for the failover, count the losses."""
    relay = LaggingRelay(args.lag / 1000) if config.lagged else None
    group = SentinelGroup(
        where,
        appendfsync=config.appendfsync,
        extra=config.extra,
        link=relay.start if relay is not None else None,
    ).start()
    client: RedisClient | None = None
    writer: Writer | None = None
    run = Run(config.name)
    try:
        redis = redis_config(group.sentinel_url())
        assert redis is not None
        client = connect(redis, reactor)
        await client.when_connected().addTimeout(10, reactor)
        scripts = StateScripts(client, "bench", Keys("bench:"))
        await scripts.load()
        writer = Writer(client, scripts, args.rate, args.in_flight, config.wait_replica)
        writer.start()
        started = time.monotonic()
        await sleep(reactor, args.before + random.uniform(0, TICK))  # any moment of a tick
        killed = time.monotonic()
        group.primary.kill()
        epoch = client.epoch
        restarted = False
        reconnected: float | None = None
        back: float | None = None
        while True:
            now = time.monotonic()
            if reconnected is None and client.epoch > epoch:
                reconnected = now
            if config.restart and reconnected is not None and not restarted:
                # Its old port and files: it comes back as a primary, until the sentinels
                # make it the new primary's replica.
                group.primary.start()
                restarted = True
            back = writer.first_ack_sent_after(killed)
            if back is not None:
                break
            if now - killed > DEADLINE:
                raise RuntimeError(f"{config.name}: no change applied {DEADLINE} s after the kill")
            await sleep(reactor, 0.005)
        await sleep(reactor, args.after)
        writer.stop()
        for _ in range(round(DEFAULT_TIMEOUT / 0.01) + 10):
            if not writer.waiting:
                break
            await sleep(reactor, 0.01)
        members = await client.execute_command(b"ZRANGE", b"bench:values", b"0", b"-1")
        values = decode_members(members)
        present = set(values)
        acked = writer.acked
        lost = sorted(v for v in acked if v not in present)
        run.acknowledged = len(acked)
        run.lost = len(lost)
        run.lost_values_before_kill_ms = [round((killed - acked[v]) * 1000, 2) for v in lost]
        run.applied_unacknowledged = len(present - set(acked))
        run.duplicates = len(values) - len(present)
        run.failed = len(writer.failures)
        for _, _, kind in writer.failures:
            run.failure_kinds[kind] = run.failure_kinds.get(kind, 0) + 1
        run.slowest_failure_ms = round(
            max((f - s for s, f, _ in writer.failures), default=0.0) * 1000, 2
        )
        run.unavailable_s = round(back - killed, 3)
        run.reconnected_s = round((reconnected or back) - killed, 3)
        run.merges_per_s = round(len(acked) / (time.monotonic() - started), 1)
        latencies = sorted(t - writer.sent_at[v] for v, t in acked.items() if t < killed)
        run.ack_p50_ms = round(latencies[len(latencies) // 2] * 1000, 3)
        run.ack_p99_ms = round(latencies[int(len(latencies) * 0.99)] * 1000, 3)
        return run
    finally:
        if writer is not None:
            writer.stop()
        if client is not None:
            await client.close()
        group.stop()
        if relay is not None:
            relay.stop()


def redis_version() -> str:
    done = subprocess.run(
        ["/usr/bin/redis-server", "--version"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import twisted
    import txredisapi  # type: ignore[import-untyped]

    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[:3]
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "txredisapi": txredisapi.__version__,
        "redis": redis_version(),
        "numd_commit": commit,
        "loadavg_at_start": loadavg,
    }


def summary(runs: list[Run]) -> dict[str, Any]:
    """One configuration's runs in a few figures."""
    return {
        "runs": len(runs),
        "acknowledged": sum(r.acknowledged for r in runs),
        "lost_per_run": [r.lost for r in runs],
        "unavailable_s_median": statistics.median(r.unavailable_s for r in runs),
        "unavailable_s_range": [
            min(r.unavailable_s for r in runs),
            max(r.unavailable_s for r in runs),
        ],
        "reconnected_s_median": statistics.median(r.reconnected_s for r in runs),
        "slowest_failure_ms": max(r.slowest_failure_ms for r in runs),
        "ack_p50_ms_median": statistics.median(r.ack_p50_ms for r in runs),
        "ack_p99_ms_median": statistics.median(r.ack_p99_ms for r in runs),
    }


def table(results: dict[str, list[Run]]) -> str:
    rows = [
        "| configuration | runs | acknowledged | lost per run | unavailable s (median, range) "
        "| reconnected s (median) | slowest failed merge ms | ack p50 / p99 ms |",
        "| --- | ---: | ---: | --- | --- | ---: | ---: | --- |",
    ]
    for name, runs in results.items():
        s = summary(runs)
        low, high = s["unavailable_s_range"]
        rows.append(
            f"| {name} | {s['runs']} | {s['acknowledged']:,} | "
            f"{', '.join(map(str, s['lost_per_run']))} | "
            f"{s['unavailable_s_median']:.2f} ({low:.2f}-{high:.2f}) | "
            f"{s['reconnected_s_median']:.2f} | {s['slowest_failure_ms']:.1f} | "
            f"{s['ack_p50_ms_median']:.2f} / {s['ack_p99_ms_median']:.2f} |"
        )
    return "\n".join(rows)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    chosen = configs(args.lag)
    if args.only:
        chosen = tuple(chosen[int(i) - 1] for i in args.only.split(","))
    facts = machine()
    results: dict[str, list[Run]] = {c.name: [] for c in chosen}
    with tempfile.TemporaryDirectory(prefix="numd-sentinel-") as tmp:
        for number in range(args.runs):
            for index, config in enumerate(chosen):  # alternately: a slow moment hits them all
                where = Path(tmp) / f"{number}-{index}"
                run = await one_run(reactor, config, args, where)
                results[config.name].append(run)
                print(
                    f"run {number + 1} {config.name}: {run.acknowledged} acknowledged, "
                    f"{run.lost} lost {run.lost_values_before_kill_ms}, "
                    f"unavailable {run.unavailable_s:.2f} s, {run.failed} failed "
                    f"{run.failure_kinds}",
                    flush=True,
                )
    print()
    print(table(results))
    out = {
        "machine": facts,
        "settings": {
            "runs": args.runs,
            "rate_per_s": args.rate,
            "in_flight": args.in_flight,
            "lag_ms": args.lag,
            "before_s": args.before,
            "after_s": args.after,
            "down_after_ms": DOWN_AFTER_MS,
            "failover_timeout_ms": FAILOVER_TIMEOUT_MS,
            "reconnect_delay_s": DEFAULT_RECONNECT_DELAY,
            "max_reconnect_delay_s": DEFAULT_MAX_RECONNECT_DELAY,
            "command_timeout_s": DEFAULT_TIMEOUT,
        },
        "summary": {name: summary(runs) for name, runs in results.items()},
        "runs": {name: [asdict(r) for r in runs] for name, runs in results.items()},
        "table": table(results),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(REPO)}")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per configuration")
    parser.add_argument("--rate", type=float, default=1000, help="merges per second")
    parser.add_argument("--in-flight", type=int, default=50, help="most merges waiting at once")
    parser.add_argument("--lag", type=float, default=5.0, help="the lagging replica's lag, ms")
    parser.add_argument(
        "--before", type=float, default=2.0, help="seconds of writes before the kill"
    )
    parser.add_argument(
        "--after", type=float, default=1.0, help="seconds of writes after changes work again"
    )
    parser.add_argument(
        "--only", default="", help="configurations to run, by number from 1 (e.g. 1,3)"
    )
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    try:
        skip_without_sentinel()
    except BaseException as e:  # pytest's Skipped: say why, in one line
        sys.exit(f"cannot run: {e}")
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, arguments)))
