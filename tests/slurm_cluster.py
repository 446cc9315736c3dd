"""A real one-host Slurm cluster (scripts/slurm-cluster) for tests of slurm.py against real daemons.

The session fixture `slurm_cluster` builds the chroot (cached) and starts a fresh cluster once, and stops it at
the end. It yields a SlurmCluster: submit jobs as alice or bob, read the truth with the cluster's own tools
(scontrol, sacct), and stop, freeze and restart its daemons. `cluster.bin` holds wrappers of the client tools:
put it first on PATH and the collector queries this cluster.

A pytest plugin (pytest_plugins in tests/conftest.py) that registers the `slurm` marker. When the cluster
cannot start, the tests are skipped with the reason, except in CI (CI=true), where that is an error.
"""
import os
import pathlib
import re
import shlex
import signal
import subprocess
import time

import pytest

from chroot_system import ChrootSystem
from conftest import skip_or_fail

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "slurm-cluster"
RUN_DIR = pathlib.Path(os.environ.get("AFMETRICS_SLURM_RUN", "/run/afmetrics-slurm"))
USERS = ("alice", "bob")
DAEMONS = {"slurmctld": ["/usr/sbin/slurmctld"], "slurmdbd": ["/usr/sbin/slurmdbd"], "slurmd": ["/usr/sbin/slurmd"]}
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "DEADLINE", "NODE_FAIL", "PREEMPTED",
                "OUT_OF_MEMORY", "BOOT_FAIL"}
KEY_VALUE = re.compile(r"(\w+)=(\S*)")


class SlurmCluster(ChrootSystem):
    def __init__(self):
        super().__init__(RUN_DIR)

    def sbatch(self, user, *options, command="/bin/sleep 3600"):
        """sbatch OPTIONS --wrap COMMAND as USER; the job Id (an array's ARRAYJOBID)."""
        done = self.run("sh", "-c", "cd ~ && sbatch --parsable --output=/dev/null %s --wrap=%s"
                        % (" ".join(shlex.quote(option) for option in options), shlex.quote(command)), user=user)
        return done.stdout.strip().split(";")[0]

    def queue(self):
        """The queue as scontrol tells it now (see queued_records)."""
        return queued_records(self.run("scontrol", "--oneliner", "show", "job").stdout)

    def sacct(self, *options):
        """sacct -X -P of every user's jobs, as a list of dicts of the given FIELDS."""
        fields = ["JobID", "JobIDRaw", "User", "State", "ElapsedRaw", "Partition"]
        done = self.run("sacct", "--allusers", "--allocations", "--parsable2", "--noheader",
                        "--format=" + ",".join(fields), *options)
        return [dict(zip(fields, line.split("|"))) for line in done.stdout.splitlines()]

    def wait_for(self, what, predicate, timeout=120):
        """Poll scontrol until PREDICATE(queue by Id) holds; fail with the states if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.queue()
            if predicate(jobs):
                return jobs
            if time.monotonic() > deadline:
                states = {job: record["JobState"] for job, record in jobs.items()}
                raise AssertionError("waited %d s for %s; JobState by job: %s" % (timeout, what, states))
            time.sleep(0.5)

    def wait_recorded(self, job_id, timeout=60):
        """Until slurmctld has sent the job to accounting: a job it never sent (held, and cancelled within
        seconds) has no sacct record at all."""
        self.wait_until("job %s in sacct" % job_id, lambda: self.sacct("--jobs=" + job_id), timeout)

    def wait_in_sacct(self, job_ids, timeout=120):
        """Until each job has a final record in sacct."""
        deadline = time.monotonic() + timeout
        while True:
            finished = {row["JobID"] for row in self.sacct("--starttime=now-1days", "--endtime=now+1days")
                        if row["State"].split()[0] not in ("PENDING", "RUNNING", "SUSPENDED", "REQUEUED")}
            if set(job_ids) <= finished:
                return
            if time.monotonic() > deadline:
                raise AssertionError("waited %d s for %s in sacct" % (timeout, sorted(set(job_ids) - finished)))
            time.sleep(0.5)

    def signal(self, name, signum):
        pids = self.pids(name)
        assert pids, "no %s running in %s" % (name, self.root)
        for pid in pids:
            os.kill(pid, signum)

    def stop(self, name):
        self.signal(name, signal.SIGTERM)
        self.wait_until("%s is gone" % name, lambda: not self.pids(name))

    def start(self, name):
        self.run(*DAEMONS[name])
        ready = {"slurmctld": lambda: self.run("scontrol", "ping", check=False).returncode == 0,
                 "slurmdbd": lambda: self.run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0,
                 "slurmd": lambda: "idle" in self.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout
                 or "mix" in self.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout}[name]
        self.wait_until("%s answers" % name, ready)

    def agent_queue(self):
        """Records slurmctld holds for slurmdbd (sdiag)."""
        return int(re.search(r"DBD Agent queue size:\s*(\d+)", self.run("sdiag").stdout).group(1))

def queued_records(scontrol_text):
    """The queue in the text of `scontrol --oneliner show job`: {Id: key=value record}, with Id as squeue and
    sacct write it (JOBID, or ARRAYJOBID_TASKID for an array task, each task of a pending array on its own: its
    tasks not yet split off are one record, ArrayTaskId=FIRST-LAST), finished jobs (slurmctld keeps them a
    while) left out."""
    queue = {}
    for line in scontrol_text.splitlines():
        record = dict(KEY_VALUE.findall(line))
        if "JobId" not in record or record["JobState"] in FINAL_STATES:
            continue
        tasks = record.get("ArrayTaskId")
        if tasks is None:
            queue[record["JobId"]] = record
            continue
        for task in expand(tasks):
            queue["%s_%d" % (record["ArrayJobId"], task)] = record
    return queue


def expand(tasks):
    """Task numbers of scontrol's ArrayTaskId: 3, 2-5, 1,4-6, with a %THROTTLE."""
    numbers = []
    for part in tasks.split("%")[0].split(","):
        first, _, last = part.partition("-")
        numbers.extend(range(int(first), int(last or first) + 1))
    return numbers


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs a real Slurm cluster (scripts/slurm-cluster; root)")


def cluster_script(*args, env=None):
    done = subprocess.run([str(SCRIPT)] + list(args), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=900, env=dict(os.environ, **(env or {})))
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["rc %d" % done.returncode]
        raise RuntimeError(lines[-1])


@pytest.fixture(scope="session")
def slurm_cluster():
    try:
        if os.geteuid() != 0:
            raise RuntimeError("needs root (chroot, mount)")
        cluster_script("build")
        cluster_script("start")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        skip_or_fail("no real Slurm cluster: %s" % error)
    cluster = SlurmCluster()
    cluster.prepare_gate()
    yield cluster
    cluster_script("stop")
