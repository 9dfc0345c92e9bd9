"""The process label of log records (:func:`pyramid_scheduler.logs.label_process`);
the escaping of fields is tested in tests/security/test_logging_escapes.py."""

from __future__ import annotations

import logging

from pyramid_scheduler.logs import ProcessFormatter, label_process


def test_records_carry_the_process_label():
    previous = logging.getLogRecordFactory()
    try:
        label_process("2/4")
        label_process("3/4")  # replaces the label, does not stack
        record = logging.getLogger("t").makeRecord("t", logging.INFO, __file__, 1, "hello", (), None)
        assert record.process_index == "3/4"
        assert logging.getLogRecordFactory().base is previous
    finally:
        logging.setLogRecordFactory(previous)
    formatter = ProcessFormatter("[%(process_index)s] %(message)s")
    bare = logging.LogRecord("t", logging.INFO, __file__, 1, "hello", (), None)  # a pserve record
    assert formatter.format(bare) == "[-] hello"
