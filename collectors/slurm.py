#!/usr/bin/env python3
"""Slurm: one slurmqueue document per configured queue (--slurm-queue NAME:PARTITIONS), one slurmjob document
per job in the queue (squeue), and each finished job exactly once (sacct), with the fields of condor.py's
condorqueue and condorjob documents; one jupyter-NAME document per --slurm-jupyter NAME:FIELD:PATTERN, the users
of the running jobs (with --jupyter-pending also pending ones) whose name, partition or comment PATTERN finds.

Finished jobs are read by their end time from a window that starts at a cursor in the state dir. A job's
accounting record can reach slurmdbd late (slurmdbd was down: slurmctld keeps the records in its DBD agent
queue and sends them when it is back, with their old end times), so the cursor moves only when sdiag says that
queue is empty, and then to MARGIN seconds before now (clocks of the login node and slurmctld may differ);
the jobs reported from inside the window are remembered, so that none is reported twice. The cursor moves only
after the documents were delivered or spooled, never in a debug run.

Slurm's PrivateData=jobs shows a user other than root, the SlurmUser or an operator only its own jobs, without an
error: a run as such a user says so in one warning line, with what to do.

Example: python3 collectors/slurm.py -d -v --slurm-queue all: --slurm-queue short:short \
    --slurm-jupyter 'ood:name:sys/dashboard/sys/[^/]*jupyter'
"""
import itertools
import os
import pwd
import re
import sys
import time

import afmetrics_common as common

NAME = "slurm"
SETTINGS = common.COLLECTOR_SETTINGS[NAME]
# squeue -O fields, in the order of SQUEUE_FIELDS' keys; "|" ends each (user, partition and reason names hold
# none) and width 0 prints a field whole, never cut to a column.
SQUEUE_FIELDS = {"id": "JobArrayID", "user": "UserName", "state": "State", "partitions": "Partition",
                 "reason": "Reason", "priority": "PriorityLong", "time": "TimeUsed", "tres": "tres-alloc"}
# Fields users write (a job's name, its comment) can hold "|": squeue gets them, only when a Jupyter session is
# told by them, after the others, each ended by the ASCII unit separator, which no one types.
TEXT_FIELDS = {"name": "Name", "comment": "Comment"}
TEXT_END = "\x1f"
SESSION_FIELDS = ("name", "partition", "comment")
SACCT_FIELDS = ["JobID", "User", "State", "ElapsedRaw", "End"]
# Slurm's final states (sacct --state names them by these abbreviations); a job in one is reported once.
FINAL_STATES = {"BF": "boot_fail", "CA": "cancelled", "CD": "completed", "DL": "deadline", "F": "failed",
                "NF": "node_fail", "OOM": "out_of_memory", "PR": "preempted", "TO": "timeout"}
# sacct reads --starttime in its local time, and in the hour that the end of daylight saving repeats it takes
# the earlier of the two (Slurm's parse_time hands mktime a time whose DST it leaves unknown: SchedMD/slurm
# src/common/parse_time.c), which reported that hour's finished jobs again: it is given UTC, and run in UTC.
# End times come back as epoch seconds: no time zone or locale to get wrong.
SACCT_ENVIRONMENT = dict(common.IN_UTC, SLURM_TIME_FORMAT="%s")
CURSOR_STATE = "slurm_sacct.json"
FIRST_LOOK_BACK = 360  # seconds of finished jobs the very first run reports
# How far before now the cursor stops: more than the clock difference between this node and slurmctld, and
# than the time from a job's end to its record in slurmdbd on a healthy cluster.
MARGIN = 300
MEMORY_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2, "P": 1024 ** 3}
MEMORY = re.compile(r"(\d+(?:\.\d+)?)([KMGTP]?)\Z")
# Slurm's own bound on an array's size (MaxArraySize): a range beyond it is not a job array.
MAX_ARRAY_TASKS = 4000001
DURATION = re.compile(r"(?:(?:(\d+)-)?(\d+):)?(\d+):(\d+)\Z")
ARRAY_RANGE = re.compile(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]\Z")
LINE = re.compile(r"[^\n]+")
AGENT_QUEUE = re.compile(r"^\s*DBD Agent queue size:\s*(\d+)\s*$", re.MULTILINE)
# PrivateData=jobs hides every other user's jobs from squeue (slurm.conf, read by slurmctld) and from sacct
# (slurmdbd.conf, read by slurmdbd), with no error: the documents would count only the run user's. root and
# SlurmUser see them all, and so does a user of AdminLevel Operator or Administrator in slurmdbd (Slurm 22.05,
# SchedMD/slurm: src/slurmctld/proc_req.c validate_operator, src/plugins/accounting_storage/common/common_as.c
# is_user_min_admin_level; doc/man/man5/slurm.conf.5 and slurmdbd.conf.5, PrivateData; doc/html/
# user_permissions.shtml, Operator). Both daemons print their flags as private_data_string() writes them: "none",
# or names such as "jobs,usage" ("all" as every name). The other flags hide nothing squeue or sacct report.
CONFIG_LINE = re.compile(r"^(\w+)\s*=\s*(.*?)\s*$", re.MULTILINE)
DBD_PART = "SlurmDBD configuration:"  # sacctmgr show config: the local slurm.conf's values, then slurmdbd's
SLURM_USER_ID = re.compile(r"\((\d+)\)\Z")  # SlurmUser = slurm(64030)
SEES_ALL_LEVELS = {"Operator", "Administrator"}  # sacctmgr's names of the AdminLevels


