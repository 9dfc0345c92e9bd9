#!/usr/bin/env python3
"""Set up and run pyramid_scheduler from a checkout, with nothing but Python 3.10+.

    python3 dev.py demo    install into .venv, then serve the demo on
                           http://127.0.0.1:6543/ with its pscheduler daemon
    python3 dev.py test    install into .venv, then run the linters, the type
                           checker, the docs build and the whole test suite

Both commands create ``.venv`` next to this file on first use and reinstall
the package there whenever ``setup.py`` or ``pyproject.toml`` changes. Extra
arguments after ``test`` go to pytest (``python3 dev.py test -k transport``).
The standard library only: this file runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = Path(os.environ.get("PYRAMID_SCHEDULER_VENV", HERE / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def say(text: str) -> None:
    print(f"[dev.py] {text}", flush=True)


def run(*argv: str | Path, **kwargs: object) -> None:
    say(" ".join(str(a) for a in argv))
    subprocess.run([str(a) for a in argv], check=True, cwd=HERE, **kwargs)  # type: ignore[call-overload]


def install(extra: str) -> None:
    """Create the virtualenv and install the package with *extra*, once per change.

    The stamp that skips the next install is written only once the install
    finished and the package imports, so an install cut short or broken is
    done again on the next run.
    """
    if sys.version_info < (3, 10):  # noqa: UP036 - this file runs on whatever python3 is
        sys.exit(f"pyramid_scheduler needs Python 3.10 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        say(f"creating the virtualenv {VENV}")
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    digest = hashlib.sha256(extra.encode())
    for name in ("setup.py", "pyproject.toml"):
        digest.update((HERE / name).read_bytes())
    stamp = VENV / f".pyramid_scheduler-{extra}.stamp"
    if stamp.exists() and stamp.read_text() == digest.hexdigest():
        return
    stamp.unlink(missing_ok=True)
    run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    # setuptools says at every editable install of a flat layout that a folder named
    # like the package may shadow it: true of any checkout, so not shown. Its other
    # warnings are (tests/test_install.py fails on any in a wheel build).
    quiet = "ignore:Editable installation:UserWarning"
    run(PYTHON, "-m", "pip", "install", "--quiet", "-e", f".[{extra}]", env={**os.environ, "PYTHONWARNINGS": quiet})
    run(PYTHON, "-c", "import pyramid_scheduler.scripts, pyramid_scheduler.demo")
    stamp.write_text(digest.hexdigest())


#: Where development.ini serves the demo.
DEMO_URL = "http://127.0.0.1:6543/"


class Stop(Exception):
    """SIGTERM or SIGHUP arrived: stop the demo as Ctrl-C does."""


def _raise_stop(signo: int, frame: object) -> None:
    raise Stop(signal.Signals(signo).name)


def demo_ready(daemon_pid: int) -> bool:
    """True once the page answers and the daemon *daemon_pid* holds every queue."""
    try:
        with urllib.request.urlopen(DEMO_URL + "daemons.json", timeout=2) as response:
            daemons = json.load(response)["daemons"]
    except (OSError, ValueError, KeyError):
        return False
    return bool(daemons) and all(
        d["active"] and str(d["owner"] or "").split(":")[1:2] == [str(daemon_pid)] for d in daemons
    )


def demo() -> int:
    """Serve the demo and run its daemon until Ctrl-C, SIGTERM or SIGHUP."""
    install("demo")
    (HERE / "var").mkdir(exist_ok=True)
    stop_on = (signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM))  # no SIGHUP on Windows
    handlers = {sig: signal.signal(sig, _raise_stop) for sig in stop_on}
    daemon = subprocess.Popen([str(BIN / "pscheduler"), "development.ini"], cwd=HERE)
    web = subprocess.Popen([str(BIN / "pserve"), "development.ini"], cwd=HERE)
    code = 0
    try:
        announced = False
        while daemon.poll() is None and web.poll() is None:
            if not announced and demo_ready(daemon.pid):
                say(f"the demo is at {DEMO_URL} (log in as demo/demo; dashboard: {DEMO_URL}scheduler; Ctrl-C stops it)")
                announced = True
            time.sleep(0.5 if announced else 0.2)
        code = 1
        say(f"a process stopped: the daemon exited with {daemon.poll()}, the web server with {web.poll()}")
    except KeyboardInterrupt:
        say("stopping")
    except Stop as stop:
        say(f"stopping ({stop})")
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for proc in (web, daemon):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (web, daemon):
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
    return code


LINTED = ["pyramid_scheduler", "tests", "bench", "dev.py", "setup.py", "docs/conf.py", "docs/examples"]


def test(pytest_args: list[str]) -> int:
    """Lint, type-check, build the docs with warnings as errors, run pytest."""
    install("testing")
    steps: list[list[str]] = [
        [str(BIN / "ruff"), "check", *LINTED],
        [str(BIN / "ruff"), "format", "--check", *LINTED],
        [str(BIN / "mypy")],
    ]
    if (HERE / "docs" / "conf.py").exists():
        steps.append(
            [
                str(PYTHON),
                "-m",
                "sphinx",
                "-W",
                "--keep-going",
                "-q",
                "-b",
                "html",
                "docs",
                str(HERE / "docs" / "_build" / "html"),
            ]
        )
    steps.append([str(PYTHON), "-m", "pytest", *pytest_args])
    failed = []
    for step in steps:
        say(" ".join(step))
        if subprocess.run(step, cwd=HERE).returncode != 0:
            failed.append(Path(step[0]).name if step[0] != str(PYTHON) else step[2])
    if failed:
        say("FAILED: " + ", ".join(failed))
        return 1
    say("all checks passed")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__.strip())
        return 2
    if argv[0] == "demo":
        return demo()
    return test(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
