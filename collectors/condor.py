#!/usr/bin/env python3
"""HTCondor: one condorqueue document per configured queue (-q NAME:CONSTRAINT), one condorjob document per
job in the queue, and each finished or removed job exactly once, from the queue or from condor_history,
whichever sees it first; one jupyter-NAME document per --condor-jupyter NAME:CONSTRAINT, the owners of the
running jobs (with --jupyter-pending also idle ones) that are Jupyter sessions by CONSTRAINT.

Example: python3 collectors/condor.py -d -v -q all: -q 'short:queue=="short"' \
    --condor-jupyter 'htc:regexp("jupyterhub-singleuser", Arguments)'
"""
import itertools
import math
import re
import sys
import time

import afmetrics_common as common

NAME = "condor"
SETTINGS = common.COLLECTOR_SETTINGS[NAME]
JOB_STATES = {0: "unexpanded", 1: "idle", 2: "running", 3: "removed", 4: "finished", 5: "held",
              6: "transferring_output", 7: "suspended"}
# States in which a job holds a slot (condor_q -run lists these) and its run time keeps growing.
HOLDS_SLOT = {2, 6, 7}
# Removed and finished: reported once, although a job can stay queued in them (leave_in_queue, -spool).
ENDED = {3, 4}
QUEUE_ATTRS = ["JobStatus", "CpusProvisioned", "MemoryProvisioned"]
JOB_ATTRS = ["Owner", "ClusterId", "ProcId", "RemoteWallClockTime", "JobCurrentStartDate", "ServerTime"] + QUEUE_ATTRS
# A row without these cannot become a document.
REQUIRED_ATTRS = {"Owner", "ClusterId", "ProcId", "JobStatus"}
HISTORY_ATTRS = ["Owner", "ClusterId", "ProcId", "JobStatus", "RemoteWallClockTime", "CompletionDate",
                 "EnteredCurrentStatus"]
WATERMARK_STATE = "condor_history.json"
FIRST_LOOK_BACK = 360  # seconds of history the very first run reports
# JobStatus of a Jupyter session counted as in use, and with --jupyter-pending also of one waiting to start.
SESSION_RUNNING, SESSION_WAITING = 2, 1
# An Id reported from the queue is remembered until its history ad is seen; one whose ad never comes (no
# history kept, or beyond history_scan_limit) is forgotten this long after the job was last seen queued.
QUEUE_MEMORY = 7 * 86400
CURSOR = re.compile(r"\d+\.\d+\Z")


def add_arguments(parser):
    parser.add_argument("-q", "--queue", dest="queues", action="append", metavar="NAME:CONSTRAINT",
                        help="report a queue: NAME:CONSTRAINT, split at the first colon "
                             "(repeatable; 'all:' is every job)")
    common.add_exclude_owner_argument(parser)
    parser.add_argument("--history-scan-limit", dest="history_scan_limit", metavar="N", type=int,
                        help="read at most the N newest condor_history ads a run (default 100000)")
    parser.add_argument("--condor-jupyter", dest="condor_jupyter", action="append", metavar="NAME:CONSTRAINT",
                        help="report the owners of the jobs that CONSTRAINT (a ClassAd expression) says are Jupyter "
                             "sessions as kind jupyter-NAME; split at the first colon (repeatable)")
    common.add_jupyter_pending_argument(parser)


def validate(opts):
    for spec in opts.queues:
        parse_queue_spec(spec)
    sessions_of(opts)
    if opts.history_scan_limit < 1:
        raise common.UsageError("history_scan_limit must be at least 1, not %d" % opts.history_scan_limit)


def parse_queue_spec(spec):
    name, colon, constraint = spec.partition(":")
    if not colon or not name.strip():
        raise common.UsageError("bad queue %r: expected NAME:CONSTRAINT, e.g. all: or 'short:queue==\"short\"'" % spec)
    return name.strip(), constraint.strip()


