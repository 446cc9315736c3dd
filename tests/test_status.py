"""Each real run's record, --status on it (every Nagios exit code), the node_exporter textfile checked by the real
promtool, and splay: the collectors run as cron runs them, against the real HTTPS receiver and a real utmp file."""
import json
import os
import pty
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import pytest

import afmetrics_common as common
import afmetrics_privacy
from conftest import COLLECTORS, collector_environment, log_lines, skip_or_fail

TOKEN = "tok-status-81c3"
RECORD_KEYS = {"collector", "start", "end", "exit_status", "source_failed", "collected", "delivered", "spooled",
               "refused", "dropped", "spool_documents", "spool_oldest_timestamp", "last_error", "last_success"}


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


@pytest.fixture
def collect(run_collector, receiver, sessions, state, tmp_path):
    """collect(*more, env=...): a real run of ssh.py and host.py (the umbrella) to the receiver."""
    def run(*more, env=None, collectors=("-s", "--host")):
        return run_collector("afmetrics_collector", *collectors, "-c", "UC-AF", "--utmp", sessions, "--disk", "/",
                             "--state-dir", state, *receiver.args(), *more,
                             env=dict({"AFMETRICS_TOKEN": TOKEN}, **(env or {})), cwd=tmp_path)
    return run


@pytest.fixture
def status(run_collector, state):
    """status(*args): `--status` of the umbrella (or of the script named first) on the state dir."""
    def run(*args, script="afmetrics_collector"):
        return run_collector(script, "--status", "--state-dir", state, *args)
    return run


def record(state, name):
    return json.loads((state / ("last-run-%s.json" % name)).read_text())


