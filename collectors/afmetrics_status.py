"""What the run records say: --status, judged as a Nagios plugin judges, and the node_exporter textfile.

judge() gives each collector's state and says whether it is the endpoint's doing:
- 2 CRITICAL, the node cannot collect: a source failing; a configuration error (the last run exited 2); no record
  although the collector was configured (its configured_at) longer ago than the critical threshold; no run at all
  within it; no success within it for any reason but the endpoint;
- documents kept because the endpoint is down (the last run exited 1 with no source failing and left documents in
  the spool): 1 WARNING while the oldest of them is younger than spool_critical_after seconds, 2 CRITICAL after;
- 1 WARNING, judged before any age: the last run ended more than CLOCK_SLACK in the future (a clock stepped back
  would hide staleness); ages within it count as 0;
- 1 WARNING: the last success's age is outside the warning range, documents were refused or dropped, or the last
  run did not end in 0;
- 3 UNKNOWN: no record, and not configured for longer than the critical threshold (or not known to be); 0 OK.
The thresholds are Nagios ranges (parse_range(): "900" alerts above 900, "@10:20" inside, as the Monitoring
Plugins guidelines define them, https://www.monitoring-plugins.org/doc/guidelines.html#THRESHOLDFORMAT) on the age
of the last success; the critical one defaults to stale_after.
status_report() prints one line per collector, worst first, so that the first line, the one Nagios shows, names
the worst, followed on that line by " | " and the performance data of every collector ('label'=value[UOM];warn;
crit;min;max: ages in s, the spool's size in B, as Icinga and Checkmk parse them); or a JSON object. Its exit
status is the worst state, CRITICAL before UNKNOWN before WARNING. The text holds no other "|". prometheus_text()
renders the records in the text exposition format, one series per collector, a configured one without a record
included (last success 0); update_textfile() rewrites the file from the state dir. node_collectors() gathers what
both need from the state dir and the config file.
"""
import collections
import datetime
import json
import math
import os
import time

from afmetrics_record import EXIT_USAGE, OUTCOMES, load_record, recorded_collectors
from afmetrics_state import write_atomically

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
SEVERITY = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}
TEXTFILE = "afmetrics.prom"
CLOCK_SLACK = 300  # seconds a last success may lie ahead of now before the clock is suspect

# What --status knows of one collector: its last record (None: none), when it was configured (Unix seconds; None:
# not known to be) and the size of its spool file in bytes (None: no spool file).
Collector = collections.namedtuple("Collector", "record configured_at spool_bytes")
# The thresholds: warning and critical Ranges (None: none) on the last success's age, and the age of the oldest
# document kept for the endpoint after which that is CRITICAL (0: never).
Limits = collections.namedtuple("Limits", "warning critical spool_critical_after")
# judge()'s answer: the state, why, and whether the endpoint being down decided it (documents kept for it, the runs
# going on): only then is the state the endpoint's doing, not the node's.
Verdict = collections.namedtuple("Verdict", "state reason endpoint_down", defaults=(False,))


class Range(collections.namedtuple("Range", "start end inside text")):
    """A Nagios threshold range: alerts(value) when value lies outside [start, end] (inside it, for '@')."""

    def alerts(self, value):
        within = self.start <= value <= self.end
        return within if self.inside else not within


def parse_range(text):
    """The Range of a threshold: "10" (0 to 10), "10:" (10 up), "~:10" (up to 10), "10:20", each with a leading
    "@" to alert inside; a ValueError for anything else."""
    body = text[1:] if text.startswith("@") else text
    start, colon, end = body.rpartition(":") if ":" in body else ("0", "", body)
    low = -math.inf if start == "~" else float(start)
    high = math.inf if colon and end == "" else float(end)
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ValueError("not a range")
    return Range(low, high, text.startswith("@"), text)


def range_of_seconds(seconds):
    """The critical range of stale_after: above it (None for 0, never)."""
    return parse_range("%g" % seconds) if seconds else None


def worst(states):
    return max(states, key=SEVERITY.get, default=UNKNOWN)