def add_arguments(parser):
    parser.add_argument("--slurm-queue", dest="slurm_queues", action="append", metavar="NAME:PARTITIONS",
                        help="report a queue: NAME:PARTITIONS, a comma-separated partition list, empty for "
                             "every partition (repeatable; 'all:' is every job)")
    common.add_exclude_owner_argument(parser)
    parser.add_argument("--slurm-jupyter", dest="slurm_jupyter", action="append", metavar="NAME:FIELD:PATTERN",
                        help="report the users of the jobs whose FIELD (name, partition or comment) the regular "
                             "expression PATTERN finds as kind jupyter-NAME (repeatable)")
    common.add_jupyter_pending_argument(parser)


def validate(opts):
    for spec in opts.slurm_queues:
        parse_queue_spec(spec)
    sessions_of(opts)


def sessions_of(opts):
    """[(name, field, compiled pattern)] of --slurm-jupyter, or a UsageError."""
    sessions = []
    for spec in opts.slurm_jupyter:
        name, field, pattern = (spec.split(":", 2) + ["", ""])[:3]
        if not name.strip() or len(name.split()) > 1 or field.strip() not in SESSION_FIELDS or not pattern:
            raise common.UsageError("bad slurm_jupyter %r: expected NAME:FIELD:PATTERN, FIELD one of %s, e.g. "
                                    "'ood:name:sys/dashboard/sys/.*jupyter'" % (spec, ", ".join(SESSION_FIELDS)))
        try:
            sessions.append((name.strip(), field.strip(), re.compile(pattern)))
        except re.error as error:
            raise common.UsageError("bad slurm_jupyter %r: the pattern is not a regular expression: %s"
                                    % (spec, error))
    if len({name for name, _, _ in sessions}) < len(sessions):
        raise common.UsageError("slurm_jupyter names a session twice: %s" % ", ".join(opts.slurm_jupyter))
    return sessions


def text_fields(sessions):
    """The TEXT_FIELDS squeue must print for SESSIONS, in TEXT_FIELDS' order."""
    return [field for field in TEXT_FIELDS if field in {field for _, field, _ in sessions}]


def parse_queue_spec(spec):
    """(name, set of partitions, empty for all) of NAME:PARTITIONS."""
    name, colon, partitions = spec.partition(":")
    names = [partition.strip() for partition in partitions.split(",") if partition.strip()]
    if not colon or not name.strip() or any(" " in partition for partition in names):
        raise common.UsageError("bad slurm queue %r: expected NAME:PARTITIONS, e.g. all: or short:short,debug"
                                % spec)
    return name.strip(), frozenset(names)


def squeue_command(texts=()):
    """squeue's command line, with the TEXT_FIELDS named by TEXTS after the others."""
    fields = ["%s:0|" % field for field in SQUEUE_FIELDS.values()] \
        + ["%s:0%s" % (TEXT_FIELDS[text], TEXT_END) for text in texts]
    return ["squeue", "--all", "--array", "--noheader", "--Format=" + ",".join(fields)]


def duration(text):
    """Seconds of Slurm's [[DAYS-]HOURS:]MINUTES:SECONDS."""
    match = DURATION.match(text)
    if not match:
        raise ValueError(text)
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def tres(text):
    """(CPUs, MiB) of a TRES string such as cpu=2,mem=256M,node=1,billing=2; (0, 0) for none."""
    values = dict(item.partition("=")[::2] for item in text.split(",") if item)
    cpus, memory = values.get("cpu", "0"), MEMORY.match(values.get("mem", "0"))
    if not cpus.isdigit() or not memory:
        raise ValueError(text)
    return int(cpus), float(memory.group(1)) * MEMORY_UNITS[memory.group(2) or "M"]


