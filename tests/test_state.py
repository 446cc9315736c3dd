"""Runs and state: every collector works as nobody with only its state dir, log dir and working dir writable;
state (the NETWORK baseline, the history watermark) only moves once its documents are delivered or spooled."""
import argparse
import fcntl
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
import afmetrics_settings
import afmetrics_state
import condor
import host
import ssh
import utmp
from conftest import COLLECTORS, collector_environment, json_lines, log_lines, skip_or_fail, spool_documents, write_spool

TOKEN = "tok-71c0be3d95"
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def in_process_options(receiver, state_dir, **more):
    """The settings of a real run to the receiver, for a collector run in this process."""
    defaults = {setting.name: setting.default for setting in afmetrics_settings.COMMON_SETTINGS}
    return types.SimpleNamespace(**dict(defaults, url=receiver.url, ca_bundle=receiver.ca_file, send_budget=30.0,
                                        connections=1, token=TOKEN, cluster="UC-AF", state_dir=str(state_dir),
                                        spool_max_documents=10, spool_max_age_hours=1.0, **more))


def run_in_process(module, opts):
    users = afmetrics_privacy.UserFilter(opts, common.log)
    return common.collect_and_deliver(module, opts, users, afmetrics_delivery.Delivery(opts, math.inf), math.inf)


@pytest.fixture
def nobody_home():
    """A directory nobody can reach (pytest's tmp_path is private to root), removed afterwards."""
    if os.geteuid() != 0:
        skip_or_fail("running as nobody needs root")
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
    kubernetes_api.allow("reader-token", "reader", ["af-jupyter", "coffea-casa"])
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
    spooled_kinds = ["CPU", "DISK", "MEM", "jupyter-coffea", "jupyter-ml", "ssh"]
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
    monkeypatch.setattr(common, "run_command", lambda argv, timeout, env=None: replies[argv[0]])
    opts = in_process_options(receiver, tmp_path, queues=[], exclude_owners=[], history_scan_limit=1000,
                              condor_jupyter=[], jupyter_pending=False)
    receiver.answer_always(401)
    (tmp_path / "spool-condor.jsonl").mkdir()
    assert run_in_process(condor, opts) == common.EXIT_FAILED
    assert not (tmp_path / condor.WATERMARK_STATE).exists()  # the job will be reported again

    (tmp_path / "spool-condor.jsonl").rmdir()
    assert run_in_process(condor, opts) == common.EXIT_FAILED
    assert (tmp_path / condor.WATERMARK_STATE).exists()
    assert [job["Id"] for job in spool_documents(tmp_path / "spool-condor.jsonl")] == ["7.0"]

    receiver.restore()
    assert run_in_process(condor, opts) == common.EXIT_OK
    assert [d["Id"] for d in receiver.documents] == ["7.0"]  # from the spool


class YieldsThenFails:
    """A collector whose source breaks after it yielded two documents (a stream cut, an API that fails on
    the second page)."""
    NAME = "partial"

    @staticmethod
    def collect(run):
        yield {"kind": "CPU", "login_node": "n1", "load": 1.0}
        yield {"kind": "MEM", "login_node": "n1", "total": 2, "available": 1}
        raise common.SourceError("the source broke after two documents")


def test_documents_yielded_before_a_source_failed_are_delivered_or_kept(receiver, tmp_path):
    opts = in_process_options(receiver, tmp_path)
    receiver.answer_always(401)
    assert run_in_process(YieldsThenFails, opts) == common.EXIT_FAILED
    assert [d["kind"] for d in spool_documents(tmp_path / "spool-partial.jsonl")] == ["CPU", "MEM"]

    receiver.restore()
    assert run_in_process(YieldsThenFails, opts) == common.EXIT_FAILED  # the source still fails
    assert sorted(d["kind"] for d in receiver.documents) == ["CPU", "CPU", "MEM", "MEM"]  # the spool's, its own
    assert spool_documents(tmp_path / "spool-partial.jsonl") == []