def sessions_of(opts):
    """[(name, constraint)] of --condor-jupyter, or a UsageError; an empty constraint would make every job a
    session, so it is one."""
    sessions = []
    for spec in opts.condor_jupyter:
        name, colon, constraint = spec.partition(":")
        if not colon or not name.strip() or not constraint.strip() or len(name.split()) > 1:
            raise common.UsageError("bad condor_jupyter %r: expected NAME:CONSTRAINT, e.g. "
                                    "'htc:regexp(\"jupyterhub-singleuser\", Arguments)'" % spec)
        sessions.append((name.strip(), constraint.strip()))
    if len({name for name, _ in sessions}) < len(sessions):
        raise common.UsageError("condor_jupyter names a session twice: %s" % ", ".join(opts.condor_jupyter))
    return sessions


def session_expression(constraint):
    """What condor_q -af prints as true for a job CONSTRAINT selects and false for any other: HTCondor evaluates
    the ClassAd expression itself, as -constraint would (a number other than 0 is true), in the one queue query;
    undefined and error are false, never a token that would make the row unreadable."""
    return "ifThenElse((%s), 1, 0) =?= 1" % constraint


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


def autoformat_rows(text, attributes, log=None, sessions=0):
    """Yield the rows of `condor_q/condor_history -af ATTRS` as dicts; numbers as floats, undefined as None.

    Owner is the only string attribute asked for and user names hold no spaces, so a split is exact;
    a line that does not fit is skipped, and counted in a warning when a log is given. SESSIONS session
    expressions follow the attributes: row["sessions"] is what condor_q printed of them, "true" or "false" each,
    fewer when it could not parse one (it then drops that column and every one after it).
    """
    bad = 0
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        try:
            if not len(attributes) <= len(tokens) <= len(attributes) + sessions:
                raise ValueError
            tokens, printed = tokens[:len(attributes)], tokens[len(attributes):]
            row = {attribute: token if attribute == "Owner" else _number(token)
                   for attribute, token in zip(attributes, tokens)}
            if any(row.get(attribute) in (None, "undefined") for attribute in REQUIRED_ATTRS & set(row)):
                raise ValueError
            if sessions:
                row["sessions"] = printed
        except ValueError:
            bad += 1
            continue
        yield row
    if bad and log:
        log.warning("%d line(s) of condor output did not parse and were skipped", bad)


def job_id(job):
    return "%d.%d" % (job["ClusterId"], job["ProcId"])


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
    return {"kind": "condorjob", "users": owner, "Id": job_id(job),
            "Runtime": job_runtime(job, now), "state": JOB_STATES.get(job["JobStatus"], "unknown")}


def _finite(value):
    return type(value) in (int, float) and math.isfinite(value)


def _dated(stored, now):
    # A time ahead of the clock would hide every job until the clock gets there.
    return _finite(stored.get("time")) and stored["time"] <= now and isinstance(stored.get("ids"), list) \
        and all(isinstance(job, str) for job in stored["ids"])


def read_state(stored, now):
    """The state file's value as (state, problem); problem is None, "old" or "corrupt".

    state: "cursor", the Id of the newest-written history ad a run saw, or None before any was seen, and
    then "time" and "ids", a completion-time watermark (see dated_after); "queued": {Id: time last seen}
    of the jobs reported as finished or removed from the queue. "old" is the {"time": T, "ids": [...]}
    watermark of earlier versions, read as a dated state; anything else starts afresh, looking back
    FIRST_LOOK_BACK seconds.
    """
    if isinstance(stored, dict) and isinstance(stored.get("queued"), dict) \
            and all(_finite(seen) for seen in stored["queued"].values()):
        cursor = stored.get("cursor")
        if isinstance(cursor, str) and CURSOR.match(cursor):
            return {"cursor": cursor, "queued": stored["queued"]}, None
        if cursor is None and _dated(stored, now):
            return {"cursor": None, "time": stored["time"], "ids": stored["ids"], "queued": stored["queued"]}, None
    elif isinstance(stored, dict) and set(stored) == {"time", "ids"} and _dated(stored, now):
        return {"cursor": None, "time": stored["time"], "ids": stored["ids"], "queued": {}}, "old"
    return {"cursor": None, "time": int(now) - FIRST_LOOK_BACK, "ids": [], "queued": {}}, \
        None if stored is None else "corrupt"


