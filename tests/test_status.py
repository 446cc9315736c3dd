"""Each real run's record, --status on it (every Nagios exit code), the node_exporter textfile checked by the real
promtool, and splay: the collectors run as cron runs them, against the real HTTPS receiver and a real utmp file."""
import json
import os
import pty
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import pytest

import afmetrics_common as common
import afmetrics_privacy
from afmetrics_status import parse_range
from conftest import COLLECTORS, ROLE, collector_environment, log_lines, role_module, skip_or_fail

afmetrics_fleet = role_module(ROLE / "filter_plugins" / "afmetrics_status.py")

TOKEN = "tok-status-81c3"
RECORD_KEYS = {"collector", "start", "end", "duration", "exit_status", "source_error", "collected", "delivered",
               "spooled", "refused", "dropped", "spool_documents", "spool_oldest_timestamp", "last_error",
               "last_success"}


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
        assert 0 < run["duration"] <= run["end"] - run["start"] + 0.01
        assert run["exit_status"] == 0 and run["source_error"] == "" and run["last_error"] == ""
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


def test_record_counts_a_document_the_full_spool_dropped_once(collect, receiver, state):
    receiver.answer_always(503)
    done = collect("--send-budget", "1", collectors=("--host",), env={"AFMETRICS_SPOOL_MAX_DOCUMENTS": "2"})
    assert done.returncode == 1
    run = record(state, "host")
    assert run["collected"] > 2
    assert (run["spooled"], run["dropped"], run["spool_documents"]) == (2, run["collected"] - 2, 2)


def test_record_keeps_the_source_error_when_delivery_fails_too(collect, status, receiver, state):
    receiver.answer_always(503)
    assert collect("--send-budget", "1", collectors=("-s",)).returncode == 1  # one document spooled
    assert collect("--send-budget", "1", collectors=("-s",), env={"PATH": "/nonexistent"}).returncode == 1
    run = record(state, "ssh")
    assert run["source_error"] == "who not found on PATH"
    assert run["last_error"].endswith("kept for the next run")  # the delivery's line came last
    done = status()
    assert done.returncode == 2
    assert lines_of(done)[0].startswith("CRITICAL ssh: source failing: who not found on PATH; last success never")


def lines_of(done):
    """The status lines, without the performance data after the first line's " | "."""
    lines = done.stdout.strip().splitlines()
    return [lines[0].split(" | ")[0]] + lines[1:] if lines else []


# 'label'=value[UOM];[warn];[crit];[min];[max], space-separated, after the first line's "|" (Monitoring Plugins
# guidelines, https://www.monitoring-plugins.org/doc/guidelines.html#AEN201); labels without ' or =, as Icinga
# asks (https://icinga.com/docs/icinga-2/latest/doc/05-service-monitoring/#performance-data-metrics).
PERFDATUM = re.compile(r"^'([^'=]+)'=(U|-?[\d.]+)(s|B|)((?:;[^;\s]*){0,4})$")


def perfdata_of(done):
    """{label: (value, unit, [warn, crit, min, max])} of the first line's performance data; checks its format."""
    first, *rest = done.stdout.splitlines()
    assert all("|" not in line for line in rest)
    text, bar, data = first.partition(" | ")
    assert bar and "|" not in text
    parsed = {}
    for datum in data.split(" "):
        match = PERFDATUM.match(datum)
        assert match, datum
        label, value, unit, thresholds = match.groups()
        parsed[label] = (None if value == "U" else float(value), unit, (thresholds[1:].split(";") + [""] * 4)[:4])
    return parsed


def age_record(state, name, **ages):
    """The record as it will be once its times (last_success, end, spool_oldest_timestamp) are that many seconds
    old (waiting 15 minutes is no test); other fields given as {field: value} in set_fields."""
    path = state / ("last-run-%s.json" % name)
    run = json.loads(path.read_text())
    run.update({field: time.time() - seconds for field, seconds in ages.items()})
    path.write_text(json.dumps(run))