def lines(text):
    """The text's lines that hold more than white space, one at a time: neither a list of them nor a copy
    of the text (io.StringIO keeps four bytes a character) is made, so memory does not grow with the queue."""
    return (line for line in (match.group() for match in LINE.finditer(text)) if not line.isspace())


def parsed_rows(text, parse, tool, log=None):
    """Yield what PARSE makes of each line of TOOL's text: a list of rows, or ValueError for a line that does not
    parse, which is skipped, and counted in one warning when a log is given."""
    bad = 0
    for line in lines(text):
        try:
            rows = parse(line)
        except ValueError:
            bad += 1
            continue
        yield from rows
    if bad and log:
        log.warning("%d line(s) of %s output did not parse and were skipped", bad, tool)


def squeue_row(line, texts=()):
    fields = line.split("|", len(SQUEUE_FIELDS))
    if len(fields) != len(SQUEUE_FIELDS) + 1:
        raise ValueError
    written = fields.pop().split(TEXT_END)
    if len(written) != len(texts) + 1 or written[-1].strip():
        raise ValueError
    row = dict(zip(SQUEUE_FIELDS, (field.strip() for field in fields)))
    if not row["id"] or not row["user"] or not row["state"].isupper():
        raise ValueError
    cpus, memory = tres(row["tres"])
    # squeue writes a job without a comment as "(null)".
    row.update((text, "" if value == "(null)" else value) for text, value in zip(texts, written))
    row.update(partitions=set(row["partitions"].split(",")), runtime=duration(row["time"]), cpus=cpus,
               memory=memory, held=row["state"] == "PENDING" and (int(row["priority"]) == 0
                                                                  or row["reason"].startswith("JobHeld")))
    return [row]


def squeue_rows(text, log=None, texts=()):
    """Each job of the squeue text (of squeue_command(TEXTS)) as a dict: id, user, state (as squeue names it),
    partitions (a set), held, runtime (s), cpus, memory (MiB allocated), and each of TEXTS as written."""
    return parsed_rows(text, lambda line: squeue_row(line, texts), "squeue", log)


def queue_documents(queues, rows):
    """The slurmqueue document of each (name, partitions) queue, from one pass over the rows."""
    totals = [{"kind": "slurmqueue", "queue": name, "idle": 0, "running": 0, "held": 0, "allocated_cores": 0,
               "allocated_mem": 0} for name, _ in queues]
    for row in rows:
        for (_, partitions), document in zip(queues, totals):
            if partitions and not partitions & row["partitions"]:
                continue
            if row["state"] == "RUNNING":
                document["running"] += 1
                document["allocated_cores"] += row["cpus"]
                document["allocated_mem"] += row["memory"]
            elif row["state"] == "PENDING":
                document["held" if row["held"] else "idle"] += 1
    for document in totals:
        document["allocated_mem"] = int(round(document["allocated_mem"]))
    return totals


def sacct_command(since, until):
    """sacct for the finished jobs that ended from since to until (seconds since the epoch), the window given
    in UTC: to be run with SACCT_ENVIRONMENT."""
    window = [time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) for moment in (since, until)]
    return ["sacct", "--allusers", "--allocations", "--noheader", "--parsable2",
            "--format=" + ",".join(SACCT_FIELDS), "--state=" + ",".join(sorted(FINAL_STATES)),
            "--starttime=" + window[0], "--endtime=" + window[1]]


def array_ids(job_id):
    """The Ids a sacct JobID stands for: itself, or each task of an array that never ran (123_[1-3,7])."""
    match = ARRAY_RANGE.match(job_id)
    if not match:
        return [job_id]
    tasks = []
    for part in match.group(2).split(","):
        first, _, last = part.partition("-")
        tasks.append(range(int(first), int(last or first) + 1))
    if sum(map(len, tasks)) > MAX_ARRAY_TASKS:
        raise ValueError(job_id)
    return ["%s_%d" % (match.group(1), task) for numbers in tasks for task in numbers]


def sacct_row(line):
    fields = line.split("|")
    if len(fields) != len(SACCT_FIELDS):
        raise ValueError
    job_id, user, state, elapsed, end = fields
    state = state.split(" ")[0].lower()
    if not job_id or not user or state not in FINAL_STATES.values() or not elapsed.isdigit() or not end.isdigit():
        raise ValueError
    return [{"id": one, "user": user, "state": state, "runtime": int(elapsed), "end": int(end)}
            for one in array_ids(job_id)]


