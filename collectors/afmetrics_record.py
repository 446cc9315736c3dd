"""The record each real run of a collector leaves in the state dir, last-run-NAME.json: when it ran and how it
ended, what became of its documents, the last error line and the spool. --status and the node_exporter textfile
are made from these records alone (afmetrics_status); a debug run leaves none.

A record is a JSON object: collector, start and end (Unix seconds), duration (seconds, from the monotonic clock:
a clock stepped during the run does not change it), exit_status, source_error (the first line of a source that
failed, "" when none did), the document counts of OUTCOMES, spool_documents, spool_oldest_timestamp (Unix seconds
or null), last_error (the run's last ERROR line, "" when none) and last_success (end of the newest run that
exited 0, carried from run to run; null until one did). A run that ends in a usage or configuration error has
exit_status 2, its one line as last_error, no documents, and the spool as the previous record left it.
"""
import logging
import math
import numbers
import os
import re
import time

EXIT_USAGE = 2  # the exit status of a usage or configuration error (SPEC.md)
RECORD_FILE = "last-run-%s.json"
RECORD_PATTERN = re.compile(r"^last-run-([A-Za-z0-9_]+)\.json$")
OUTCOMES = ("collected", "delivered", "spooled", "refused", "dropped")
_NUMBERS = ("start", "end", "duration", "exit_status", "spool_documents") + OUTCOMES


def _number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


class LastError(logging.Handler):
    """While entered, keeps the message of the last ERROR line any logger writes."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.message = ""

    def emit(self, record):
        self.message = record.getMessage()

    def __enter__(self):
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc_info):
        logging.getLogger().removeHandler(self)


def is_record(value):
    """True for a record as save_record() writes it; anything else (a hand edit, another version's file) is not one."""
    return (isinstance(value, dict) and isinstance(value.get("collector"), str)
            and all(_number(value.get(key)) for key in _NUMBERS)
            and isinstance(value.get("source_error"), str) and isinstance(value.get("last_error"), str)
            and all(value.get(key) is None or _number(value.get(key))
                    for key in ("last_success", "spool_oldest_timestamp")))


def load_record(state, name):
    """The collector's last record, or None when it has none; an unreadable one is a warning and None."""
    value = state.load(RECORD_FILE % name)  # warns about a file it cannot read or parse
    if value is not None and not is_record(value):
        state.log.warning("state file %s is not a run record: ignored", state.file(RECORD_FILE % name))
        return None
    return value


def recorded_collectors(state):
    """Names of the collectors with a record file in the state dir, sorted; OSError when it cannot be listed."""
    return sorted(match.group(1) for match in map(RECORD_PATTERN.match, os.listdir(state.path)) if match)


def save_record(state, name, started, exit_status, counts, spool_oldest, source_error, last_error):
    """Write the run's record (started: time.time() and time.monotonic() at its start; counts: OUTCOMES and
    spool_documents) and return it; raises OSError."""
    previous = load_record(state, name) or {}
    ended = time.time()
    record = dict(counts, collector=name, start=started[0], end=ended, duration=time.monotonic() - started[1],
                  exit_status=exit_status, source_error=source_error, last_error=last_error,
                  spool_oldest_timestamp=spool_oldest,
                  last_success=ended if exit_status == 0 else previous.get("last_success"))
    state.save(RECORD_FILE % name, record)
    return record


def save_usage_error(state, name, started, message):
    """Write the record of a run that ended in a usage or configuration error (message: its one line); raises
    OSError."""
    previous = load_record(state, name) or {}
    counts = dict({outcome: 0 for outcome in OUTCOMES}, spool_documents=previous.get("spool_documents", 0))
    return save_record(state, name, started, EXIT_USAGE, counts, previous.get("spool_oldest_timestamp"), "", message)
