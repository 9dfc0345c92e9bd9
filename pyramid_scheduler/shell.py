"""Shell-command jobs: :func:`run`, a job function that runs a program.

A job like any other (``add_*_job``, ``config.add_scheduled_job``) whose
function is :func:`run` and whose first argument is the command::

    scheduler.add_date_job(shell.run, date, args=["pg_dump {db}"],
                           kwargs={"format": {"db": "app"}, "timeout": 600})

Off unless ``scheduler.shell.allowed`` lists the commands that may run.
:func:`check_run` is the function's own check (see
:func:`pyramid_scheduler.wire.refs.job_check`): ``add_*_job`` makes it with
the producer's settings, the daemon at its door with its own, and :func:`run`
once more as the run starts, with the settings of the application running it,
so a refused command never starts and its run fails with the reason. The
child runs without a shell, in a session of its own; at the deadline, or
when it ends, its whole process group is killed, and only the last
:data:`TAIL` bytes of each output stream are kept. See docs/shell.rst.
"""

from __future__ import annotations

import os
import posixpath
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import time
from fnmatch import fnmatchcase
from typing import Any

from pyramid.threadlocal import get_current_registry

from pyramid_scheduler.exceptions import CommandFailed, InvalidJob
from pyramid_scheduler.progress import should_stop, stop_if_asked
from pyramid_scheduler.wire.refs import job_check

#: Bytes kept of the end of each of stdout and stderr.
TAIL = 4096
#: Bytes read from a pipe at once.
CHUNK = 65536
#: Seconds between SIGTERM and SIGKILL to the process group at the deadline.
KILL_GRACE = 2.0
#: Seconds the output is still read once the group is killed (a process
#: outside the group may hold a pipe open).
DRAIN = 1.0
#: Seconds between two looks at the child when nothing is read.
POLL = 0.05
#: The setting that lists the commands allowed.
SETTING = "scheduler.shell.allowed"

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Variables ``env=`` may not set: they choose which program runs, or what it
#: loads, behind ``scheduler.shell.allowed``'s back.
_UNSAFE_ENV = re.compile(
    r"^(PATH|IFS|ENV|BASH_ENV|SHELLOPTS|BASHOPTS|PS4|LD_.*|DYLD_.*|PYTHON.*|PERL5?LIB|RUBYLIB|NODE_OPTIONS)$"
)
_OPTIONS = ("format", "cwd", "env", "timeout", "shell")


def fill(text: str, values: dict[str, Any], quote: bool = False) -> str:
    """*text* with each ``{name}`` replaced by ``values[name]`` (shell-quoted
    with *quote*), ``{{`` and ``}}`` by one brace; other text untouched (no
    attribute or index lookups, unlike :meth:`str.format`).

    :raises InvalidJob: a placeholder has no value.
    """

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        if name not in values:
            raise InvalidJob(f"shell.run: the command {text!r:.200} uses {{{name}}}, which format= does not give")
        return shlex.quote(str(values[name])) if quote else str(values[name])

    return _PLACEHOLDER.sub(value, text)


def command_of(command: Any, values: dict[str, Any], shell: bool) -> tuple[list[str] | str, str]:
    """What runs for *command* (the argv list, or with *shell* the text for
    ``/bin/sh -c``) and its command line as matched by ``scheduler.shell.allowed``.

    Without *shell*, a string is split with :func:`shlex.split` first and each
    item filled in afterwards, so a value stays one argument whatever it holds.

    :raises InvalidJob: naming what is wrong.
    """
    if shell:
        if not isinstance(command, str) or not command.strip():
            raise InvalidJob(f"shell.run: with shell=True the command must be a non-empty string, got {command!r:.200}")
        quoted = _quoted_placeholder(command)
        if quoted:
            raise InvalidJob(
                f"shell.run: with shell=True the placeholder {quoted} of {command!r:.200} stands inside quotes or "
                "after a backslash, where a shell-quoted value is not safe; write it unquoted (its value is "
                "quoted for the shell)"
            )
        text = fill(command, values, quote=True)
        return text, text
    if isinstance(command, str):
        try:
            items = shlex.split(command)
        except ValueError as exc:
            raise InvalidJob(f"shell.run: the command {command!r:.200} cannot be split: {exc}") from exc
    elif isinstance(command, list) and all(isinstance(item, str) for item in command):
        items = command
    else:
        raise InvalidJob(f"shell.run: the command must be a string or a list of strings, got {command!r:.200}")
    if not items:
        raise InvalidJob("shell.run: the command is empty")
    argv = [fill(item, values) for item in items]
    return argv, shlex.join(argv)


