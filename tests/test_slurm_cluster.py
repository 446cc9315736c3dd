"""slurm.py against a real Slurm cluster (tests/slurm_cluster.py): its documents must equal what scontrol and
sacct themselves say, each finished job must be reported exactly once across runs (slurmdbd down among them),
and a broken cluster must end the run within its timeout with one error line.

One job mix is submitted per session and shared by every test, in file order; the fault tests come last
because they stop and freeze slurmctld.
"""
import collections
import hashlib
import json
import re
import signal
import time

import pytest

from conftest import (BOB_PASSWD, UNRESOLVED_GROUP, batch_collector, errors, falling_back, group_filter_runs, indexed,
                      jobs_by_id_of_kind, local_time, log_lines, of_kind)
from slurm_cluster import FINAL_STATES, USERS, expand

pytestmark = pytest.mark.slurm

TOKEN, CLUSTER = "slurm-token", "SLURM-AF"
QUEUES = ["--slurm-queue", "all:", "--slurm-queue", "short:short", "--slurm-queue", "both:long,short"]
QUEUE_PARTITIONS = {"all": set(), "short": {"short"}, "both": {"long", "short"}}
GATED = "/usr/local/bin/afmetrics-gated-job"
FAULT_TIMEOUT = 5  # --timeout of the fault runs, seconds
STOPPED_TIMEOUT = 20
PYTHON_START_SLACK = 10  # seconds a run may take beyond its timeout: interpreter start, host collector
# Jupyter at SLAC is an Open OnDemand interactive app, a Slurm job (usatlas/af-docs, docs/slac/jupyter.md); its app
# (slaclab/slac-ood-jupyter, submit.yml.erb) names no job, so OnDemand's name is the job's: sys/dashboard/sys/ and
# the app's directory, after the portal's name where one is set. BNL's HPC JupyterHub runs Slurm jobs too
# (docs/bnl/jupyter.md), which batchspawner's SlurmSpawner names spawner-jupyterhub (jupyterhub/batchspawner,
# batchspawner/batchspawner.py). docs/reference.md's settings for both.
OOD_SESSIONS = "ood:name:sys/dashboard/sys/[^/]*jupyter"
SPAWNER_SESSIONS = "hpc:name:^spawner-jupyterhub$"
# Slurm checks time limits and deadlines every 30 s: a one-minute job times out 60 to 90 s after it started.
TIME_LIMIT_WAIT = 150


class JobMix:
    """The jobs submitted once per session, by role: each a job Id, arrays a list of task Ids."""

    def __init__(self, cluster):
        self.cluster = cluster
        sbatch = cluster.sbatch
        self.long = sbatch("alice", "-p", "long", "-c", "2", "--mem=256")
        self.short = sbatch("bob", "-p", "short", "--mem-per-cpu=300")
        self.suspended = sbatch("bob", "-p", "long")
        self.user_held = sbatch("alice", "-p", "short", "--hold")
        self.admin_held = sbatch("bob", "-p", "long", "--hold")
        cluster.run("scontrol", "hold", self.admin_held)
        self.two_partitions = sbatch("bob", "-p", "long,short", "--hold")
        self.begins_later = sbatch("bob", "-p", "short", "--begin=now+1hour")
        self.completed = sbatch("alice", "-p", "short", command="/bin/true")
        self.failed = sbatch("bob", "-p", "long", command="exit 3")
        self.cancelled = sbatch("alice", "-p", "long")
        self.cancelled_array = sbatch("bob", "-p", "short", "--hold", "--array=0-3")
        array = sbatch("bob", "-p", "short", "--array=0-2")
        self.array = ["%s_%d" % (array, task) for task in range(3)]
        throttled = sbatch("alice", "-p", "long", "--array=0-5%2")
        self.throttled = ["%s_%d" % (throttled, task) for task in range(6)]
        self.gated = [sbatch("alice" if n % 2 else "bob", "-p", "short" if n % 2 else "long",
                             command="%s /tmp/gate-%d" % (GATED, n)) for n in range(4)]
        self.completing = sbatch("alice", "-p", "long", command="%s /tmp/gate-completing" % GATED)
        self.timeout = sbatch("alice", "-p", "short", "--time=1")
        # Both need the whole node, which the jobs above keep busy; nice puts them behind every later job.
        self.resources = sbatch("alice", "-p", "long", "-c", "16", "--nice=100000")
        self.deadline = sbatch("bob", "-p", "short", "-c", "16", "--nice=100000", "--time=1",
                               "--deadline=now+150")
        self.settle()

    def settle(self):
        cluster = self.cluster
        started = [self.long, self.short, self.suspended, self.cancelled, self.completing, self.timeout] \
            + self.array + self.throttled[:2] + self.gated
        cluster.wait_for("the jobs to start", lambda jobs: all(jobs[job]["JobState"] == "RUNNING"
                                                               for job in started))
        cluster.run("scontrol", "suspend", self.suspended)
        cluster.run("scancel", self.cancelled)
        # Never split into tasks: sacct keeps one record, JOBID_[0-3], for the four, once slurmctld sent it.
        cluster.wait_recorded(self.cancelled_array)
        cluster.run("scancel", self.cancelled_array)
        self.cancelled_array = ["%s_%d" % (self.cancelled_array, task) for task in range(4)]
        cluster.wait_in_sacct([self.completed, self.failed, self.cancelled])
        cluster.wait_for("the mix to settle", lambda jobs: (
            jobs[self.suspended]["JobState"] == "SUSPENDED" and jobs[self.resources]["Reason"] == "Resources"
            and all(job not in jobs for job in [self.completed, self.failed, self.cancelled])))


