"""slurm.py run as an unprivileged user against the real Slurm cluster (tests/slurm_cluster.py) with
PrivateData=jobs in slurm.conf and slurmdbd.conf: squeue and sacct then show the user only its own jobs, with no
error, so the run must say so in one warning line with what to do; once the user has the operator level in
slurmdbd, the warning is gone and every user's jobs are reported.

The collector runs as uid RUN_UID on the host (setpriv), the user afmetrics of user_database's /etc/passwd; the
cluster's wrappers enter the chroot, where afmetrics has the same uid, in a user namespace of their own, and
Slurm takes the requests as afmetrics's (scripts/slurm-cluster, write_wrappers). It runs after
test_slurm_cluster.py and puts the cluster's config back as it was.
"""
import os
import shutil
import signal
import tempfile

import pytest

from conftest import json_lines, log_lines, of_kind, user_database

pytestmark = pytest.mark.slurm

RUN_USER, RUN_UID = "afmetrics", 4471
PRIVATE = "PrivateData=jobs\n"
ADVICE = "sacctmgr modify user afmetrics set adminlevel=operator"


def private_data(cluster, dbd):
    """The PrivateData flags slurmctld, or slurmdbd (DBD), runs with now."""
    argv = ("sacctmgr", "show", "config") if dbd else ("scontrol", "show", "config")
    text = cluster.run(*argv).stdout
    text = text.partition("SlurmDBD configuration:")[2] if dbd else text
    return [line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith("PrivateData")][0]


def configure(cluster, files, flags):
    """Write the config FILES ({path: text}) and have slurmctld and slurmdbd read them again, until both run
    with PrivateData FLAGS."""
    for path, text in files.items():
        path.write_text(text)
    cluster.run("scontrol", "reconfigure")
    cluster.signal("slurmdbd", signal.SIGHUP)
    cluster.wait_until("PrivateData=%s in slurmctld and slurmdbd" % flags,
                       lambda: private_data(cluster, False) == private_data(cluster, True) == flags)


@pytest.fixture(scope="module")
def private_cluster(slurm_cluster):
    """The cluster with PrivateData=jobs in both files and the user afmetrics (no AdminLevel) in slurmdbd."""
    cluster = slurm_cluster
    cluster.run("useradd", "--uid", str(RUN_UID), "--no-create-home", RUN_USER)
    cluster.run("sacctmgr", "-i", "add", "user", RUN_USER, "Account=atlas")
    files = {cluster.root / "etc/slurm" / name: (cluster.root / "etc/slurm" / name).read_text()
             for name in ("slurm.conf", "slurmdbd.conf")}
    configure(cluster, {path: text + PRIVATE for path, text in files.items()}, "jobs")
    yield cluster
    cluster.run("sacctmgr", "-i", "delete", "user", RUN_USER)
    configure(cluster, files, "none")


@pytest.fixture
def unprivileged(tmp_path):
    """run(cluster, run_collector): slurm.py -d as RUN_USER, in a directory of its own; (CompletedProcess, its
    documents)."""
    work = tempfile.mkdtemp(prefix="afmetrics-private-")
    os.chown(work, RUN_UID, RUN_UID)
    prefix, env = user_database(tmp_path / "users", ["%s:x:%d:%d::/nonexistent:/usr/sbin/nologin"
                                                     % (RUN_USER, RUN_UID, RUN_UID)],
                                ["%s:x:%d:" % (RUN_USER, RUN_UID)])
    as_user = prefix + ["setpriv", "--reuid=%d" % RUN_UID, "--regid=%d" % RUN_UID, "--clear-groups", "--"]

    def run(cluster, run_collector):
        debug_file = os.path.join(work, "slurm.json")
        if os.path.exists(debug_file):
            os.unlink(debug_file)
        done = run_collector("slurm.py", "-d", "--slurm-queue", "all:", "--state-dir", os.path.join(work, "state"),
                             env=dict(cluster.environment(), **env), cwd=work, prefix=as_user)
        return done, json_lines(debug_file)
    yield run
    shutil.rmtree(work)


def private_data_lines(done):
    return [line for line in log_lines(done.stderr) if "PrivateData" in line]


def test_private_data_is_one_warning_until_the_run_user_is_an_operator(private_cluster, unprivileged,
                                                                        run_collector):
    cluster = private_cluster
    queued = cluster.sbatch("alice", "-p", "short")
    finished = cluster.sbatch("bob", "-p", "long", command="/bin/true")
    cluster.wait_in_sacct([finished])
    try:
        done, documents = unprivileged(cluster, run_collector)
        assert done.returncode == 0, done.stderr
        # Only the user's own jobs, of which it has none: the queue looks empty.
        assert of_kind(documents, "slurmjob") == []
        [queue] = of_kind(documents, "slurmqueue")
        assert queue["idle"] + queue["running"] + queue["held"] == 0
        assert private_data_lines(done) == [
            "WARNING:slurm:PrivateData=jobs in slurm.conf and slurmdbd.conf hides other users' jobs from afmetrics: "
            "squeue and sacct show it only its own, and the documents count no one else's. Give it the operator "
            "level (%s) or run slurm.py as a user that sees every job (root or the SlurmUser)" % ADVICE]

        cluster.run(*ADVICE.replace("sacctmgr", "sacctmgr -i").split())
        # slurmctld learns the level from slurmdbd.
        cluster.wait_until("slurmctld knows afmetrics as an operator", lambda: "AdminLevel=Operator" in cluster.run(
            "scontrol", "show", "assoc_mgr", "users=" + RUN_USER, "flags=users").stdout)
        done, documents = unprivileged(cluster, run_collector)
        assert done.returncode == 0, done.stderr
        assert private_data_lines(done) == []
        jobs = {job["Id"]: job for job in of_kind(documents, "slurmjob")}
        assert jobs[queued]["users"] == "alice" and jobs[finished] == dict(jobs[finished], users="bob",
                                                                           state="completed")
        [queue] = of_kind(documents, "slurmqueue")
        assert queue["idle"] + queue["running"] + queue["held"] >= 1
    finally:
        cluster.run("scancel", queued)