def sacct_rows(text, log=None):
    """Each finished job of the sacct text (SLURM_TIME_FORMAT=%s) as a dict: id, user, state (lower case,
    "CANCELLED by 1000" as cancelled), runtime (s), end (epoch s); an array that never ran as its tasks."""
    return parsed_rows(text, sacct_row, "sacct", log)


def read_state(stored, now):
    """The cursor state as (state, problem): {"since": epoch s, "seen": {Id: end}}; a missing or unreadable one
    starts FIRST_LOOK_BACK seconds ago (problem "corrupt" when there was one)."""
    if isinstance(stored, dict) and set(stored) == {"since", "seen"} and type(stored["since"]) is int \
            and stored["since"] <= now and isinstance(stored["seen"], dict) \
            and all(type(end) is int for end in stored["seen"].values()):
        return stored, None
    return {"since": int(now) - FIRST_LOOK_BACK, "seen": {}}, None if stored is None else "corrupt"


def next_state(state, finished, settled, now):
    """The state after a run that read the FINISHED rows from the window; SETTLED: slurmctld had no
    accounting record waiting for slurmdbd before sacct ran, so every job that ended MARGIN seconds ago is in
    the window's past for good."""
    since = max(state["since"], int(now) - MARGIN) if settled else state["since"]
    seen = {job: end for job, end in state["seen"].items() if end >= since}
    seen.update((row["id"], row["end"]) for row in finished if row["end"] >= since)
    return {"since": since, "seen": seen}


def agent_queue(text, log):
    """Records slurmctld holds for slurmdbd (sdiag's DBD Agent queue size); 0 when sdiag does not say."""
    match = AGENT_QUEUE.search(text)
    if not match:
        log.warning("sdiag printed no DBD Agent queue size: finished jobs whose accounting record comes late "
                    "may be missed")
        return 0
    return int(match.group(1))


def config_values(text):
    """{key: value} of the KEY = VALUE lines of `scontrol show config`."""
    return dict(CONFIG_LINE.findall(text))


def dbd_config_values(text):
    """config_values of slurmdbd's part of `sacctmgr show config` (which prints the local slurm.conf's first);
    {} when slurmdbd did not answer, and sacctmgr printed no such part."""
    return config_values(text.partition(DBD_PART)[2])


def hides_jobs(config, uid):
    """Whether a daemon's config (config_values) hides other users' jobs from UID, whatever its AdminLevel: its
    PrivateData names jobs, and UID is neither root nor the daemon's SlurmUser."""
    if "jobs" not in config.get("PrivateData", "").split(","):
        return False
    slurm_user = SLURM_USER_ID.search(config.get("SlurmUser", ""))
    return uid != 0 and not (slurm_user and int(slurm_user.group(1)) == uid)


def private_data_warning(hidden_by, user, level):
    """The one warning line of a run whose user (AdminLevel LEVEL, as sacctmgr names it, "" for no record) the
    files HIDDEN_BY (slurm.conf, slurmdbd.conf) hide other users' jobs from; None when it sees them all."""
    if not hidden_by or level in SEES_ALL_LEVELS:
        return None
    return ("PrivateData=jobs in %s hides other users' jobs from %s: squeue and sacct show it only its own, and "
            "the documents count no one else's. Give it the operator level (sacctmgr modify user %s set "
            "adminlevel=operator) or run slurm.py as a user that sees every job (root or the SlurmUser)"
            % (" and ".join(hidden_by), user, user))


def check_private_data(run):
    """Log private_data_warning's line when PrivateData limits the run user's view. Nothing here fails the run:
    a daemon that does not answer fails squeue or sacct on its own. Each daemon's config is read on its own, and
    one that hides jobs is warned of even when the run user's AdminLevel cannot be read (sacctmgr missing,
    slurmdbd down): then the line says the level is unknown."""
    uid = os.getuid()
    if uid == 0:
        return
    daemons = [("slurm.conf", ["scontrol", "show", "config"], config_values),
               ("slurmdbd.conf", ["sacctmgr", "show", "config"], dbd_config_values)]
    hidden_by = []
    for name, argv, values in daemons:
        try:
            if hides_jobs(values(run.command(argv)), uid):
                hidden_by.append(name)
        except common.SourceError as error:
            run.log.info("cannot tell whether PrivateData in %s hides jobs from this user: %s", name, error)
    if not hidden_by:
        return
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError as error:
        run.log.info("cannot tell whether Slurm's PrivateData hides jobs from this user: %s", error)
        return
    try:
        level, unknown = run.command(["sacctmgr", "--noheader", "--parsable2", "show", "user", user,
                                      "format=AdminLevel"]).strip(), ""
    except common.SourceError as error:
        level, unknown = "", " (its AdminLevel is unknown: %s; an operator would see every job)" % error
    warning = private_data_warning(hidden_by, user, level)
    if warning:
        run.log.warning("%s%s", warning, unknown)