@pytest.fixture(scope="module")
def job_mix(slurm_cluster):
    return JobMix(slurm_cluster)


@pytest.fixture
def collect(slurm_cluster, receiver, run_collector, tmp_path):
    return batch_collector(slurm_cluster, "slurm.py", receiver, run_collector, tmp_path, TOKEN, CLUSTER)


def jobs_by_id(documents):
    return jobs_by_id_of_kind(documents, "slurmjob")


def seconds(text):
    """scontrol's RunTime, [DAYS-]HH:MM:SS."""
    days, _, clock = text.rpartition("-")
    hours, minutes, secs = (int(part) for part in clock.split(":"))
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + secs


def mebibytes(amount):
    units = {"M": 1, "G": 1024, "T": 1024 * 1024}
    return float(amount[:-1]) * units[amount[-1]] if amount[-1] in units else float(amount)


def held(record):
    return record["JobState"] == "PENDING" and (record["Priority"] == "0" or record["Reason"].startswith("JobHeld"))


def truth(queue, partitions):
    """The slurmqueue fields of one queue as scontrol says them: its jobs counted by task, and the CPUs and
    memory of the TRES of its running ones."""
    counts = {"idle": 0, "running": 0, "held": 0, "allocated_cores": 0, "allocated_mem": 0.0}
    for record in queue.values():
        if partitions and not partitions & set(record["Partition"].split(",")):
            continue
        if record["JobState"] == "RUNNING":
            counts["running"] += 1
            alloc = dict(item.split("=") for item in record["TRES"].split(","))
            counts["allocated_cores"] += int(alloc["cpu"])
            counts["allocated_mem"] += mebibytes(alloc["mem"])
        elif record["JobState"] == "PENDING":
            counts["held" if held(record) else "idle"] += 1
    counts["allocated_mem"] = int(round(counts["allocated_mem"]))
    return counts


def finished_in_sacct(cluster):
    """{Id: sacct row} of every job that ended today, a pending array's tasks each on their own. sacct selects
    jobs by their end time only when asked for final states: otherwise it leaves out jobs that never became
    eligible (a held array cancelled)."""
    finished = {}
    for row in cluster.sacct("--starttime=now-1days", "--endtime=now+1days", "--state=" + ",".join(FINAL_STATES)):
        state = row["State"].split()[0]
        if state not in FINAL_STATES:
            continue
        job, _, tasks = row["JobID"].partition("_[")
        ids = ["%s_%d" % (job, task) for task in expand(tasks.rstrip("]"))] if tasks else [row["JobID"]]
        for one in ids:
            finished[one] = dict(row, State=state)
    return finished