def edit_record(state, name, **fields):
    path = state / ("last-run-%s.json" % name)
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **fields)))


def test_status_exit_codes_follow_the_nagios_convention(collect, status, receiver, state, run_collector):
    # 3 UNKNOWN: nothing ran yet.
    done = status()
    assert (done.returncode, lines_of(done)) == (3, ["UNKNOWN: no collector has run yet (no state dir %s)" % state])
    state.mkdir()
    assert lines_of(status()) == ["UNKNOWN: no collector has run yet"]
    done = status(script="ssh.py")
    assert (done.returncode, lines_of(done)) == (3, ["UNKNOWN ssh: no run recorded yet"])
    # 0 OK.
    assert collect().returncode == 0
    done = status()
    assert done.returncode == 0, done.stdout
    assert [line.split(":")[0] for line in lines_of(done)] == ["OK host", "OK ssh"]  # by name
    assert "delivered 1 document(s); last success " in lines_of(done)[1]
    # A selected collector that never ran is UNKNOWN, worse than OK.
    done = status("-s", "-b")
    assert (done.returncode, [line.split(":")[0] for line in lines_of(done)]) == (3, ["UNKNOWN condor", "OK ssh"])
    # 1 WARNING: the last success is older than -w allows (a Nagios range: above 60 s); worst first.
    age_record(state, "ssh", last_success=61, end=61)
    assert status("-w", "90").returncode == 0
    done = status("-w", "60")
    assert done.returncode == 1
    first, second = lines_of(done)
    assert first.startswith("WARNING ssh: no successful run for over 60 s (not since 61 s ago); last success ")
    assert second.startswith("OK host:")
    perfdata_of(done)  # one "|", on the first line: Nagios takes what follows it for performance data
    # -c is the critical range in a check (not the cluster), and overrides stale_after.
    assert status("-w", "30", "-c", "60").returncode == 2
    assert status("-w", "30", "--critical=@100:200").returncode == 1
    assert status("-c90").returncode == 0
    # 2 CRITICAL once the last success is older than stale_after (900 s), whenever the last run was.
    edit_record(state, "ssh", exit_status=1, refused=1, last_error="the endpoint refused a ssh document: dropped")
    age_record(state, "ssh", last_success=899)
    assert status().returncode == 1
    age_record(state, "ssh", last_success=901)
    done = status()
    assert done.returncode == 2
    assert lines_of(done)[0].startswith("CRITICAL ssh: no successful run for over 900 s (not since 15 min ago): ")
    # stale_after from the config file, as the role writes it; 0: never stale.
    config = state.parent / "afmetrics.conf"
    config.write_text("[afmetrics]\nstale_after = 0\n")
    assert status("--config", config).returncode == 1
    # A last run (and success) in the future (the clock stepped back) would hide staleness: a warning.
    age_record(state, "ssh", last_success=-3600, end=-3600)
    done = status()
    assert done.returncode == 1
    assert re.match(r"WARNING ssh: last run 3[56]\d\d s in the future: the clock was stepped back;",
                    lines_of(done)[0])
    # 2 CRITICAL: a source failing, even while the last success is recent; worse than UNKNOWN.
    receiver.restore()
    assert collect(collectors=("-s",), env={"PATH": "/nonexistent"}).returncode == 1
    done = status("-s", "-b", "--host")
    assert done.returncode == 2
    assert [line.split(":")[0] for line in lines_of(done)] == ["CRITICAL ssh", "UNKNOWN condor", "OK host"]
    assert lines_of(done)[0].startswith("CRITICAL ssh: source failing: who not found on PATH")


