"""condor.py against a real personal HTCondor pool (tests/condor_pool.py): its documents must equal what the
pool itself says, and a broken pool must end the run within its timeout with one error line.

One job mix is submitted per pool and shared by every test, in file order; the fault tests come last because
they stop the schedd and the whole pool.
"""
import collections
import hashlib
import json
import time

import pytest

from conftest import (BOB_PASSWD, UNRESOLVED_GROUP, batch_collector, errors, group_filter_runs, indexed,
                      jobs_by_id_of_kind, of_kind)
from condor_pool import USERS

pytestmark = pytest.mark.condor

TOKEN, CLUSTER = "pool-token", "POOL-AF"
SHORT = 'queue=="short"'
QUEUES = ["-q", "all:", "-q", "short:" + SHORT]
# The state names SPEC.md gives for the JobStatus values this mix produces.
STATES = {1: "idle", 2: "running", 3: "removed", 4: "finished", 5: "held", 7: "suspended"}
SLEEP = {"executable": "/bin/sleep", "arguments": "3600"}
IN_SHORT = {"+queue": '"short"'}
FAULT_TIMEOUT = 5  # --timeout of the fault runs, seconds
PYTHON_START_SLACK = 10  # seconds a run may take beyond its timeout: interpreter start, host collector
# BNL's HTC JupyterHub runs each session as an HTCondor job (usatlas/af-docs, docs/bnl/jupyter.md). The submit
# description of batchspawner's CondorSpawner (jupyterhub/batchspawner, batchspawner/batchspawner.py), submitted
# as the user: /bin/sh running batchspawner-singleuser jupyterhub-singleuser, which docs/reference.md's setting finds.
HUB_SESSION = {"executable": "/bin/sh", "getenv": "True", "should_transfer_files": "False", "request_cpus": 1,
               "request_memory": 256,
               "arguments": "\"-c 'exec batchspawner-singleuser jupyterhub-singleuser --ip=0.0.0.0'\""}
SESSION_CONSTRAINT = 'regexp("jupyterhub-singleuser", Arguments)'


class JobMix:
    """The jobs submitted once per pool, by role; every role is one job Id except gated (four) and spares."""

    def __init__(self, pool):
        self.pool = pool
        submit = pool.submit
        self.long = submit("alice", "long", dict(SLEEP, request_cpus=2, request_memory=256, **IN_SHORT))
        self.evicted = submit("alice", "evicted", SLEEP)
        self.suspended = submit("alice", "suspended", dict(SLEEP, **IN_SHORT))
        self.held = submit("alice", "held", dict(SLEEP, hold="true", **IN_SHORT))
        self.idle = submit("alice", "idle", dict(SLEEP, request_cpus=64, **IN_SHORT))  # no slot is that big
        self.completed = submit("alice", "completed", {"executable": "/bin/true"})
        self.bob_running = submit("bob", "running", dict(SLEEP, **IN_SHORT))
        self.local = submit("bob", "local", dict(SLEEP, universe="local"))
        self.removed = submit("bob", "removed", SLEEP)
        self.gated = submit("bob", "gated", {"executable": "/usr/local/bin/afmetrics-gated-job",
                                             "arguments": "/tmp/gate-$(Process)"}, count=4)
        # Finished jobs that stay queued: until condor_rm and then condor_rm -forcex, or until condor_rm alone.
        self.lingering = submit("alice", "lingering", {"executable": "/bin/true", "leave_in_queue": "true"})
        self.kept = submit("alice", "kept", {"executable": "/bin/true", "leave_in_queue": "JobStatus == 4"})
        # Idle jobs to remove, one history ad each.
        self.spares = submit("alice", "spares", dict(SLEEP, request_cpus=64), count=16)
        self.settle()

    def settle(self):
        pool = self.pool
        started = self.long + self.evicted + self.suspended + self.bob_running + self.local + self.removed \
            + self.gated
        pool.wait_for("the jobs to start", lambda jobs: all(jobs[job]["JobStatus"] == 2 for job in started))
        # An eviction after a few seconds of running, so that the job has an earlier run to count (vacated
        # within its first second, a job keeps RemoteWallClockTime 0 although NumJobStarts is 2).
        pool.wait_for("a 4 s first run", lambda jobs: run_age(jobs[self.evicted[0]]) >= 4)
        pool.run("condor_vacate_job", self.evicted[0], user="alice")
        pool.run("condor_suspend", self.suspended[0], user="alice")
        pool.run("condor_rm", self.removed[0], user="bob")
        pool.wait_in_history(self.completed + self.removed)
        pool.wait_for("the mix to settle", lambda jobs: (
            jobs[self.evicted[0]].get("NumJobStarts", 0) >= 2 and jobs[self.evicted[0]]["JobStatus"] == 2
            and jobs[self.suspended[0]]["JobStatus"] == 7 and jobs[self.held[0]]["JobStatus"] == 5
            and jobs[self.idle[0]]["JobStatus"] == 1
            and jobs[self.lingering[0]]["JobStatus"] == jobs[self.kept[0]]["JobStatus"] == 4))