def test_documents_equal_the_cluster(slurm_cluster, job_mix, collect, receiver):
    before = slurm_cluster.queue()
    done, documents, _ = collect(*QUEUES)
    after = slurm_cluster.queue()
    finished = finished_in_sacct(slurm_cluster)
    assert done.returncode == 0, done.stderr
    assert all(doc["token"] == TOKEN and doc["cluster"] == CLUSTER for doc in documents)
    assert indexed(receiver, documents)
    assert set(before) == set(after), "the queue changed during the run"
    assert {job: record["JobState"] for job, record in before.items()} == \
        {job: record["JobState"] for job, record in after.items()}

    queues = {doc["queue"]: doc for doc in of_kind(documents, "slurmqueue")}
    assert sorted(queues) == ["all", "both", "short"]
    for name, partitions in QUEUE_PARTITIONS.items():
        reported = {field: queues[name][field] for field in ("idle", "running", "held", "allocated_cores",
                                                              "allocated_mem")}
        assert reported == truth(before, partitions), name
    # The mix is only a test of the partitions if the queues differ.
    assert queues["all"]["running"] > queues["short"]["running"] > 0
    assert queues["all"] == dict(queues["both"], queue="all")
    assert queues["short"]["held"] >= 2 and queues["short"]["idle"] >= 1

    jobs = jobs_by_id(documents)
    assert set(jobs) == set(before) | set(finished)
    for job_id, record in before.items():
        assert jobs[job_id]["users"] == record["UserId"].split("(")[0], job_id
        assert jobs[job_id]["state"] == record["JobState"].lower(), job_id
        assert seconds(record["RunTime"]) <= jobs[job_id]["Runtime"] <= seconds(after[job_id]["RunTime"]), job_id
    assert {jobs[job_id]["state"] for job_id in before} == {"pending", "running", "suspended"}
    for job_id, row in finished.items():
        assert (jobs[job_id]["users"], jobs[job_id]["state"], jobs[job_id]["Runtime"]) == (
            row["User"], row["State"].lower(), int(row["ElapsedRaw"])), job_id
    assert {jobs[job_id]["state"] for job_id in finished} == {"completed", "failed", "cancelled"}
    assert set(job_mix.cancelled_array) <= set(finished)


def test_excluded_owner_is_absent(slurm_cluster, job_mix, collect):
    done, documents, _ = collect(*QUEUES, "--exclude-owner", "bob")
    assert done.returncode == 0, done.stderr
    alice = {job for job, record in slurm_cluster.queue().items() if record["UserId"].startswith("alice(")}
    alice |= {job for job, row in finished_in_sacct(slurm_cluster).items() if row["User"] == "alice"}
    jobs = jobs_by_id(documents)
    assert set(jobs) == alice
    # Queue totals count every job: exclusions are about whose jobs are named, as condor.py does.
    [everything] = [doc for doc in of_kind(documents, "slurmqueue") if doc["queue"] == "all"]
    assert everything["running"] > sum(job["state"] == "running" for job in jobs.values())


def finished_of(jobs):
    return {job_id: job["state"] for job_id, job in jobs.items() if job["state"] in
            {state.lower() for state in FINAL_STATES}}


