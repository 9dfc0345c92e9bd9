"""A smoke run of the benchmark suite (``python -m bench``), on Redis only:
it runs end to end and writes its results, its reST table and its JSON.

The real run is ``python -m bench`` (docs/performance.rst), never part of
the test suite.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_service

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_raw_redis(tmp_path):
    require_service("redis")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "raw-redis",
            "--drain",
            "300",
            "--latency",
            "40",
            "--no-plots",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    raw = results["systems"]["raw-redis"]
    assert raw["drain"]["done"] == 300
    assert raw["latency"]["n"] == 40 and raw["latency"]["missing"] == 0
    assert raw["enqueue"]["p50"] > 0
    table = (out / "results.rst").read_text()
    assert "redis-py LPUSH/BRPOP" in table and "enqueue p50 (ms)" in table
    assert "Redis enqueue p50 ≤ 1.2× raw LPUSH" in table


@pytest.mark.integration
@pytest.mark.slow
def test_bench_quick_scale_out_ours(tmp_path):
    """The scale-out part end to end with two daemons of ours, separate and
    under ``--processes`` (the other systems need the bench extra), laid
    over an earlier run's results."""
    require_service("redis")
    require_service("postgresql")
    out = tmp_path / "out"
    out.mkdir()
    earlier = {
        "command": "python -m bench",
        "date": "2026-01-01 00:00 UTC",
        "elapsed_s": 1.0,
        "versions": {"python": "3"},
        "sizes": {"drain": 1},
        "reference": {"huey run-now p50 (ms)": 1.06, "Dramatiq drain (jobs/s)": 1700.0},
        "systems": {},
        "scale": [],
        "skipped": {},
        "errors": {},
    }
    (out / "results.json").write_text(json.dumps(earlier))
    argv = ["--quick", "--only", "scale-out", "--no-plots", "--out", str(out)]
    argv += ["--scale-out-systems", "ours", "--scale-out-counts", "2"]
    argv += ["--scale-out-drain", "60", "--scale-out-cpu", "4", "--scale-out-latency", "20"]
    proc = subprocess.run([sys.executable, "-m", "bench", *argv], cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["command"] == "python -m bench" and "--only scale-out" in results["later"][0]["command"]
    runs = results["scale_out"]["runs"]
    assert set(runs) == {"ours-daemons-2", "ours-processes-2"}, results["scale_out"]["errors"]
    for run in runs.values():
        assert run["noop"]["done"] == 60 and run["cpu"]["done"] == 4
        assert run["latency"]["missing"] == 0 and run["latency_fast"]["missing"] == 0
    assert len(runs["ours-daemons-2"]["noop"]["per_process"]) <= 2
    assert "Parts measured again" in (out / "results.rst").read_text()
    table = (out / "scaleout.rst").read_text()
    assert "pyramid_scheduler --processes N" in table and "no-op drain, --processes 2 ≥ 1.6× one daemon" in table


def test_bench_quick_intake_keeps_the_earlier_parts(tmp_path):
    """The intake part on Redis + PostgreSQL, one daemon and two, and the
    SQLite default; a run of some parts keeps the other parts of the
    previous results."""
    require_service("redis")
    require_service("postgresql")
    out = tmp_path / "out"

    def bench(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "bench", "--quick", "--no-plots", "--out", str(out), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads((out / "results.json").read_text())

    bench("--only", "raw-redis", "--drain", "100", "--latency", "20")
    results = bench("--only", "intake", "--intake", "300")
    assert results["systems"]["raw-redis"]["drain"]["done"] == 100  # kept
    assert [later["command"].split("--only ")[1][:6] for later in results["later"]] == ["intake"]
    runs = {(run["broker"], run["processes"]): run for run in results["intake"]}
    assert set(runs) == {("redis", 1), ("redis", 2), ("sqlite", 1)}
    assert all(run["stored"] == run["jobs"] and run["jobs_per_s"] > 0 for run in runs.values())
    assert sum(runs["redis", 2]["held"]) == 300
    table = (out / "results.rst").read_text()
    assert "Date-job intake" in table and "redis-py LPUSH/BRPOP" in table and "Parts measured again" in table


def test_bench_limits_smoke(tmp_path):
    """``python -m bench.limits`` on small sizes: the three ways run to the end
    (every job of each drain and latency series ran) and print their figures."""
    require_service("redis")
    require_service("postgresql")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.limits", "--drain", "60", "--latency", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    figures = json.loads(proc.stdout[proc.stdout.index("\n{") :])
    assert set(figures["ways"]) == {"none", "concurrency_key", "rate_limit"}
    for way in figures["ways"].values():
        assert way["drain"]["done"] == 60 and way["latency"]["missing"] == 0


@pytest.mark.integration
@pytest.mark.slow
def test_bench_quick_progress(tmp_path):
    """The progress part: a job calling report_progress 10,000 times and
    the same job without, through a real pscheduler on the SQLite default."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-plots", "--out", str(out), "--only", "progress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    progress = json.loads((out / "results.json").read_text())["progress"]
    assert progress["calls"] == 10_000 and progress["rounds"] == 3
    assert progress["with_ms"] > 0 and progress["without_ms"] > 0
    assert "report_progress calls" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_bench_flows_quick(tmp_path):
    """``python -m bench.flows`` end to end, small: both figures, every step timed."""
    out = tmp_path / "flows.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.flows", "--steps", "3", "--sqlite-only", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())["sqlite"]
    assert figures["plain_run_now"]["n"] == figures["chain_hand_over"]["n"] == 3
    assert figures["chain_hand_over"]["p50"] > 0