def seed_spool(state, name, documents, age_seconds=60):
    state.mkdir(exist_ok=True)
    return write_spool(state / ("spool-%s.jsonl" % name), documents, age_seconds)


def malformed_kubeconfig(directory):
    path = directory / "kubeconfig"
    path.write_text("clusters: [unclosed\n")
    return ["-j", "--kubeconfig", path]


def who_missing(directory):
    return ["-s", "--utmp", "/nonexistent"]


@pytest.mark.parametrize("name, failing_source, env", [
    ("ssh", who_missing, {"PATH": "/nonexistent"}),
    ("jupyter", malformed_kubeconfig, {}),
])
def test_spool_is_sent_once_while_the_source_keeps_failing(name, failing_source, env, run_collector, receiver,
                                                           tmp_path):
    state = tmp_path / "state"
    seeded = seed_spool(state, name, [{"kind": "jupyter-ml" if name == "jupyter" else "ssh", "users": [str(n)]}
                                      for n in range(3)])
    for _ in range(3):
        done = run_collector("afmetrics_collector", *failing_source(tmp_path), "--state-dir", state,
                             *receiver.args(), env=dict(env, AFMETRICS_TOKEN=TOKEN), cwd=tmp_path)
        assert done.returncode == 1
        [error] = [line for line in log_lines(done.stderr) if line.startswith("ERROR")]
        assert error.startswith("ERROR:%s:" % name), error
    # Sent once each; over several connections in any order.
    assert sorted(receiver.documents, key=json.dumps) == sorted((dict(d, token=TOKEN) for d in seeded), key=json.dumps)
    assert spool_documents(state / ("spool-%s.jsonl" % name)) == []


def state_files(state):
    return {str(path.relative_to(state)): path.read_bytes() for path in state.rglob("*") if path.is_file()}


def test_debug_run_changes_nothing_a_real_run_will_send(run_collector, receiver, sessions, tmp_path):
    state = tmp_path / "state"
    args = ["afmetrics_collector", "-s", "--host", "--disk", "/", "--utmp", sessions, "--state-dir", state]
    env = {"AFMETRICS_TOKEN": TOKEN}
    assert run_collector(*args, *receiver.args(), env=env, cwd=tmp_path).returncode == 0  # baselines stored
    receiver.answer_always(401)
    assert run_collector(*args, *receiver.args(), env=env, cwd=tmp_path).returncode == 1  # documents spooled
    receiver.restore()
    before, spooled = state_files(state), spool_documents(state / "spool-host.jsonl")
    network_before, requests_before = json.loads(before["network.json"]), len(receiver.requests)

    debug = run_collector(*args, "-d", env=env, cwd=tmp_path)
    assert debug.returncode == 0, debug.stderr
    assert "NETWORK" in [d["kind"] for d in json_lines(tmp_path / "host.json")]  # read from the real baseline
    assert state_files(state) == before
    assert len(receiver.requests) == requests_before

    real_started = time.time()
    real = run_collector(*args, *receiver.args(), env=env, cwd=tmp_path)
    assert real.returncode == 0, real.stderr
    assert all(dict(d, token=TOKEN) in receiver.documents for d in spooled)
    [network] = [d for d in receiver.of_kind("NETWORK") if "timestamp" not in d]
    # The bytes since the last real run, not since the debug run.
    assert network["network"]["interval"] >= real_started - network_before["time"]


def test_full_spool_drops_snapshots_before_events(run_collector, receiver, tmp_path):
    state = tmp_path / "state"
    events = seed_spool(state, "host", [{"kind": "NETWORK", "login_node": "n1",
                                          "network": {"interval": 300.0, "sent": n, "received": n}}
                                         for n in range(2)], age_seconds=600)
    receiver.answer_always(401)
    done = run_collector("host.py", "--disk", "/", "--state-dir", state, *receiver.args(),
                         env={"AFMETRICS_TOKEN": TOKEN, "AFMETRICS_SPOOL_MAX_DOCUMENTS": "3"}, cwd=tmp_path)
    assert done.returncode == 1
    # This run made CPU, MEM and DISK (no NETWORK: its first baseline): the two oldest snapshots go.
    kept = spool_documents(state / "spool-host.jsonl")
    assert kept[:2] == events and [d["kind"] for d in kept[2:]] == ["DISK"]
    assert "WARNING:host:spool %s full (3 documents): dropped the oldest 2 snapshot(s) a later run sends again: " \
           "CPU x1, MEM x1" % (state / "spool-host.jsonl") in log_lines(done.stderr)


