"""The commands' printing (:mod:`pyramid_scheduler.commands.output`): tables
within the width, colour only on a terminal; and their parser's usage errors."""

from __future__ import annotations

import io

import pytest

from pyramid_scheduler.commands.output import Output, ago, schedule, span
from pyramid_scheduler.scripts import build_parser


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_table_is_cut_to_80_columns_and_not_coloured_off_a_terminal():
    stream = io.StringIO()
    out = Output(stream=stream)
    rows = [["x" * 60, "module.sub:" + "f" * 50, "failed", "12"]]
    out.table(("ID", "FUNCTION", "STATUS", "RUNS"), rows, flexible=(0, 1), right=(3,), status=2)
    lines = stream.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines) and "\x1b" not in stream.getvalue()
    assert lines[1].split()[0].endswith("~") and lines[1].split()[2] == "failed"


def test_colour_on_a_terminal_unless_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    stream = Terminal()
    Output(stream=stream).table(("STATUS",), [["failed"]], status=0)
    assert "\x1b[31mfailed" in stream.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    stream = Terminal()
    Output(stream=stream).table(("STATUS",), [["failed"]], status=0)
    assert "\x1b" not in stream.getvalue()


def test_times_and_schedules_in_a_few_words():
    assert ago(None) == "-" and ago(100, now=112) == "12s ago" and ago(400, now=100) == "in 5m"
    assert ago(1, now=1) == "1s ago"
    assert span(0.25) == "250ms" and span(7200) == "2h"
    assert schedule({"type": "interval", "hours": 1, "minutes": 30}) == "every 1h30m"
    assert schedule({"type": "cron", "crontab": "30 7 * * mon"}) == "cron 30 7 * * mon"
    assert schedule({"type": "date", "run_date": "2030-05-01T10:00:00+00:00"}) == "at 2030-05-01 10:00"


@pytest.mark.parametrize(
    "argv",
    [
        ["app.ini", "jobs", "--limit", "0"],
        ["app.ini", "cancel"],
        ["app.ini", "dead-letters", "delete"],
        ["app.ini", "dead-letters", "replay"],
        ["app.ini", "dead-letters", "3"],
        ["app.ini", "dead-letters", "delete", "3", "--force"],
        ["app.ini", "-q", "jobs", "jobs"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    from pyramid_scheduler.commands import check_command

    parser = build_parser()
    with pytest.raises(SystemExit) as raised:
        check_command(parser, parser.parse_args(argv))
    assert raised.value.code == 2