def test_each_finished_job_is_reported_once_across_runs(slurm_cluster, job_mix, collect, tmp_path):
    """Runs sharing a state dir, with jobs ending between them: while slurmdbd is down (its records reach
    accounting later, with their old end times), while a run looks, by their time limit and deadline, and
    through a long COMPLETING epilog."""
    cluster, state = slurm_cluster, tmp_path / "shared-state"
    runs = []

    def run(expected, *args, returncode=0, **options):
        done, documents, _ = collect(*QUEUES, *args, state=state, **options)
        assert done.returncode == returncode, done.stderr
        runs.append((time.monotonic(), jobs_by_id(documents), documents, done))
        if expected is not None:
            assert finished_of(runs[-1][1]) == expected, "run %d" % len(runs)
        return done, documents

    early = {job: row["State"].lower() for job, row in finished_in_sacct(cluster).items()}
    run(early)

    cluster.open_gate("gate-0")
    cluster.wait_in_sacct(job_mix.gated[:1])
    run({job_mix.gated[0]: "completed"})

    # slurmdbd down: the queue is still reported; gate 1's job ends meanwhile, its record waits in slurmctld.
    cluster.stop("slurmdbd")
    try:
        cluster.open_gate("gate-1")
        cluster.wait_for("gated job 1 to end", lambda jobs: job_mix.gated[1] not in jobs)
        done, documents = run({}, returncode=1)
        [error] = errors(done)
        assert error.startswith("ERROR:slurm:sacct failed"), done.stderr
        assert error.endswith("finished jobs are reported once sacct answers")
        assert sorted(doc["queue"] for doc in of_kind(documents, "slurmqueue")) == ["all", "both", "short"]
        assert cluster.agent_queue() > 0
    finally:
        cluster.start("slurmdbd")
    # At once: slurmctld sends what it holds only some seconds after slurmdbd is back, so sacct answers
    # without gated job 1, and the cursor must stay where it was before the outage; then the record is in.
    cursor = json.loads((state / "slurm_sacct.json").read_text())["since"]
    done, _ = run({}, "-v")
    assert cluster.agent_queue() > 0, "slurmctld sent its records before the run: the late record was not tested"
    assert any(line.startswith("INFO:slurm:slurmctld holds ") for line in log_lines(done.stderr)), done.stderr
    assert json.loads((state / "slurm_sacct.json").read_text())["since"] == cursor
    cluster.wait_in_sacct(job_mix.gated[1:2])
    run({job_mix.gated[1]: "completed"})

    # Gated job 2 ends between the run's squeue, which sees it running, and its sacct: to that run it is running
    # (a job requeued after a node failure looks the same, test_node_failure_...), to the next one completed.
    run({}, env=ending_job_environment(cluster, tmp_path / "ending", job_mix.gated[2], "gate-2"))
    assert runs[-1][1][job_mix.gated[2]]["state"] == "running"
    run({job_mix.gated[2]: "completed"})

    # A job held COMPLETING by its epilog is reported once, as completed, whatever squeue says meanwhile.
    hold = cluster.root / "tmp" / ("hold-epilog-%s" % job_mix.completing)
    hold.touch()
    cluster.open_gate("gate-completing")
    cluster.wait_for("a completing job", lambda jobs: jobs[job_mix.completing]["JobState"] == "COMPLETING")
    run(None)
    assert runs[-1][1][job_mix.completing]["state"] in ("completing", "completed")
    hold.unlink()
    cluster.wait_in_sacct([job_mix.completing])
    cluster.wait_for("the completing job to go", lambda jobs: job_mix.completing not in jobs)

    # Time limit and deadline.
    cluster.wait_in_sacct([job_mix.timeout, job_mix.deadline], timeout=TIME_LIMIT_WAIT)
    run(None)

    reported = collections.Counter(job_id for _, jobs, _, _ in runs for job_id in finished_of(jobs))
    finished = finished_in_sacct(cluster)
    assert reported == dict.fromkeys(finished, 1), "every finished job exactly once"
    assert {finished[job]["State"] for job in (job_mix.timeout, job_mix.deadline)} == {"TIMEOUT", "DEADLINE"}
    last = runs[-1][1]
    for job_id, row in finished.items():
        reports = [jobs[job_id] for _, jobs, _, _ in runs if jobs.get(job_id, {}).get("state") == row["State"].lower()]
        assert [(job["users"], job["Runtime"]) for job in reports] == [(row["User"], int(row["ElapsedRaw"]))], job_id
    for queued in cluster.queue():
        assert queued in last, "queued jobs are reported every run"
    (start, first, _, _), (end, _, _, _) = runs[0], runs[-1]
    grown = last[job_mix.long]["Runtime"] - first[job_mix.long]["Runtime"]
    assert abs(grown - (end - start)) <= 2, "Runtime grew %d s in %.1f s of wall time" % (grown, end - start)
    assert last[job_mix.suspended]["Runtime"] == first[job_mix.suspended]["Runtime"], "a suspended job's clock stops"


def ending_job_environment(cluster, directory, job_id, gate):
    """An environment whose squeue, once, opens GATE after it read the queue and waits until JOB_ID (a gated
    job) is in sacct: the job ends between a collector's squeue and its sacct."""
    directory.mkdir()
    script = directory / "squeue"
    script.write_text(
        '#!/bin/sh\nout=$("%(bin)s/squeue" "$@") || exit\n'
        'if [ ! -e "%(once)s" ]; then\n    touch "%(once)s" "%(gate)s"\n'
        '    until "%(bin)s/sacct" -n -X -P -a -o JobID,State -S now-1days | grep -qx "%(job)s|COMPLETED"; do\n'
        '        sleep 0.2\n    done\nfi\nprintf "%%s\\n" "$out"\n'
        % {"bin": cluster.bin, "once": directory / "once", "gate": cluster.root / "tmp" / gate, "job": job_id})
    script.chmod(0o755)
    return {"PATH": "%s:%s" % (directory, cluster.environment()["PATH"])}