def run_age(ad):
    """Seconds of the job's current run by the schedd's clock."""
    return ad["ServerTime"] - ad["JobCurrentStartDate"]


def true_runtime(ad):
    """Wall time of a queued job: the runs that ended (HTCondor adds each to RemoteWallClockTime when it
    ends) plus the current run while the job holds a slot (running or suspended)."""
    earlier = int(ad.get("RemoteWallClockTime", 0))
    return earlier + (run_age(ad) if ad["JobStatus"] in (2, 7) else 0)


@pytest.fixture(scope="module")
def job_mix(condor_pool):
    return JobMix(condor_pool)


@pytest.fixture
def collect(condor_pool, receiver, run_collector, tmp_path):
    return batch_collector(condor_pool, "condor.py", receiver, run_collector, tmp_path, TOKEN, CLUSTER)


def jobs_by_id(documents):
    return jobs_by_id_of_kind(documents, "condorjob")


def allocated(pool, constraint=""):
    """Cores and MiB held by jobs in slots: what condor_q -run itself lists (running and suspended jobs)."""
    options = ["-run", "-af", "CpusProvisioned", "MemoryProvisioned"] + (["-constraint", constraint]
                                                                         if constraint else [])
    slots = pool.jobs(*options).values()
    return sum(ad.get("CpusProvisioned", 0) for ad in slots), sum(ad.get("MemoryProvisioned", 0) for ad in slots)


def test_documents_equal_the_pool(condor_pool, job_mix, collect, receiver):
    before = condor_pool.jobs()
    done, documents, _ = collect(*QUEUES)
    after = condor_pool.jobs()
    history = condor_pool.history()
    assert done.returncode == 0, done.stderr
    assert all(doc["token"] == TOKEN and doc["cluster"] == CLUSTER for doc in documents)
    assert indexed(receiver, documents)
    assert set(before) == set(after), "the queue changed during the run"

    queues = {doc["queue"]: doc for doc in of_kind(documents, "condorqueue")}
    assert sorted(queues) == ["all", "short"]
    for name, constraint in [("all", ""), ("short", SHORT)]:
        totals = condor_pool.totals(constraint)
        cores, memory = allocated(condor_pool, constraint)
        reported = {field: queues[name][field] for field in ("idle", "running", "held", "allocated_cores",
                                                              "allocated_mem")}
        assert reported == {"idle": totals["Idle"], "running": totals["Running"], "held": totals["Held"],
                            "allocated_cores": cores, "allocated_mem": memory}, name
    # The mix is only a test of the constraint if the queues differ.
    assert queues["all"]["running"] > queues["short"]["running"] > 0
    assert queues["short"]["idle"] == queues["short"]["held"] == 1

    jobs = jobs_by_id(documents)
    assert set(history) == set(job_mix.completed + job_mix.removed)  # all within the first run's 360 s
    assert set(jobs) == set(before) | set(history)
    for job_id, ad in before.items():
        assert jobs[job_id]["users"] == ad["Owner"]
        assert jobs[job_id]["state"] == STATES[ad["JobStatus"]], job_id
        assert true_runtime(ad) <= jobs[job_id]["Runtime"] <= true_runtime(after[job_id]), job_id
    assert {jobs[job_id]["state"] for job_id in before} == {"idle", "running", "held", "suspended", "finished"}
    assert jobs[job_mix.local[0]]["state"] == "running"
    evicted = after[job_mix.evicted[0]]
    assert evicted["RemoteWallClockTime"] >= 3, "the evicted run was not counted by HTCondor"
    assert jobs[job_mix.evicted[0]]["Runtime"] >= evicted["RemoteWallClockTime"] + run_age(before[job_mix.evicted[0]])
    for job_id, ad in history.items():
        assert (jobs[job_id]["users"], jobs[job_id]["state"], jobs[job_id]["Runtime"]) == (
            ad["Owner"], STATES[ad["JobStatus"]], int(ad["RemoteWallClockTime"])), job_id
    assert {jobs[job_id]["state"] for job_id in history} == {"finished", "removed"}


