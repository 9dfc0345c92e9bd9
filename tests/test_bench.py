"""A smoke run of the benchmark suite (``python -m bench``), on Redis only:
it runs end to end and writes its results, its reST table and its JSON.

The real run is ``python -m bench`` (docs/performance.rst), never part of
the test suite.
"""

import json
import subprocess
import sys
from pathlib import Path

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
