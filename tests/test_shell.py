"""pyramid_scheduler.shell: the allow-list's rules, the checks of ``add_*_job``
and declarations, and shell-command jobs run by the testing kit (real
processes, the daemon's engine in the test's thread)."""

from __future__ import annotations

import pytest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from pyramid_scheduler import InvalidJob, shell
from pyramid_scheduler.exceptions import CommandFailed
from pyramid_scheduler.settings import parse_settings
from pyramid_scheduler.testing import TestingScheduler


def make_scheduler(allowed: str | None = "echo\n  sh -c *", **settings: str) -> TestingScheduler:
    if allowed is not None:
        settings["scheduler.shell.allowed"] = allowed
    config = Configurator(settings=settings)
    config.include("pyramid_scheduler.testing")
    config.commit()
    scheduler = config.registry.scheduler
    assert isinstance(scheduler, TestingScheduler)
    return scheduler


@pytest.mark.parametrize(
    ("command", "is_allowed"),
    [
        (["pg_dump", "app"], True),  # the program
        (["pg_restore", "app"], True),  # its glob
        (["/usr/bin/pg_dump", "app"], False),  # a path is not a program on PATH
        (["/opt/tools/backup", "--all"], True),
        (["/opt/tools/../../bin/sh"], False),  # no way out of a listed directory
        (["/opt/tools/sub/backup"], True),  # fnmatch's * crosses "/" below it
        (["tar", "czf", "/backups/app.tgz", "/srv/app"], True),  # the whole line
        (["tar", "xzf", "/backups/app.tgz"], False),
        (["rm", "-rf", "/"], False),
    ],
)
def test_patterns_match_the_program_or_the_whole_command_line(command, is_allowed):
    patterns = ("pg_dump", "pg_re*", "/opt/tools/*", "tar czf /backups/* /srv/*")
    assert shell.allowed(patterns, command, None) is is_allowed


def test_a_shell_command_must_be_listed_as_written():
    patterns = ("pg_dump {db} | gzip > /backups/{db}.gz",)
    template = "pg_dump {db} | gzip > /backups/{db}.gz"
    text, _ = shell.command_of(template, {"db": "x; rm -rf /"}, shell=True)
    assert text == "pg_dump 'x; rm -rf /' | gzip > /backups/'x; rm -rf /'.gz"  # values quoted
    assert shell.allowed(patterns, text, template)
    assert not shell.allowed(patterns, "pg_dump app | gzip > /backups/app.gz", "pg_dump app | gzip > /backups/app.gz")


def test_values_are_filled_into_one_argument_each_after_splitting():
    argv, line = shell.command_of("pg_dump --file '{dir}/out' {db}", {"db": "a b; c", "dir": "/tmp/x y"}, shell=False)
    assert argv == ["pg_dump", "--file", "/tmp/x y/out", "a b; c"]
    assert line == "pg_dump --file '/tmp/x y/out' 'a b; c'"
    assert shell.fill("{{literal}} {x.__class__} {x}", {"x": 1}) == "{literal} {x.__class__} 1"
    with pytest.raises(InvalidJob, match=r"uses \{db\}, which format= does not give"):
        shell.command_of("pg_dump {db}", {}, shell=False)


def test_the_setting_is_read_one_pattern_per_line():
    settings = parse_settings({"scheduler.shell.allowed": "\n  pg_dump\n  tar czf /backups/*  \n"})
    assert settings.shell_allowed == ("pg_dump", "tar czf /backups/*")
    assert parse_settings({}).shell_allowed == ()
    with pytest.raises(ConfigurationError, match="scheduler.shell.allowed"):
        parse_settings({"scheduler.shell.allowed": "x" * 1001})


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (["ls"], {}, r"the command 'ls' is refused: scheduler.shell.allowed allows no such command"),
        (["echo {x}"], {"format": {"x": ["a"]}}, "format= must map names to strings or numbers"),
        (["echo"], {"timeout": 0}, "timeout= must be a positive number"),
        (["echo"], {"env": {"A": 1}}, "env= must map strings to strings"),
        (["echo"], {"cwd": 3}, "cwd= must be a string"),
        (["echo"], {"shell": "yes"}, "shell= must be True or False"),
        (["echo hi"], {"shell": True}, r"the shell=True command 'echo hi' is refused"),
        ([""], {}, "the command is empty"),
        (["echo 'unclosed"], {}, "cannot be split"),
        ([["echo", 3]], {}, "must be a string or a list of strings"),
        (["echo", "extra"], {}, "positional arguments is longer than the target callable can handle"),
        # What would choose the program, or what it loads, behind the list's back.
        (["echo"], {"env": {"PATH": "/tmp/evil"}}, "env= may not set PATH"),
        (["echo"], {"env": {"LD_PRELOAD": "/tmp/x.so", "A": "b"}}, "env= may not set LD_PRELOAD"),
        # A shell-quoted value is only safe unquoted: inside quotes it ends them, or is expanded.
        (["echo '{v}'"], {"shell": True, "format": {"v": "x;id;"}}, "placeholder {v} .* inside quotes"),
        (['echo "{v}"'], {"shell": True, "format": {"v": "$(id)"}}, "placeholder {v} .* inside quotes"),
        (["echo \\{v}"], {"shell": True, "format": {"v": "x"}}, "after a backslash"),
    ],
)
def test_add_job_refuses_bad_or_unlisted_commands(args, kwargs, message):
    scheduler = make_scheduler()
    with pytest.raises(InvalidJob, match=message):
        scheduler.add_async_job(shell.run, args=args, kwargs=kwargs)
    assert scheduler.get_jobs() == []