def test_malformed_squeue_lines_are_skipped_with_one_warning(slurm_cluster, job_mix, collect, tmp_path):
    wrapper = tmp_path / "garbage" / "squeue"
    wrapper.parent.mkdir()
    wrapper.write_text('#!/bin/sh\n"%s/squeue" "$@" || exit\necho "garbage"\necho "1|alice|RUNNING|long|None|1|'
                       'INVALID|cpu=1,mem=100M|"\n' % slurm_cluster.bin)
    wrapper.chmod(0o755)
    done, documents, _ = collect(*QUEUES, env={"PATH": "%s:%s" % (wrapper.parent,
                                                                    slurm_cluster.environment()["PATH"])})
    assert done.returncode == 0, done.stderr
    assert [line for line in log_lines(done.stderr) if ":slurm:" in line] == [
        "WARNING:slurm:2 line(s) of squeue output did not parse and were skipped"]
    assert set(slurm_cluster.queue()) <= set(jobs_by_id(documents))


def test_group_that_cannot_be_resolved_leaves_the_cursor(slurm_cluster, collect, tmp_path):
    """-g with the user directory down for one run (getgrnam, over the /etc/group of a private mount namespace,
    finds no such group): that run sends nothing of Slurm and leaves its cursor, and the job that finished
    meanwhile is reported once the group resolves again."""
    cluster, state = slurm_cluster, tmp_path / "state"
    with_group, directory_down = group_filter_runs(cluster, collect, tmp_path, USERS, *QUEUES)
    assert with_group()[0].returncode == 0
    job = cluster.sbatch("alice", "-p", "short", command="/bin/true")
    cluster.wait_in_sacct([job])
    cursor = (state / "slurm_sacct.json").read_text()
    done, documents, _ = directory_down()
    assert done.returncode == 1
    assert errors(done) == ["ERROR:slurm:group afmgroup " + UNRESOLVED_GROUP]
    assert documents == []
    assert (state / "slurm_sacct.json").read_text() == cursor
    done, documents, _ = with_group()
    assert done.returncode == 0, done.stderr
    assert jobs_by_id(documents)[job]["state"] == "completed"


def test_finished_job_is_not_reported_again_in_the_repeated_hour(slurm_cluster, collect, tmp_path):
    """The cursor in the hour local time repeats when daylight saving ends, just after a job the previous run
    reported ended: sacct must not read the cursor as the hour before, which reports the job again."""
    cluster, state = slurm_cluster, tmp_path / "state"
    job = cluster.sbatch("alice", "-p", "short", command="/bin/true")
    cluster.wait_in_sacct([job])
    ended = int(cluster.run("env", "SLURM_TIME_FORMAT=%s", "sacct", "-n", "-X", "-P", "-o", "End", "-j", job)
                .stdout)
    cursor = ended + 1
    cluster.wait_until("the cursor is past", lambda: time.time() > cursor)
    state.mkdir()
    (state / "slurm_sacct.json").write_text(json.dumps({"since": cursor, "seen": {}}))
    zone = falling_back(cursor)
    assert local_time(cursor, zone) == local_time(cursor - 3600, zone)  # the repeated hour
    done, documents, _ = collect(*QUEUES, env=dict(cluster.environment(), TZ=zone))
    assert done.returncode == 0, done.stderr
    assert job not in jobs_by_id(documents)