def job_document(row, owner):
    return {"kind": "slurmjob", "users": owner, "Id": row["id"], "Runtime": row["runtime"],
            "state": row["state"].lower()}


def replaced_by_next_run(document):
    """Queue totals, Jupyter users and queued jobs come again next run; a finished job is reported only once."""
    return document["kind"] != "slurmjob" or document["state"] not in FINAL_STATES.values()


def is_session(row, field, pattern):
    """Whether PATTERN finds the row's FIELD (of SESSION_FIELDS): one of a pending job's partitions will do."""
    values = row["partitions"] if field == "partition" else [row[field]]
    return any(pattern.search(value) for value in values)


def session_users(rows, sessions, counted, excluded):
    """{name: users} of the (name, field, pattern) SESSIONS: the users, not in EXCLUDED, of the rows in a COUNTED
    state (RUNNING, and "waiting" for PENDING and not held) that are the session's by is_session."""
    users = {name: set() for name, _, _ in sessions}
    for row in rows:
        state = "waiting" if row["state"] == "PENDING" and not row["held"] else row["state"]
        if state not in counted or row["user"] in excluded:
            continue
        for name, field, pattern in sessions:
            if is_session(row, field, pattern):
                users[name].add(row["user"])
    return users


def collect(run):
    """Yield the documents. squeue and sdiag run before the first one, so slurmctld down yields none; sacct
    failing (slurmdbd down) costs only the finished jobs, which a later run reports, the cursor staying."""
    opts, log = run.opts, run.log
    excluded = set(opts.exclude_owners)
    now = time.time()
    # The queue before the accounting: a job that ends between the two is then in sacct's answer.
    sessions = sessions_of(opts)
    texts = text_fields(sessions)
    queue_text = run.command(squeue_command(texts))
    waiting = agent_queue(run.command(["sdiag"]), log)
    check_private_data(run)
    state, problem = read_state(run.state.load(CURSOR_STATE), now)
    if problem:
        log.warning("state file %s holds no sacct cursor: looking back %d s afresh", run.state.file(CURSOR_STATE),
                    FIRST_LOOK_BACK)
    try:
        # The end of the window is well ahead: a job slurmctld's clock dates later than ours is not cut off.
        finished = list(sacct_rows(run.command(sacct_command(state["since"], now + 86400), SACCT_ENVIRONMENT),
                                   log))
    except common.SourceError as error:
        run.source_failed("%s: finished jobs are reported once sacct answers" % error)
        finished = None
    # Jobs in sacct's answer that squeue lists, but not as COMPLETING: requeued after their node failed or they
    # were preempted (sacct, asked for final states, answers the earlier run's record while the job is back in
    # the queue, and even running again), or ended between the two calls. Neither is finished yet for this run.
    queued_still = set()
    if finished is not None:
        if waiting:
            log.info("slurmctld holds %d record(s) for slurmdbd: the sacct cursor stays where it is", waiting)
        run.after_delivery.append(lambda: run.state.save(CURSOR_STATE, next_state(
            state, [row for row in finished if row["id"] not in queued_still], not waiting, now)))
    queues = [parse_queue_spec(spec) for spec in opts.slurm_queues]
    # Before the first document: a user the filter cannot decide on fails the run with nothing sent.
    run.users.decide({row["user"] for row in itertools.chain(squeue_rows(queue_text, texts=texts), finished or ())}
                     - excluded)
    yield from queue_documents(queues, squeue_rows(queue_text, texts=texts))
    counted = {"RUNNING", "waiting"} if opts.jupyter_pending else {"RUNNING"}
    for name, users in session_users(squeue_rows(queue_text, texts=texts) if sessions else (), sessions, counted,
                                     excluded).items():
        yield common.jupyter_document(name, run.users.report_names(users))
    done = {row["id"] for row in finished or ()}

    def queued():
        for row in squeue_rows(queue_text, log, texts):
            if row["id"] in done:
                if row["state"] == "COMPLETING":
                    continue  # it ended while the run looked: reported as finished
                queued_still.add(row["id"])
            yield row

    # After queued(), which fills queued_still.
    fresh = (row for row in finished or () if row["id"] not in state["seen"] and row["id"] not in queued_still)
    for row in itertools.chain(queued(), fresh):
        if row["user"] in excluded:
            continue
        owner = run.users.report_name(row["user"])
        if owner is not None:
            yield job_document(row, owner)


if __name__ == "__main__":
    sys.exit(common.script_main(sys.modules[__name__]))
