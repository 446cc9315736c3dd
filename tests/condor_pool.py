"""A real personal HTCondor pool (scripts/condor-pool) for tests of condor.py against real daemons.

The session fixture `condor_pool` builds the chroot (cached) and starts a fresh pool once per suite in
$AFMETRICS_CONDOR_SUITES (default "trixie sid": HTCondor 23.x and 25.x) and stops it at the end.
It yields a CondorPool: submit jobs as alice or bob, read the truth with the pool's own tools, and break the
pool (freeze or stop the schedd, stop every daemon) and mend it again. `pool.bin` holds condor_q and
condor_history wrappers: put it first on PATH and the collector queries this pool.

A pytest plugin (pytest_plugins in tests/conftest.py) that registers the `condor` marker. When the pool cannot
start, the tests are skipped with the reason, except in CI (CI=true), where that is an error.
"""
import json
import os
import pathlib
import signal
import subprocess
import time

import pytest

from chroot_system import ChrootSystem

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "condor-pool"
RUN_DIR = pathlib.Path(os.environ.get("AFMETRICS_CONDOR_RUN", "/run/afmetrics-condor"))
SUITES = os.environ.get("AFMETRICS_CONDOR_SUITES", "trixie sid").split()
USERS = ("alice", "bob")


class CondorPool(ChrootSystem):
    def __init__(self, suite):
        super().__init__(RUN_DIR / suite)
        self.suite = suite

    def submit(self, user, name, description, count=1):
        """condor_submit DESCRIPTION (a dict) as USER, COUNT jobs; the job Ids ("cluster.proc") it created."""
        lines = ["%s = %s" % item for item in description.items()] + ["queue %d" % count]
        home = self.root / "home" / user
        (home / (name + ".sub")).write_text("\n".join(lines) + "\n")
        done = self.run("sh", "-c", "cd ~ && condor_submit -terse %s.sub" % name, user=user)
        first, _, last = done.stdout.strip().partition(" - ")
        cluster, first_proc = first.split(".")
        last_proc = last.split(".")[1] if last else first_proc
        return ["%s.%d" % (cluster, proc) for proc in range(int(first_proc), int(last_proc) + 1)]

    def jobs(self, *options):
        """Every job in the queue (condor_q -all -json OPTIONS) by Id."""
        done = self.run("condor_q", "-all", "-json", *options)
        # condor_q prints nothing at all when no job matches.
        return {"%d.%d" % (ad["ClusterId"], ad["ProcId"]): ad for ad in json.loads(done.stdout or "[]")}

    def totals(self, constraint=""):
        options = ["-constraint", constraint] if constraint else []
        [summary] = json.loads(self.run("condor_q", "-all", "-totals", "-json", *options).stdout)
        return summary

    def history(self, *options):
        """Every ad in the history files (condor_history -json OPTIONS) by Id."""
        done = self.run("condor_history", "-json", *options)
        return {"%d.%d" % (ad["ClusterId"], ad["ProcId"]): ad for ad in json.loads(done.stdout)}

    def history_file(self):
        """The schedd's history file, as a path inside the chroot; rotated ones are beside it, named FILE.TIME."""
        return self.run("condor_config_val", "HISTORY").stdout.strip()

    def rotated_history_files(self):
        current = pathlib.Path(self.history_file())
        return sorted(path.name for path in (self.root / current.relative_to("/")).parent.glob(current.name + ".*"))

    def environment_ending_job(self, directory, job_id, gate):
        """An environment whose condor_q, once, opens GATE after it read the queue and waits until JOB_ID (a
        gated job) is in the history: the job ends between a collector's condor_q and its condor_history."""
        directory.mkdir()
        script = directory / "condor_q"
        script.write_text(
            '#!/bin/sh\nout=$("%(bin)s/condor_q" "$@") || exit\n'
            'if [ ! -e "%(once)s" ]; then\n    touch "%(once)s" "%(gate)s"\n'
            '    until "%(bin)s/condor_history" -af ClusterId ProcId | grep -qx "%(job)s"; do sleep 0.2; done\nfi\n'
            'printf "%%s\\n" "$out"\n'
            % {"bin": self.bin, "once": directory / "once", "gate": self.root / "tmp" / gate,
               "job": job_id.replace(".", " ")})
        script.chmod(0o755)
        return {"PATH": "%s:%s" % (directory, self.environment()["PATH"])}

    def wait_for(self, what, predicate, timeout=90):
        """Poll the queue until PREDICATE(jobs by Id) holds; fail with the queue's states if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs()
            if predicate(jobs):
                return jobs
            if time.monotonic() > deadline:
                states = {job_id: ad.get("JobStatus") for job_id, ad in jobs.items()}
                raise AssertionError("waited %d s for %s; JobStatus by job: %s" % (timeout, what, states))
            time.sleep(0.5)

    def wait_in_history(self, job_ids, timeout=90):
        deadline = time.monotonic() + timeout
        while not set(job_ids) <= set(self.history()):
            if time.monotonic() > deadline:
                raise AssertionError("waited %d s for %s in condor_history" % (timeout, sorted(job_ids)))
            time.sleep(0.5)

    def signal_schedd(self, signum):
        pids = self.pids("condor_schedd")
        assert pids, "no condor_schedd running in %s" % self.root
        for pid in pids:
            os.kill(pid, signum)

    def freeze_schedd(self):
        self.signal_schedd(signal.SIGSTOP)

    def thaw_schedd(self):
        self.signal_schedd(signal.SIGCONT)

    def schedd_off(self):
        self.run("condor_off", "-schedd")
        self.wait_until("the schedd is gone", lambda: not self.pids("condor_schedd"))

    def schedd_on(self):
        self.run("condor_on", "-schedd")
        self.wait_until("the schedd answers", self.schedd_answers)

    def pool_off(self):
        # -fast: a graceful stop was seen to hang for 90 s.
        self.run("condor_off", "-fast", "-master")
        self.wait_until("every daemon is gone", lambda: not self.pids("condor_master")
                         and not self.pids("condor_schedd") and not self.pids("condor_collector"))

    def pool_on(self):
        self.run("/usr/sbin/condor_master")
        self.wait_until("the schedd answers", self.schedd_answers)

    def schedd_answers(self):
        return self.run("condor_q", "-totals", check=False, timeout=30).returncode == 0

def pytest_configure(config):
    config.addinivalue_line("markers", "condor: needs a real personal HTCondor pool (scripts/condor-pool; root)")


def _pool_script(*args):
    done = subprocess.run([str(SCRIPT)] + list(args), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=600)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["rc %d" % done.returncode]
        raise RuntimeError(lines[-1])


@pytest.fixture(scope="session", params=SUITES)
def condor_pool(request):
    suite = request.param
    try:
        if os.geteuid() != 0:
            raise RuntimeError("needs root (chroot, mount)")
        _pool_script("build", suite)
        _pool_script("start", suite)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        reason = "no real HTCondor pool (%s): %s" % (suite, error)
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    pool = CondorPool(suite)
    pool.prepare_gate()
    yield pool
    _pool_script("stop", suite)