def test_corrupt_and_expired_spool_lines_are_removed_not_warned_about_every_run(run_collector, receiver, sessions,
                                                                              tmp_path):
    state = tmp_path / "state"
    [expired] = seed_spool(state, "ssh", [{"kind": "ssh", "users": ["old"]}], age_seconds=200 * 3600)
    spool = state / "spool-ssh.jsonl"
    spool.write_text(json.dumps(expired) + "\n{torn line\n")
    args = ["ssh.py", "--utmp", sessions, "--state-dir", state, *receiver.args()]
    first = run_collector(*args, env={"AFMETRICS_TOKEN": TOKEN}, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert [line for line in log_lines(first.stderr) if line.startswith("WARNING")] == [
        "WARNING:ssh:spool %s: 1 corrupt line(s) dropped" % spool,
        "WARNING:ssh:spool %s: 1 document(s) older than 168 hours dropped" % spool]
    assert spool_documents(spool) == []

    second = run_collector(*args, env={"AFMETRICS_TOKEN": TOKEN}, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert log_lines(second.stderr) == []
    assert receiver.kinds() == ["ssh", "ssh"]


def run_umbrella_in_process(modules, argv):
    """main() as the umbrella runs it, with the collectors in the given order."""
    parser = argparse.ArgumentParser()
    afmetrics_settings.add_common_arguments(parser)
    for module in modules:
        module.add_arguments(parser)
    settings = afmetrics_settings.COMMON_SETTINGS + [s for module in modules for s in module.SETTINGS]
    return common.main(modules, parser, settings, [str(arg) for arg in argv])


def test_state_that_cannot_be_saved_is_one_line_and_the_next_collector_runs(receiver, sessions, tmp_path,
                                                                           monkeypatch, capsys):
    state = tmp_path / "state"
    (state / host.NETWORK_STATE).mkdir(parents=True)  # a directory in the way
    for name, value in collector_environment({"AFMETRICS_TOKEN": TOKEN}).items():
        monkeypatch.setenv(name, value)
    status = run_umbrella_in_process([host, ssh], ["--disk", "/", "--utmp", sessions, "--state-dir", state,
                                                   *receiver.args()])
    assert status == common.EXIT_FAILED
    errors = [line for line in log_lines(capsys.readouterr().err) if line.startswith("ERROR")]
    assert errors == ["ERROR:host:cannot store the NETWORK baseline: Is a directory: %s: NETWORK figures not sent "
                      "(the next run would count them again)" % (state / host.NETWORK_STATE)]
    assert sorted(receiver.kinds()) == ["CPU", "DISK", "MEM", "ssh"]  # ssh ran after host's failure
    assert not list(state.glob("*.tmp"))


def test_a_hand_run_as_root_leaves_a_state_dir_the_run_users_cron_runs_can_use(nobody_home, receiver, sessions):
    state, work = (os.path.join(nobody_home, name) for name in ("state", "work"))
    for directory in (state, work):
        os.mkdir(directory)
        os.chown(directory, 65534, 65534)
    os.chmod(state, 0o700)
    utmp_file = shutil.copy(sessions, nobody_home)
    ca_file = shutil.copy(receiver.ca_file, nobody_home)
    command = [sys.executable, str(COLLECTORS / "afmetrics_collector"), "-s", "--host", "--disk", "/", "--utmp",
               utmp_file, "--state-dir", state, "-u", receiver.url, "--ca-bundle", ca_file]
    env = collector_environment({"AFMETRICS_TOKEN": TOKEN})
    receiver.answer_always(401)  # the root run leaves a spool, locks and baselines behind
    as_root = subprocess.run(command, capture_output=True, text=True, cwd=work, env=env, timeout=60,
                             preexec_fn=lambda: os.umask(0o077))
    assert as_root.returncode == 1, as_root.stderr
    receiver.restore()
    as_nobody = subprocess.run(AS_NOBODY + command, capture_output=True, text=True, cwd=work, env=env, timeout=60)
    assert as_nobody.returncode == 0, as_nobody.stderr
    assert [line for line in log_lines(as_nobody.stderr) if not line.startswith("INFO")] == []
    assert sorted(d["kind"] for d in receiver.documents if "timestamp" in d) == ["CPU", "DISK", "MEM", "ssh"]


def test_a_lock_that_cannot_be_opened_is_one_line_and_the_next_collector_runs(run_collector, receiver, sessions,
                                                                              tmp_path):
    state = tmp_path / "state"
    (state / "locks" / "ssh.lock").mkdir(parents=True)
    done = run_collector("afmetrics_collector", "-s", "--host", "--disk", "/", "--utmp", sessions,
                         "--state-dir", state, *receiver.args(), env={"AFMETRICS_TOKEN": TOKEN}, cwd=tmp_path)
    assert done.returncode == 1
    assert [line for line in log_lines(done.stderr) if line.startswith("ERROR")] == [
        "ERROR:ssh:cannot lock: Is a directory: %s" % (state / "locks" / "ssh.lock")]
    assert receiver.kinds() == ["CPU", "DISK", "MEM"]


def test_a_bad_byte_in_the_spool_costs_its_line_only(run_collector, receiver, sessions, tmp_path):
    state = tmp_path / "state"
    seeded = seed_spool(state, "ssh", [{"kind": "ssh", "users": [str(n)]} for n in range(3)])
    lines = [json.dumps(d).encode() for d in seeded]
    (state / "spool-ssh.jsonl").write_bytes(b"\n".join(lines[:1] + [b'{"kind": "ssh\xff"}'] + lines[1:]) + b"\n")
    done = run_collector("ssh.py", "--utmp", sessions, "--state-dir", state, *receiver.args(),
                         env={"AFMETRICS_TOKEN": TOKEN}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert log_lines(done.stderr) == ["WARNING:ssh:spool %s: 1 corrupt line(s) dropped" % (state / "spool-ssh.jsonl")]
    assert all(dict(d, token=TOKEN) in receiver.documents for d in seeded)


def test_a_url_without_its_scheme_is_a_usage_error(run_collector, tmp_path):
    done = run_collector("host.py", "-u", "af.atlas-ml.org", "--state-dir", tmp_path / "state",
                         env={"AFMETRICS_TOKEN": TOKEN}, cwd=tmp_path)
    assert done.returncode == 2
    assert log_lines(done.stderr) == ["ERROR:afmetrics:url af.atlas-ml.org: give the endpoint as https://HOST/..."]


def test_a_debug_file_that_cannot_be_written_is_one_line(run_collector, tmp_path):
    (tmp_path / "host.json").mkdir()
    done = run_collector("host.py", "-d", "--disk", "/", cwd=tmp_path)
    assert done.returncode == 1
    assert log_lines(done.stderr) == ["ERROR:host:cannot write the debug file: Is a directory: host.json"]


# Run as another user: holds every file of its arguments it can open, read-only or not, with flock; prints how
# many, then keeps them until its stdin closes.
HOLD_EVERY_LOCK = """
import fcntl, os, sys
held = 0
for path in sys.argv[1:]:
    for flags in (os.O_RDWR, os.O_RDONLY):
        try:
            fcntl.flock(os.open(path, flags), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue
        held += 1
        break
print(held, flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("held", ["every file", "the textfile lock"])
def test_no_other_user_can_take_a_collectors_lock(held, nobody_home, receiver, run_collector):
    state, textfiles = (pathlib.Path(nobody_home, name) for name in ("state", "textfile"))
    textfiles.mkdir()
    command = ["host.py", "--disk", "/", "--state-dir", state, "--textfile-dir", textfiles, *receiver.args()]

    def run(*args):
        return run_collector(*args, env={"AFMETRICS_TOKEN": TOKEN}, cwd=nobody_home, timeout=60)

    assert run(*command).returncode == 0  # the state dir, its records and locks as a run leaves them
    files = [str(path) for path in state.rglob("*") if path.is_file() and (held == "every file"
                                                                            or "textfile" in path.name)]
    holder = subprocess.Popen(AS_NOBODY + [sys.executable, "-c", HOLD_EVERY_LOCK] + files, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()  # it holds all it could
        receiver.documents.clear()
        (textfiles / "afmetrics.prom").unlink()
        done = run(*command)
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert done.returncode == 0, done.stderr
    assert [line for line in log_lines(done.stderr) if not line.startswith("INFO")] == []
    assert sorted(receiver.kinds()) == ["CPU", "DISK", "MEM", "NETWORK"]
    assert "afmetrics_last_run_exit_status" in (textfiles / "afmetrics.prom").read_text()  # written again


def test_a_textfile_lock_held_past_the_run_budget_is_one_error_line_not_a_wait(run_collector, receiver, tmp_path):
    state, textfiles = tmp_path / "state", tmp_path / "textfile"
    textfiles.mkdir()
    state.mkdir()
    # Another collector's run, stopped while it writes the textfile.
    with afmetrics_state.StateDir(str(state), common.log).try_lock("textfile"):
        done = run_collector("host.py", "--disk", "/", "--state-dir", state, "--textfile-dir", textfiles,
                             "--run-budget", "10", *receiver.args(), env={"AFMETRICS_TOKEN": TOKEN}, cwd=tmp_path,
                             timeout=60)
    assert done.returncode == 0, done.stderr  # everything was delivered: the textfile is no part of the exit status
    assert log_lines(done.stderr) == ["ERROR:host:cannot write the node_exporter textfile: another run held its lock "
                                      "until the run budget of 10 s was used up"]
    assert json.loads((state / "last-run-host.json").read_text())["exit_status"] == 0
    assert not (textfiles / "afmetrics.prom").exists()


# Writes what it is given to TARGET.PID.tmp, as write_atomically does, says so, and waits to be killed.
WRITE_A_TEMPORARY = """
import os, sys, time
path = "%s.%d.tmp" % (sys.argv[1], os.getpid())
with open(path, "w") as handle:
    handle.write(sys.argv[2])
print(os.path.basename(path), flush=True)
time.sleep(600)
"""


def test_the_temporary_file_of_a_run_killed_while_it_wrote_is_swept(run_collector, receiver, tmp_path):
    state = tmp_path / "state"
    spooled = seed_spool(state, "host", [{"kind": "CPU", "login_node": "n1", "load": float(n)} for n in range(3)])

    def writing(target):
        writer = subprocess.Popen([sys.executable, "-c", WRITE_A_TEMPORARY, str(state / target),
                                   "".join(json.dumps(d) + "\n" for d in spooled)], stdout=subprocess.PIPE, text=True)
        return writer, writer.stdout.readline().strip()

    killed, left_behind = writing("spool-host.jsonl")
    killed.kill()
    killed.wait()
    alive, being_written = writing("network.json")
    try:
        done = run_collector("host.py", "-v", "--disk", "/", "--state-dir", state, *receiver.args(),
                             env={"AFMETRICS_TOKEN": TOKEN}, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert sorted(path.name for path in state.glob("*.tmp")) == [being_written]
    finally:
        alive.kill()
        alive.wait()
    assert "INFO:host:removed 1 temporary file(s) that killed runs left: %s" % left_behind in log_lines(done.stderr)


def test_a_lock_is_held_through_a_descriptor_open_for_writing(tmp_path):
    # On NFS, flock is a POSIX lock on the server, and an exclusive one on a read-only descriptor fails with EBADF
    # (flock(2), NOTES). This kernel has no NFS client to show it: the access mode stands in for it.
    with afmetrics_state.StateDir(str(tmp_path), common.log).try_lock("host") as lock:
        assert fcntl.fcntl(lock, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