def samples_of(text):
    """{'name{labels}': value} of a Prometheus text file."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if not line.startswith("#")}


def test_a_configured_collector_that_never_ran_is_critical_and_has_series(collect, status, promtool, state,
                                                                          tmp_path):
    config, textfile = tmp_path / "afmetrics.conf", tmp_path / "afmetrics.prom"
    config.write_text("[afmetrics]\ncollectors = ssh, condor\n")
    assert collect("--config", config, "--textfile-dir", tmp_path, collectors=("-s",)).returncode == 0
    done = status("--config", config)  # no collector named: the configured ones
    assert done.returncode == 3
    assert [line.split(":")[0] for line in lines_of(done)] == ["UNKNOWN condor", "OK ssh"]
    assert lines_of(done)[0] == "UNKNOWN condor: no run recorded yet (configured 0 s ago)"
    # The config file was written 901 s ago: longer than stale_after, and cron never ran condor.py.
    configured = time.time() - 901
    os.utime(config, (configured, configured))
    done = status("--config", config)
    assert done.returncode == 2
    assert lines_of(done)[0] == "CRITICAL condor: configured 15 min ago and no run for over 900 s: is cron running it?"
    assert perfdata_of(done)["condor_last_success_age"] == (None, "", ["", "900", "0", ""])
    entry = json.loads(status("--config", config, "--json").stdout)["collectors"][1]  # in the config's order
    assert (entry["collector"], entry["status"], entry["last_run"]) == ("condor", "CRITICAL", None)
    assert entry["configured"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(configured))
    # The next run's textfile has its series: a last success of 0, and when it was configured.
    assert collect("--config", config, "--textfile-dir", tmp_path, collectors=("-s",)).returncode == 0
    checked = subprocess.run([promtool, "check", "metrics"], input=textfile.read_text(), capture_output=True,
                             text=True)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
    samples = samples_of(textfile.read_text())
    assert samples['afmetrics_last_success_timestamp_seconds{collector="condor"}'] == 0
    assert samples['afmetrics_configured_timestamp_seconds{collector="condor"}'] == pytest.approx(configured, abs=0.01)
    assert not any('collector="condor"' in name for name in samples
                   if not name.startswith(("afmetrics_last_success", "afmetrics_configured")))
    # batch, the role's name and the umbrella's -b, is condor there.
    config.write_text("[afmetrics]\ncollectors = ssh, batch\n")
    assert collect("--config", config, collectors=("-s",)).returncode == 0
    assert [line.split(":")[0] for line in lines_of(status("--config", config))] == ["UNKNOWN condor", "OK ssh"]
    # A name the node does not know is a configuration error; --status says it and shows the records.
    config.write_text("[afmetrics]\ncollectors = ssh, pbs\n")
    done = collect("--config", config, collectors=("-s",))
    unknown = "collectors: unknown pbs (known: ssh, condor, slurm, jupyter, host)"
    assert (done.returncode, log_lines(done.stderr)) == (2, ["ERROR:afmetrics:" + unknown])
    done = status("--config", config)
    assert (done.returncode, log_lines(done.stderr)) == (2, ["ERROR:afmetrics:" + unknown])
    assert lines_of(done)[0].startswith("CRITICAL ssh: configuration error: " + unknown)


def test_status_with_a_textfile_dir_writes_the_configured_collectors_series(status, promtool, state, tmp_path):
    # What the role runs at deploy, before cron ran any collector: the textfile exists from then on.
    config = tmp_path / "afmetrics.conf"
    config.write_text("[afmetrics]\ncollectors = ssh, batch\ntextfile_dir = %s\n" % (tmp_path / "absent"))
    state.mkdir()
    assert status("--config", config).returncode == 3
    assert not (tmp_path / "afmetrics.prom").exists()  # not from the config file: a check writes nothing
    done = status("--config", config, "--textfile-dir", tmp_path)
    assert (done.returncode, done.stderr) == (3, "")
    text = (tmp_path / "afmetrics.prom").read_text()
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
    configured = config.stat().st_mtime
    assert samples_of(text) == {
        'afmetrics_last_success_timestamp_seconds{collector="condor"}': 0,
        'afmetrics_last_success_timestamp_seconds{collector="ssh"}': 0,
        'afmetrics_configured_timestamp_seconds{collector="condor"}': pytest.approx(configured, abs=0.01),
        'afmetrics_configured_timestamp_seconds{collector="ssh"}': pytest.approx(configured, abs=0.01)}


def test_a_configuration_error_is_recorded_at_once(collect, status, state, tmp_path):
    assert collect("--textfile-dir", tmp_path).returncode == 0
    succeeded = record(state, "ssh")["last_success"]
    config = tmp_path / "afmetrics.conf"
    config.write_text("[afmetrics]\ntimeout = soon\n")
    done = collect("--config", config, "--textfile-dir", tmp_path)
    reason = "%s: bad value for timeout: 'soon' (could not convert string to float: 'soon')" % config
    assert (done.returncode, log_lines(done.stderr)) == (2, ["ERROR:afmetrics:" + reason])
    for name in ("ssh", "host"):
        run = record(state, name)
        assert (run["exit_status"], run["last_error"], run["source_error"]) == (2, reason, "")
        assert (run["collected"], run["delivered"], run["last_success"]) == (0, 0, succeeded if name == "ssh"
                                                                              else run["last_success"])
    # --status reads the records with the same config (the run user's group, root with --config): it says the
    # bad value in one line and shows them, not UNKNOWN.
    for done in status(), status("--config", config):
        assert done.returncode == 2
        assert lines_of(done)[:2] == [
            "CRITICAL host: configuration error: " + reason + lines_of(done)[0].split(reason)[1],
            "CRITICAL ssh: configuration error: " + reason + lines_of(done)[1].split(reason)[1]]
    assert log_lines(done.stderr) == ["ERROR:afmetrics:" + reason]
    samples = samples_of((tmp_path / "afmetrics.prom").read_text())
    assert samples['afmetrics_last_run_exit_status{collector="ssh"}'] == 2
    assert samples['afmetrics_last_success_timestamp_seconds{collector="ssh"}'] == succeeded
    # A CA bundle that cannot be read, for a script of its own: its record alone.
    host_before = record(state, "host")
    done = collect("--ca-bundle", tmp_path / "missing.pem", collectors=("-s",))
    assert done.returncode == 2
    assert record(state, "ssh")["last_error"] == "ca_bundle %s: No such file or directory" % (tmp_path / "missing.pem")
    assert record(state, "host") == host_before
    # A debug run writes no record, whatever its error.
    records = {path.name: path.read_bytes() for path in state.glob("last-run-*.json")}
    assert collect("-d", "--config", config).returncode == 2
    assert {path.name: path.read_bytes() for path in state.glob("last-run-*.json")} == records


def test_endpoint_down_is_a_warning_until_the_kept_documents_are_old(collect, status, receiver, state):
    receiver.answer_always(503)
    # The first run ever, with the endpoint down: it collected, it cannot deliver. Not "never succeeded".
    assert collect("--send-budget", "1", collectors=("-s",)).returncode == 1
    done = status("-s")
    assert done.returncode == 1
    assert lines_of(done)[0].startswith("WARNING ssh: endpoint down: 1 document(s) kept for later, the oldest 0 s "
                                        "ago (last success never): 1 document(s) not delivered (")
    perfdata = perfdata_of(done)
    assert perfdata["ssh_last_success_age"] == (None, "", ["", "900", "0", ""])
    assert perfdata["ssh_spool_documents"] == (1, "", ["", "", "0", ""])
    assert perfdata["ssh_spool_size"] == ((state / "spool-ssh.jsonl").stat().st_size, "B", ["", "", "0", ""])
    assert perfdata["ssh_spool_oldest_age"][1:] == ("s", ["", "21600", "0", ""])
    assert perfdata["ssh_last_run_age"][1] == "s" and perfdata["ssh_delivered"][0] == 0
    entry = json.loads(status("-s", "--json").stdout)["collectors"][0]
    assert (entry["status"], entry["endpoint_down"], entry["spool_bytes"]) == (
        "WARNING", True, perfdata["ssh_spool_size"][0])
    # Still a warning long after the last success, while the runs go on and the kept documents are young.
    age_record(state, "ssh", last_success=3600, spool_oldest_timestamp=21500)
    assert status("-s").returncode == 1
    # CRITICAL once the oldest is older than spool_critical_after (21600 s), or when the runs stopped.
    age_record(state, "ssh", spool_oldest_timestamp=21700)
    done = status("-s")
    assert done.returncode == 2 and lines_of(done)[0].startswith("CRITICAL ssh: endpoint down: 1 document(s) kept")
    assert status("-s", "--spool-critical-after", "0").returncode == 1
    age_record(state, "ssh", spool_oldest_timestamp=60, end=901)
    done = status("-s")
    assert done.returncode == 2 and lines_of(done)[0].startswith("CRITICAL ssh: no run for over 900 s (the last 15 min")
    # The runs stopped, not the endpoint: the fleet check must not take it for an endpoint down.
    entry = json.loads(status("-s", "--json").stdout)["collectors"][0]
    assert (entry["status"], entry["endpoint_down"]) == ("CRITICAL", False)
    # A source failing while the endpoint is down: the node cannot collect, whatever the endpoint does.
    assert collect("--send-budget", "1", collectors=("-s",), env={"PATH": "/nonexistent"}).returncode == 1
    entry = json.loads(status("-s", "--json").stdout)["collectors"][0]
    assert (entry["status"], entry["endpoint_down"]) == ("CRITICAL", False)


def test_a_run_that_ended_within_the_clock_slack_ahead_is_as_fresh_as_now(collect, status, state):
    # The node's clock stepped back 30 s after a successful run (NTP): its end and last success lie ahead of now.
    assert collect(collectors=("-s",)).returncode == 0
    age_record(state, "ssh", last_success=-30, end=-30)
    done = status("-s")
    assert (done.returncode, lines_of(done)[0].split(";")[0]) == (0, "OK ssh: delivered 1 document(s)")
    assert status("-s", "-w", "@0:10").returncode == 1  # an age of 0, not -30: inside a range that alerts inside


@pytest.mark.parametrize("text, inside, outside", [
    ("900", [0, 900], [-1, 900.5]),
    ("10:", [10, 1e9], [9.9]),
    ("~:10", [-1e9, 10], [10.1]),
    ("10:20", [10, 20], [9, 21]),
    ("@10:20", [9, 21], [10, 20]),
])
def test_nagios_ranges_alert_outside_their_range_or_inside_with_at(text, inside, outside):
    limit = parse_range(text)
    assert [limit.alerts(value) for value in inside + outside] == [False] * len(inside) + [True] * len(outside)


@pytest.mark.parametrize("text", ["", "soon", "20:10", "nan", "1:2:3"])
def test_a_bad_nagios_range_is_unknown(status, text):
    done = status("-w", text)
    assert done.returncode == 3 and "-w/--warning: %r is not a Nagios range" % text in done.stderr


def test_status_that_cannot_run_is_unknown(status, run_collector, state):
    done = run_collector("ssh.py", "--status", "--no-such-option")
    assert done.returncode == 3
    assert status("--timeout", "soon").returncode == 3
    done = run_collector("ssh.py", "--status", "--config", state / "missing.conf")
    assert (done.returncode, log_lines(done.stderr)) == (
        3, ["ERROR:afmetrics:config file %s does not exist" % (state / "missing.conf")])


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
    assert ssh["status"] == "OK" and ssh["last_error"] == ssh["source_error"] == "" and ssh["last_run"].endswith("Z")
    assert ssh["last_success"] == ssh["last_run"] and ssh["duration_seconds"] > 0
    assert status("--json", script="host.py").returncode == 1


def node_status(status):
    """One node's registered `--status --json` as playbooks/status.yml's hostvars hold it."""
    done = status("--json")
    return {"_afmetrics_status_run": {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}}


def test_fleet_check_says_endpoint_down_once_and_fails_only_nodes_that_cannot_collect(collect, status, receiver,
                                                                                      state):
    hostvars = {}
    assert collect().returncode == 0
    hostvars["login01"] = node_status(status)
    receiver.answer_always(503)
    assert collect("--send-budget", "1").returncode == 1
    hostvars["login02"] = node_status(status)
    age_record(state, "host", spool_oldest_timestamp=90000)  # kept longer than spool_critical_after
    hostvars["login03"] = node_status(status)
    assert json.loads(hostvars["login03"]["_afmetrics_status_run"]["stdout"])["status"] == "CRITICAL"
    assert collect("--send-budget", "1", collectors=("-s",), env={"PATH": "/nonexistent"}).returncode == 1
    hostvars["login04"] = node_status(status)  # ssh cannot collect; host keeps its documents
    fleet = afmetrics_fleet.afmetrics_fleet_status(hostvars, ["login0%d" % n for n in range(1, 6)])
    # 2 of the 3 nodes that can collect keep documents: the endpoint's; login03's and login04's host documents are
    # too old to wait for it.
    assert (fleet["critical"], fleet["undelivered"], fleet["endpoint_down"], fleet["unanswered"]) == (
        ["login04"], ["login03", "login04"], ["login02", "login03", "login04"], ["login05"])
    assert fleet["lines"][-2:] == ["endpoint down on 3 nodes: login02, login03, login04 (documents kept for later)",
                                   "5 nodes: 1 OK, 1 WARNING, 2 CRITICAL, 1 NO ANSWER"]


def test_fleet_check_fails_a_node_whose_endpoint_alone_is_down(collect, status, receiver, state):
    assert collect().returncode == 0
    hostvars = {"login%02d" % n: node_status(status) for n in range(1, 20)}
    receiver.answer_always(503)  # login20's proxy is broken: the others deliver
    assert collect("--send-budget", "1").returncode == 1
    hostvars["login20"] = node_status(status)
    fleet = afmetrics_fleet.afmetrics_fleet_status(hostvars, sorted(hostvars))
    assert (fleet["critical"], fleet["undelivered"], fleet["endpoint_down"]) == ([], ["login20"], [])
    assert fleet["lines"][-1] == "20 nodes: 19 OK, 1 WARNING"
    # Kept longer than spool_critical_after: it cannot deliver, even when the fleet's endpoint is down.
    age_record(state, "host", spool_oldest_timestamp=25200)
    hostvars["login20"] = node_status(status)
    assert afmetrics_fleet.afmetrics_fleet_status(hostvars, sorted(hostvars))["undelivered"] == ["login20"]
    fleet = afmetrics_fleet.afmetrics_fleet_status(dict(hostvars, login01=hostvars["login20"]), ["login01", "login20"])
    assert (fleet["undelivered"], fleet["endpoint_down"]) == (["login01", "login20"], ["login01", "login20"])


def as_nobody(*argv, env=None):
    return subprocess.run(["runuser", "-u", "nobody", "--"] + [str(arg) for arg in argv], capture_output=True,
                          text=True, env=collector_environment(env), cwd="/")


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
        # The token's config file, readable by root (and the run user's group) only, as the role writes it.
        config = os.path.join(top, "afmetrics.conf")
        with open(os.open(config, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
            handle.write("[afmetrics]\ntoken = %s\nstate_dir = %s\n" % (TOKEN, state))
        # Created under umask 077, the state dir is still one the agent may read.
        done = subprocess.run(["sh", "-c", 'umask 077 && exec "$@"', "sh", sys.executable,
                               str(COLLECTORS / "ssh.py"), "--utmp", str(sessions), *receiver.args()],
                              capture_output=True, text=True, env=collector_environment({"AFMETRICS_CONFIG": config}))
        assert done.returncode == 0, done.stderr
        check = ["/usr/bin/python3", "-B", os.path.join(collectors, "ssh.py"), "--status"]
        done = as_nobody(*check, "--state-dir", state, env={"AFMETRICS_CONFIG": config})
        assert (done.returncode, done.stderr) == (0, "")  # Icinga would show stderr with the status
        assert done.stdout.startswith("OK ssh:")
        done = as_nobody(*check, "-v", "--state-dir", state, env={"AFMETRICS_CONFIG": config})
        assert log_lines(done.stderr) == [
            "WARNING:afmetrics:cannot read config file %s: Permission denied: reading the run records without it"
            % config]
        # A collector the check names that never ran is dated by the config file, which the agent may stat.
        written = time.time() - 901
        os.utime(config, (written, written))
        done = as_nobody("/usr/bin/python3", "-B", os.path.join(collectors, "condor.py"), "--status", "--state-dir",
                         state, env={"AFMETRICS_CONFIG": config})
        assert done.returncode == 2
        assert done.stdout.startswith("CRITICAL condor: configured 15 min ago and no run for over 900 s: ")
        os.chmod(state, 0o700)
        done = as_nobody(*check, "--state-dir", state)
        assert (done.returncode, done.stdout) == (3, "UNKNOWN: cannot read state dir %s: Permission denied\n" % state)
    finally:
        shutil.rmtree(top)


def test_status_of_a_broken_record_is_unknown_with_a_warning(collect, status, state):
    assert collect().returncode == 0
    (state / "last-run-ssh.json").write_text('{"collector": "ssh", "end": "yesterday"}')
    # json writes NaN, json reads it back: a number no status line can show.
    (state / "last-run-jupyter.json").write_text(json.dumps(dict(record(state, "host"), end=float("nan"))))
    (state / "last-run-host.json").write_text("{torn")
    done = status("-s", "--host", "-j")
    assert done.returncode == 3
    assert [line.split(":")[0] for line in lines_of(done)] == ["UNKNOWN ssh", "UNKNOWN jupyter", "UNKNOWN host"]
    assert [line.split(":")[0] for line in log_lines(done.stderr)] == ["WARNING", "WARNING", "WARNING"]


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
    assert samples['afmetrics_last_run_duration_seconds{collector="host"}'] == host["duration"]


def test_textfile_says_0_for_a_collector_that_never_succeeded(collect, receiver, promtool, tmp_path):
    receiver.answer_always(503)
    assert collect("--textfile-dir", tmp_path, "--send-budget", "1", collectors=("-s",)).returncode == 1
    text = (tmp_path / "afmetrics.prom").read_text()
    assert 'afmetrics_last_success_timestamp_seconds{collector="ssh"} 0.0\n' in text
    assert 'afmetrics_last_run_source_failed{collector="ssh"} 0.0\n' in text


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
    done = collect("--splay", "4", "--run-budget", "8", "-v", collectors=("-s",),
                   env={"PATH": "%s:%s" % (slow_who, os.environ["PATH"])})
    assert done.returncode == 1
    assert "INFO:afmetrics:splay: starting in %.1f s" % delay in log_lines(done.stderr)
    assert record(state, "ssh")["start"] - started >= delay
    # who got what was left of the 8 s counted from the start of the process: the wait came out of it.
    [allowed] = re.findall(r"who did not answer within ([\d.]+) s", record(state, "ssh")["source_error"])
    assert float(allowed) <= 8 - delay


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


def test_splay_with_stdin_closed_as_some_crons_leave_it(collect, run_collector, sessions, receiver, state, tmp_path):
    done = subprocess.run([sys.executable, str(COLLECTORS / "ssh.py"), "--splay", "0.5", "--utmp", str(sessions),
                           "--state-dir", str(state), *receiver.args()], capture_output=True, text=True,
                          env=collector_environment({"AFMETRICS_TOKEN": TOKEN}), preexec_fn=lambda: os.close(0))
    assert (done.returncode, done.stderr) == (0, "")
    assert len(receiver.of_kind("ssh")) == 1
