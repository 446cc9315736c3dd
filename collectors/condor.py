#!/usr/bin/env python3
"""HTCondor: one condorqueue document per configured queue (-q NAME:CONSTRAINT) and one condorjob
document per job in the queue, plus each finished or removed job from condor_history exactly once.

Example: python3 collectors/condor.py -d -v -q all: -q 'short:queue=="short"'
"""
import itertools
import math
import sys
import time

import afmetrics_common as common

NAME = "condor"
SETTINGS = common.COLLECTOR_SETTINGS[NAME]
JOB_STATES = {0: "unexpanded", 1: "idle", 2: "running", 3: "removed", 4: "finished", 5: "held",
              6: "transferring_output", 7: "suspended"}
# States in which a job holds a slot (condor_q -run lists these) and its run time keeps growing.
HOLDS_SLOT = {2, 6, 7}
QUEUE_ATTRS = ["JobStatus", "CpusProvisioned", "MemoryProvisioned"]
JOB_ATTRS = ["Owner", "ClusterId", "ProcId", "RemoteWallClockTime", "JobCurrentStartDate", "ServerTime"] + QUEUE_ATTRS
# A row without these cannot become a document.
REQUIRED_ATTRS = {"Owner", "ClusterId", "ProcId", "JobStatus"}
HISTORY_ATTRS = ["Owner", "ClusterId", "ProcId", "JobStatus", "RemoteWallClockTime", "CompletionDate",
                 "EnteredCurrentStatus"]
WATERMARK_STATE = "condor_history.json"
FIRST_LOOK_BACK = 360  # seconds of history the very first run reports


def add_arguments(parser):
    parser.add_argument("-q", "--queue", dest="queues", action="append", metavar="NAME:CONSTRAINT",
                        help="report a queue: NAME:CONSTRAINT, split at the first colon "
                             "(repeatable; 'all:' is every job)")
    parser.add_argument("--exclude-owner", dest="exclude_owners", action="append", metavar="OWNER",
                        help="never report jobs of this owner (repeatable)")


def validate(opts):
    for spec in opts.queues:
        parse_queue_spec(spec)


def parse_queue_spec(spec):
    name, colon, constraint = spec.partition(":")
    if not colon or not name.strip():
        raise common.UsageError("bad queue %r: expected NAME:CONSTRAINT, e.g. all: or 'short:queue==\"short\"'" % spec)
    return name.strip(), constraint.strip()


def _number(token):
    if token == "undefined":
        return None
    value = float(token)
    if not math.isfinite(value):  # nan, inf, 1e400: no job has such an Id or run time
        raise ValueError(token)
    return value


def parse_autoformat(text, attributes, log):
    """Rows of `condor_q/condor_history -af ATTRS` as a list of dicts (see autoformat_rows)."""
    return list(autoformat_rows(text, attributes, log))


def autoformat_rows(text, attributes, log=None):
    """Yield the rows of `condor_q/condor_history -af ATTRS` as dicts; numbers as floats, undefined as None.

    Owner is the only string attribute asked for and user names hold no spaces, so a split is exact;
    a line that does not fit is skipped, and counted in a warning when a log is given.
    """
    bad = 0
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        try:
            if len(tokens) != len(attributes):
                raise ValueError
            row = {attribute: token if attribute == "Owner" else _number(token)
                   for attribute, token in zip(attributes, tokens)}
            if any(row.get(attribute) in (None, "undefined") for attribute in REQUIRED_ATTRS & set(row)):
                raise ValueError
        except ValueError:
            bad += 1
            continue
        yield row
    if bad and log:
        log.warning("%d line(s) of condor output did not parse and were skipped", bad)


def queue_document(name, jobs):
    counts = {status: 0 for status in (1, 2, 5)}
    cores = memory = 0
    for job in jobs:
        if job["JobStatus"] in counts:
            counts[job["JobStatus"]] += 1
        if job["JobStatus"] in HOLDS_SLOT:
            cores += job["CpusProvisioned"] or 0
            memory += job["MemoryProvisioned"] or 0
    return {"kind": "condorqueue", "queue": name, "idle": counts[1], "running": counts[2], "held": counts[5],
            "allocated_cores": int(cores), "allocated_mem": int(memory)}


