"""The runnable examples under docs/examples run and print what the docs say."""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def test_retrying_example(tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "retrying.py")], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "done after 3 runs; retries left: 1 result: {'currency': 'EUR', 'rate': 1.08}"
    assert [line.split()[0] for line in lines[1:]] == ["failed", "failed", "done"]
    assert "attempt 1 of 4 failed; retrying in 0.5s" in done.stderr
