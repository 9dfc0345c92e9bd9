"""Turn one run's results into the reST include and the PNG plots that
docs/performance.rst shows. Every figure in the docs comes from here."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

BROKERS = (
    ("redis", "Redis (job store PostgreSQL)"),
    ("rabbitmq", "RabbitMQ (job store PostgreSQL)"),
    ("sqlite", "embedded SQLite default (job store SQLite)"),
)


def _get(data: dict[str, Any] | None, *keys: str) -> float | None:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return float(data) if isinstance(data, (int, float)) else None  # type: ignore[arg-type]


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or math.isnan(value):
        return "—"
    if float(value).is_integer() and abs(value) < 1e6 and digits == 0:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _ratio(ours: float | None, other: float | None) -> str:
    if ours is None or other is None or not other or math.isnan(ours) or math.isnan(other):
        return "—"
    return f"{ours / other:.2f}×"


#: (label, path into a system's results, digits, path into the others' results if another)
FIGURES: list[tuple[Any, ...]] = [
    ("enqueue p50 (ms)", ("enqueue", "p50")),
    ("enqueue p99 (ms)", ("enqueue", "p99")),
    ("enqueue calls/s", ("enqueue", "calls_per_s")),
    ("drain: jobs queued", ("drain", "jobs"), 0),
    ("drain: jobs run", ("drain", "done"), 0),
    ("enqueue in a transaction p50 (ms)", ("enqueue_tx", "p50")),
    ("enqueue in a transaction p99 (ms)", ("enqueue_tx", "p99")),
    ("run-now latency p50 (ms)", ("latency", "p50")),
    ("run-now latency p90 (ms)", ("latency", "p90")),
    ("run-now latency p99 (ms)", ("latency", "p99")),
    ("run-now latency max (ms)", ("latency", "max")),
    # Beside the others' run-now latency: none of them stores a job before its ack.
    ("run-now durable=False p50 (ms)", ("latency_fast", "p50"), 2, ("latency", "p50")),
    ("run-now durable=False p99 (ms)", ("latency_fast", "p99"), 2, ("latency", "p99")),
    ("drain (jobs/s)", ("drain", "jobs_per_s")),
    ("worker CPU per drained job (ms)", ("drain", "cpu_ms_per_job")),
    ("date lateness p50 (ms)", ("date", "p50")),
    ("date lateness p99 (ms)", ("date", "p99")),
    ("date lateness max (ms)", ("date", "max")),
    ("date jobs missing", ("date", "missing"), 0),
]


def broker_rows(results: dict[str, Any], broker: str) -> list[list[str]]:
    systems = results["systems"]
    ours, raw, celery = (systems.get(f"{k}-{broker}") for k in ("ours", "raw", "celery"))
    rows = []
    for label, path, *rest in FIGURES:
        d = rest[0] if rest else 2
        others = rest[1] if len(rest) > 1 else path
        a, b, c = _get(ours, *path), _get(raw, *others), _get(celery, *others)
        rows.append([label, _fmt(a, d), _fmt(b, d), _fmt(c, d), _ratio(a, b), _ratio(a, c)])
    return rows


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, what this run measured, met?) for every target of issue 5."""
    s = results["systems"]
    ref = results["reference"]
    out: list[tuple[str, str, bool | None]] = []

    def add(name: str, value: float | None, limit: float | None, text: str, le: bool = True) -> None:
        if value is None or limit is None or math.isnan(value) or math.isnan(limit):
            out.append((name, "not measured in this run", None))
            return
        out.append((name, text, value <= limit if le else value >= limit))

    enq, lpush = _get(s.get("ours-redis"), "enqueue", "p50"), _get(s.get("raw-redis"), "enqueue", "p50")
    add(
        "Redis enqueue p50 ≤ 1.2× raw LPUSH",
        enq,
        None if lpush is None else 1.2 * lpush,
        f"{_fmt(enq, 3)} ms vs LPUSH {_fmt(lpush, 3)} ms ({_ratio(enq, lpush)})",
    )
    lat, raw_lat = _get(s.get("ours-redis"), "latency", "p50"), _get(s.get("raw-redis"), "latency", "p50")
    add(
        "Redis run-now p50 ≤ 2× the raw loop's",
        lat,
        None if raw_lat is None else 2 * raw_lat,
        f"{_fmt(lat)} ms vs raw {_fmt(raw_lat)} ms ({_ratio(lat, raw_lat)})",
    )
    huey = ref["huey run-now p50 (ms)"]
    add("Redis run-now p50 below huey's (issue's figure)", lat, huey, f"{_fmt(lat)} ms vs huey {huey} ms")
    fast = _get(s.get("ours-redis"), "latency_fast", "p50")
    add(
        "Redis run-now p50, durable=False, below huey's (issue's figure)",
        fast,
        huey,
        f"{_fmt(fast)} ms vs huey {huey} ms (durable: {_fmt(lat)} ms)",
    )
    drain, raw_drain = _get(s.get("ours-redis"), "drain", "jobs_per_s"), _get(s.get("raw-redis"), "drain", "jobs_per_s")
    add(
        "Redis drain ≥ the raw loop's",
        drain,
        raw_drain,
        f"{_fmt(drain)} vs raw {_fmt(raw_drain)} jobs/s ({_ratio(drain, raw_drain)})",
        le=False,
    )
    dramatiq = ref["Dramatiq drain (jobs/s)"]
    add(
        "Redis drain ≥ Dramatiq's (issue's figure)",
        drain,
        dramatiq,
        f"{_fmt(drain)} vs {dramatiq:,.0f} jobs/s",
        le=False,
    )
    d50, c50 = _get(s.get("ours-redis"), "date", "p50"), _get(s.get("celery-redis"), "date", "p50")
    add("Redis date lateness p50 ≤ Celery's", d50, c50, f"{_fmt(d50)} ms vs Celery {_fmt(c50)} ms")
    d99 = _get(s.get("ours-redis"), "date", "p99")
    add("Redis date lateness p99 ≤ 10 ms", d99, 10.0, f"{_fmt(d99)} ms")
    scale = results.get("scale") or []
    if len(scale) >= 2:
        lo, hi = scale[0], scale[-1]
        n = f"{hi['n']:,}"
        a_lo, a_hi = lo["store_ms_per_job"], hi["store_ms_per_job"]
        add(
            f"add cost at {n} pending ≤ 2× at {lo['n']:,}",
            a_hi,
            2 * a_lo,
            f"daemon store {_fmt(a_hi)} vs {_fmt(a_lo)} ms/job ({_ratio(a_hi, a_lo)})",
        )
        l_lo, l_hi = _get(lo, "date", "p50"), _get(hi, "date", "p50")
        add(
            f"lateness p50 at {n} pending ≤ 2× at {lo['n']:,}",
            l_hi,
            None if l_lo is None else 2 * l_lo,
            f"{_fmt(l_hi)} vs {_fmt(l_lo)} ms ({_ratio(l_hi, l_lo)})",
        )
        add(f"daemon RSS at {n} pending < 300 MB", hi["rss_mb"], 300.0, f"{_fmt(hi['rss_mb'])} MB")
        add(f"daemon start-up at {n} pending < 5 s", hi["startup_s"], 5.0, f"{_fmt(hi['startup_s'])} s")
        if hi["n"] < 1_000_000:
            out.append(
                (
                    "(the scale targets name 10^6 pending jobs)",
                    f"this run went to {n}: run with --scale-max 1000000",
                    None,
                )
            )
    sq = _get(s.get("ours-sqlite"), "latency", "p50")
    add("SQLite default run-now p50 ≤ 50 ms", sq, 50.0, f"{_fmt(sq)} ms")
    return out