def job_runtime(job, now):
    """Wall time so far: RemoteWallClockTime counts only runs that ended, so add the current one."""
    runtime = job["RemoteWallClockTime"] or 0
    if job.get("JobStatus") in HOLDS_SLOT and job.get("JobCurrentStartDate"):
        runtime += max(0, (job.get("ServerTime") or now) - job["JobCurrentStartDate"])
    return int(runtime)


def job_document(job, owner, now):
    return {"kind": "condorjob", "users": owner, "Id": "%d.%d" % (job["ClusterId"], job["ProcId"]),
            "Runtime": job_runtime(job, now), "state": JOB_STATES.get(job["JobStatus"], "unknown")}


def new_history(ads, watermark):
    """The history ads not reported yet, and the watermark after them.

    condor_history -completedsince stops at the first ad completed at or before the given time instead
    of filtering, and removed jobs have no CompletionDate, so each ad is dated and checked here. Ads dated
    exactly at the watermark can reach the history file after a run saw the watermark, so their Ids are kept.
    """
    fresh = []
    newest, ids_at_newest = watermark["time"], set(watermark["ids"])
    for ad in ads:
        when = ad["CompletionDate"] or ad["EnteredCurrentStatus"]
        job_id = "%d.%d" % (ad["ClusterId"], ad["ProcId"])
        if when is None or when < watermark["time"] or (when == watermark["time"] and job_id in watermark["ids"]):
            continue
        fresh.append(ad)
        if when > newest:
            newest, ids_at_newest = when, set()
        if when == newest:
            ids_at_newest.add(job_id)
    return fresh, {"time": newest, "ids": sorted(ids_at_newest)}


def valid_watermark(stored):
    return (isinstance(stored, dict) and type(stored.get("time")) in (int, float) and math.isfinite(stored["time"])
            and isinstance(stored.get("ids"), list) and all(isinstance(job_id, str) for job_id in stored["ids"]))


def load_watermark(run, now):
    stored = run.state.load(WATERMARK_STATE)
    if valid_watermark(stored):
        return stored
    if stored is not None:
        run.log.warning("state file %s holds no watermark: looking back %d s afresh",
                        run.state.file(WATERMARK_STATE), FIRST_LOOK_BACK)
    return {"time": int(now) - FIRST_LOOK_BACK, "ids": []}


def condor_command(tool, attributes, constraint=""):
    return [tool] + (["-all"] if tool == "condor_q" else []) + (["-constraint", constraint] if constraint else []) \
        + ["-af"] + attributes


def replaced_by_next_run(document):
    """Queue totals and queued jobs come again next run; a finished or removed job is reported only once."""
    return document["kind"] == "condorqueue" or document.get("state") not in ("finished", "removed")


def collect(run):
    """Yield the documents. Every command runs before the first one, so a failing source yields none; the
    queue's jobs then stream from condor_q's text instead of piling up as parsed rows."""
    opts = run.opts
    excluded = set(opts.exclude_owners)
    now = time.time()
    queue_text = run.command(condor_command("condor_q", JOB_ATTRS))
    queues = [(name, run.command(condor_command("condor_q", QUEUE_ATTRS, constraint)) if constraint else None)
              for name, constraint in map(parse_queue_spec, opts.queues)]
    watermark = load_watermark(run, now)
    since = ["-completedsince", "%d" % (watermark["time"] - 1)]
    history = parse_autoformat(run.command(["condor_history"] + since + ["-af"] + HISTORY_ATTRS),
                               HISTORY_ATTRS, run.log)
    finished, new_watermark = new_history(history, watermark)
    run.after_delivery.append(lambda: run.state.save(WATERMARK_STATE, new_watermark))

    for name, constrained_text in queues:
        # The whole queue's rows are read twice (here quietly) rather than kept.
        rows = autoformat_rows(queue_text, JOB_ATTRS) if constrained_text is None else \
            autoformat_rows(constrained_text, QUEUE_ATTRS, run.log)
        yield queue_document(name, rows)
    for job in itertools.chain(autoformat_rows(queue_text, JOB_ATTRS, run.log), finished):
        if job["Owner"] in excluded:
            continue
        owner = run.users.report_name(job["Owner"])
        if owner is not None:
            yield job_document(job, owner, now)


if __name__ == "__main__":
    sys.exit(common.script_main(sys.modules[__name__]))
