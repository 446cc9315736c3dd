"""What the run records say: --status, judged as a Nagios plugin judges, and the node_exporter textfile.

judge() gives each collector's state: 3 UNKNOWN without a record; 2 CRITICAL when its last run had a source
failing, or no run succeeded (exit 0) within stale_after seconds; 1 WARNING when the last run did not end in 0
(documents kept for later, or refused); 0 OK. status_report() prints one line per collector, worst first so
that the first line, the one Nagios shows, names the worst, or a JSON object; its exit status is the worst
state. prometheus_text() renders the records in the text exposition format, one series per collector.
"""
import datetime
import json
import os
import time

from afmetrics_record import OUTCOMES
from afmetrics_state import write_atomically

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
TEXTFILE = "afmetrics.prom"


def _ago(seconds):
    if seconds < 120:
        return "%d s ago" % seconds
    if seconds < 7200:
        return "%d min ago" % (seconds // 60)
    return "%.1f h ago" % (seconds / 3600)


def _local(timestamp):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def judge(record, now, stale_after):
    """(state, reason) of one collector from its last record (None: no record)."""
    if record is None:
        return UNKNOWN, "no run recorded yet"
    last_success = record["last_success"]
    error = record["last_error"] or "no error line"
    if record["source_failed"]:
        return CRITICAL, "source failing: %s" % error
    if last_success is None or now - last_success > stale_after:
        since = "never" if last_success is None else "not since %s" % _ago(now - last_success)
        return CRITICAL, "no successful run within %g s (%s): %s" % (stale_after, since, error)
    if record["spool_documents"]:
        return WARNING, "%d document(s) kept for later: %s" % (record["spool_documents"], error)
    if record["exit_status"] != 0:
        return WARNING, "last run exit %d: %s" % (record["exit_status"], error)
    return OK, "delivered %d document(s)" % record["delivered"]


def _line(name, state, reason, record, now):
    if record is None:
        return "%s %s: %s" % (STATE_NAMES[state], name, reason)
    success = record["last_success"]
    return "%s %s: %s | last success %s | last run %s (%s), exit %d, %.1f s: %s | spool %d%s" % (
        STATE_NAMES[state], name, reason,
        "never" if success is None else "%s (%s)" % (_local(success), _ago(now - success)),
        _local(record["end"]), _ago(now - record["end"]), record["exit_status"], record["end"] - record["start"],
        ", ".join("%d %s" % (record[outcome], outcome) for outcome in OUTCOMES),
        record["spool_documents"], "" if record["spool_oldest_timestamp"] is None
        else ", oldest %s" % _ago(now - record["spool_oldest_timestamp"]))


def _iso(timestamp):
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_entry(name, state, reason, record, now):
    entry = {"collector": name, "status": STATE_NAMES[state], "summary": reason}
    record = record or {}
    entry.update({"last_run": _iso(record.get("end")), "last_success": _iso(record.get("last_success")),
                  "exit_status": record.get("exit_status")})
    entry.update({outcome: record.get(outcome) for outcome in OUTCOMES})
    oldest = record.get("spool_oldest_timestamp")
    entry.update({"spool_documents": record.get("spool_documents"),
                  "spool_oldest_age_seconds": None if oldest is None else round(now - oldest, 1),
                  "last_error": record.get("last_error")})
    return entry


def status_report(records, now, stale_after, as_json):
    """(text, exit status) for records: {collector name: record or None}, in the order to show them."""
    judged = [(name, judge(record, now, stale_after), record) for name, record in records.items()]
    worst = max((state for _, (state, _), _ in judged), default=UNKNOWN)
    if as_json:
        entries = [_json_entry(name, state, reason, record, now) for name, (state, reason), record in judged]
        return json.dumps({"status": STATE_NAMES[worst], "collectors": entries}, indent=2), worst
    if not judged:
        return "UNKNOWN: no collector has run yet", UNKNOWN
    judged.sort(key=lambda item: -item[1][0])  # stable: equal states keep the order given
    return "\n".join(_line(name, state, reason, record, now) for name, (state, reason), record in judged), worst


# name, help, value of a record; one gauge each, labelled by collector. Timestamps rather than ages: a file
# node_exporter reads minutes later must not report a frozen age.
_METRICS = [
    ("afmetrics_last_run_timestamp_seconds", "When the collector's last run ended (Unix time).",
     lambda record: record["end"]),
    ("afmetrics_last_success_timestamp_seconds", "When the collector's last run that exited 0 ended (Unix time).",
     lambda record: record["last_success"]),
    ("afmetrics_last_run_duration_seconds", "How long the collector's last run took.",
     lambda record: record["end"] - record["start"]),
    ("afmetrics_last_run_exit_status", "Exit status of the collector's last run: 0 delivered all, 1 failed, 2 usage.",
     lambda record: record["exit_status"]),
    ("afmetrics_last_run_source_failed", "1 when a data source failed in the collector's last run.",
     lambda record: int(record["source_failed"])),
    ("afmetrics_spool_documents", "Documents kept in the spool for the next run.",
     lambda record: record["spool_documents"]),
    ("afmetrics_spool_oldest_document_timestamp_seconds", "When the oldest spooled document was collected.",
     lambda record: record["spool_oldest_timestamp"]),
]


def _sample(name, labels, value):
    label_text = ",".join('%s="%s"' % (key, val.replace("\\", "\\\\").replace('"', '\\"')) for key, val in labels)
    return "%s{%s} %s\n" % (name, label_text, repr(float(value)))


def prometheus_text(records):
    """The records ({name: record}) as Prometheus text; a value a record lacks (no success yet) has no sample."""
    lines = []
    for metric, help_text, value_of in _METRICS:
        lines.append("# HELP %s %s\n# TYPE %s gauge\n" % (metric, help_text, metric))
        for name, record in sorted(records.items()):
            value = value_of(record)
            if value is not None:
                lines.append(_sample(metric, [("collector", name)], value))
    metric = "afmetrics_last_run_documents"
    lines.append("# HELP %s Documents of the collector's last run, by what became of them.\n# TYPE %s gauge\n"
                 % (metric, metric))
    for name, record in sorted(records.items()):
        for outcome in OUTCOMES:
            lines.append(_sample(metric, [("collector", name), ("outcome", outcome)], record[outcome]))
    return "".join(lines)


def write_textfile(directory, records):
    """Replace DIRECTORY/afmetrics.prom atomically (node_exporter never reads half a file); raises OSError."""
    write_atomically(os.path.join(directory, TEXTFILE), prometheus_text(records))