def load_state(run, now):
    state, problem = read_state(run.state.load(WATERMARK_STATE), now)
    if problem == "old":
        run.log.warning("state file %s holds the completion-time watermark of an earlier version: this run "
                        "reads the history by completion time once more, and reports the finished and removed "
                        "jobs still queued once more", run.state.file(WATERMARK_STATE))
    elif problem == "corrupt":
        run.log.warning("state file %s holds no history position: looking back %d s afresh",
                        run.state.file(WATERMARK_STATE), FIRST_LOOK_BACK)
    return state


def history_command(state, limit):
    """condor_history prints the newest-written ad first; -since CURSOR stops at the ad a previous run saw
    first, -limit keeps a lost cursor from reading the whole history."""
    since = ["-since", state["cursor"]] if state["cursor"] else []
    return ["condor_history"] + since + ["-limit", "%d" % limit, "-af"] + HISTORY_ATTRS


def dated_after(ad, state):
    """Whether a history ad completed after the watermark state["time"], or at it and is not in state["ids"]
    (ads dated at the watermark can reach the history after a run saw the watermark). Removed jobs have no
    CompletionDate: they are dated by EnteredCurrentStatus."""
    when = ad["CompletionDate"] or ad["EnteredCurrentStatus"]
    return when is not None and (when > state["time"] or (when == state["time"] and job_id(ad) not in state["ids"]))


def unseen_history(ads, state):
    """The history ads (newest-written first) a previous run did not see.

    With a cursor that is every ad condor_history printed before the cursor's own, should it print that one;
    without one (the first run, a state of an earlier version) the ads dated after the watermark.
    """
    if state["cursor"]:
        ids = [job_id(ad) for ad in ads]
        return ads[:ids.index(state["cursor"])] if state["cursor"] in ids else ads
    return [ad for ad in ads if dated_after(ad, state)]


def scan_cut_short(text, ads, state, limit):
    """Whether condor_history stopped at the limit before it reached what the previous run saw: the cursor,
    or, without one, the watermark (the oldest ad it printed still dated after it)."""
    if len([line for line in text.splitlines() if line.strip()]) < limit:
        return False
    return bool(state["cursor"]) or bool(ads) and dated_after(ads[-1], state)


def next_state(state, ads, ended_in_queue, now):
    """The state after a run that saw the history ads ADS (all it printed, newest first) and the Ids
    ENDED_IN_QUEUE in the queue as finished or removed (and not in the history)."""
    seen = {job_id(ad) for ad in ads}
    queued = {job: last for job, last in state["queued"].items() if job not in seen and last >= now - QUEUE_MEMORY}
    queued.update((job, int(now)) for job in ended_in_queue)
    if ads:
        return {"cursor": job_id(ads[0]), "queued": queued}
    return dict(state, queued=queued)


def condor_command(tool, attributes, constraint=""):
    return [tool] + (["-all"] if tool == "condor_q" else []) + (["-constraint", constraint] if constraint else []) \
        + ["-af"] + attributes


def replaced_by_next_run(document):
    """Queue totals, Jupyter users and queued jobs come again next run; a finished or removed job is reported
    only once."""
    return document["kind"] != "condorjob" or document["state"] not in ("finished", "removed")


def session_owners(rows, sessions, counted, excluded):
    """({name: owners} of the (name, constraint) SESSIONS whose column condor_q printed for every row, the
    sessions it could not parse): the owners, not in EXCLUDED, of the jobs in the COUNTED JobStatus values that a
    session's expression is true for. condor_q parses a bad expression quietly, printing no column for it nor
    for any after it; the first missing one is the bad one."""
    owners = {name: set() for name, _ in sessions}
    printed = len(sessions)
    for row in rows:
        printed = min(printed, len(row["sessions"]))
        if row["JobStatus"] not in counted or row["Owner"] in excluded:
            continue
        for (name, _), value in zip(sessions, row["sessions"]):
            if value == "true":
                owners[name].add(row["Owner"])
    return {name: owners[name] for name, _ in sessions[:printed]}, sessions[printed:]