# -- scale-out ------------------------------------------------------------------------

#: The series of the scale-out part (:data:`bench.scaleout.SERIES`), here
#: so that the report needs none of the systems' libraries.
SCALE_OUT_SERIES = {
    "ours-daemons": "pyramid_scheduler, N daemons",
    "ours-processes": "pyramid_scheduler --processes N",
    "celery": "Celery -P prefork -c N",
    "dramatiq": "Dramatiq --processes N --threads 8",
    "huey": "huey -k process -w N",
}


def _run(results: dict[str, Any], series: str, n: int) -> dict[str, Any] | None:
    runs = (results.get("scale_out") or {}).get("runs", {})
    if series == "ours-processes" and n == 1:
        series = "ours-daemons"  # one daemon is both
    found: dict[str, Any] | None = runs.get(f"{series}-{n}")
    return found


def scale_out_targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, what this run measured, met?) for the scale-out targets of issue 19."""
    out: list[tuple[str, str, bool | None]] = []
    counts = (results.get("scale_out") or {}).get("counts", [])

    def ratio_target(name: str, a: float | None, b: float | None, at_least: float, text: str, more: str = "") -> None:
        if a is None or b is None or math.isnan(a) or math.isnan(b) or not b:
            out.append((name, "not measured in this run", None))
        else:
            out.append((name, f"{text} ({_ratio(a, b)}){'; ' + more if more else ''}", a / b >= at_least))

    p2 = _get(_run(results, "ours-processes", 2), "noop", "jobs_per_s")
    one = _get(_run(results, "ours-daemons", 1), "noop", "jobs_per_s")
    dq2 = _get(_run(results, "dramatiq", 2), "noop", "jobs_per_s")
    f2 = _get(_run(results, "ours-processes", 2), "noop_fast", "jobs_per_s")
    ratio_target(
        "no-op drain, --processes 2 ≥ Dramatiq's with 2 processes",
        p2,
        dq2,
        1.0,
        f"{_fmt(p2)} vs {_fmt(dq2)} jobs/s",
        f"durable=False {_fmt(f2)} ({_ratio(f2, dq2)})",
    )
    ratio_target("no-op drain, --processes 2 ≥ 1.6× one daemon", p2, one, 1.6, f"{_fmt(p2)} vs {_fmt(one)} jobs/s")
    c2 = _get(_run(results, "ours-processes", 2), "cpu", "jobs_per_s")
    c1 = _get(_run(results, "ours-daemons", 1), "cpu", "jobs_per_s")
    d2 = _get(_run(results, "ours-daemons", 2), "cpu", "jobs_per_s")
    ratio_target(
        "CPU-bound, --processes 2 ≥ 1.8× one daemon",
        c2,
        c1,
        1.8,
        f"{_fmt(c2)} vs {_fmt(c1)} jobs/s",
        f"2 separate daemons {_fmt(d2)} ({_ratio(d2, c1)})",
    )
    for name, lane, other, label in (
        ("run-now p50, durable=False, ≤ huey's", "latency_fast", "huey", "huey"),
        ("run-now p50, record first, ≤ Celery's (prefork)", "latency", "celery", "Celery"),
    ):
        pairs: list[tuple[int, float, float]] = []
        for n in counts:
            a, b = _get(_run(results, "ours-daemons", n), lane, "p50"), _get(_run(results, other, n), "latency", "p50")
            if a is not None and b is not None:
                pairs.append((n, a, b))
        if not pairs:
            out.append((f"{name}, same number of processes", "not measured in this run", None))
            continue
        text = "; ".join(f"{n}: {_fmt(a)} vs {label} {_fmt(b)} ms ({_ratio(a, b)})" for n, a, b in pairs)
        out.append((f"{name}, same number of processes", text, all(a <= b for _n, a, b in pairs)))
    return out


def scale_out_rst(results: dict[str, Any]) -> str:
    """docs/_bench/scaleout.rst: the scale-out part's tables and targets."""
    lines = [".. This file is generated by ``python -m bench``: do not edit it by hand.", ""]
    so = results.get("scale_out")
    if not so or not so.get("runs"):
        return "\n".join([*lines, "The scale-out part was not measured in this run.", ""])
    counts = so["counts"]
    sizes = so["sizes"]
    v = {**results["versions"], **so.get("versions", {})}
    lines += [
        f"Run of {so['date']} with ``{so['command']}`` ({so['elapsed_s']:.0f} s for this part), load "
        f"average {so['load_start']:.1f} at its start on {v.get('machine', '?').split(', load')[0]}; "
        + ", ".join(
            f"{k} {v[k]}"
            for k in ("pyramid_scheduler", "celery", "dramatiq", "huey", "kombu", "redis-server", "postgresql")
            if k in v
        )
        + ".",
        "",
        f"Per setup: {sizes['drain']:,} no-op jobs and {sizes['cpu']:,} CPU-bound jobs ({so['spin_loops']:,} "
        f"turns of a pure-Python loop, calibrated to 20 ms of CPU) per drain, {sizes['latency']:,} run-now "
        "jobs at 200/s per latency line. The columns × 1 give the rate over the same system's with one "
        "process (pyramid_scheduler: one daemon).",
        "",
    ]
    throughput, latency, cores = [], [], []
    for series, label in SCALE_OUT_SERIES.items():
        for n in counts:
            r = _run(results, series, n)
            if r is None or (series == "ours-processes" and n == 1):
                continue
            base = _run(results, series, 1)
            noop, cpu = _get(r, "noop", "jobs_per_s"), _get(r, "cpu", "jobs_per_s")
            throughput.append(
                [
                    label,
                    str(n),
                    _fmt(noop),
                    _ratio(noop, _get(base, "noop", "jobs_per_s")),
                    _fmt(_get(r, "noop_fast", "jobs_per_s")),
                    _fmt(_get(r, "noop", "cpu_ms_per_job")),
                    _fmt(_get(r, "noop_fast", "cpu_ms_per_job")),
                    _fmt(cpu, 1),
                    _ratio(cpu, _get(base, "cpu", "jobs_per_s")),
                    _fmt(_get(r, "cpu", "cpu_ms_per_job"), 1),
                ]
            )
            latency.append(
                [label, str(n)]
                + [_fmt(_get(r, lane, q)) for lane in ("latency", "latency_fast") for q in ("p50", "p99")]
            )
            cores.append(
                [label, str(n), _fmt(r.get("load"), 1)]
                + [_fmt(_get(r, part, "cores", who)) for part in ("noop", "cpu") for who in ("workers", "machine")]
                + [" / ".join(str(k) for k in r[part].get("per_process", [])) for part in ("noop", "cpu")]
            )
    lines += _table(
        [
            "setup",
            "N",
            "no-op drain (jobs/s)",
            "× 1",
            "no-op drain, durable=False (jobs/s)",
            "workers' CPU per no-op job (ms)",
            "the same, durable=False (ms)",
            "CPU-bound drain (jobs/s)",
            "× 1",
            "workers' CPU per CPU-bound job (ms)",
        ],
        throughput,
        "24 5 10 7 10 10 10 10 7 10",
    )
    lines += _table(
        ["setup", "N", "run-now p50 (ms)", "run-now p99 (ms)", "durable=False p50 (ms)", "durable=False p99 (ms)"],
        latency,
        "30 6 16 16 16 16",
    )
    lines += [
        "Where the cores went: the load average as the setup started; the cores the workers and the "
        "whole machine (the workers, PostgreSQL, Redis, the bench, anything else) kept busy during "
        "each drain, on average; the jobs each process ran, busiest first.",
        "",
    ]
    lines += _table(
        [
            "setup",
            "N",
            "load",
            "no-op: workers' cores",
            "no-op: machine's cores",
            "CPU-bound: workers' cores",
            "CPU-bound: machine's cores",
            "no-op jobs per process",
            "CPU-bound jobs per process",
        ],
        cores,
        "24 5 7 9 9 9 9 14 14",
    )
    incomplete = [f"{key}: {r['incomplete']}" for key, r in so["runs"].items() if r.get("incomplete")]
    if incomplete:
        lines += ["Incomplete: " + "; ".join(incomplete) + ".", ""]
    if so.get("errors"):
        lines += ["Failed: " + "; ".join(f"{k} ({why})" for k, why in so["errors"].items()) + ".", ""]
    lines += [".. rubric:: Scale-out targets of issue 19 in this run", ""]
    rows = [
        [name, text, "—" if met is None else ("PASS" if met else "**MISS**")]
        for name, text, met in scale_out_targets(results)
    ]
    lines += _table(["target", "measured", ""], rows, "35 55 10")
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]], widths: str = "") -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append(f"   :widths: {widths}")
    lines.append("")
    for row in [header, *rows]:
        lines.append(f"   * - {row[0]}")
        lines += [f"     - {cell}" for cell in row[1:]]
    lines.append("")
    return lines