def test_excluded_owner_is_absent(condor_pool, job_mix, collect):
    done, documents, _ = collect(*QUEUES, "--exclude-owner", "bob")
    assert done.returncode == 0, done.stderr
    jobs = jobs_by_id(documents)
    alice_jobs = {job_id for job_id, ad in condor_pool.jobs().items() if ad["Owner"] == "alice"}
    alice_jobs |= set(job_mix.completed)
    assert set(jobs) == alice_jobs
    assert {job["users"] for job in jobs.values()} == {"alice"}


def test_a_refused_queue_constraint_costs_only_its_queue(condor_pool, job_mix, collect):
    done, documents, _ = collect(*QUEUES, "-q", 'bad:queue=="x')
    assert done.returncode == 1
    [error] = errors(done)
    assert error.startswith("ERROR:condor:queue bad: condor_q failed (exit 1): "), done.stderr
    assert sorted(doc["queue"] for doc in of_kind(documents, "condorqueue")) == ["all", "short"]
    assert set(jobs_by_id(documents)) >= set(condor_pool.jobs())


def ended(jobs):
    return {job_id: job["state"] for job_id, job in jobs.items() if job["state"] in ("finished", "removed")}


def test_each_ended_job_is_reported_once_across_runs(condor_pool, job_mix, collect, tmp_path):
    """Six runs sharing a state dir, with jobs ending between them in each way that writes history ads out of
    completion order or keeps ended jobs queued, a rotation of the history file, and a job that ends while a
    run looks; the long job's Runtime grows with wall time past a minute."""
    pool, state = condor_pool, tmp_path / "shared-state"
    runs = []

    def run(expected, **options):
        done, documents, _ = collect(*QUEUES, state=state, **options)
        assert done.returncode == 0, done.stderr
        runs.append((time.monotonic(), jobs_by_id(documents)))
        assert ended(runs[-1][1]) == expected, "run %d" % len(runs)

    def remove(*job_ids, user="alice"):
        pool.run("condor_rm", *job_ids, user=user)
        pool.wait_in_history(job_ids)

    spares = iter(job_mix.spares)
    run({job_mix.completed[0]: "finished", job_mix.removed[0]: "removed", job_mix.lingering[0]: "finished",
         job_mix.kept[0]: "finished"})

    # Ads written in this order: a job completing now, then one that completed during the mix (before the
    # newest ad the first run saw), then an idle job removed now. The lingering job is marked removed.
    pool.open_gate("gate-0")
    pool.wait_in_history(job_mix.gated[:1])
    remove(job_mix.kept[0])
    spare = next(spares)
    remove(spare)
    pool.run("condor_rm", job_mix.lingering[0], user="alice")
    pool.wait_for("the lingering job removed", lambda jobs: jobs[job_mix.lingering[0]]["JobStatus"] == 3)
    run({job_mix.gated[0]: "finished", spare: "removed"})

    # Its ad now comes, with the CompletionDate it had before the first run.
    pool.run("condor_rm", "-forcex", job_mix.lingering[0], user="alice")
    pool.wait_in_history(job_mix.lingering)
    pool.open_gate("gate-1")
    pool.wait_in_history(job_mix.gated[1:2])
    run({job_mix.gated[1]: "finished"})

    # The history file rotates: the ad the last run saw first is in a rotated file now.
    cursor = json.loads((state / "condor_history.json").read_text())["cursor"]
    rotated, removed = pool.rotated_history_files(), {}
    while pool.rotated_history_files() == rotated:  # how many ads that takes depends on where earlier tests left it
        spare = next(spares, None) or pool.submit("alice", "spares", dict(SLEEP, request_cpus=64))[0]
        remove(spare)
        removed[spare] = "removed"
    assert cursor not in pool.history("-file", pool.history_file())
    remove(job_mix.gated[2], user="bob")
    removed[job_mix.gated[2]] = "removed"
    run(removed)

    # Gated job 3 ends between the run's condor_q, which sees it running, and its condor_history.
    run({job_mix.gated[3]: "finished"},
        env=pool.environment_ending_job(tmp_path / "ending", job_mix.gated[3], "gate-3"))

    # The long job passes a minute of wall time before the last run.
    long_job = job_mix.long[0]
    pool.wait_for("a minute of running", lambda jobs: run_age(jobs[long_job]) >= 62, timeout=120)
    run({})

    reported = collections.Counter(job_id for _, jobs in runs for job_id in ended(jobs))
    # The pool may delete its oldest rotated history file meanwhile (seen on sid, where a session's earlier tests
    # rotate it too): every job its history still holds is reported, and none twice.
    assert set(reported.values()) == {1}, "no finished or removed job reported twice"
    assert set(pool.history()) <= set(reported), "every finished or removed job in the history reported"
    for queued in pool.jobs():
        assert all(queued in jobs for _, jobs in runs), "queued jobs are reported every run"

    (start, first), (end, last) = runs[0], runs[-1]
    assert last[long_job]["Runtime"] > 60
    grown = last[long_job]["Runtime"] - first[long_job]["Runtime"]
    assert abs(grown - (end - start)) <= 2, "Runtime grew %d s in %.1f s of wall time" % (grown, end - start)