def session_documents(run, queue_text, sessions):
    """The jupyter-NAME document of each session; one that condor_q could not parse is one error line."""
    counted = {SESSION_RUNNING, SESSION_WAITING} if run.opts.jupyter_pending else {SESSION_RUNNING}
    owners, unparsed = session_owners(autoformat_rows(queue_text, JOB_ATTRS, sessions=len(sessions)), sessions,
                                      counted, set(run.opts.exclude_owners))
    if unparsed:
        run.source_failed("condor_jupyter %s: condor_q cannot parse its constraint %s%s" % (
            unparsed[0][0], unparsed[0][1], "; not evaluated after it: %s" % ", ".join(name for name, _ in unparsed[1:])
            if unparsed[1:] else ""))
    return [common.jupyter_document(name, run.users.report_names(users)) for name, users in owners.items()]


def constrained_queues(run):
    """(name, condor_q text or None for the whole queue) of each -q queue. A queue whose constraint condor_q
    refuses is one error line: the other queues and the jobs still go."""
    queues = []
    for name, constraint in map(parse_queue_spec, run.opts.queues):
        try:
            queues.append((name, run.command(condor_command("condor_q", QUEUE_ATTRS, constraint))
                           if constraint else None))
        except common.SourceError as error:
            run.source_failed("queue %s: %s" % (name, error))
    return queues


def collect(run):
    """Yield the documents. Every command runs before the first one, so a failing condor_q or condor_history
    yields none; the queue's jobs then stream from condor_q's text instead of piling up as parsed rows."""
    opts = run.opts
    excluded = set(opts.exclude_owners)
    now = time.time()
    # The queue before the history: a job that ends between the two is then in the history.
    sessions = sessions_of(opts)
    queue_text = run.command(condor_command("condor_q", JOB_ATTRS + [session_expression(constraint)
                                                                     for _, constraint in sessions]))
    queues = constrained_queues(run)
    state = load_state(run, now)
    history_text = run.command(history_command(state, opts.history_scan_limit))
    ads = parse_autoformat(history_text, HISTORY_ATTRS, run.log)
    if scan_cut_short(history_text, ads, state, opts.history_scan_limit):
        run.log.warning("condor_history: the newest %d ads (history_scan_limit) do not reach %s: older ones are "
                        "not reported", opts.history_scan_limit,
                        "job %s, the newest the previous run saw" % state["cursor"] if state["cursor"]
                        else "the previous run's completion time")
    in_history = {job_id(ad) for ad in ads}
    finished = [ad for ad in unseen_history(ads, state) if job_id(ad) not in state["queued"]]
    ended_in_queue = set()
    # Filled while the jobs stream, read when the state is saved once they were all delivered.
    run.after_delivery.append(lambda: run.state.save(WATERMARK_STATE, next_state(state, ads, ended_in_queue, now)))

    # Before the first document: a user the filter cannot decide on fails the run with nothing sent.
    run.users.decide({job["Owner"] for job in itertools.chain(
        autoformat_rows(queue_text, JOB_ATTRS, sessions=len(sessions)), finished)} - excluded)
    for name, constrained_text in queues:
        # The whole queue's rows are read twice (here quietly) rather than kept.
        rows = autoformat_rows(queue_text, JOB_ATTRS, sessions=len(sessions)) if constrained_text is None else \
            autoformat_rows(constrained_text, QUEUE_ATTRS, run.log)
        yield queue_document(name, rows)
    if sessions:
        yield from session_documents(run, queue_text, sessions)
    for job in itertools.chain(queued_jobs(queue_text, len(sessions), state, in_history, ended_in_queue, run.log),
                               finished):
        if job["Owner"] in excluded:
            continue
        owner = run.users.report_name(job["Owner"])
        if owner is not None:
            yield job_document(job, owner, now)


def queued_jobs(queue_text, sessions, state, in_history, ended_in_queue, log):
    """The queue's jobs to report (condor_q's rows with SESSIONS session columns), adding the Ids of those
    finished or removed to ENDED_IN_QUEUE. A job in the history left the queue while the run looked, and comes
    from there; one finished or removed that a previous run reported does not come again."""
    for job in autoformat_rows(queue_text, JOB_ATTRS, log, sessions):
        if job_id(job) in in_history:
            continue
        if job["JobStatus"] in ENDED:
            ended_in_queue.add(job_id(job))
            if job_id(job) in state["queued"]:
                continue
        yield job


if __name__ == "__main__":
    sys.exit(common.script_main(sys.modules[__name__]))
