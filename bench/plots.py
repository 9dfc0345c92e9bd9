"""The PNG plots docs/performance.rst shows, from one run's results
(:mod:`bench.report` writes the tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import BROKERS, SCALE_OUT_SERIES, _run


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
    scale_out_plot(results, out_dir)


def scale_out_plot(results: dict[str, Any], out_dir: Path) -> None:
    """Throughput (no-op and CPU-bound) and run-now latency against the number of processes."""
    import matplotlib.pyplot as plt

    so = results.get("scale_out")
    if not so or not so.get("runs"):
        return
    counts = so["counts"]
    styles = {
        "ours-daemons": ("tab:blue", "o-"),
        "ours-processes": ("tab:cyan", "s--"),
        "celery": ("tab:green", "^-"),
        "dramatiq": ("tab:purple", "v-"),
        "huey": ("tab:orange", "d-"),
    }
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    panels = (
        (("noop", "jobs_per_s"), "no-op drain", "jobs/s"),
        (("cpu", "jobs_per_s"), "CPU-bound (20 ms) drain", "jobs/s"),
        (("latency", "p50"), "run-now latency p50 at 200/s", "ms (log)"),
    )
    for ax, (path, title, unit) in zip(axes, panels, strict=True):
        for series, label in SCALE_OUT_SERIES.items():
            points = [(n, r[path[0]][path[1]]) for n in counts if (r := _run(results, series, n)) and path[0] in r]
            if points:
                color, style = styles[series]
                ax.plot(*zip(*points, strict=True), style, color=color, label=label)
            lane = {"noop": "noop_fast", "latency": "latency_fast"}.get(path[0])
            if series.startswith("ours") and lane:
                fast = [(n, r[lane][path[1]]) for n in counts if (r := _run(results, series, n)) and lane in r]
                if fast:
                    ax.plot(
                        *zip(*fast, strict=True), style, color=color, alpha=0.5, lw=1, label=f"{label}, durable=False"
                    )
        ax.set_xticks(counts)
        ax.set_xlabel("processes (N)")
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        if path[0] == "latency":
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
    handles, labels = axes[2].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    machine = results.get("versions", {}).get("machine", "")
    cpus = machine.split(",")[1].strip() if "," in machine else machine
    fig.suptitle(f"Scale-out on Redis (job store PostgreSQL), all on one machine of {cpus}", fontsize=11)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(out_dir / "scaleout.png", dpi=90)
    plt.close(fig)