@pytest.fixture(scope="module")
def jupyter_sessions(slurm_cluster, job_mix):
    """Sessions and look-alikes beside the mix's jobs (none of which is one), two users with several each:
    alice's two OnDemand Jupyter sessions run; of bob's, the OnDemand one waits (it may begin in an hour) while his
    OnDemand desktop and his JupyterHub session run; a job name with "|" in it must not cost its job."""
    cluster = slurm_cluster
    # Room on the node: the mix's gated jobs end (in file order they ended already).
    for gate in ["gate-%d" % n for n in range(len(job_mix.gated))] + ["gate-completing"]:
        cluster.open_gate(gate)
    jobs = [cluster.sbatch("alice", "--job-name=sys/dashboard/sys/slac-ood-jupyter"),
            cluster.sbatch("alice", "--job-name=ondemand/sys/dashboard/sys/jupyter", "-p", "short"),
            cluster.sbatch("bob", "--job-name=sys/dashboard/sys/slac-ood-jupyter", "--begin=now+1hour"),
            cluster.sbatch("bob", "--job-name=sys/dashboard/sys/bc_desktop"),
            cluster.sbatch("bob", "--job-name=spawner-jupyterhub"),
            cluster.sbatch("alice", "--job-name=notebook | sys/dashboard/sys/jupyter", "--comment=a | b")]
    cluster.wait_for("the sessions", lambda queue: [queue[job]["JobState"] for job in jobs] == ["RUNNING"] * 2
                     + ["PENDING"] + ["RUNNING"] * 3)
    return jobs


def session_users(cluster, spec, pending):
    """The users of the running jobs (with PENDING also of those pending and not held) whose name the pattern of
    the --slurm-jupyter SPEC finds, as scontrol tells them (a name with a space is cut at it there)."""
    states = {"RUNNING", "PENDING"} if pending else {"RUNNING"}
    return sorted({record["UserId"].split("(")[0] for record in cluster.queue().values()
                   if record["JobState"] in states and not held(record)
                   and re.search(spec.split(":", 2)[2], record["JobName"])})


@pytest.mark.parametrize("pending", [False, True])
def test_jupyter_users_of_ondemand_and_jupyterhub_sessions_from_the_one_squeue(slurm_cluster, jupyter_sessions, collect,
                                                                               tmp_path, pending):
    env = slurm_cluster.environment_counting(tmp_path / "counting", "squeue")
    done, documents, _ = collect("--slurm-jupyter", OOD_SESSIONS, "--slurm-jupyter", SPAWNER_SESSIONS,
                                 *(["--jupyter-pending"] if pending else []), env=env)
    assert done.returncode == 0, done.stderr
    ood, spawner = (session_users(slurm_cluster, spec, pending) for spec in (OOD_SESSIONS, SPAWNER_SESSIONS))
    assert (ood, spawner) == ((["alice", "bob"] if pending else ["alice"]), ["bob"])
    assert [doc for doc in documents if doc["kind"].startswith("jupyter-")] == [
        {"token": TOKEN, "cluster": CLUSTER, "kind": "jupyter-ood", "jupyter_user_count": len(ood), "users": ood},
        {"token": TOKEN, "cluster": CLUSTER, "kind": "jupyter-hpc", "jupyter_user_count": 1, "users": spawner}]
    assert set(slurm_cluster.queue()) <= set(jobs_by_id(documents))
    assert len((tmp_path / "counting" / "calls").read_text().splitlines()) == 1


def test_jupyter_users_by_partition_and_comment_filtered_hashed_and_excluded(slurm_cluster, jupyter_sessions, collect,
                                                                             tmp_path):
    options = ["--slurm-jupyter", "short:partition:^short$", "--slurm-jupyter", r"commented:comment:^a \| b$"]
    with_group, _ = group_filter_runs(slurm_cluster, collect, tmp_path, ["alice"], *options, passwd=[BOB_PASSWD])
    for done, documents, _ in [with_group(), collect(*options, "--exclude-owner", "bob", "-o", "-z", "pepper")]:
        assert done.returncode == 0, done.stderr
        alice = hashlib.sha256(b"pepperalice").hexdigest()[:8] if "-o" in done.args else "alice"
        assert [(doc["kind"], doc["users"]) for doc in documents if doc["kind"].startswith("jupyter-")] == [
            ("jupyter-short", [alice]), ("jupyter-commented", [alice])]
        assert {doc["users"] for doc in of_kind(documents, "slurmjob")} == {alice}


def assert_fails_within_timeout(collect, timeout=FAULT_TIMEOUT):
    """slurm.py and the umbrella with --host: exit 1 within the timeout, one error line naming squeue,
    nothing of slurm delivered, and the host documents delivered all the same; the error line."""
    done, documents, took = collect(*QUEUES, "--timeout", timeout)
    assert done.returncode == 1, done.stderr
    assert took < timeout + PYTHON_START_SLACK
    [error] = errors(done)
    assert error.startswith("ERROR:slurm:squeue "), done.stderr
    assert documents == []

    done, documents, took = collect("--slurm", "--host", "--disk", "/", *QUEUES, "--timeout", timeout,
                                    script="afmetrics_collector")
    assert done.returncode == 1, done.stderr
    assert took < timeout + PYTHON_START_SLACK
    assert {"CPU", "MEM", "DISK"} <= {doc["kind"] for doc in documents}
    assert not [doc for doc in documents if doc["kind"].startswith("slurm")]
    return error