def _quoted_placeholder(text: str) -> str | None:
    """The first ``{name}`` of a ``shell=True`` command that stands inside
    ``'...'`` or ``"..."`` or right after a backslash, else None: there a
    :func:`shlex.quote`-d value can end the quoting (``'x;id;'``) or be
    expanded (``"$(id)"``)."""
    quote, index = "", 0
    while index < len(text):
        char = text[index]
        match = _PLACEHOLDER.match(text, index)
        if match and match.group(1):
            if quote:
                return match.group(0)
            index = match.end()
            continue
        if char == "\\" and quote != "'":
            escaped = _PLACEHOLDER.match(text, index + 1)
            if escaped and escaped.group(1):
                return escaped.group(0)
            index += 2
            continue
        if char in "'\"" and quote in ("", char):
            quote = "" if quote else char
        index += 1
    return None


def allowed(patterns: tuple[str, ...], command: list[str] | str, template: Any) -> bool:
    """True if one of *patterns* (``scheduler.shell.allowed``) allows *command*.

    For an argv: a pattern holding a blank is matched (glob, :func:`fnmatch.fnmatchcase`)
    against the whole command line, as :func:`shlex.join` writes it; any other
    against the program, ``argv[0]`` as written: a pattern without ``/`` only
    matches a program without ``/`` (found on ``PATH``), and a program
    holding a ``..`` component matches no pattern. With ``shell=True``: the
    command as written, before its placeholders are filled, must equal a
    pattern (no glob).
    """
    if isinstance(command, str):
        return isinstance(template, str) and template.strip() in patterns
    program, line = command[0], shlex.join(command)
    if ".." in program.split("/"):
        return False
    for pattern in patterns:
        if any(blank in pattern for blank in " \t"):
            if fnmatchcase(line, pattern):
                return True
        elif ("/" in pattern) == ("/" in program) and fnmatchcase(posixpath.normpath(program), pattern):
            return True
    return False


