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
    return "\n".join(out)


def make_plots(results: dict[str, Any], out_dir: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots written")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = results["systems"]
    colors = {"ours": "tab:blue", "raw": "tab:gray", "celery": "tab:green"}
    for figure, field, title in (
        ("latency", "latency_ms", "run-now latency at 200 jobs/s"),
        ("date", "date_ms", "date-job lateness"),
    ):
        brokers = [
            (k, t) for k, t in BROKERS if any(f"{s}-{k}" in systems and field in systems[f"{s}-{k}"] for s in colors)
        ]
        if not brokers:
            continue
        fig, axes = plt.subplots(1, len(brokers), figsize=(4.2 * len(brokers), 3.4), squeeze=False)
        for ax, (key, label) in zip(axes[0], brokers, strict=True):
            for kind, color in colors.items():
                data = systems.get(f"{kind}-{key}", {}).get(field)
                if not data:
                    continue
                xs = [max(x, 0.01) for x in data]
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                name = "pyramid_scheduler" if kind == "ours" else systems[f"{kind}-{key}"]["name"]
                ax.step(xs, ys, where="post", color=color, label=name)
            ax.set_xscale("log")
            ax.set_xlabel("ms (log)")
            ax.set_title(label.split(" (")[0], fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="best")
        axes[0][0].set_ylabel("fraction of jobs")
        fig.suptitle(title + " (cumulative)", fontsize=11)
        fig.tight_layout()
        fig.savefig(out_dir / f"{figure}.png", dpi=90)
        plt.close(fig)

    scale = results.get("scale") or []
    if scale:
        ns = [r["n"] for r in scale]
        fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
        axes[0].plot(ns, [r["add"]["p50"] for r in scale], "o-", label="add_date_job p50")
        axes[0].plot(ns, [r["store_ms_per_job"] for r in scale], "s-", label="daemon store per job")
        axes[0].set_ylabel("ms")
        axes[0].set_title("add cost", fontsize=10)
        axes[1].plot(ns, [r["date"]["p50"] for r in scale], "o-", label="p50")
        axes[1].plot(ns, [r["date"]["p99"] for r in scale], "s-", label="p99")
        axes[1].set_ylabel("ms")
        axes[1].set_title("lateness of jobs that fire", fontsize=10)
        axes[2].plot(ns, [r["rss_mb"] for r in scale], "o-")
        axes[2].axhline(300, color="tab:red", ls="--", lw=1, label="target")
        axes[2].set_ylabel("MB")
        axes[2].set_title("daemon RSS", fontsize=10)
        axes[3].plot(ns, [r["startup_s"] for r in scale], "o-")
        axes[3].axhline(5, color="tab:red", ls="--", lw=1, label="target")
        axes[3].set_ylabel("s")
        axes[3].set_title("daemon start-up", fontsize=10)
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xlabel("pending date jobs")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
            ax.set_ylim(bottom=0)
        fig.tight_layout()
        fig.savefig(out_dir / "scale.png", dpi=90)
        plt.close(fig)


def write(results: dict[str, Any], out_dir: Path, plots: bool = True) -> None:
    (out_dir / "results.rst").write_text(rst(results), encoding="utf-8")
    if plots:
        make_plots(results, out_dir)