def test_jobs_seen_held_during_an_outage_then_finished_are_finished_in_the_index(condor_pool, job_mix, collect,
                                                                                receiver, tmp_path):
    """Six jobs held while the endpoint is down, then run to completion while it still is: once it is back, the
    index (condorjob upserted by cluster-users-Id, the last write winning) says finished for each, because
    the held snapshots were never sent at all."""
    state = tmp_path / "outage-state"
    jobs = condor_pool.submit("alice", "outage", {"executable": "/bin/true", "hold": "true"}, count=6)
    condor_pool.wait_for("the jobs held", lambda queue: all(queue[job]["JobStatus"] == 5 for job in jobs))
    receiver.answer_always(503)
    assert collect(state=state)[0].returncode == 1
    condor_pool.run("condor_release", *jobs, user="alice")
    condor_pool.wait_in_history(jobs)
    assert collect(state=state)[0].returncode == 1

    receiver.restore()
    done, _, _ = collect(state=state)
    assert done.returncode == 0, done.stderr
    sent = [(event["Id"], event["state"]) for event in receiver.documents if event.get("Id") in jobs]
    assert sorted(sent) == [(job, "finished") for job in jobs]
    assert sorted((event["Id"], event["state"]) for event in receiver.index if event.get("Id") in jobs) == sorted(sent)


def test_group_that_cannot_be_resolved_leaves_the_cursor(condor_pool, collect, tmp_path):
    """-g with the user directory down for one run (getgrnam, over the /etc/group of a private mount namespace,
    finds no such group): that run sends nothing of HTCondor and leaves its cursor, and the job that finished
    meanwhile is reported once the group resolves again."""
    pool, state = condor_pool, tmp_path / "state"
    with_group, directory_down = group_filter_runs(pool, collect, tmp_path, USERS, *QUEUES)
    assert with_group()[0].returncode == 0
    [job] = pool.submit("alice", "while-down", {"executable": "/bin/true"})
    pool.wait_in_history([job])
    cursor = (state / "condor_history.json").read_text()
    done, documents, _ = directory_down()
    assert done.returncode == 1
    assert errors(done) == ["ERROR:condor:group afmgroup " + UNRESOLVED_GROUP]
    assert documents == []
    assert (state / "condor_history.json").read_text() == cursor
    done, documents, _ = with_group()
    assert done.returncode == 0, done.stderr
    assert jobs_by_id(documents)[job]["state"] == "finished"


@pytest.fixture(scope="module")
def hub_sessions(condor_pool, job_mix):
    """Sessions of both users beside the mix's jobs, which are not sessions: alice's two run, bob's wait, one idle
    (no slot is that big) and one held. The session's program is a stand-in that sleeps."""
    stand_in = condor_pool.root / "usr" / "local" / "bin" / "batchspawner-singleuser"
    stand_in.write_text("#!/bin/sh\nexec sleep 3600\n")
    stand_in.chmod(0o755)
    running = condor_pool.submit("alice", "hub", HUB_SESSION) + condor_pool.submit("alice", "hub-gpu", HUB_SESSION)
    idle = condor_pool.submit("bob", "hub", dict(HUB_SESSION, request_cpus=64))
    held = condor_pool.submit("bob", "hub-held", dict(HUB_SESSION, hold="true"))
    condor_pool.wait_for("the sessions", lambda jobs: all(jobs[job]["JobStatus"] == 2 for job in running)
                         and jobs[idle[0]]["JobStatus"] == 1 and jobs[held[0]]["JobStatus"] == 5)
    return running + idle + held


def session_owners(pool, states):
    """The owners of the sessions in the JobStatus values STATES, as condor_q itself selects them."""
    constraint = "(%s) && (%s)" % (SESSION_CONSTRAINT, " || ".join("JobStatus == %d" % state for state in states))
    return sorted({ad["Owner"] for ad in pool.jobs("-constraint", constraint).values()})