def _ago(seconds):
    if seconds < 0:
        return "%d s in the future" % -seconds
    if seconds < 120:
        return "%d s ago" % seconds
    if seconds < 7200:
        return "%d min ago" % (seconds // 60)
    return "%.1f h ago" % (seconds / 3600)


def _local(timestamp):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _threshold(limit):
    """How long an age alerting in limit is, in words."""
    if not limit.inside and limit.start <= 0 and math.isfinite(limit.end):
        return "for over %g s" % limit.end
    return "for an age %s %s s" % ("within" if limit.inside else "outside", limit.text)


def endpoint_down(record):
    """True when the record's run collected but kept documents for an endpoint that did not take them."""
    return (record is not None and record["exit_status"] == 1 and not record["source_error"]
            and record["spool_documents"] > 0)


def judge(record, now, limits, configured_at=None):
    """Verdict of one collector from its last record (None: no record)."""
    critical, warning = limits.critical, limits.warning
    if record is None:
        if configured_at is None:
            return Verdict(UNKNOWN, "no run recorded yet")
        if critical and critical.alerts(now - configured_at):
            return Verdict(CRITICAL, "configured %s and no run %s: is cron running it?" % (
                _ago(now - configured_at), _threshold(critical)))
        return Verdict(UNKNOWN, "no run recorded yet (configured %s)" % _ago(now - configured_at))
    last_success = record["last_success"]
    success_age = math.inf if last_success is None else now - last_success
    error = record["last_error"] or "no error line"
    if record["exit_status"] == EXIT_USAGE:
        return Verdict(CRITICAL, "configuration error: %s" % error)
    if record["source_error"]:
        return Verdict(CRITICAL, "source failing: %s" % record["source_error"])
    # Before any range: a run that ended ahead of now (last_success is one's end) is a clock stepped back; within
    # the slack, the clocks' difference, an age of 0, not one outside 0..stale_after.
    latest = max(record["end"], last_success or 0)
    if latest > now + CLOCK_SLACK:
        return Verdict(WARNING, "last run %s: the clock was stepped back" % _ago(now - latest))
    run_age, success_age = max(0, now - record["end"]), max(0, success_age)
    since = "never" if last_success is None else "not since %s" % _ago(success_age)
    if critical and critical.alerts(run_age):
        return Verdict(CRITICAL, "no run %s (the last %s): %s" % (_threshold(critical), _ago(run_age), error))
    if endpoint_down(record):
        oldest = record["spool_oldest_timestamp"]
        oldest_age = max(0, now - (record["end"] if oldest is None else oldest))
        text = "endpoint down: %d document(s) kept for later, the oldest %s (last success %s): %s" % (
            record["spool_documents"], _ago(oldest_age), since.replace("not since ", ""), error)
        late = limits.spool_critical_after and oldest_age > limits.spool_critical_after
        return Verdict(CRITICAL if late else WARNING, text, True)
    if critical and critical.alerts(success_age):
        return Verdict(CRITICAL, "no successful run %s (%s): %s" % (_threshold(critical), since, error))
    if warning and warning.alerts(success_age):
        return Verdict(WARNING, "no successful run %s (%s)" % (_threshold(warning), since))
    if record["dropped"]:
        return Verdict(WARNING, "%d document(s) dropped by the full or expired spool: %s" % (record["dropped"], error))
    if record["exit_status"] != 0:
        return Verdict(WARNING, "last run exit %d: %s" % (record["exit_status"], error))
    return Verdict(OK, "delivered %d document(s)" % record["delivered"])


def _line(name, state, reason, record, now):
    text = "%s %s: %s" % (STATE_NAMES[state], name, reason)
    if record is not None:
        success = record["last_success"]
        text += "; last success %s; last run %s (%s), exit %d, %.1f s: %s; spool %d%s" % (
            "never" if success is None else "%s (%s)" % (_local(success), _ago(now - success)),
            _local(record["end"]), _ago(now - record["end"]), record["exit_status"], record["duration"],
            ", ".join("%d %s" % (record[outcome], outcome) for outcome in OUTCOMES),
            record["spool_documents"], "" if record["spool_oldest_timestamp"] is None
            else ", oldest %s" % _ago(now - record["spool_oldest_timestamp"]))
    return text.replace("|", "/")


def _perf(label, value, unit="", warn=None, crit=None):
    """One 'label'=value[UOM];warn;crit;min performance datum (min 0); U for a value not known."""
    shown = "U" if value is None else "%g%s" % (round(value, 1), unit)
    return ("'%s'=%s;%s;%s;0" % (label, shown, warn.text if warn else "", crit.text if crit else "")).rstrip(";")


def performance_data(collectors, now, limits):
    """The performance data of every collector, as one string."""
    data = []
    for name, collector in collectors.items():
        record = collector.record or {}
        success, oldest = record.get("last_success"), record.get("spool_oldest_timestamp")
        spool_limit = range_of_seconds(limits.spool_critical_after)
        data += [
            _perf(name + "_last_success_age", None if success is None else max(0, now - success), "s",
                  limits.warning, limits.critical),
            _perf(name + "_last_run_age", None if record.get("end") is None else max(0, now - record["end"]), "s"),
            _perf(name + "_spool_documents", record.get("spool_documents", 0)),
            _perf(name + "_spool_oldest_age", 0 if oldest is None else max(0, now - oldest), "s", None, spool_limit),
            _perf(name + "_spool_size", collector.spool_bytes or 0, "B"),
            _perf(name + "_delivered", record.get("delivered")),
        ]
    return " ".join(data)


def _iso(timestamp):
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_entry(name, verdict, collector, now):
    entry = {"collector": name, "status": STATE_NAMES[verdict.state], "summary": verdict.reason,
             "endpoint_down": verdict.endpoint_down, "configured": _iso(collector.configured_at)}
    record = collector.record or {}
    entry.update({"last_run": _iso(record.get("end")), "last_success": _iso(record.get("last_success")),
                  "exit_status": record.get("exit_status"), "duration_seconds": record.get("duration")})
    entry.update({outcome: record.get(outcome) for outcome in OUTCOMES})
    oldest = record.get("spool_oldest_timestamp")
    entry.update({"spool_documents": record.get("spool_documents"),
                  "spool_oldest_age_seconds": None if oldest is None else round(now - oldest, 1),
                  "spool_bytes": collector.spool_bytes,
                  "source_error": record.get("source_error"), "last_error": record.get("last_error")})
    return entry


def status_report(collectors, now, limits, as_json):
    """(text, exit status) for collectors: {name: Collector}, in the order to show them."""
    judged = [(name, judge(collector.record, now, limits, collector.configured_at), collector)
              for name, collector in collectors.items()]
    overall = worst(verdict.state for _, verdict, _ in judged)
    if as_json:
        entries = [_json_entry(name, verdict, collector, now) for name, verdict, collector in judged]
        return json.dumps({"status": STATE_NAMES[overall], "collectors": entries}, indent=2), overall
    if not judged:
        return "UNKNOWN: no collector has run yet", UNKNOWN
    judged.sort(key=lambda item: -SEVERITY[item[1][0]])  # stable: equal states keep the order given
    lines = [_line(name, state, reason, collector.record, now) for name, (state, reason, _), collector in judged]
    lines[0] += " | " + performance_data(collectors, now, limits)
    return "\n".join(lines), overall


# name, help, value of a record; one gauge each, labelled by collector. Timestamps rather than ages: a file
# node_exporter reads minutes later must not report a frozen age.
_METRICS = [
    ("afmetrics_last_run_timestamp_seconds", "When the collector's last run ended (Unix time).",
     lambda record: record["end"]),
    # 0 for never: an alert on time() - this fires for a collector that never succeeded too.
    ("afmetrics_last_success_timestamp_seconds",
     "When the collector's last run that exited 0 ended (Unix time; 0: never).",
     lambda record: record["last_success"] or 0),
    ("afmetrics_last_run_duration_seconds", "How long the collector's last run took.",
     lambda record: record["duration"]),
    ("afmetrics_last_run_exit_status", "Exit status of the collector's last run: 0 delivered all, 1 failed, 2 usage.",
     lambda record: record["exit_status"]),
    ("afmetrics_last_run_source_failed", "1 when a data source failed in the collector's last run.",
     lambda record: int(bool(record["source_error"]))),
    ("afmetrics_spool_documents", "Documents kept in the spool for the next run.",
     lambda record: record["spool_documents"]),
    ("afmetrics_spool_oldest_document_timestamp_seconds", "When the oldest spooled document was collected.",
     lambda record: record["spool_oldest_timestamp"]),
]
# A configured collector without a record has these alone.
_NO_RECORD = {"afmetrics_last_success_timestamp_seconds": 0}


def _sample(name, labels, value):
    label_text = ",".join('%s="%s"' % (key, val.replace("\\", "\\\\").replace('"', '\\"')) for key, val in labels)
    return "%s{%s} %s\n" % (name, label_text, repr(float(value)))


def _gauge(lines, metric, help_text):
    lines.append("# HELP %s %s\n# TYPE %s gauge\n" % (metric, help_text, metric))


def prometheus_text(collectors):
    """The collectors ({name: Collector}) as Prometheus text; a value a record lacks (no spooled document) has
    no sample."""
    lines = []
    for metric, help_text, value_of in _METRICS:
        _gauge(lines, metric, help_text)
        for name, collector in sorted(collectors.items()):
            value = _NO_RECORD.get(metric) if collector.record is None else value_of(collector.record)
            if value is not None:
                lines.append(_sample(metric, [("collector", name)], value))
    metric = "afmetrics_last_run_documents"
    _gauge(lines, metric, "Documents of the collector's last run, by what became of them.")
    for name, collector in sorted(collectors.items()):
        for outcome in OUTCOMES if collector.record else ():
            lines.append(_sample(metric, [("collector", name), ("outcome", outcome)], collector.record[outcome]))
    metric = "afmetrics_configured_timestamp_seconds"
    _gauge(lines, metric, "When the config file that names the collector (collectors =) last changed (Unix time).")
    for name, collector in sorted(collectors.items()):
        if collector.configured_at is not None:
            lines.append(_sample(metric, [("collector", name)], collector.configured_at))
    return "".join(lines)


def write_textfile(directory, collectors):
    """Replace DIRECTORY/afmetrics.prom atomically (node_exporter never reads half a file); raises OSError."""
    write_atomically(os.path.join(directory, TEXTFILE), prometheus_text(collectors))


def configured_at(opts):
    """When the collectors of the config file were configured: the file's last change (Unix seconds; None without
    a config file). The file's mtime needs no run and no writer (cron may never have run one, a monitoring agent
    cannot write the state dir), and every user can stat it where only the run user may read it; an edit for
    another reason restarts the wait, by at most stale_after, and only for a collector that never ran."""
    try:
        return os.stat(opts.config_path).st_mtime if opts.config_path else None
    except OSError:
        return None


def node_collectors(opts, state, names=None):
    """{name: Collector} of names (None: the configured collectors, then every other one with a record), each
    dated by configured_at() when configured or asked about by name; OSError when the state dir cannot be
    listed."""
    recorded = recorded_collectors(state)
    if names is None:
        names = list(opts.collectors) + [name for name in recorded if name not in opts.collectors]
        dated = set(opts.collectors)
    else:
        dated = set(names)
    since = configured_at(opts)
    collectors = {}
    for name in names:
        try:
            spool_bytes = os.stat(state.file("spool-%s.jsonl" % name)).st_size
        except OSError:
            spool_bytes = None
        collectors[name] = Collector(load_record(state, name) if name in recorded else None,
                                     since if name in dated else None, spool_bytes)
    return collectors


def update_textfile(opts, state, logger, deadline):
    """Rewrite the node_exporter textfile (when textfile_dir is set) from every collector's record and the
    configured collectors; errors are logged."""
    if not opts.textfile_dir:
        return
    try:
        # Two collectors' runs must not lose each other's records; a run that holds the lock for longer than
        # this one's budget must not keep it (and its own lock, and the next cron runs) waiting.
        lock = state.try_lock("textfile", until=deadline)
        if lock is None:
            logger.error("cannot write the node_exporter textfile: another run held its lock until the run "
                         "budget of %g s was used up", opts.run_budget)
            return
        with lock:
            collectors = node_collectors(opts, state)
            write_textfile(opts.textfile_dir, {name: collector for name, collector in collectors.items()
                                               if collector.record or collector.configured_at is not None})
    except OSError as error:
        logger.error("cannot write the node_exporter textfile: %s: %s", error.strerror, error.filename)