def rst(results: dict[str, Any]) -> str:
    v = results["versions"]
    lines = [
        ".. This file is generated by ``python -m bench``: do not edit it by hand.",
        "",
        f"Run of {results['date']} with ``{results['command']}`` "
        f"({results['elapsed_s']:.0f} s), sizes: "
        + ", ".join(f"{k} = {val:,}" if isinstance(val, int) else f"{k} = {val}" for k, val in results["sizes"].items())
        + ".",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
    ]
    for later in results.get("later", []):
        lines += [f"Parts measured again on {later['date']} with ``{later['command']}`` ({later['machine']}).", ""]
    if results.get("errors"):
        lines += [
            "Failed (see the run's output): " + "; ".join(f"{k} ({why})" for k, why in results["errors"].items()) + ".",
            "",
        ]
    if results.get("skipped"):
        lines += ["Skipped: " + "; ".join(f"{k} ({why})" for k, why in results["skipped"].items()) + ".", ""]
    for key, title in BROKERS:
        if not any(name.endswith("-" + key) for name in results["systems"]):
            continue
        raw = results["systems"].get(f"raw-{key}", {}).get("name", "raw")
        lines += [f".. rubric:: {title}", ""]
        lines += _table(
            ["figure", "pyramid_scheduler", f"limit: {raw}", "Celery", "ours / limit", "ours / Celery"],
            broker_rows(results, key),
            "30 14 14 14 14 14",
        )
        incomplete = [
            f"{name}: {r['incomplete']}"
            for name, r in results["systems"].items()
            if name.endswith("-" + key) and r.get("incomplete")
        ]
        if incomplete:
            lines += ["Incomplete: " + "; ".join(incomplete) + ".", ""]
    fix = results.get("client_fix")
    if fix:
        lines += [".. rubric:: Redis enqueue before and after sharing the channel's redis client", ""]
        names = {"before": "before: Kombu's new client per operation", "after": "after: one client per pool"}
        rows = [
            [names[label], _fmt(fix[label]["p50"], 3), _fmt(fix[label]["p99"], 3), _fmt(fix[label]["calls_per_s"])]
            for label in ("before", "after")
        ]
        lpush = _get(results["systems"].get("raw-redis"), "enqueue", "p50")
        if lpush is not None:
            rows = [
                row + [_ratio(fix[label]["p50"], lpush)] for row, label in zip(rows, ("before", "after"), strict=True)
            ]
        header = ["add_async_job on Redis", "p50 (ms)", "p99 (ms)", "calls/s"]
        lines += _table(header + (["p50 / raw LPUSH p50"] if lpush is not None else []), rows)
    if results.get("scale"):
        lines += [".. rubric:: Scale: pending date jobs in the PostgreSQL job store (Redis broker)", ""]
        rows = [
            [
                f"{r['n']:,}",
                _fmt(r["load_s"]),
                _fmt(r["startup_s"]),
                _fmt(r["add"]["p50"], 3),
                _fmt(r["store_ms_per_job"]),
                _fmt(r["date"]["p50"]),
                _fmt(r["date"]["p99"]),
                _fmt(r["date"]["max"]),
                _fmt(r["date"]["missing"], 0),
                _fmt(r["rss_mb"]),
            ]
            for r in results["scale"]
        ]
        lines += _table(
            [
                "pending jobs",
                "bulk load (s)",
                "start-up (s)",
                "add_date_job p50 (ms)",
                "daemon store (ms/job)",
                "lateness p50 (ms)",
                "p99 (ms)",
                "max (ms)",
                "missing",
                "daemon RSS (MB)",
            ],
            rows,
        )
    from bench import intake

    lines += intake.rst(results)
    lines += [".. rubric:: Targets of issue 5 in this run", ""]
    rows = [
        [name, text, "—" if met is None else ("met" if met else "**not met**")] for name, text, met in targets(results)
    ]
    lines += _table(["target", "measured", ""], rows, "40 45 15")
    return "\n".join(lines) + "\n"


