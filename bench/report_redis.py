"""The "numd on Redis" section of docs/performance.md, from the ``redis`` part of the results
(``bench/bench.py --only redis``, see bench/redis_bench.py). Called by bench/report.py."""

from __future__ import annotations

from typing import Any

from report import fmt, ratio, table, verdict

EMBEDDED, ON_REDIS, TWO = "numd", "numd on Redis", "numd on Redis, 2 instances"
HIREDIS, HIREDIS_TWO = "numd on Redis + hiredis", "numd on Redis + hiredis, 2 instances"
P99_TARGET_MS = 5.0
"""Issue 15's target for 10,000 clients split over two instances: p99 under 5 ms, no drops."""


SATURATED = 0.9
"""The share of the servers' core (busy, whoever used it; else numd's and Redis's CPU together)
from which a run counts as saturated: its CPU per message then depends on what it could get."""


Point = tuple[int, float]
"""A load: (counter clients, connects per second)."""


def point(run: dict[str, Any]) -> Point:
    """The load a run measured."""
    return run["clients"], float(run.get("ramp_per_s") or 0)


def points(runs: list[dict[str, Any]]) -> list[Point]:
    """The loads measured, in the order they first ran."""
    return list(dict.fromkeys(point(r) for r in runs))


def load_name(at: Point) -> str:
    """A load in words: "10,000 counter clients connecting at 500/s"."""
    return f"{at[0]:,} counter clients connecting at {at[1]:,.0f}/s"


