"""The fleet check of playbooks/status.yml: one table from every login node's `afmetrics_collector --status
--json`.

afmetrics_fleet_status(hostvars, hosts, now=None): for the inventory names in hosts, each node's registered
    `_afmetrics_status_run` (a command result; missing where the node did not answer) is read into
    {"lines": [the table, one line per node and collector, a header first; then "endpoint down on N nodes: ..."
               when the endpoint is down for the fleet; a count last],
     "critical": [nodes that cannot collect: a collector CRITICAL for another reason than the endpoint (a source
                  failing, a configuration error, no run)], "unanswered": [nodes with no status to read],
     "undelivered": [nodes that cannot deliver: keeping documents for the endpoint while it is not down for the
                     fleet, or for longer than spool_critical_after (CRITICAL) in any case],
     "endpoint_down": [nodes keeping documents because the endpoint does not take them, when it is down for the
                       fleet: at least half the nodes that answered and can collect keep documents],
     "status": {node: OK|WARNING|CRITICAL|UNKNOWN|NO ANSWER}}.
    An endpoint down for the fleet is the central service's trouble, not the nodes': one line for all of them, and
    no node fails the check for it until its kept documents are too old. One node's endpoint down (its proxy, its
    CA bundle, its network) is that node's: it fails the check. Nodes that cannot collect count for neither side:
    they say nothing of the endpoint.
    Columns: node, collector, last success (UTC, and how long ago), outcome (status and the collector's summary),
    spool (documents kept for a later run, and the oldest one's age). A node whose command did not exit 0-3 with
    the JSON --status prints (no such command, a Python error) gets one row saying what it printed instead.
    now (a timezone-aware datetime) is for the ages; the controller's clock by default.
"""
import datetime
import json

STATUSES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
HEADER = ("NODE", "COLLECTOR", "LAST SUCCESS", "OUTCOME", "SPOOL")
SUMMARY_WIDTH = 90


def _age(seconds):
    seconds = int(seconds)
    if seconds < 120:
        return "%d s" % seconds
    if seconds < 2 * 3600:
        return "%d min" % (seconds // 60)
    if seconds < 2 * 86400:
        return "%d h" % (seconds // 3600)
    return "%d d" % (seconds // 86400)


def _when(stamp, now):
    if not stamp:
        return "never"
    try:
        then = datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return str(stamp)
    if then.tzinfo is None:
        then = then.replace(tzinfo=datetime.timezone.utc)
    return "%s (%s ago)" % (then.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
                            _age(max(0, (now - then).total_seconds())))


def _spool(collector):
    documents = collector.get("spool_documents") or 0
    if not documents:
        return "empty"
    oldest = collector.get("spool_oldest_age_seconds")
    return "%d documents%s" % (documents, ", oldest %s" % _age(oldest) if oldest is not None else "")


def _one_line(text):
    text = " ".join(str(text).split())
    return text if len(text) <= SUMMARY_WIDTH else text[:SUMMARY_WIDTH - 3] + "..."


def _parsed(result):
    """The --status JSON of one node's command result, or the one line saying why there is none."""
    if result is None:
        return None, "no answer (unreachable, or failed before the status)"
    if result.get("skipped"):
        return None, "not checked: %s" % result.get("skip_reason", "skipped")
    rc = result.get("rc")
    if "rc" not in result:
        return None, "no status: %s" % _one_line(result.get("msg", "the command did not run"))
    try:
        reply = json.loads(result.get("stdout", ""))
    except ValueError:
        reply = None
    if rc not in (0, 1, 2, 3) or not isinstance(reply, dict) or reply.get("status") not in STATUSES:
        said = (result.get("stderr") or result.get("stdout") or result.get("msg") or "").strip().splitlines()
        return None, "no status (exit %s): %s" % (rc, _one_line(said[-1] if said else "nothing printed"))
    return reply, None


def afmetrics_fleet_status(hostvars, hosts, now=None):
    now = now or datetime.datetime.now(datetime.timezone.utc)
    rows, status, critical, unanswered, down, late = [], {}, [], [], [], []
    for node in sorted(hosts):
        reply, failure = _parsed(hostvars.get(node, {}).get("_afmetrics_status_run"))
        if failure:
            rows.append((node, "-", "-", "NO ANSWER: " + failure, "-"))
            status[node] = "NO ANSWER"
            unanswered.append(node)
            continue
        status[node] = reply["status"]
        collectors = reply.get("collectors") or []
        if any(c.get("status") == "CRITICAL" and not c.get("endpoint_down") for c in collectors) or (
                reply["status"] == "CRITICAL" and not collectors):
            critical.append(node)
        if any(c.get("endpoint_down") for c in collectors):
            down.append(node)
        if any(c.get("endpoint_down") and c.get("status") == "CRITICAL" for c in collectors):
            late.append(node)
        for collector in collectors:
            outcome = collector.get("status", "?")
            if collector.get("summary"):
                outcome += ": " + _one_line(collector["summary"])
            rows.append((node, collector.get("collector", "?"), _when(collector.get("last_success"), now),
                         outcome, _spool(collector)))
        if not reply.get("collectors"):
            rows.append((node, "-", "-", reply["status"] + ": no collector has a record yet", "-"))
    widths = [max(len(row[i]) for row in rows + [HEADER]) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [HEADER] + rows]
    collecting = [node for node in status if node not in unanswered and node not in critical]
    down_collecting = [node for node in down if node in collecting]
    fleet_down = bool(down_collecting) and 2 * len(down_collecting) >= len(collecting)
    endpoint_down = down if fleet_down else []
    undelivered = [node for node in down if node in late or not fleet_down]
    if endpoint_down:
        lines.append("endpoint down on %d node%s: %s (documents kept for later)" % (
            len(endpoint_down), "" if len(endpoint_down) == 1 else "s", ", ".join(endpoint_down)))
    counts = [(name, sum(1 for value in status.values() if value == name)) for name in STATUSES + ("NO ANSWER",)]
    lines.append("%d nodes: %s" % (len(status), ", ".join("%d %s" % (n, name) for name, n in counts if n)))
    return {"lines": lines, "critical": critical, "unanswered": unanswered, "undelivered": undelivered,
            "endpoint_down": endpoint_down, "status": status}


class FilterModule:
    def filters(self):
        return {"afmetrics_fleet_status": afmetrics_fleet_status}