def check_run(args: list[Any], kwargs: dict[str, Any], settings: Any) -> None:
    """The check of a :func:`run` job's arguments against *settings* (a
    :class:`~pyramid_scheduler.settings.SchedulerSettings`, or ``None``
    outside an application: nothing is allowed).

    :raises InvalidJob: naming the argument, or the command and the setting.
    """
    if len(args) != 1:
        raise InvalidJob(f"shell.run: expected one positional argument, the command; got {len(args)}")
    values = kwargs.get("format") or {}
    if not isinstance(values, dict) or not all(isinstance(v, (str, int, float)) for v in values.values()):
        raise InvalidJob(f"shell.run: format= must map names to strings or numbers, got {values!r:.200}")
    cwd, env, timeout, shell = (kwargs.get(name) for name in _OPTIONS[1:])
    if cwd is not None and not isinstance(cwd, str):
        raise InvalidJob(f"shell.run: cwd= must be a string, got {cwd!r:.200}")
    if env is not None and not (
        isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise InvalidJob(f"shell.run: env= must map strings to strings, got {env!r:.200}")
    unsafe = sorted(name for name in env or {} if _UNSAFE_ENV.match(name))
    if unsafe:
        raise InvalidJob(
            f"shell.run: env= may not set {', '.join(unsafe)}: it would choose which program runs, or what it "
            f"loads, behind {SETTING}"
        )
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise InvalidJob(f"shell.run: timeout= must be a positive number of seconds, got {timeout!r:.200}")
    if shell not in (None, True, False):
        raise InvalidJob(f"shell.run: shell= must be True or False, got {shell!r:.200}")
    command, line = command_of(args[0], values, bool(shell))
    patterns = tuple(getattr(settings, "shell_allowed", ()))
    if not allowed(patterns, command, args[0]):
        where = "shell=True command" if shell else "command"
        hint = "is empty" if not patterns else "allows no such command"
        raise InvalidJob(f"shell.run: the {where} {line!r:.200} is refused: {SETTING} {hint}")


def _settings() -> Any:
    scheduler = getattr(get_current_registry(), "scheduler", None)
    return getattr(scheduler, "settings", None)


@job_check(check_run)
def run(
    command: str | list[str],
    *,
    format: dict[str, Any] | None = None,  # noqa: A002 - the name users write
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    shell: bool = False,
) -> dict[str, Any]:
    """Run *command*, a program allowed by ``scheduler.shell.allowed``, and
    return its outcome: ``{"command", "exit_code", "duration", "stdout",
    "stderr", "stdout_bytes", "stderr_bytes"}`` (the last :data:`TAIL` bytes
    of each stream, decoded as UTF-8; ``*_bytes``: how many it wrote).

    :param command: ``"pg_dump {db}"`` (split with :mod:`shlex`) or an argv list.
    :param format: values for the ``{name}`` placeholders, each filled into one
        argument after splitting (with *shell*, shell-quoted).
    :param cwd: the working directory (default: the daemon's).
    :param env: variables added to the daemon's environment.
    :param timeout: seconds; then the command's process group gets SIGTERM,
        and SIGKILL :data:`KILL_GRACE` seconds later, and the run fails. The
        same happens as soon as the run is asked to stop (its job canceled
        with ``cancel_job``, or past the job's ``timeout=`` option: see
        :func:`pyramid_scheduler.should_stop`), and the run ends ``stopped``
        or ``timed-out`` (:class:`~pyramid_scheduler.JobStopped`): a shell job
        is stopped for real, not only asked.
    :param shell: run the command with ``/bin/sh -c`` (its text must be listed
        as is in ``scheduler.shell.allowed``).
    :raises InvalidJob: the command is refused by this process's settings.
    :raises CommandFailed: it exited with another code than 0, was killed,
        timed out or could not start; the message ends with stderr's tail.
    :raises JobStopped: the run was asked to stop, and the command's process
        group was killed.

    .. versionadded:: 1.0
    """
    options = dict(zip(_OPTIONS, (format, cwd, env, timeout, shell), strict=True))
    check_run([command], options, _settings())
    argv, line = command_of(command, format or {}, shell)
    # The program as the daemon's PATH finds it, not the child's environment.
    executable = None if shell or "/" in argv[0] else shutil.which(argv[0])
    started = time.monotonic()
    try:
        child = subprocess.Popen(  # noqa: S603 - checked against scheduler.shell.allowed
            argv,
            executable=executable,
            shell=shell,  # noqa: S602 - only when asked, and listed verbatim
            cwd=cwd,
            env=None if env is None else {**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise CommandFailed(f"command {line!r:.200} could not start: {exc}") from exc
    streams, timed_out = _watch(child, None if timeout is None else started + timeout)
    code = child.wait()
    stop_if_asked()  # canceled, or past the job's timeout=: the group was killed
    result: dict[str, Any] = {"command": line, "exit_code": code, "duration": round(time.monotonic() - started, 3)}
    for name, (tail, total) in zip(("stdout", "stderr"), streams, strict=True):
        result[name] = tail.decode("utf-8", "replace")
        result[f"{name}_bytes"] = total
    if timed_out:
        raise CommandFailed(
            f"command {line!r:.200} timed out after {timeout:g} s; its process group was killed; "
            f"stderr: {result['stderr'][-1000:]}",
            result,
        )
    if code != 0:
        how = f"exited with code {code}" if code > 0 else f"was killed by signal {-code}"
        raise CommandFailed(f"command {line!r:.200} {how}; stderr: {result['stderr'][-1000:]}", result)
    return result


def _watch(child: subprocess.Popen[bytes], deadline: float | None) -> tuple[list[tuple[bytes, int]], bool]:
    """Read the child's output until it ended and its pipes closed (or were
    given up), keeping each stream's last :data:`TAIL` bytes; stop its
    process group at *deadline* (monotonic) or once the run is asked to stop
    (:func:`~pyramid_scheduler.progress.should_stop`). The group is killed in every
    case before the child is reaped, so nothing it started outlives the run.

    :returns: ``(tail, bytes written)`` for stdout and stderr, and whether it timed out.
    """
    assert child.stdout is not None and child.stderr is not None
    fds = [child.stdout.fileno(), child.stderr.fileno()]
    tails, totals = [bytearray(), bytearray()], [0, 0]
    timed_out, given_up = False, None
    with selectors.DefaultSelector() as selector:
        for fd in fds:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map() or not _ended(child):
            now = time.monotonic()
            if given_up is None and _ended(child):
                _signal_group(child, signal.SIGKILL)  # what it left running, so the pipes close
                given_up = now + DRAIN
            elif given_up is None and deadline is not None and now >= deadline:
                timed_out = True
                _stop_group(child)
                given_up = time.monotonic() + DRAIN
            elif given_up is None and should_stop():  # canceled, or past the job's timeout=
                _stop_group(child)
                given_up = time.monotonic() + DRAIN
            if given_up is not None and now >= given_up:
                break
            if not selector.get_map():
                time.sleep(POLL)
                continue
            for key, _ in selector.select(POLL):
                data = os.read(key.fd, CHUNK)
                if not data:
                    selector.unregister(key.fd)
                    continue
                index = fds.index(key.fd)
                totals[index] += len(data)
                tails[index] += data
                del tails[index][:-TAIL]
    _signal_group(child, signal.SIGKILL)
    child.stdout.close()
    child.stderr.close()
    return [(bytes(tails[0]), totals[0]), (bytes(tails[1]), totals[1])], timed_out


def _ended(child: subprocess.Popen[bytes]) -> bool:
    """True once the child exited, without reaping it (its pid, which is
    its process group's id, stays ours until :meth:`~subprocess.Popen.wait`)."""
    if child.returncode is not None:
        return True
    waitid = getattr(os, "waitid", None)
    if waitid is None:  # pragma: no cover - macOS: reaps it
        return child.poll() is not None
    return waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _stop_group(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the child's process group; SIGKILL to it once the child
    ended or :data:`KILL_GRACE` seconds passed."""
    _signal_group(child, signal.SIGTERM)
    until = time.monotonic() + KILL_GRACE
    while not _ended(child) and time.monotonic() < until:
        time.sleep(POLL)
    _signal_group(child, signal.SIGKILL)


def _signal_group(child: subprocess.Popen[bytes], signum: int) -> None:
    if child.returncode is not None:  # reaped: its group id may be reused
        return
    try:
        os.killpg(child.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