def test_each_real_run_leaves_a_record_and_a_debug_run_none(collect, receiver, state, tmp_path):
    before = time.time()
    assert collect().returncode == 0
    for name in ("ssh", "host"):
        path = state / ("last-run-%s.json" % name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # monitoring agents read it
        run = record(state, name)
        assert set(run) == RECORD_KEYS
        assert before <= run["start"] <= run["end"] <= time.time()
        assert run["exit_status"] == 0 and run["source_failed"] is False and run["last_error"] == ""
        assert run["collected"] == run["delivered"] == len(receiver.of_kind("ssh") if name == "ssh" else
                                                         [d for d in receiver.documents if d["kind"] != "ssh"])
        assert (run["spooled"], run["refused"], run["dropped"], run["spool_documents"]) == (0, 0, 0, 0)
        assert run["last_success"] == run["end"]
    assert stat.S_IMODE(state.stat().st_mode) == 0o755
    records = {path.name: path.read_bytes() for path in state.glob("last-run-*.json")}
    assert collect("-d").returncode == 0
    assert {path.name: path.read_bytes() for path in state.glob("last-run-*.json")} == records


def test_record_counts_what_became_of_each_document(collect, receiver, state):
    receiver.answer_always(503)
    assert collect("--send-budget", "1").returncode == 1
    run = record(state, "ssh")
    assert (run["collected"], run["delivered"], run["spooled"], run["spool_documents"]) == (1, 0, 1, 1)
    assert run["exit_status"] == 1 and run["last_success"] is None and "503" in run["last_error"]
    assert run["start"] - 0.001 <= run["spool_oldest_timestamp"] <= run["end"]  # collected_ms is whole ms
    receiver.restore()
    # The spooled document (it has its timestamp) goes; the new one is refused and dropped.
    receiver.refuse_documents(422, lambda document: "timestamp" not in document)
    assert collect(collectors=("-s",)).returncode == 1
    run = record(state, "ssh")
    assert (run["collected"], run["delivered"], run["refused"], run["spooled"], run["spool_documents"]) == (
        1, 1, 1, 0, 0)
    assert run["last_error"].endswith("refused a ssh document with HTTP 422: dropped")
    receiver.restore()
    assert collect(collectors=("-s",)).returncode == 0
    assert record(state, "ssh")["last_success"] == record(state, "ssh")["end"]


def lines_of(done):
    return done.stdout.strip().splitlines()


def test_status_exit_codes_follow_the_nagios_convention(collect, status, receiver, state, run_collector):
    # 3 UNKNOWN: nothing ran yet.
    done = status()
    assert (done.returncode, lines_of(done)) == (3, ["UNKNOWN: no collector has run yet"])
    done = status(script="ssh.py")
    assert (done.returncode, lines_of(done)) == (3, ["UNKNOWN ssh: no run recorded yet"])
    # 0 OK.
    assert collect().returncode == 0
    done = status()
    assert done.returncode == 0, done.stdout
    assert [line.split(":")[0] for line in lines_of(done)] == ["OK ssh", "OK host"]
    assert "delivered 1 document(s) | last success " in lines_of(done)[0]
    # A selected collector that never ran is UNKNOWN, and that is the worst.
    done = status("-s", "-b")
    assert (done.returncode, [line.split(":")[0] for line in lines_of(done)]) == (3, ["UNKNOWN condor", "OK ssh"])
    # 1 WARNING: the endpoint is down, documents are kept; worst first.
    receiver.answer_always(503)
    assert collect("--send-budget", "1", collectors=("-s",)).returncode == 1
    done = status()
    assert done.returncode == 1
    first, second = lines_of(done)
    assert first.startswith("WARNING ssh: 1 document(s) kept for later: ") and "HTTP 503" in first
    assert "| spool 1, oldest " in first
    assert second.startswith("OK host:")
    # 2 CRITICAL: no success within stale_after (from the config file, as the role writes it).
    config = state.parent / "afmetrics.conf"
    config.write_text("[afmetrics]\nstale_after = 0\n")
    done = status("--config", config)
    assert done.returncode == 2
    assert lines_of(done)[0].startswith("CRITICAL ssh: no successful run within 0 s (not since ")
    # 2 CRITICAL: a source failing, even while the last success is recent.
    receiver.restore()
    assert collect(collectors=("-s",), env={"PATH": "/nonexistent"}).returncode == 1
    done = status()
    assert done.returncode == 2
    assert lines_of(done)[0].startswith("CRITICAL ssh: source failing: who not found on PATH")


def test_status_json_says_the_same_for_machines(collect, status, receiver, state):
    assert collect().returncode == 0
    receiver.answer_always(503)
    assert collect("--send-budget", "1", collectors=("--host",)).returncode == 1
    done = status("--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["status"] == "WARNING"
    by_name = {entry["collector"]: entry for entry in report["collectors"]}
    assert set(by_name) == {"ssh", "host"}
    host, ssh = by_name["host"], by_name["ssh"]
    assert host["status"] == "WARNING" and host["exit_status"] == 1 and host["delivered"] == 0
    assert host["spool_documents"] == host["spooled"] == host["collected"] > 0
    assert 0 <= host["spool_oldest_age_seconds"] < 60
    assert ssh["status"] == "OK" and ssh["last_error"] == "" and ssh["last_run"].endswith("Z")
    assert ssh["last_success"] == ssh["last_run"]
    assert status("--json", script="host.py").returncode == 1


def test_status_is_readable_by_a_monitoring_agents_user(run_collector, receiver, sessions):
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"):
        skip_or_fail("needs root and the system's /usr/bin/python3 to run --status as another user")
    # Outside pytest's tmp_path and the checkout, whose parents only root may enter (as on a node, where the
    # collectors are in /opt); the system Python: the venv's may be one only root can run.
    top = tempfile.mkdtemp(prefix="afmetrics-status-")
    try:
        os.chmod(top, 0o755)
        state, collectors = os.path.join(top, "state"), os.path.join(top, "collectors")
        shutil.copytree(str(COLLECTORS), collectors, ignore=shutil.ignore_patterns("__pycache__"))
        done = run_collector("ssh.py", "--utmp", sessions, "--state-dir", state, *receiver.args(),
                             env={"AFMETRICS_TOKEN": TOKEN})
        assert done.returncode == 0
        done = subprocess.run(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-B",
                               os.path.join(collectors, "ssh.py"), "--status", "--state-dir", state],
                              capture_output=True, text=True, env=collector_environment(), cwd="/")
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout.startswith("OK ssh:")
    finally:
        shutil.rmtree(top)


def test_status_of_a_broken_record_is_unknown_with_one_warning(collect, status, state):
    assert collect().returncode == 0
    (state / "last-run-ssh.json").write_text('{"collector": "ssh", "end": "yesterday"}')
    (state / "last-run-host.json").write_text("{torn")
    done = status("-s", "--host")
    assert done.returncode == 3
    assert [line.split(":")[0] for line in lines_of(done)] == ["UNKNOWN ssh", "UNKNOWN host"]
    assert [line.split(":")[0] for line in log_lines(done.stderr)] == ["WARNING", "WARNING"]


def test_status_needs_no_token_and_json_needs_status(status, run_collector, state):
    done = run_collector("ssh.py", "--json", "--state-dir", state)
    assert done.returncode == 2
    assert log_lines(done.stderr) == ["ERROR:afmetrics:--json goes with --status"]
    # No token, an endpoint that is not one: --status reads records only.
    assert status("-u", "not-a-url").returncode == 3


def test_textfile_is_valid_prometheus_text_with_every_collectors_last_run(collect, receiver, promtool, state,
                                                                         tmp_path):
    textfile_dir = tmp_path / "textfile"
    textfile_dir.mkdir()
    assert collect("--textfile-dir", textfile_dir).returncode == 0
    receiver.answer_always(503)
    # A later run of one collector keeps the other's series.
    assert collect("--textfile-dir", textfile_dir, "--send-budget", "1", collectors=("-s",)).returncode == 1
    path = textfile_dir / "afmetrics.prom"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in textfile_dir.iterdir()] == ["afmetrics.prom"]  # no temporary file left
    text = path.read_text()
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if not line.startswith("#")}
    ssh, host = record(state, "ssh"), record(state, "host")
    assert samples['afmetrics_last_run_timestamp_seconds{collector="ssh"}'] == ssh["end"]
    assert samples['afmetrics_last_run_timestamp_seconds{collector="host"}'] == host["end"]
    assert samples['afmetrics_last_success_timestamp_seconds{collector="host"}'] == host["last_success"]
    assert samples['afmetrics_last_success_timestamp_seconds{collector="ssh"}'] == ssh["last_success"] < ssh["end"]
    assert samples['afmetrics_last_run_exit_status{collector="ssh"}'] == 1
    assert samples['afmetrics_spool_documents{collector="ssh"}'] == 1
    assert samples['afmetrics_last_run_documents{collector="ssh",outcome="spooled"}'] == 1
    assert samples['afmetrics_last_run_documents{collector="host",outcome="delivered"}'] == host["delivered"]
    duration = samples['afmetrics_last_run_duration_seconds{collector="host"}']
    assert duration == pytest.approx(host["end"] - host["start"])