def median_run(
    runs: list[dict[str, Any]], kind: str, at: Point | None = None
) -> dict[str, Any] | None:
    """The run of `kind` (under load `at`, if given) with the median steady p99 (the lower
    middle of an even count)."""
    group = [r for r in runs if r["server_kind"] == kind and at in (None, point(r))]
    if not group:
        return None
    group.sort(key=lambda r: r["latency"]["steady"].get("p99_ms", float("inf")))
    return group[(len(group) - 1) // 2]


def cpu_split(per: dict[str, Any] | None, digits: int = 2) -> str:
    """CPU per message as "numd X + Redis Y = Z" (just X without Redis)."""
    if not per or per.get("numd") is None:
        return "-"
    if per.get("redis") is None:
        return fmt(per["numd"], digits)
    return (
        f"numd {fmt(per['numd'], digits)} + Redis {fmt(per['redis'], digits)} "
        f"= {fmt(per['total'], digits)}"
    )


def cores(run: dict[str, Any]) -> float:
    """The CPU of a run's servers together (every numd instance and Redis), in cores."""
    used = sum((i or {}).get("cpu_cores") or 0.0 for i in run.get("instances") or [])
    return used + ((run.get("redis") or {}).get("cpu_cores") or 0.0)


def saturated(run: dict[str, Any]) -> str:
    """A mark for a run whose servers' core was (nearly) always busy: measured on the core when
    the run has it, else from the servers' own CPU."""
    busy = run.get("server_core_busy")
    if busy is not None:
        return f" (core 0 busy {100 * busy:.0f} %)" if busy >= SATURATED else ""
    return f" (core 0 saturated: {cores(run):.2f} cores)" if cores(run) >= SATURATED else ""


def faults(run: dict[str, Any]) -> str:
    """Connect failures, drops, unanswered requests and error replies of a loadgen run (loadgen
    counts a refused registration as a bad reply too: bad replies beyond the errors are
    replies of the wrong kind, shown apart)."""
    wrong = run["bad_replies"] - run["error_replies"]
    return (
        f"{fmt(run['connect_failures'])} / {fmt(run['drops'])} / {fmt(run['unanswered'])} / "
        f"{fmt(run['error_replies'])}" + (f" (+{fmt(wrong)} wrong replies)" if wrong > 0 else "")
    )


def refused(run: dict[str, Any]) -> str:
    """Why a run's CPU per message means nothing: most of its clients were cut off."""
    lost = run["drops"] + run["connect_failures"]
    if lost > run["clients"] // 2:
        return f"- ({fmt(lost)} of {fmt(run['clients'])} clients cut off)"
    return ""


def error_kinds(run: dict[str, Any]) -> str:
    """numd's own counts of what went wrong, summed over the instances (``/metrics``)."""
    totals: dict[str, float] = {}
    for series in run.get("metrics") or []:
        for name, value in series.items():
            if value and (
                name.startswith("numd_protocol_errors")
                or name.startswith(("numd_redis_unavailable", "numd_redis_command_timeouts"))
                or name.startswith(("numd_redis_leases_lost", "numd_redis_stream_gaps"))
            ):
                totals[name] = totals.get(name, 0) + value
    return ", ".join(f"`{k}` {v:,.0f}" for k, v in sorted(totals.items())) or "none"


def runs_of(redis: dict[str, Any], at: Point) -> str:
    """How many times the kinds ran under load `at`, in words."""
    n = sum(1 for r in redis.get("schedule") or [] if r["server_kind"] == TWO and point(r) == at)
    return "once" if n == 1 else f"{n} times"


def summary_rows(redis: dict[str, Any]) -> list[list[str]]:
    """numd on Redis against embedded numd, one figure a row."""
    runs = redis.get("schedule") or []
    rows: list[list[str]] = []
    for at in points(runs):
        emb, red = median_run(runs, EMBEDDED, at), median_run(runs, ON_REDIS, at)
        if not (emb and red):
            continue
        e, r = emb["cpu_us_per_message"], red["cpu_us_per_message"]
        rows.append(
            [
                f"{load_name(at)}, one instance: CPU per counter message, us",
                refused(emb) or cpu_split(e) + saturated(emb),
                refused(red) or cpu_split(r) + saturated(red),
                ""
                if refused(emb) or refused(red)
                else ratio(r.get("total"), e.get("total"))
                + f" (numd's own share {ratio(r.get('numd'), e.get('numd'))})",
            ]
        )
        es, rs = emb["latency"]["steady"], red["latency"]["steady"]
        rows.append(
            [
                f"{load_name(at)}, one instance: p99 / p99.9 ms",
                f"{fmt(es.get('p99_ms'))} / {fmt(es.get('p99_9_ms'))}",
                f"{fmt(rs.get('p99_ms'))} / {fmt(rs.get('p99_9_ms'))}",
                ratio(rs.get("p99_ms"), es.get("p99_ms")),
            ]
        )
        rows.append(
            [
                f"{load_name(at)}, one instance: connect failures / drops / unanswered / errors",
                faults(emb),
                faults(red),
                "",
            ]
        )
    flood = redis.get("flood") or {}
    fe, fr = flood.get(EMBEDDED), flood.get(ON_REDIS)
    if fe and fr:
        rows.append(
            [
                "flood, 100 connections x 64 requests in flight: requests/s",
                fmt(fe["replies_per_s"], 0),
                fmt(fr["replies_per_s"], 0),
                ratio(fr["replies_per_s"], fe["replies_per_s"]),
            ]
        )
        rows.append(
            [
                "flood: CPU per request, us",
                cpu_split(fe["cpu_us_per_message"], 3),
                cpu_split(fr["cpu_us_per_message"], 3),
                ratio(fr["cpu_us_per_message"]["total"], fe["cpu_us_per_message"]["total"]),
            ]
        )
    lists = redis.get("list") or {}
    le, lr = lists.get(EMBEDDED), lists.get(ON_REDIS)
    if le and lr:
        values = fmt(le["fill"]["values"])
        ea, ra = le["arrays"], lr["arrays"]
        rows.append(
            [
                f"array reply with {values} values in the list: p50 / p99 ms",
                f"{fmt(ea['latency'].get('p50_ms'))} / {fmt(ea['latency'].get('p99_ms'))}",
                f"{fmt(ra['latency'].get('p50_ms'))} / {fmt(ra['latency'].get('p99_ms'))}",
                ratio(ra["latency"].get("p99_ms"), ea["latency"].get("p99_ms")),
            ]
        )
        ec, rc = ea["cpu_ms_per_array"], ra["cpu_ms_per_array"]
        rsum = rc["numd"] + (rc["redis"] or 0)
        rows.append(
            [
                "array: CPU per array (one at a time), ms",
                fmt(ec["numd"], 3),
                f"numd {fmt(rc['numd'], 3)} + Redis {fmt(rc['redis'], 3)} = {fmt(rsum, 3)}",
                ratio(rsum, ec["numd"]),
            ]
        )
        rows.append(
            [
                f"filling the list to {values} values (arrays of 1,000, 4 in flight), s",
                fmt(le["fill"]["seconds"]),
                fmt(lr["fill"]["seconds"]),
                ratio(lr["fill"]["seconds"], le["fill"]["seconds"]),
            ]
        )
        for name, what in (
            ("small_get", "GET of one value (wrk): requests/s"),
            ("page_1000", f"GET of a page of 1,000 from {values} values (wrk): requests/s"),
        ):
            we, wr = le.get(name), lr.get(name)
            if we and wr:
                rows.append(
                    [
                        what,
                        fmt(we.get("requests_per_s"), 0),
                        fmt(wr.get("requests_per_s"), 0),
                        ratio(wr.get("requests_per_s"), we.get("requests_per_s")),
                    ]
                )
    reg = redis.get("register") or {}
    ge, gr = reg.get(EMBEDDED), reg.get(ON_REDIS)
    if ge and gr:
        rows.append(
            [
                f"registrations per second ({redis.get('register_connections', 16)} connections "
                "each connecting, registering, closing)",
                fmt(ge["replies_per_s"], 0),
                fmt(gr["replies_per_s"], 0),
                ratio(gr["replies_per_s"], ge["replies_per_s"]),
            ]
        )
        rows.append(
            [
                "registration: one cycle (connect to start number) p50 / p99 ms",
                f"{fmt(ge['latency']['register'].get('p50_ms'))} / "
                f"{fmt(ge['latency']['register'].get('p99_ms'))}",
                f"{fmt(gr['latency']['register'].get('p50_ms'))} / "
                f"{fmt(gr['latency']['register'].get('p99_ms'))}",
                ratio(
                    gr["latency"]["register"].get("p99_ms"), ge["latency"]["register"].get("p99_ms")
                ),
            ]
        )
        rows.append(
            [
                "registration: CPU per registration, us",
                cpu_split(ge["cpu_us_per_message"], 0),
                cpu_split(gr["cpu_us_per_message"], 0),
                ratio(gr["cpu_us_per_message"]["total"], ge["cpu_us_per_message"]["total"]),
            ]
        )
    return rows


def two_instances(redis: dict[str, Any], at: Point) -> tuple[list[str], dict[str, Any]] | None:
    """The row of the two-instance runs under load `at` (their median run), and that run;
    judged against the target at the target's number of clients, informative at others."""
    runs = redis.get("schedule") or []
    run = median_run(runs, TWO, at)
    if run is None:
        return None
    steady = run["latency"]["steady"]
    p99 = steady.get("p99_ms")
    lost = run["drops"] + run["unanswered"] + run["connect_failures"]
    ok = None if p99 is None else p99 < P99_TARGET_MS and lost == 0 and run["connected"] > 0
    others = [r for r in runs if r["server_kind"] == TWO and point(r) == at]
    each = ", ".join(fmt(r["latency"]["steady"].get("p99_ms")) for r in others)
    target = at[0] == redis.get("clients", at[0])
    row = [
        f"{load_name(at)}, over two instances on one redis-server: "
        + (f"p99 < {P99_TARGET_MS:g} ms, no drops" if target else "for comparison"),
        f"p99 {fmt(p99)} ms (runs: {each}), p99.9 {fmt(steady.get('p99_9_ms'))} ms; "
        f"{fmt(run['connected'])} connected; connect failures / drops / unanswered / errors "
        f"{faults(run)}; CPU per message "
        + (refused(run) or f"{cpu_split(run['cpu_us_per_message'])} us{saturated(run)}"),
        verdict(ok) if target else "informative",
    ]
    return row, run


def hiredis_rows(redis: dict[str, Any]) -> list[list[str]]:
    """numd on Redis with txredisapi's own reply parser against the same with hiredis's."""
    runs = redis.get("schedule") or []
    rows: list[list[str]] = []
    for at in points(runs):
        for plain, fast, where in (
            (ON_REDIS, HIREDIS, "one instance"),
            (TWO, HIREDIS_TWO, "two instances"),
        ):
            a, b = median_run(runs, plain, at), median_run(runs, fast, at)
            if not (a and b):
                continue
            pa, pb = a["cpu_us_per_message"], b["cpu_us_per_message"]
            cut = refused(a) or refused(b)
            rows.append(
                [
                    f"{load_name(at)}, {where}: CPU per counter message, us",
                    refused(a) or cpu_split(pa) + saturated(a),
                    refused(b) or cpu_split(pb) + saturated(b),
                    "" if cut else ratio(pb.get("total"), pa.get("total")),
                ]
            )
            sa, sb = a["latency"]["steady"], b["latency"]["steady"]
            rows.append(
                [
                    f"{load_name(at)}, {where}: p99 / p99.9 ms; connect failures / drops / "
                    "unanswered / errors",
                    f"{fmt(sa.get('p99_ms'))} / {fmt(sa.get('p99_9_ms'))}; {faults(a)}",
                    f"{fmt(sb.get('p99_ms'))} / {fmt(sb.get('p99_9_ms'))}; {faults(b)}",
                    ratio(sb.get("p99_ms"), sa.get("p99_ms")),
                ]
            )
    reg = redis.get("register") or {}
    a, b = reg.get(ON_REDIS), reg.get(HIREDIS)
    if a and b:
        rows.append(
            [
                "registrations per second",
                fmt(a["replies_per_s"], 0),
                fmt(b["replies_per_s"], 0),
                ratio(b["replies_per_s"], a["replies_per_s"]),
            ]
        )
        rows.append(
            [
                "registration: CPU per registration, us",
                cpu_split(a["cpu_us_per_message"], 0),
                cpu_split(b["cpu_us_per_message"], 0),
                ratio(b["cpu_us_per_message"]["total"], a["cpu_us_per_message"]["total"]),
            ]
        )
    return rows


def long_callbacks(stalls: dict[str, Any] | None) -> str:
    """An instance's reactor callbacks of 5 ms or more in the steady window, and the longest."""
    if stalls is None:
        return "-"
    count = sum(k["5ms"] for k in stalls.values())
    longest = max((k["max_ms"] for k in stalls.values()), default=0.0)
    return f"{count} / {fmt(longest, 1)}"


def runs_table(redis: dict[str, Any]) -> str:
    """Every run of the client points, in the order they ran."""
    rows = []
    for run in redis.get("schedule") or []:
        steady = run["latency"]["steady"]
        instances = run.get("instances") or []
        per = run["cpu_us_per_message"]
        rows.append(
            [
                fmt(run["clients"]),
                fmt(run.get("ramp_per_s"), 0),
                run["server_kind"],
                str(run.get("rep", 1)),
                fmt(run["connected"]),
                faults(run),
                fmt(run["sent_per_s"], 0),
                fmt(steady.get("p50_ms")),
                fmt(steady.get("p99_ms")),
                fmt(steady.get("p99_9_ms")),
                fmt(steady.get("max_ms")),
                " + ".join(fmt(100 * (i.get("cpu_cores") or 0), 1) for i in instances) or "-",
                fmt(100 * run["redis"]["cpu_cores"], 1) if run.get("redis") else "-",
                fmt(100 * run["server_core_busy"], 0) if run.get("server_core_busy") else "-",
                fmt(per.get("numd")),
                fmt(per.get("redis")),
                fmt(per.get("total")),
                fmt(run["latency"].get("send_lag_steady", {}).get("p99_ms")),
                " + ".join(long_callbacks(i.get("stalls")) for i in instances) or "-",
            ]
        )
    return table(
        [
            "clients",
            "connects/s",
            "server",
            "run",
            "connected",
            "connect fail / drops / unanswered / errors",
            "messages/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "numd CPU % (each instance)",
            "Redis CPU %",
            "core 0 busy %",
            "numd us/msg",
            "Redis us/msg",
            "total us/msg",
            "gen lag p99 ms",
            "callbacks >= 5 ms / longest ms (each instance)",
        ],
        rows,
    )


def section(results: dict[str, Any]) -> str:
    """The whole section (empty without a ``redis`` part in the results)."""
    redis = results.get("redis") or {}
    if not redis:
        return ""
    if redis.get("skipped"):
        return f"## numd on Redis (issue 15)\n\nNot measured: {redis['skipped']}.\n"
    m = redis.get("machine") or {}
    st = results.get("settings") or {}
    out = ["## numd on Redis (issue 15)\n"]
    out.append(
        "numd with its state in Redis (`twistd -n numd --db redis://127.0.0.1:PORT/0`) against "
        "embedded numd (its default SQLite store), side by side in one run of "
        "`bench/bench.py --only redis --merge` (`bench/redis_bench.py`), with the harness of the "
        "rest of this page: the same `bench/loadgen` loads, samplers and settings, numd with its "
        "defaults (message log on) on fresh ports, a fresh redis-server for every run.\n"
    )
    out.append(
        "- **Pinning**: every server thread on core 0, numd's reactor and writer threads *and "
        "redis-server* (its main thread and its background threads, at the servers' niceness): "
        "Redis is part of the server here, so numd on Redis never borrows the load generator's "
        "core for its store, as embedded numd's SQLite writer does not. Two instances and their "
        "redis-server share that one core too. Load generators and this driver on core 1.\n"
        f"- **Redis**: {redis.get('redis_version') or '?'} from Debian, started by the bench on "
        "127.0.0.1, a free port and a temporary directory, stopped (SIGTERM) after each run, with "
        "`" + " ".join(a if a else '""' for a in redis.get("redis_settings") or []) + "`: the "
        "append-only file written at once and fsynced once a second; RDB snapshots off (a "
        "snapshot forks a child on the server's core mid-run); everything else Redis's defaults.\n"
        "- **CPU per counter message**: a server's CPU time over the steady window divided by "
        "the counter messages the clients sent in it (reports and requests; replies are not "
        "counted again), numd's (every instance's) and redis-server's apart, then summed. The "
        "flood and the registrations count requests answered and registrations done instead.\n"
        "- **Counter clients** on the real schedule (a report every 500 ms, a request every "
        f"3-5 s, no arrays), a {redis.get('seconds')} s steady window after the last one "
        "registered, under these loads: "
        + ", ".join(
            f"{load_name(at)} ({runs_of(redis, at)})" for at in points(redis.get("schedule") or [])
        )
        + "; runs interleaved, the median run (by p99) stands for a load. The rest of this "
        "page connects at 5,000/s; numd on Redis registers each client with a script call "
        "(its lease), so the same burst is run again at a rate its registration keeps up "
        "with, to measure the steady state apart from the burst. Two instances: "
        "`loadgen --ports A,B` sends client i to instance i mod 2, one generator, one set of "
        "latencies for both.\n"
        "- **Arrays and pages**: the list filled to "
        f"{st.get('list_values', 0):,} values (arrays of 1,000, 4 in flight), then "
        f"{st.get('probes', 0):,} arrays of 10-20 values one at a time, then `wrk -t1 -c16` "
        f"for {st.get('http_seconds')} s on a GET of one value and on a page of 1,000 from the "
        "middle of the list, on the same instance.\n"
        f"- **Registrations**: {redis.get('register_connections', 16)} connections each connect, "
        "register with the next ID (cycling over 0-10000), close (RST) at the start number and "
        f"connect again, for {redis.get('register_seconds')} s (`loadgen --mode register`); on "
        "Redis each registration takes a lease by a script and each close frees it in a batch.\n"
    )
    out.append(
        table(
            ["what", "value"],
            [
                ["date", m.get("date_utc", "-")],
                ["numd installed in bench/.venv from", m.get("numd_installed") or "-"],
                ["repository HEAD", m.get("numd_commit", "-")],
                [
                    "load average at start / at end of the Redis part",
                    " ".join(redis.get("loadavg_at_start") or [])
                    + " / "
                    + " ".join(redis.get("loadavg_at_end") or []),
                ],
            ],
        )
        + "\n"
    )
    out.append("### Against embedded numd\n")
    out.append(
        table(
            ["figure", "embedded numd (SQLite)", "numd on Redis", "Redis / embedded"],
            summary_rows(redis),
        )
        + "\n"
    )
    loads = points(redis.get("schedule") or [])
    targets = [t for t in (two_instances(redis, at) for at in loads) if t is not None]
    if targets:
        out.append("### Issue 15's target\n")
        out.append(
            table(["target", "measured (median run)", "verdict"], [row for row, _ in targets])
            + "\n"
        )
        out.append(
            "What numd counted in those runs (`/metrics`, both instances): "
            + "; ".join(f"{load_name(point(run))}: {error_kinds(run)}" for _, run in targets)
            + ".\n"
        )
    fix = hiredis_rows(redis)
    if fix:
        out.append("### For comparison: numd on Redis with hiredis\n")
        out.append(
            "txredisapi parses Redis's replies in Python unless it can import hiredis; its "
            "parser pauses the connection after every bulk string and goes on in the next "
            "reactor turn (`setLineMode` with `callLater(0)`), so a reply of n strings costs n "
            "turns and 2n `epoll_ctl` calls. The same runs with hiredis on numd's path "
            f"(`pip install --target bench/.venv/hiredis hiredis`; txredisapi then uses "
            f"`{redis.get('hiredis_parser')}`), once per load: numd does not depend on hiredis, "
            "these rows measure what it would change.\n"
        )
        out.append(
            table(["figure", "numd on Redis", "numd on Redis + hiredis", "hiredis / without"], fix)
            + "\n"
        )
    out.append("### Every run of the client points\n")
    out.append(runs_table(redis) + "\n")
    out.append(
        '"gen lag" is how late the load generator itself sent (p99): when it is large the '
        "machine, not the server, was short of CPU. The errors column counts error replies "
        "(`error:...`). \"core 0 busy\" is the servers' core's busy share (`/proc/stat`, whoever "
        "used it): exact for a core that was never idle, too low for a load that leaves it idle in "
        "short gaps (the kernel counts busy time by timer ticks). "
        "The callbacks column counts each instance's reactor callbacks of 5 ms "
        "or more in the steady window (`bench/gcprobe`, wall time: a callback during which "
        "the shared core ran Redis or the other instance counts that too).\n"
    )
    return "\n".join(out)
