"""Turns bench results (JSON from bench/bench.py) into docs/performance.md and its plot.

``python bench/report.py bench/results/results.json`` rewrites
``docs/performance.md`` and ``docs/performance.png``. Every figure in the page comes
from the JSON; nothing is typed in by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
PLOT = ROOT / "docs" / "performance.png"
NOTES = ROOT / "bench" / "notes.md"
"""Hand-written notes appended to the page: what each change to numd bought, with the runs they cite."""

Row = list[str]


def fmt(value: Any, digits: int = 2) -> str:
    """A number for a table: None as a dash, large numbers with thousands separators."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    """a / b as ``1.23x``."""
    if a is None or b in (None, 0):
        return "-"
    return f"{a / b:.2f}x"


def table(header: Row, rows: list[Row]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool | None) -> str:
    """Met / NOT met / not measured."""
    if ok is None:
        return "not measured"
    return "**met**" if ok else "**NOT met**"


def by_kind(runs: list[dict[str, Any]], **match: Any) -> dict[str, dict[str, Any]]:
    """The runs matching every key, indexed by server kind.

    Where a point was run several times, the run with the median steady p99 stands
    for it (all its figures come from that one run).
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if all(run.get(k) == v for k, v in match.items()):
            groups.setdefault(run["server_kind"], []).append(run)
    out = {}
    for kind, group in groups.items():
        group = sorted(group, key=lambda r: r["latency"]["steady"].get("p99_ms", float("inf")))
        out[kind] = group[(len(group) - 1) // 2]
    return out


def reps(runs: list[dict[str, Any]], clients: int, kind: str) -> int:
    """How many times a point was run."""
    return sum(1 for r in runs if r["clients"] == clients and r["server_kind"] == kind)


def paired_cpu_ratios(runs: list[dict[str, Any]], clients: int, kind: str) -> list[float]:
    """numd's CPU over the baseline's, for each repetition of a point (they ran back to back)."""
    by_rep: dict[int, dict[str, float]] = {}
    for r in runs:
        if r["clients"] == clients and r["server_kind"] in (kind, "baseline"):
            used = r["server"].get("cpu_cores")
            if used:
                by_rep.setdefault(r.get("rep", 0), {})[r["server_kind"]] = used
    return [pair[kind] / pair["baseline"] for pair in by_rep.values() if len(pair) == 2]


def cpu(run: dict[str, Any] | None) -> float | None:
    """Average CPU of the server over the run's steady window, in cores."""
    return None if run is None else run["server"].get("cpu_cores")


def run_summary(run: dict[str, Any], memory: bool = False) -> str:
    """A schedule run in one line: tail latency, CPU, (memory,) drops, unanswered, errors."""
    steady = run["latency"]["steady"]
    kib = f"{fmt(run['server'].get('rss_per_connection_kb'))} KiB/conn, " if memory else ""
    return (
        f"p99 {fmt(steady.get('p99_ms'))} ms, p99.9 {fmt(steady.get('p99_9_ms'))} ms, "
        f"CPU {fmt(100 * (cpu(run) or 0), 1)} %, {kib}{run['drops']} drops, "
        f"{run['unanswered']} unanswered, {run['error_replies']} errors"
    )


# -- the plot ------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> bool:
    """p99 latency and CPU against the number of clients, numd and the baseline."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = results.get("schedule") or []
    if not runs:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, style in (
        ("baseline", "s--"),
        ("numd", "o-"),
        ("numd --db :memory:", "^:"),
        ("baseline +arrays", "x--"),
        ("numd +arrays", "d-"),
    ):
        sizes = sorted({r["clients"] for r in runs if r["server_kind"] == kind})
        points = [(n, by_kind(runs, clients=n)[kind]) for n in sizes]
        if not points:
            continue
        xs = [n for n, _ in points]
        left.plot(xs, [r["latency"]["steady"].get("p99_ms") for _, r in points], style, label=kind)
        right.plot(xs, [100 * (cpu(r) or 0) for _, r in points], style, label=kind)
    left.set(
        xlabel="simulated counter clients",
        ylabel="p99 request latency (ms)",
        title="p99 latency",
        yscale="log",
    )
    right.set(xlabel="simulated counter clients", ylabel="CPU (% of one core)", title="server CPU")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("numd vs a plain LineReceiver server (" + results["machine"]["date_utc"] + ")")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


# -- sections ------------------------------------------------------------------------------


def schedule_section(results: dict[str, Any]) -> tuple[str, list[Row]]:
    runs = results.get("schedule") or []
    if not runs:
        return "", []
    rows = []
    for run in sorted(runs, key=lambda r: (r["clients"], r.get("rep", 1), r["server_kind"])):
        steady = run["latency"]["steady"]
        base = by_kind(runs, clients=run["clients"]).get("baseline")
        srv = run["server"]
        rows.append(
            [
                fmt(run["clients"]),
                run["server_kind"],
                str(run.get("rep", 1)),
                fmt(run["window_s"], 0),
                fmt(run["connected"]),
                fmt(run["connect_failures"]),
                fmt(run["drops"]),
                fmt(run["unanswered"]),
                fmt(run["error_replies"] + run["bad_replies"]),
                fmt(run["sent_per_s"], 0),
                fmt(steady.get("p50_ms")),
                fmt(steady.get("p99_ms")),
                fmt(steady.get("p99_9_ms")),
                fmt(steady.get("max_ms")),
                fmt(run["max_reply_gap_ms"]),
                fmt(100 * (cpu(run) or 0), 1),
                ratio(cpu(run), cpu(base)) if run["server_kind"] != "baseline" else "",
                fmt(srv.get("rss_per_connection_kb")),
                fmt(run["ramp_s"]),
                fmt(run["latency"]["connect"].get("max_ms")),
                fmt(run["latency"].get("send_lag_steady", {}).get("p99_ms")),
                (
                    f"{srv['gc']['gen2_count']} / {fmt(srv['gc']['gen2_max_ms'], 1)}"
                    if srv.get("gc")
                    else "-"
                ),
            ]
        )
    header = [
        "clients",
        "server",
        "run",
        "window s",
        "connected",
        "connect fail",
        "drops",
        "unanswered",
        "errors",
        "msgs/s in",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "max gap ms",
        "CPU %",
        "CPU vs base",
        "RSS KiB/conn",
        "ramp s",
        "connect max ms",
        "gen lag p99 ms",
        "gen2 GCs / longest ms",
    ]
    text = table(header, rows)
    return text, rows


def flood_rows(results: dict[str, Any]) -> list[Row]:
    runs = results.get("flood") or []
    rows = []
    base = {r["window"]: r for r in runs if r["server_kind"] == "baseline"}
    for run in runs:
        b = base.get(run["window"])
        lat = run["latency"]["requests"]
        rows.append(
            [
                str(run["window"]),
                fmt(run["clients"]),
                run["server_kind"],
                "-" if run["server_kind"] == "baseline" else ("on" if run["log_on"] else "off"),
                fmt(run["replies_per_s"], 0),
                ratio(run["replies_per_s"], b and b["replies_per_s"])
                if run["server_kind"] == "numd"
                else "",
                fmt(lat.get("p50_ms")),
                fmt(lat.get("p99_ms")),
                fmt(100 * (cpu(run) or 0), 1),
                fmt(run["loadgen_cpu_share"] * 100, 1),
                fmt(run["error_replies"] + run["bad_replies"]),
                fmt(run["unanswered"]),
            ]
        )
    return rows


# -- targets -------------------------------------------------------------------------------


def cpu_row(
    runs: list[dict[str, Any]], big: int, numd: dict[str, Any], base: dict[str, Any], note: str
) -> Row:
    """The CPU target's row: with several repetitions, the median of each one's numd/baseline ratio.

    Each repetition runs the baseline and numd back to back, so its ratio compares
    the two on the same machine minutes apart, while the machine's speed drifts
    between repetitions.
    """
    ratios = sorted(paired_cpu_ratios(runs, big, "numd"))
    mid = ratios[(len(ratios) - 1) // 2] if ratios else None
    shown = "-" if mid is None else f"{mid:.2f}x"
    if len(ratios) > 1:
        shown += f" (median; each run: {', '.join(f'{r:.2f}x' for r in ratios)})"
    return [
        f"1. CPU at most 1.5x the baseline's{note}",
        fmt(100 * (cpu(numd) or 0), 1) + " % of a core",
        fmt(100 * (cpu(base) or 0), 1) + " %",
        shown,
        verdict(mid is not None and mid <= 1.5 if big == 10000 else None),
    ]


def targets(results: dict[str, Any]) -> list[Row]:
    """One row per target of issue 7: what was measured, the baseline, the verdict."""
    rows: list[Row] = []
    quick = results.get("quick")
    runs = results.get("schedule") or []
    sizes = sorted({r["clients"] for r in runs})
    big = 10000 if 10000 in sizes else (sizes[-1] if sizes else None)
    pair = by_kind(runs, clients=big) if big else {}
    numd, base = pair.get("numd"), pair.get("baseline")
    note = "" if big == 10000 else f" (quick run: {big} clients, not 10,000)"
    n_reps = reps(runs, big, "numd") if big else 0
    if n_reps > 1:
        note += f" (median of {n_reps} runs)"
    if numd and base:
        clean = (
            all(
                numd[k] == 0
                for k in ("connect_failures", "drops", "unanswered", "error_replies", "bad_replies")
            )
            and numd["connected"] == numd["clients"]
        )
        s, bs = numd["latency"]["steady"], base["latency"]["steady"]
        rpc = numd["server"].get("rss_per_connection_kb")
        rows += [
            [
                f"1. {fmt(big)} clients: no errors, drops or unanswered{note}",
                f"{numd['connect_failures']} connect failures, {numd['drops']} drops, "
                f"{numd['unanswered']} unanswered, {numd['error_replies'] + numd['bad_replies']} errors",
                f"{base['connect_failures']}/{base['drops']}/{base['unanswered']}/"
                f"{base['error_replies'] + base['bad_replies']}",
                "",
                verdict(clean if big == 10000 else None),
            ],
            [
                f"1. p99 < 5 ms{note}",
                fmt(s.get("p99_ms")) + " ms",
                fmt(bs.get("p99_ms")) + " ms",
                ratio(s.get("p99_ms"), bs.get("p99_ms")),
                verdict(s.get("p99_ms", 1e9) < 5 if big == 10000 else None),
            ],
            [
                f"1. p99.9 < 20 ms{note}",
                fmt(s.get("p99_9_ms")) + " ms",
                fmt(bs.get("p99_9_ms")) + " ms",
                ratio(s.get("p99_9_ms"), bs.get("p99_9_ms")),
                verdict(s.get("p99_9_ms", 1e9) < 20 if big == 10000 else None),
            ],
            cpu_row(runs, big, numd, base, note),
            [
                f"1. under 4 KB of memory per connection{note}",
                fmt(rpc) + " KiB",
                fmt(base["server"].get("rss_per_connection_kb")) + " KiB",
                ratio(rpc, base["server"].get("rss_per_connection_kb")),
                verdict(rpc is not None and rpc < 4 if big == 10000 else None),
            ],
        ]
    mem = pair.get("numd --db :memory:")
    if mem and base:
        rows.append(
            [
                f"1. for comparison: numd with its store off (`--db :memory:`){note}",
                run_summary(mem, memory=True),
                f"p99 {fmt(bs.get('p99_ms'))} ms",
                ratio(cpu(mem), cpu(base)) + " CPU",
                "informative",
            ]
        )
    for label in ("numd, log on tmpfs", "numd --db :memory:, log on tmpfs"):
        var = pair.get(label)
        if var and base:
            rows.append(
                [
                    f"1. for comparison: {label}{note.split(' (median')[0]}",
                    run_summary(var),
                    f"p99 {fmt(bs.get('p99_ms'))} ms, p99.9 {fmt(bs.get('p99_9_ms'))} ms",
                    ratio(cpu(var), cpu(base)) + " CPU",
                    "informative",
                ]
            )
    mixed = pair.get("numd +arrays"), pair.get("baseline +arrays")
    if mixed[0] and mixed[1]:
        mb = mixed[1]["latency"]["steady"]
        share = results["settings"].get("mixed_array_share")
        rows.append(
            [
                f"1. for comparison: the same clients with {share} of requests arrays{note.split(' (median')[0]}",
                run_summary(mixed[0]),
                f"p99 {fmt(mb.get('p99_ms'))} ms, p99.9 {fmt(mb.get('p99_9_ms'))} ms, "
                f"CPU {fmt(100 * (cpu(mixed[1]) or 0), 1)} %",
                ratio(cpu(mixed[0]), cpu(mixed[1])) + " CPU",
                "informative",
            ]
        )
    pair19 = by_kind(runs, clients=19000)
    if pair19.get("numd") and pair19.get("baseline"):
        n19, b19 = pair19["numd"], pair19["baseline"]
        rows.append(
            [
                "1. also report 19,000 clients (see the table)",
                f"p99 {fmt(n19['latency']['steady'].get('p99_ms'))} ms, CPU {fmt(100 * (cpu(n19) or 0), 1)} %, "
                f"{n19['connected']:,} connected, {n19['drops']} drops",
                f"p99 {fmt(b19['latency']['steady'].get('p99_ms'))} ms, CPU {fmt(100 * (cpu(b19) or 0), 1)} %",
                ratio(cpu(n19), cpu(b19)) + " CPU",
                "reported",
            ]
        )
    floods = results.get("flood") or []
    base64 = next((r for r in floods if r["server_kind"] == "baseline" and r["window"] == 64), None)
    base1 = next((r for r in floods if r["server_kind"] == "baseline" and r["window"] == 1), None)
    for window, log_on, goal, b in (
        (64, True, 1.5, base64),
        (64, False, 2.5, base64),
        (1, True, 0.9, base1),
    ):
        run = next(
            (
                r
                for r in floods
                if r["server_kind"] == "numd" and r["window"] == window and r["log_on"] == log_on
            ),
            None,
        )
        if run is None or b is None:
            continue
        name = (
            f"2. flood W={window}, 100 conns, log {'on' if log_on else 'off'}: >= {goal}x baseline"
        )
        how = ""
        if not log_on and not results["numd_features"].get("log_off_switch"):
            how = " (numd has no log-off switch: log on tmpfs)"
        r = run["replies_per_s"] / b["replies_per_s"]
        rows.append(
            [
                name + how,
                fmt(run["replies_per_s"], 0) + " req/s",
                fmt(b["replies_per_s"], 0) + " req/s",
                f"{r:.2f}x",
                verdict(r >= goal),
            ]
        )
    arrays = results.get("arrays") or {}
    if "numd" in arrays:
        a, b = arrays["numd"], arrays.get("baseline")
        size = a["fill"]["values"]
        full = size >= 1_000_000
        rows.append(
            [
                f"3. array with the list at {size:,} values: < 1 ms daemon CPU",
                fmt(a["cpu_ms_per_array"], 3) + " ms",
                fmt(b and b["cpu_ms_per_array"], 3) + " ms",
                ratio(a["cpu_ms_per_array"], b and b["cpu_ms_per_array"]),
                verdict(a["cpu_ms_per_array"] < 1 if full else None),
            ]
        )
        rows.append(
            [
                "3. array reply within the reply cap (65,536 bytes)",
                f"{a['max_reply_bytes']:,} bytes (fill: {a['fill']['max_reply_bytes']:,})",
                f"{b['max_reply_bytes']:,} bytes" if b else "-",
                "",
                verdict(max(a["max_reply_bytes"], a["fill"]["max_reply_bytes"]) <= 65536),
            ]
        )
    measured_runs = [(r["server_kind"], r) for r in runs + floods]
    measured_runs += [(kind, a) for kind, a in arrays.items() if isinstance(a, dict)]

    def stalls(kind: str) -> list[dict[str, Any]]:
        return [
            r["server"]["stalls"]
            for k, r in measured_runs
            if k == kind and (r.get("server") or {}).get("stalls")
        ]

    numd_stalls, base_stalls = stalls("numd"), stalls("baseline")
    if numd_stalls:
        worst = max(s["max_ms"] for s in numd_stalls)
        base_worst = max((s["max_ms"] for s in base_stalls), default=None)
        rows.append(
            [
                "3. no reactor stall over 10 ms (longest reactor callback, all runs)",
                f"{fmt(worst)} ms ({sum(s['over_10ms'] for s in numd_stalls)} over 10 ms)",
                fmt(base_worst) + " ms" if base_worst is not None else "-",
                "",
                verdict(worst <= 10),
            ]
        )
    gaps = [r["max_reply_gap_ms"] for r in runs + floods if r["server_kind"] == "numd"]
    gaps += [a["max_reply_gap_ms"]] if "numd" in arrays else []
    bgaps = [r["max_reply_gap_ms"] for r in runs + floods if r["server_kind"] == "baseline"]
    if gaps:
        rows.append(
            [
                "3. for comparison: the longest gap seen from outside (all runs)",
                fmt(max(gaps)) + " ms",
                fmt(max(bgaps) if bgaps else None) + " ms",
                "",
                "informative" if numd_stalls else verdict(max(gaps) <= 10),
            ]
        )
    http = results.get("http") or {}
    if "numd" in http:
        n, b = http["numd"], http.get("baseline", {})
        sg, bsg = n.get("small_get") or {}, (b.get("small_get") or {})
        rows.append(
            [
                "4. HTTP small GET >= 8,000 requests/s",
                fmt(sg.get("requests_per_s"), 0) + " req/s",
                fmt(bsg.get("requests_per_s"), 0) + " req/s",
                ratio(sg.get("requests_per_s"), bsg.get("requests_per_s")),
                verdict(sg.get("requests_per_s", 0) >= 8000 if sg else None),
            ]
        )
        pu, bpu = n.get("page_under_load") or {}, b.get("page_under_load") or {}
        clients = results["settings"]["http_clients"]
        rows.append(
            [
                f"4. page of 1,000 from {fmt(n.get('fill_values'))} values, p99 < 5 ms with "
                f"{clients:,} counter clients running",
                fmt(pu.get("p99_ms")) + " ms",
                fmt(bpu.get("p99_ms")) + " ms",
                ratio(pu.get("p99_ms"), bpu.get("p99_ms")),
                verdict(
                    pu.get("p99_ms", 1e9) < 5
                    if clients >= 10000 and n.get("fill_values", 0) >= 1_000_000 and not quick
                    else None
                ),
            ]
        )
    elif not results["numd_features"].get("api"):
        rows.append(["4. HTTP", "numd had no HTTP API when this ran", "", "", verdict(None)])
    start = results.get("startup") or {}
    if "numd_stored" in start:
        s = start["numd_stored"]
        rows.append(
            [
                f"5. accepting within 3 s with {s['stored_values']:,} stored values",
                f"{s['max_s']:.2f} s (worst of {len(s['runs'])})",
                f"{start['baseline']['max_s']:.2f} s (empty, no store)",
                "",
                verdict(s["max_s"] <= 3 if s["stored_values"] >= 1_000_000 else None),
            ]
        )
    elif "numd" in start:
        rows.append(
            [
                "5. accepting within 3 s with 10^6 stored values",
                f"{start['numd']['max_s']:.2f} s empty; numd has no store to load",
                "",
                "",
                verdict(None),
            ]
        )
    return rows


# -- findings ----------------------------------------------------------------------------


def findings(results: dict[str, Any]) -> list[str]:
    """What the figures say about where numd's time goes, computed from them."""
    out = []
    micro = (results.get("micro") or {}).get("results") or {}
    base, on, off = (
        micro.get(k) or {} for k in ("baseline", "numd (log on)", "numd (--no-message-log)")
    )
    key = "requests, 64 per read"
    if all(isinstance(d.get(key), float) for d in (base, on, off)):
        out.append(
            f"**Per pipelined request, numd's Python costs {on[key] / base[key]:.1f}x the baseline's** "
            f"({on[key]:.2f} against {base[key]:.2f} us, in process, 64 requests per read). The message "
            f"log's two records (in and out) are {on[key] - off[key]:.2f} us of that "
            f"({100 * (on[key] - off[key]) / on[key]:.0f} %); without them numd costs "
            f"{off[key] / base[key]:.1f}x the baseline ({off[key]:.2f} us). With one token per read the "
            f"per-read work dominates: a request costs {on.get('requests, 1 per read')} us against "
            f"{base.get('requests, 1 per read')} us, a report {on.get('reports, 1 per read')} us against "
            f"{base.get('reports, 1 per read')} us (registry, counters, observers, the log's records). "
            "These go through a `StringTransport`: Twisted's TCP write path, which numd's replies skip "
            "while the socket takes them whole (`numd/counter/direct_write.py`), is only in the W=1 flood."
        )
    runs = results.get("schedule") or []
    sizes = sorted({r["clients"] for r in runs if r["server_kind"] == "numd --db :memory:"})
    if sizes:
        n = sizes[-1]
        pair = by_kind(runs, clients=n)
        a, b = pair.get("numd"), pair.get("numd --db :memory:")
        if a and b:
            pa, pb = a["latency"]["steady"].get("p99_ms"), b["latency"]["steady"].get("p99_ms")
            figures = (
                f"At {n:,} clients numd with its default SQLite store had p99 {fmt(pa)} ms, p99.9 "
                f"{fmt(a['latency']['steady'].get('p99_9_ms'))} ms and a longest gap of "
                f"{fmt(a['max_reply_gap_ms'])} ms at {fmt(100 * (cpu(a) or 0), 1)} % CPU; with `--db :memory:` "
                f"p99 {fmt(pb)} ms, p99.9 {fmt(b['latency']['steady'].get('p99_9_ms'))} ms, gap "
                f"{fmt(b['max_reply_gap_ms'])} ms at {fmt(100 * (cpu(b) or 0), 1)} % CPU."
            )
            if pa and pb and pa > 3 * pb:
                ga, gb = a["server"].get("gc") or {}, b["server"].get("gc") or {}
                why = (
                    " Latency far above what the CPU figure explains points at waiting rather than "
                    "work."
                )
                if ga.get("gen2_count", 0) > gb.get("gen2_count", 0):
                    why += (
                        f" The store-on run had {ga['gen2_count']} full garbage collections (longest "
                        f"{ga['gen2_max_ms']:.0f} ms), the store-off run {gb.get('gen2_count', 0)}. A likely "
                        "reason (not measured here): objects the store keeps for about a second (its "
                        "batches of client records) live long enough to reach the oldest generation, "
                        "and their turnover triggers full collections of every object the daemon "
                        "holds, on the reactor thread."
                    )
                out.append("**The store makes the tail latency.** " + figures + why)
            else:
                out.append(figures)
    for n in sorted({r["clients"] for r in runs if r["server"].get("gc")}):
        pair = by_kind(runs, clients=n)
        a, b = pair.get("numd"), pair.get("baseline")
        if n < 5000 or not (a and b and a["server"].get("gc") and b["server"].get("gc")):
            continue
        ga, gb = a["server"]["gc"], b["server"]["gc"]
        text = (
            f"At {n:,} clients numd ran {ga['gen2_count']} full garbage collections in its "
            f"{a['window_s']:.0f} s window, the longest {ga['gen2_max_ms']:.1f} ms "
            f"({ga['gen2_total_ms']:.0f} ms in all); the baseline ran {gb['gen2_count']} "
            f"(longest {gb['gen2_max_ms']:.1f} ms)."
        )
        if ga["gen2_max_ms"] > 10:
            text = (
                "**Full garbage collections stop numd's reactor.** "
                + text
                + " A collection runs on the reactor thread; every request that arrives meanwhile waits."
            )
        out.append(text)
    for n in sorted({r["clients"] for r in runs if r["server_kind"] == "numd, log on tmpfs"}):
        pair = by_kind(runs, clients=n)
        a, t, mt = (
            pair.get("numd"),
            pair.get("numd, log on tmpfs"),
            pair.get("numd --db :memory:, log on tmpfs"),
        )
        if a and t:
            pa, pt = a["latency"]["steady"].get("p99_ms"), t["latency"]["steady"].get("p99_ms")
            text = (
                f"At {n:,} clients, numd with its message log on tmpfs instead of the disk had p99 "
                f"{fmt(pt)} ms and p99.9 {fmt(t['latency']['steady'].get('p99_9_ms'))} ms, against "
                f"{fmt(pa)} ms and {fmt(a['latency']['steady'].get('p99_9_ms'))} ms with the log on disk"
            )
            if mt:
                text += (
                    f"; with the store off as well, p99 {fmt(mt['latency']['steady'].get('p99_ms'))} ms and "
                    f"p99.9 {fmt(mt['latency']['steady'].get('p99_9_ms'))} ms"
                )
            text += "."
            if pa and pt and pa > 3 * pt:
                text = (
                    "**The message log's writes to disk make the tail latency.** "
                    + text
                    + " The log is written by the reactor thread; a `write()` that the kernel holds "
                    "(dirty-page throttling on a disk shared with other work) stalls every client."
                )
            out.append(text)
    for n in sorted({r["clients"] for r in runs if r["server_kind"] == "numd +arrays"}):
        pair = by_kind(runs, clients=n)
        ma, mb, pa, pb = (
            pair.get(k) for k in ("numd +arrays", "baseline +arrays", "numd", "baseline")
        )
        if ma and mb and pa and pb:
            out.append(
                f"**Arrays weigh far more than their share.** At {n:,} clients, making "
                f"{results['settings'].get('mixed_array_share')} of the requests arrays moves p99 from "
                f"{fmt(pa['latency']['steady'].get('p99_ms'))} to {fmt(ma['latency']['steady'].get('p99_ms'))} ms "
                f"and CPU from {fmt(100 * (cpu(pa) or 0), 1)} to {fmt(100 * (cpu(ma) or 0), 1)} % for numd, and "
                f"p99 from {fmt(pb['latency']['steady'].get('p99_ms'))} to "
                f"{fmt(mb['latency']['steady'].get('p99_ms'))} ms, CPU from {fmt(100 * (cpu(pb) or 0), 1)} to "
                f"{fmt(100 * (cpu(mb) or 0), 1)} % for the baseline: once the list passes a few thousand "
                f"values every array is answered with a reply of up to the cap "
                f"({max(ma['max_reply_bytes'], mb['max_reply_bytes']):,} bytes seen), formatted on the reactor."
            )
    floods = results.get("flood") or []
    b64 = next((r for r in floods if r["server_kind"] == "baseline" and r["window"] == 64), None)
    n64 = next(
        (r for r in floods if r["server_kind"] == "numd" and r["window"] == 64 and r["log_on"]),
        None,
    )
    if b64 and n64:
        out.append(
            f"**Pipelined, numd answers {n64['replies_per_s'] / b64['replies_per_s']:.2f}x the baseline's "
            f"requests per second** ({fmt(n64['replies_per_s'], 0)} against {fmt(b64['replies_per_s'], 0)}, "
            "both near one core): it splits each read once, handles a read of requests in one pass and "
            "writes once per read, where `LineReceiver` copies its buffer and writes for every token."
        )
    for n in (10000, 19000):
        pair = by_kind(runs, clients=n)
        a, b = pair.get("numd"), pair.get("baseline")
        if a and b:
            out.append(
                f"At {n:,} clients the connects took {fmt(b['ramp_s'])} s to the baseline (listen backlog "
                f"50; slowest connect {fmt(b['latency']['connect'].get('max_ms'))} ms, a dropped SYN is "
                f"retried after 1 s) and {fmt(a['ramp_s'])} s to numd (slowest "
                f"{fmt(a['latency']['connect'].get('max_ms'))} ms), with the generator ramping at "
                f"{results['settings']['ramp_per_s']:,.0f} connects/s."
            )
    arrays = results.get("arrays") or {}
    if "numd" in arrays and "baseline" in arrays:
        a, b = arrays["numd"], arrays["baseline"]
        out.append(
            f"An array with the list at {a['fill']['values']:,} values costs numd "
            f"{a['cpu_ms_per_array']:.2f} ms of CPU against the baseline's {b['cpu_ms_per_array']:.2f} ms "
            f"(both answer with up to {a['max_reply_bytes']:,} bytes of the list)."
        )
    return out


# -- the page ------------------------------------------------------------------------------


def render(results: dict[str, Any], has_plot: bool, source: str) -> str:
    m = results["machine"]
    st = results["settings"]
    out: list[str] = []
    add = out.append
    add("# numd performance\n")
    add(
        "<!-- Written by bench/report.py from "
        + source
        + "; do not edit by hand: run `bash bench/run`. -->\n"
    )
    if results.get("quick"):
        add(
            "> **Quick run** (`bash bench/run --quick`): small numbers of clients and short runs. "
            "These figures do not decide any target; the full run does.\n"
        )
    add(
        "numd is measured side by side with a plain Twisted `LineReceiver` server (`bench/baseline_server.py`) "
        "in the same session, so every figure also has a ratio to that baseline. Every number below comes "
        "from one run of `bash bench/run`; nothing is typed in by hand.\n"
    )
    add("## Reproduce\n")
    add(
        "```sh\nbash bench/run            # everything, about 45 minutes on 2 cores (the Redis part 20); writes this page\n"
        "bash bench/run --quick    # small N and short runs, a few minutes (writes a quick page)\n"
        "bash bench/run --profile  # also py-spy numd and the baseline during the W=64 flood\n"
        "bash bench/run --only schedule,flood   # a subset: startup,schedule,flood,arrays,http,redis\n```\n"
    )
    add(
        "The script builds `bench/loadgen` from `bench/loadgen.c` with gcc, makes `bench/.venv` (numd installed "
        "from a snapshot of the work tree, matplotlib, py-spy), installs `wrk` from Debian's packages when it "
        "can, runs `bench/bench.py` (raw results in `bench/results/`) and then `bench/report.py`, which writes "
        "this page and `docs/performance.png`.\n"
    )
    add("## Machine\n")
    add(
        table(
            ["what", "value"],
            [
                ["date", m["date_utc"]],
                ["CPU", f"{m['nproc']} x {m['cpu_model']}"],
                ["kernel", m["kernel"]],
                [
                    "Python / Twisted / Klein / sortedcontainers",
                    f"{m['python']} / {m['twisted']} / {m['klein']} / {m['sortedcontainers']}",
                ],
                ["compiler", m["gcc"]],
                ["open files (soft, hard)", f"{m['nofile'][0]}, {m['nofile'][1]}"],
                ["net.core.somaxconn", m["somaxconn"]],
                ["load average at start", " ".join(m["loadavg_at_start"])],
                ["repository HEAD at the last pass", m["numd_commit"]],
                ["whole bench", f"{results.get('bench_seconds', 0) / 60:.1f} min"],
            ]
            + (
                [
                    [
                        "passes",
                        f"first {results['machine_first_run']['date_utc']} (work tree at "
                        f"{results['machine_first_run']['numd_commit']}, numd installed into bench/.venv from it by "
                        f"`bash bench/run`); later passes re-ran parts with `bench/bench.py --merge`, which does not "
                        f"reinstall numd, the last at {m['date_utc']}",
                    ]
                ]
                if results.get("machine_first_run")
                else []
            )
            + (
                [["numd installed in bench/.venv from", m["numd_installed"]]]
                if m.get("numd_installed")
                else []
            ),
        )
        + "\n"
    )
    add(
        "The machine is **shared and noisy**: 2 cores, with other engineers' test suites running at the "
        "same time. The load generator, the server under test and those tests compete for the two cores, so "
        "tail latencies (p99.9, max, the longest gap) and throughput move between runs; compare numd with the "
        "baseline measured minutes apart in the same session rather than with absolute numbers.\n"
    )
    add("## Targets (issue 7)\n")
    add(
        table(["target", "numd", "baseline", "numd / baseline", "verdict"], targets(results)) + "\n"
    )
    found = findings(results)
    if found:
        add("## Findings\n")
        add("\n".join(f"- {f}" for f in found) + "\n")
    add("## What is measured, and how\n")
    add(f"""- **Load generator** (`bench/loadgen.c`): one C process, epoll, non-blocking sockets, only to 127.0.0.1.
  Each simulated client connects (ramped at {st["ramp_per_s"]:,.0f} connects/s, at most 200 connects in
  progress at once), registers with its ID (0-10000) and waits for the start number, then sends a report
  every 500 ms and a request every 3-5 s (uniform): `even` or `odd`, or with probability p an array of 10-20
  values. The main runs use p = {st["array_share"]} (counter clients only, like the issue's measured facts);
  at the 10,000-client point one more pair of runs ("+arrays") uses p = {st.get("mixed_array_share", 0)}.
  The socket has `TCP_NODELAY` so the client's own Nagle never delays a token. It raises its open-file soft
  limit to the hard limit.
- **Latency** is measured from the *scheduled* send time of a request to the arrival of its reply (so a late
  generator or a full socket counts against the server). The "steady" figures count requests scheduled after
  the last client registered; the window is that long. Replies are matched to requests in order per
  connection; a reply of the wrong kind or parity counts as an error.
- **Drops**: connections the server closed; **unanswered**: requests still without reply 3 s after sending
  stopped; **connect failures**: connects refused or not done within 10 s.
- **Clients beyond 10,001**: IDs are 0-10000, so in the 19,000-client run clients 10,001 and up do not register:
  they send only their `even`/`odd` requests (no reports). numd answers those `error:not-registered` (counted
  under errors, expected), the baseline answers a number. numd's `--max-clients` is set to the run's size + 100.
- **Flood**: 100 connections register, then each keeps W requests (`even`/`odd`) in flight: every read of k
  replies is answered with one write of k new requests. Throughput is replies per second over the window.
- **Cores**: every server under test runs pinned to core 0, all its threads (numd's reactor and its message
  log and store writer threads alike, and the baseline's one thread), so no figure borrows the load
  generator's core; loadgen, wrk and this driver run on core 1.
- **Server CPU and memory**: a sampler reads utime+stime from `/proc/PID/stat` and VmRSS from
  `/proc/PID/status` every 0.25 s; CPU is averaged over the steady window (100 % = one core). Memory per
  connection is (peak RSS during the run - RSS before the clients connected) / clients.
- **Reactor stall** (from outside): for every reply, the time since the later of (the last byte received from
  the server on *any* connection, the moment this request was sent). With thousands of clients something is
  always due, so this is the longest time the server produced nothing while it had work: an upper bound on
  its longest reactor stall (it also includes the loadgen or the server being descheduled on the shared cores).
  From inside, `bench/gcprobe/sitecustomize.py` (on both servers' `PYTHONPATH`) times every reactor callback
  (one socket's read or write event with all the server did for it, or one pass over the due timed calls and
  thread results) with two `perf_counter` calls, and every garbage collection with `gc.callbacks` (a full,
  generation 2, collection stops the reactor for its whole length). The stall target uses the longest
  callback over the steady windows of the schedule, flood and array runs; being wall time, it also counts
  the server being descheduled, so it is an upper bound.
- **Arrays**: the list is filled to {st["list_values"]:,} values with arrays of 1,000 values (4 in flight), then
  {st["probes"]:,} arrays of 10-20 values are sent one at a time; daemon CPU per array = server CPU time over
  the probes / probes (it includes the reply, which holds up to the reply cap of the list).
- **HTTP**: `wrk -t1 -c16` for {st["http_seconds"]} s each on a small GET (`/api/v1/values?offset=0&limit=1`),
  a page of 1,000 values from the middle of the filled list, and a POST of `[5]`; the baseline serves the same
  routes from a minimal Klein app. Then the same page is fetched 20 times a second (paced, latency from the
  scheduled time) while {st["http_clients"]:,} counter clients run.
- **Start-up**: seconds from starting the process to the counter port accepting, worst of 3; with numd's store,
  also after filling it with {st["list_values"]:,} values through the counter protocol and restarting.
- numd runs with its defaults (message log on, SQLite store `--db` on, one fresh file per run) except the
  ports, the log path and `--max-clients`; the baseline has no log, no store, no limits and Twisted's defaults.
""")
    text, _ = schedule_section(results)
    if text:
        add("## Counter clients on the real schedule\n")
        add(text + "\n")
        add(
            "Latency columns are the steady window's requests and arrays (ms); CPU is the server's average "
            'over that window. "gen lag" is how late the load generator itself sent (p99, steady window): '
            'when it is large the machine, not the server, was short of CPU. "numd --db :memory:" is '
            'numd with its SQLite store off, to show what the store costs; "+arrays" runs make a share '
            'of the requests arrays. "gen2 GCs" counts the server\'s full garbage collections in the '
            "steady window and gives the longest (`bench/gcprobe`, a `gc.callbacks` hook loaded into both "
            "servers): each stops the reactor for that long. With several runs of a point, the run with the median p99 stands for "
            "it in the targets and the plot.\n"
        )
        if has_plot:
            add("![p99 latency and CPU against the number of clients](performance.png)\n")
    frows = flood_rows(results)
    if frows:
        add("## Flood: peak throughput\n")
        add(
            table(
                [
                    "W",
                    "connections",
                    "server",
                    "log",
                    "requests/s",
                    "vs baseline",
                    "p50 ms",
                    "p99 ms",
                    "CPU %",
                    "loadgen CPU %",
                    "errors",
                    "unanswered",
                ],
                frows,
            )
            + "\n"
        )
        if not results["numd_features"].get("log_off_switch"):
            add(
                'numd has no switch to turn its message log off; "log off" is the log written to tmpfs '
                "(`/dev/shm`) with rotation out of the way, which removes the disk but not the formatting.\n"
            )
        add(
            "The loadgen CPU column shows the generator is not the bottleneck: it drives the baseline faster "
            "than numd with a fraction of a core.\n"
        )
    fairness = results.get("fairness") or {}
    if fairness:
        add("## Fairness under an array flood\n")
        add(
            "One connection sends 64 KiB of `[1] ` at a time (16,384 array requests per send; at most 64 "
            "sends) against a list of 10,000 wide values, so every reply is at the 64 KiB cap "
            "(`bench/flood_arrays.py`), reading its replies or never reading them. Meanwhile another "
            "client sends `even` 100 times a second and times each answer; numd's RSS is sampled after "
            "each. Issue 13's targets: p99 under 50 ms, RSS growth under 100 MB.\n"
        )
        rows = []
        for mode, f in fairness.items():
            rows.append(
                [
                    "reads its replies" if mode == "read" else "never reads",
                    fmt(f["requests"]),
                    fmt(f["p50_ms"]),
                    fmt(f["p99_ms"]),
                    fmt(f["max_ms"]),
                    fmt(f["rss_growth_kb"] / 1024, 1),
                    fmt(f["flood_chunks_sent"]),
                    fmt(f["flood_bytes_received"] / 2**20, 1),
                    fmt(f["server_cpu_s"] / f["seconds"] * 100, 0) + " %",
                    verdict(f["p99_ms"] < 50 and f["rss_growth_kb"] < 100 * 1024),
                ]
            )
        add(
            table(
                [
                    "flooder",
                    "probes",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "RSS growth MiB",
                    "64 KiB sends taken",
                    "replies read MiB",
                    "numd CPU",
                    "target",
                ],
                rows,
            )
            + "\n"
        )
    arrays = results.get("arrays") or {}
    if arrays:
        add("## Arrays on a large list\n")
        rows = []
        for kind, a in arrays.items():
            lat = a["latency"]["arrays"]
            rows.append(
                [
                    kind,
                    fmt(a["fill"]["values"]),
                    fmt(a["fill"]["seconds"]),
                    fmt(a["replies"]),
                    fmt(a["cpu_ms_per_array"], 3),
                    fmt(lat.get("p50_ms")),
                    fmt(lat.get("p99_ms")),
                    fmt(lat.get("max_ms")),
                    fmt(a["max_reply_bytes"]),
                ]
            )
        add(
            table(
                [
                    "server",
                    "list size",
                    "fill s",
                    "arrays",
                    "CPU ms/array",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "largest reply bytes",
                ],
                rows,
            )
            + "\n"
        )
    http = results.get("http") or {}
    if http:
        add("## HTTP API\n")
        rows = []
        for kind, h in http.items():
            for name in ("small_get", "page_1000", "post"):
                w = h.get(name)
                if not w:
                    continue
                rows.append(
                    [
                        kind,
                        name,
                        fmt(w.get("requests_per_s"), 0),
                        fmt(w.get("p50_ms")),
                        fmt(w.get("p99_ms")),
                        fmt(w.get("non_2xx", 0)),
                        str(w.get("socket_errors") or "-"),
                        fmt(100 * (w["server"].get("cpu_cores") or 0), 1),
                    ]
                )
            pu = h.get("page_under_load")
            if pu:
                cl = pu.get("counter_load", {})
                rows.append(
                    [
                        kind,
                        f"page, paced 20/s, {fmt(cl.get('connected'))} counter clients",
                        "-",
                        fmt(pu.get("p50_ms")),
                        fmt(pu.get("p99_ms")),
                        fmt(pu.get("errors")),
                        f"counter p99 {fmt(pu.get('counter_p99_ms'))} ms, drops {cl.get('drops')}",
                        "-",
                    ]
                )
        add(
            table(
                [
                    "server",
                    "request",
                    "requests/s",
                    "p50 ms",
                    "p99 ms",
                    "non-2xx",
                    "notes",
                    "CPU %",
                ],
                rows,
            )
            + "\n"
        )
        wrk_cmd = next(
            (h[n]["argv"] for h in http.values() for n in ("small_get",) if h.get(n)), None
        )
        if wrk_cmd:
            add(f"wrk command (small GET): `{wrk_cmd.split('http')[0].strip()} URL`.\n")
    start = results.get("startup") or {}
    if start:
        add("## Start-up\n")
        rows = [
            [k, fmt(v.get("stored_values", 0)), ", ".join(f"{t:.2f}" for t in v["runs"])]
            for k, v in start.items()
        ]
        add(table(["server", "stored values", "seconds to accepting (each start)"], rows) + "\n")
    if results.get("redis"):
        # bench/report_redis.py imports this module as `report`: the same one, not a copy.
        sys.modules.setdefault("report", sys.modules[__name__])
        import report_redis

        add(report_redis.section(results))
    micro = results.get("micro") or {}
    if micro.get("results"):
        add("## Per-message cost in process (no sockets)\n")
        add(
            "`bench/microbench.py` feeds the same reads to numd's protocol (built by its own `makeService`, "
            "store off) and to the baseline's through a `StringTransport`, so only Python work is timed: "
            "no kernel, no reactor, no other process. Best of 3, microseconds per token.\n"
        )
        labels = list(next(iter(micro["results"].values())).keys())
        rows = [
            [name]
            + [
                fmt(row.get(label), 3) if not isinstance(row.get(label), str) else row[label]
                for label in labels
            ]
            for name, row in micro["results"].items()
        ]
        add(table(["server"] + labels, rows) + "\n")
    profiles = [
        (k, v["profile"]) for k, v in (results.get("profiles") or {}).items() if v.get("profile")
    ]
    if profiles:
        add("## Where the time goes (py-spy, W=64 flood)\n")
        add(
            "Separate W=64 flood runs under `py-spy record --nonblocking -r 250` (not the runs above). "
            "Without `--native`, time in C code is charged to the Python line that called it, and "
            "non-blocking sampling can misplace a sample by a line, so read these at the function level.\n"
        )
        for kind, prof in profiles:
            add(
                f"**{kind}** ({prof['samples']:,} samples), share of samples by function, self time:\n"
            )
            add(
                table(
                    ["function (file:line)", "% self"],
                    [[f"`{n}`", f"{p}"] for n, p in prof["self"][:12]],
                )
                + "\n"
            )
            add(
                table(
                    ["function (file:line)", "% inclusive"],
                    [[f"`{n}`", f"{p}"] for n, p in prof["inclusive"] if p < 95][:12],
                )
                + "\n"
            )
    if NOTES.exists() and not results.get("quick"):
        add(NOTES.read_text())
    return "\n".join(out)


def main() -> None:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "bench" / "results" / "results.json")
    results = json.loads(source.read_text())
    doc = DOC if not results.get("quick") else ROOT / "bench" / "results" / "performance-quick.md"
    png = PLOT if not results.get("quick") else ROOT / "bench" / "results" / "performance-quick.png"
    has_plot = plot(results, png)
    text = render(
        results, has_plot, str(source.relative_to(ROOT) if source.is_relative_to(ROOT) else source)
    )
    if results.get("quick"):
        text = text.replace("](performance.png)", "](performance-quick.png)")
    doc.write_text(text)
    print(f"wrote {doc.relative_to(ROOT)}" + (f" and {png.relative_to(ROOT)}" if has_plot else ""))


if __name__ == "__main__":
    main()