def test_textfile_dir_that_cannot_be_written_is_one_error_and_delivery_goes_on(collect, receiver, tmp_path):
    done = collect("--textfile-dir", tmp_path / "absent", collectors=("-s",))
    assert done.returncode == 0
    assert [line for line in log_lines(done.stderr) if not line.startswith("INFO")] == [
        "ERROR:ssh:cannot write the node_exporter textfile: No such file or directory: %s"
        % (tmp_path / "absent" / "afmetrics.prom")]
    assert len(receiver.of_kind("ssh")) == 1


def test_splay_spreads_a_fleet_and_keeps_each_hosts_place():
    names = ["login%02d.af.example.edu" % n for n in range(1, 21)]
    delays = [common.splay_delay(name, 60) for name in names]
    assert delays == [common.splay_delay(name, 60) for name in names]  # stable from run to run
    assert all(0 <= delay < 60 for delay in delays)
    assert len({int(delay) for delay in delays}) >= 14  # 20 nodes, not all in the same few seconds
    assert max(delays) - min(delays) > 30


def test_splay_must_leave_room_in_the_run_budget(collect):
    done = collect("--splay", "240")
    assert done.returncode == 2
    assert log_lines(done.stderr) == [
        "ERROR:afmetrics:splay 240 s must be less than run_budget 240 s: the wait is part of the run"]


def test_splay_waits_inside_the_run_budget(collect, state, tmp_path):
    delay = common.splay_delay(afmetrics_privacy.host_name(), 4)
    slow_who = tmp_path / "bin"
    slow_who.mkdir()
    (slow_who / "who").write_text("#!/bin/sh\nsleep 30\n")
    (slow_who / "who").chmod(0o755)
    started = time.time()
    done = collect("--splay", "4", "--run-budget", "6", "-v", collectors=("-s",),
                   env={"PATH": "%s:%s" % (slow_who, os.environ["PATH"])})
    elapsed = time.time() - started
    assert done.returncode == 1
    assert "INFO:afmetrics:splay: starting in %.1f s" % delay in log_lines(done.stderr)
    assert record(state, "ssh")["start"] - started >= delay
    assert "who did not answer within" in record(state, "ssh")["last_error"]
    assert elapsed < 6 + 5  # the slow who was cut where the budget ends, the wait included


def test_splay_never_delays_a_debug_run_or_a_run_from_a_terminal(collect, receiver, sessions, state, tmp_path):
    # A splay that puts this host at least 20 s into it.
    splay = max(200.0, 20 / (common.splay_delay(afmetrics_privacy.host_name(), 1) or 0.01))
    options = ["--splay", str(splay), "--run-budget", str(splay + 10), "-v"]
    done = collect(*options, "-d", collectors=("-s",))
    assert done.returncode == 0 and not any("splay" in line for line in log_lines(done.stderr))
    primary, secondary = pty.openpty()
    try:
        started = time.time()
        done = subprocess.run([sys.executable, str(COLLECTORS / "ssh.py"), *options, "--utmp", str(sessions),
                               "--state-dir", str(state), *receiver.args()], stdin=secondary,
                              capture_output=True, text=True, env=collector_environment({"AFMETRICS_TOKEN": TOKEN}),
                              cwd=tmp_path, timeout=60)
    finally:
        os.close(primary)
        os.close(secondary)
    assert done.returncode == 0 and "splay" not in done.stderr
    assert record(state, "ssh")["start"] - started < 20