def test_nothing_runs_without_the_setting():
    scheduler = make_scheduler(allowed=None)
    with pytest.raises(InvalidJob, match=r"'echo hi' is refused: scheduler.shell.allowed is empty"):
        scheduler.add_async_job(shell.run, args=["echo hi"])
    # Called outside any application: no settings, nothing allowed.
    with pytest.raises(InvalidJob, match="scheduler.shell.allowed is empty"):
        shell.run("echo hi")


def test_the_testing_kit_runs_commands_on_their_schedule():
    scheduler = make_scheduler()
    now = scheduler.add_async_job(shell.run, args=[["echo", "{who}"]], kwargs={"format": {"who": "now"}})
    later = scheduler.add_date_job(shell.run, minutes=10, args=["echo later"])
    failing = scheduler.add_async_job(shell.run, args=["sh -c 'echo bad >&2; exit 3'"], retries=1, retry_delay=5)
    scheduler.run_pending()
    assert scheduler.get_job(now)["result"]["stdout"] == "now\n"
    assert scheduler.get_job(later)["status"] == "scheduled"
    first = scheduler.get_job(failing)
    assert first["status"] == "scheduled" and "exited with code 3; stderr: bad" in first["error"]
    scheduler.clock.advance(minutes=10)
    assert scheduler.get_job(later)["result"]["stdout"] == "later\n"
    assert scheduler.get_job(failing)["status"] == "failed" and scheduler.get_job(failing)["runs"] == 2


def test_output_is_kept_bounded_and_the_exit_code_reported():
    scheduler = make_scheduler()
    big = scheduler.add_async_job(shell.run, args=["sh -c 'yes | head -c 1000000; echo end'"])
    scheduler.run_pending()
    result = scheduler.get_job(big)["result"]
    assert result["stdout_bytes"] == 1000004 and len(result["stdout"]) == shell.TAIL
    assert result["stdout"].endswith("y\nend\n") and result["exit_code"] == 0


def test_declared_shell_jobs_are_checked_at_commit():
    config = Configurator(settings={"scheduler.shell.allowed": "echo"})
    config.include("pyramid_scheduler.testing")
    config.add_scheduled_job(shell.run, minutes=5, args=["echo tick"], id="tick")
    config.commit()
    scheduler = config.registry.scheduler
    scheduler.clock.advance(minutes=5)
    assert scheduler.get_job("tick")["result"]["stdout"] == "tick\n"

    config = Configurator(settings={"scheduler.shell.allowed": "echo"})
    config.include("pyramid_scheduler.testing")
    config.add_scheduled_job(shell.run, minutes=5, args=["rm -rf /tmp/x"], id="wipe")
    with pytest.raises(ConfigurationError, match="scheduled job wipe: shell.run: the command 'rm -rf /tmp/x'"):
        config.commit()


def test_a_command_that_cannot_start_fails_its_run(tmp_path):
    scheduler = make_scheduler(allowed="/no/such/*")
    job = scheduler.add_async_job(shell.run, args=["/no/such/program"])
    scheduler.run_pending()
    assert scheduler.get_job(job)["status"] == "failed"
    assert "could not start" in scheduler.get_job(job)["error"]
    assert issubclass(CommandFailed, Exception)