@pytest.mark.parametrize("options, states", [([], [2]), (["--jupyter-pending"], [1, 2])])
def test_jupyter_users_are_the_owners_of_hub_sessions_from_the_one_queue_read(condor_pool, hub_sessions, collect,
                                                                               tmp_path, options, states):
    env = condor_pool.environment_counting(tmp_path / "counting", "condor_q")
    done, documents, _ = collect("-q", "all:", "--condor-jupyter", "htc:" + SESSION_CONSTRAINT, *options, env=env)
    assert done.returncode == 0, done.stderr
    users = session_owners(condor_pool, states)
    assert users == (["alice"] if states == [2] else ["alice", "bob"])
    assert of_kind(documents, "jupyter-htc") == [{"token": TOKEN, "cluster": CLUSTER, "kind": "jupyter-htc",
                                                  "jupyter_user_count": len(users), "users": users}]
    assert set(jobs_by_id(documents)) >= set(condor_pool.jobs())
    assert len((tmp_path / "counting" / "calls").read_text().splitlines()) == 1


def test_jupyter_users_are_filtered_hashed_and_excluded_as_job_owners_are(condor_pool, hub_sessions, collect,
                                                                          tmp_path):
    options = ["--condor-jupyter", "htc:" + SESSION_CONSTRAINT, "--jupyter-pending", "--condor-jupyter",
               "everyone:true"]
    with_group, _ = group_filter_runs(condor_pool, collect, tmp_path, ["alice"], *options, passwd=[BOB_PASSWD])
    for done, documents, _ in [with_group(), collect(*options, "--exclude-owner", "bob", "-o", "-z", "pepper")]:
        assert done.returncode == 0, done.stderr
        alice = hashlib.sha256(b"pepperalice").hexdigest()[:8] if "-o" in done.args else "alice"
        assert [(doc["kind"], doc["users"]) for doc in documents if doc["kind"].startswith("jupyter-")] == [
            ("jupyter-htc", [alice]), ("jupyter-everyone", [alice])]
        assert {doc["users"] for doc in of_kind(documents, "condorjob")} == {alice}


def test_a_session_constraint_condor_q_cannot_parse_costs_only_the_sessions(condor_pool, hub_sessions, collect):
    """condor_q takes an expression it cannot parse without a word, and prints no column for it nor for any
    after it."""
    done, documents, _ = collect("-q", "all:", "--condor-jupyter", "htc:" + SESSION_CONSTRAINT,
                                 "--condor-jupyter", 'bad:regexp("x", Arguments', "--condor-jupyter", "after:true")
    assert done.returncode == 1
    assert errors(done) == ['ERROR:condor:condor_jupyter bad: condor_q cannot parse its constraint regexp("x", '
                            'Arguments; not evaluated after it: after'], done.stderr
    assert [doc["kind"] for doc in documents if doc["kind"].startswith("jupyter-")] == ["jupyter-htc"]
    assert set(jobs_by_id(documents)) >= set(condor_pool.jobs())


def assert_fails_within_timeout(collect):
    """condor.py and the umbrella with --host: exit 1 within the timeout, one error line naming condor_q,
    nothing of condor delivered, and the host documents delivered all the same."""
    done, documents, took = collect(*QUEUES, "--timeout", FAULT_TIMEOUT)
    assert done.returncode == 1, done.stderr
    assert took < FAULT_TIMEOUT + PYTHON_START_SLACK
    [error] = errors(done)
    assert "condor_q" in error, done.stderr
    assert documents == []

    done, documents, took = collect("-b", "--host", "--disk", "/", *QUEUES, "--timeout", FAULT_TIMEOUT,
                                    script="afmetrics_collector")
    assert done.returncode == 1, done.stderr
    assert took < FAULT_TIMEOUT + PYTHON_START_SLACK
    assert {"CPU", "MEM", "DISK"} <= {doc["kind"] for doc in documents}
    assert not [doc for doc in documents if doc["kind"].startswith("condor")]


def test_frozen_schedd(condor_pool, job_mix, collect):
    condor_pool.freeze_schedd()
    try:
        assert_fails_within_timeout(collect)
    finally:
        condor_pool.thaw_schedd()
    assert condor_pool.schedd_answers()


def test_stopped_schedd(condor_pool, job_mix, collect):
    condor_pool.schedd_off()
    try:
        assert_fails_within_timeout(collect)
    finally:
        condor_pool.schedd_on()


def test_stopped_pool(condor_pool, job_mix, collect):
    condor_pool.pool_off()
    try:
        assert_fails_within_timeout(collect)
    finally:
        condor_pool.pool_on()