def text_table(results: dict[str, Any]) -> str:
    out = []
    for key, title in BROKERS:
        if not any(name.endswith("-" + key) for name in results["systems"]):
            continue
        out.append(f"\n{title}")
        out.append(f"{'figure':36}{'ours':>12}{'limit':>12}{'Celery':>12}{'ours/limit':>12}{'ours/Celery':>12}")
        for row in broker_rows(results, key):
            out.append(f"{row[0]:36}" + "".join(f"{cell:>12}" for cell in row[1:]))
    out.append("\nTargets")
    from bench import intake

    for name, text, met in targets(results) + intake.targets(results):
        out.append(f"  [{'?' if met is None else ('ok' if met else 'NO')}] {name}: {text}")
    so = results.get("scale_out")
    if so and so.get("runs"):
        out.append("\nScale-out (Redis, PostgreSQL job store)")
        out.append(f"{'setup':36}{'N':>3}{'no-op/s':>10}{'cpu/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'fast p50':>10}")
        for r in so["runs"].values():
            out.append(
                f"{SCALE_OUT_SERIES[r['series']]:36}{r['processes']:>3}{_fmt(_get(r, 'noop', 'jobs_per_s')):>10}"
                f"{_fmt(_get(r, 'cpu', 'jobs_per_s'), 1):>9}{_fmt(_get(r, 'latency', 'p50')):>9}"
                f"{_fmt(_get(r, 'latency', 'p99')):>9}{_fmt(_get(r, 'latency_fast', 'p50')):>10}"
            )
        out.append("\nScale-out targets")
        for name, text, met in scale_out_targets(results):
            out.append(f"  [{'?' if met is None else ('PASS' if met else 'MISS')}] {name}: {text}")
    return "\n".join(out)


def write(results: dict[str, Any], out_dir: Path, plots: bool = True) -> None:
    from bench.progress import rst as progress_rst

    (out_dir / "results.rst").write_text(rst(results), encoding="utf-8")
    (out_dir / "scaleout.rst").write_text(scale_out_rst(results), encoding="utf-8")
    (out_dir / "progress.rst").write_text(progress_rst(results), encoding="utf-8")
    if plots:
        from bench.plots import make_plots

        make_plots(results, out_dir)
