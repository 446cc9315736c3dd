"""Runs and state: every collector works as nobody with only its state dir, log dir and working dir writable;
state (the NETWORK baseline, the history watermark) only moves once its documents are delivered or spooled."""
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import types

import pytest

import afmetrics_common as common
import afmetrics_delivery
import afmetrics_privacy
import condor
import utmp
from conftest import COLLECTORS, collector_environment, log_lines

TOKEN = "tok-71c0be3d95"
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.fixture
def nobody_home():
    """A directory nobody can reach (pytest's tmp_path is private to root), removed afterwards."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the tests as root to check the collectors as nobody")
        pytest.skip("running as nobody needs root")
    base = tempfile.mkdtemp(prefix="afmetrics-nobody-")
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base)


def test_every_collector_runs_as_nobody(nobody_home, receiver, kubernetes_api):
    work, state, logs = (os.path.join(nobody_home, name) for name in ("work", "state", "log"))
    for directory in (work, state, logs):
        os.mkdir(directory)
        os.chown(directory, 65534, 65534)
    sessions = str(utmp.write(pathlib.Path(nobody_home, "utmp"), utmp.login("alice", "pts/0", 60, 11)))
    ca_file = shutil.copy(receiver.ca_file, nobody_home)
    kubernetes_api.allow("reader-token", "reader", ["af-jupyter"])
    kubeconfig = str(kubernetes_api.write_kubeconfig(pathlib.Path(nobody_home, "kubeconfig"),
                                                     "reader-token"))
    os.chmod(nobody_home, 0o755)

    def run(*args):
        command = AS_NOBODY + [sys.executable, str(COLLECTORS / "afmetrics_collector"), "-v", "-s", "-j", "--host",
                               "--disk", "/", "--utmp", sessions, "--kubeconfig", kubeconfig, "--state-dir", state,
                               "--log-file", os.path.join(logs, "afmetrics.log"), "-u", receiver.url,
                               "--ca-bundle", ca_file] + list(args)
        return subprocess.run(command, capture_output=True, text=True, cwd=work, stdin=subprocess.DEVNULL,
                              env=collector_environment({"AFMETRICS_TOKEN": TOKEN}), timeout=60)

    debug = run("-d")
    receiver.answer_always(401)
    spooling = run()
    receiver.restore()
    replaying = run()
    assert [debug.returncode, spooling.returncode, replaying.returncode] == [0, 1, 0], replaying.stderr
    assert sorted(os.listdir(work)) == ["host.json", "jupyter.json", "ssh.json"]
    # The spooling run stored the NETWORK baseline (a debug run stores nothing); its documents arrive on the
    # replaying run.
    spooled_kinds = ["CPU", "DISK", "MEM", "jupyter-ml", "ssh"]
    assert sorted(d["kind"] for d in receiver.documents if "timestamp" in d) == spooled_kinds
    assert "ERROR" not in debug.stderr + replaying.stderr
    assert "delivered" in pathlib.Path(logs, "afmetrics.log").read_text()
    for directory in (work, state):
        for name in os.listdir(directory):
            assert os.stat(os.path.join(directory, name)).st_uid == 65534, name


def test_undelivered_documents_that_cannot_be_spooled_leave_the_state_where_it_was(run_collector, receiver,
                                                                                     tmp_path):
    state = tmp_path / "state"
    (state / "spool-host.jsonl").mkdir(parents=True)  # the spool cannot be written
    receiver.answer_always(401)
    args = ["host.py", "--disk", "/", "--state-dir", state, "-u", receiver.url, "--ca-bundle", receiver.ca_file]
    stuck = run_collector(*args, env={"AFMETRICS_TOKEN": TOKEN}, cwd=tmp_path)
    assert stuck.returncode == 1
    unreadable, cannot_keep = log_lines(stuck.stderr)
    assert unreadable.startswith("WARNING:host:spool %s is unreadable" % (state / "spool-host.jsonl"))
    assert cannot_keep.startswith("ERROR:host:cannot keep 3 document(s): Is a directory: ")
    assert not (state / "network.json").exists() and not (state / "diskstats.json").exists()

    (state / "spool-host.jsonl").rmdir()
    spooled = run_collector(*args, env={"AFMETRICS_TOKEN": TOKEN}, cwd=tmp_path)
    assert spooled.returncode == 1
    assert (state / "network.json").exists() and (state / "diskstats.json").exists()


def test_history_watermark_moves_only_once_the_jobs_are_delivered_or_spooled(receiver, monkeypatch, tmp_path):
    finished = int(time.time()) - 10
    replies = {"condor_q": "", "condor_history": "bob 7 0 4 30.0 %d %d\n" % (finished, finished)}
    monkeypatch.setattr(common, "run_command", lambda argv, timeout: replies[argv[0]])
    opts = types.SimpleNamespace(url=receiver.url, ca_bundle=receiver.ca_file, send_budget=30.0, run_budget=240.0, connections=1,
                                 batch_size=1, gzip=False, token=TOKEN, cluster="UC-AF", debug=False, queues=[],
                                 exclude_owners=[], timeout=60, state_dir=str(tmp_path), spool_max_documents=10,
                                 spool_max_age_hours=1.0, obfuscate_users=False, salt="", group="",
                                 obfuscate_hosts="")
    users = afmetrics_privacy.UserFilter(opts, common.log)
    receiver.answer_always(401)
    (tmp_path / "spool-condor.jsonl").mkdir()
    assert common.collect_and_deliver(condor, opts, users, afmetrics_delivery.Delivery(opts, math.inf), math.inf) == common.EXIT_FAILED
    assert not (tmp_path / condor.WATERMARK_STATE).exists()  # the job will be reported again

    (tmp_path / "spool-condor.jsonl").rmdir()
    assert common.collect_and_deliver(condor, opts, users, afmetrics_delivery.Delivery(opts, math.inf), math.inf) == common.EXIT_FAILED
    assert json.loads((tmp_path / condor.WATERMARK_STATE).read_text()) == {"time": finished, "ids": ["7.0"]}
    [job] = [json.loads(line) for line in (tmp_path / "spool-condor.jsonl").read_text().splitlines()]
    assert job["Id"] == "7.0"

    receiver.restore()
    assert common.collect_and_deliver(condor, opts, users, afmetrics_delivery.Delivery(opts, math.inf), math.inf) == common.EXIT_OK
    assert [d["Id"] for d in receiver.documents] == ["7.0"]  # from the spool; the watermark keeps it from recurring