def test_frozen_slurmctld(slurm_cluster, job_mix, collect):
    slurm_cluster.signal("slurmctld", signal.SIGSTOP)
    try:
        error = assert_fails_within_timeout(collect)
    finally:
        slurm_cluster.signal("slurmctld", signal.SIGCONT)
    assert error == "ERROR:slurm:squeue did not answer within %g s" % FAULT_TIMEOUT


def test_stopped_slurmctld(slurm_cluster, job_mix, collect):
    slurm_cluster.stop("slurmctld")
    try:
        # squeue retries for 9 s before it gives up on a slurmctld that is not there.
        error = assert_fails_within_timeout(collect, timeout=STOPPED_TIMEOUT)
    finally:
        slurm_cluster.start("slurmctld")
    assert error == "ERROR:slurm:squeue failed (exit 1): slurm_load_jobs error: Unable to contact slurm controller " \
        "(connect failure)"


def test_node_failure_ends_a_job_once_and_a_requeued_one_only_when_it_ends(slurm_cluster, job_mix, collect):
    """The node fails (set DOWN, as slurmctld does when slurmd stops answering): a job that may not be requeued
    ends NODE_FAIL, reported once; one that may (Slurm's default) goes back to the queue, and sacct, asked for
    final states, answers its NODE_FAIL while it waits and while it runs again. It is a queued job until it ends,
    and then reported once, as cancelled. Last in the file: it takes the node down under every job of the mix."""
    cluster = slurm_cluster
    cluster.run("scancel", "--user=alice")  # room on the node
    cluster.run("scancel", "--user=bob")
    lost = cluster.sbatch("alice", "-p", "long", "--no-requeue")
    requeued = cluster.sbatch("bob", "-p", "short")
    cluster.wait_for("both to run", lambda jobs: all(jobs[job]["JobState"] == "RUNNING" for job in (lost, requeued)))
    node = cluster.run("sinfo", "--noheader", "--format=%N").stdout.split()[0]
    cluster.run("scontrol", "update", "nodename=" + node, "state=down", "reason=afmetrics-test")
    try:
        cluster.wait_in_sacct([lost])
        cluster.wait_for("the requeue", lambda jobs: jobs.get(requeued, {}).get("JobState") == "PENDING")
        assert {row["JobID"]: row["State"] for row in cluster.sacct(
            "--starttime=now-1hours", "--endtime=now+1days", "--state=NF")} == {lost: "NODE_FAIL",
                                                                               requeued: "NODE_FAIL"}
        done, documents, _ = collect(*QUEUES)
        assert done.returncode == 0, done.stderr
        jobs = jobs_by_id(documents)
        assert (jobs[lost]["state"], jobs[requeued]["state"]) == ("node_fail", "pending")
        # ReturnToService=2 may have brought the node back already: then there is nothing to resume.
        cluster.run("scontrol", "update", "nodename=" + node, "state=resume", check=False)
        cluster.run("scontrol", "update", "jobid=" + requeued, "starttime=now")  # no requeue delay
        cluster.wait_for("the rerun", lambda jobs: jobs[requeued]["JobState"] == "RUNNING")
        done, documents, _ = collect(*QUEUES)
        assert done.returncode == 0, done.stderr
        jobs = jobs_by_id(documents)
        assert lost not in jobs and jobs[requeued]["state"] == "running"
        cluster.run("scancel", requeued)
        cluster.wait_for("the cancel", lambda jobs: requeued not in jobs)
        cluster.wait_in_sacct([requeued])
        finals = [jobs_by_id(collect(*QUEUES)[1]) for _ in range(2)]
        assert [{job: document["state"] for job, document in run.items() if job in (lost, requeued)}
                for run in finals] == [{requeued: "cancelled"}, {}]
    finally:
        cluster.run("scontrol", "update", "nodename=" + node, "state=resume", check=False)
