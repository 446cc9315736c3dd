"""deploy/prometheus/afmetrics-rules.yml under the real `promtool test rules`, on series made from the afmetrics.prom
files of real collector runs: nodes that work, whose source fails, whose config is wrong, whose configured
collector never ran, whose runs stopped, and whose endpoint is down (one node: its spool grows, also as one of
two; most of the fleet: one alert for all).

Each node's file comes from real runs to the real HTTPS receiver. It becomes one hour of series as node_exporter
would show them while cron goes on running the same way every 5 minutes: the timestamps move to the test's clock
(the real runs' time is its minute 0), and each later run moves the last run (and, where the run succeeded, the
last success) on by 5 minutes and adds the documents a run spooled to the spool; a node whose cron stopped keeps
its file as it is.
"""
import os
import subprocess
import time

import pytest
import yaml

from conftest import REPO

RULES = REPO / "deploy" / "prometheus" / "afmetrics-rules.yml"
TOKEN = "tok-rules-5d2e"
MINUTES = 60
RUN_EVERY = 5  # minutes, the cron line's

SUMMARIES = {
    "AfmetricsCollectorNeverRan": "afmetrics {c} on {i} is configured and never ran: is cron running it?",
    "AfmetricsCollectorNotRunning": "afmetrics {c} on {i} has not run for 15 minutes",
    "AfmetricsSourceFailing": "afmetrics {c} on {i} cannot collect: a source fails (afmetrics_collector --status "
                              "says which)",
    "AfmetricsConfigError": "afmetrics {c} on {i} stops at a usage or configuration error (afmetrics_collector "
                            "--status says which)",
    "AfmetricsSpoolGrowing": "afmetrics {c} on {i} keeps more and more documents: its endpoint is unreachable from "
                             "there",
}


@pytest.fixture
def node(run_collector, receiver, sessions, tmp_path):
    """node(name, *more, env=None, collectors=...): a real run of the umbrella as login node NAME (its own state
    dir and textfile dir) to the receiver; returns (CompletedProcess, the dir of its afmetrics.prom)."""
    receiver.tokens.add(TOKEN)

    def run(name, *more, env=None, collectors=("-s", "--host")):
        directory = tmp_path / name
        directory.mkdir(exist_ok=True)
        done = run_collector("afmetrics_collector", *collectors, "-c", "UC-AF", "--utmp", sessions, "--disk", "/",
                             "--state-dir", directory / "state", "--textfile-dir", directory, *receiver.args(),
                             *more, env=dict({"AFMETRICS_TOKEN": TOKEN}, **(env or {})), cwd=directory)
        return done, directory
    return run


def samples(text):
    """[(metric, {label: value}, value)] of a Prometheus text file."""
    parsed = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        metric, _, labels = series.partition("{")
        pairs = dict(pair.split("=", 1) for pair in labels.rstrip("}").split(",")) if labels else {}
        parsed.append((metric, {key: value.strip('"') for key, value in pairs.items()}, float(value)))
    return parsed


def timeline(text, instance, epoch, running=True):
    """input_series of one node's afmetrics.prom for MINUTES minutes (see the module docstring); epoch: the real
    time that is the test's minute 0."""
    parsed = samples(text)
    by = {(metric, labels.get("collector"), labels.get("outcome")): value for metric, labels, value in parsed}
    series = []
    for metric, labels, value in parsed:
        collector = labels["collector"]
        succeeded = by.get(("afmetrics_last_run_exit_status", collector, None)) == 0
        spooled = by.get(("afmetrics_last_run_documents", collector, "spooled"), 0)
        values = []
        for minute in range(MINUTES + 1):
            runs = minute // RUN_EVERY if running else 0  # runs after the real one
            moved = value
            if metric.endswith("_timestamp_seconds") and value:
                moved = value - epoch
                if metric == "afmetrics_last_run_timestamp_seconds" or (
                        metric == "afmetrics_last_success_timestamp_seconds" and succeeded):
                    moved += runs * RUN_EVERY * 60
            elif metric == "afmetrics_spool_documents":
                moved = value + runs * spooled
            values.append("%r" % moved)
        label_text = ",".join('%s="%s"' % pair for pair in sorted(dict(labels, instance=instance, job="node").items()))
        series.append({"series": "%s{%s}" % (metric, label_text), "values": " ".join(values)})
    return series


def fleet_series(texts, stopped=()):
    """input_series of the nodes' afmetrics.prom ({node: text}), minute 0 the last of their real runs; the nodes in
    stopped keep their files as they are."""
    epoch = max(value for text in texts.values() for metric, _, value in samples(text)
                if metric == "afmetrics_last_run_timestamp_seconds")
    return [entry for name, text in sorted(texts.items())
            for entry in timeline(text, name, epoch, running=name not in stopped)]


def alert(name, instance, collector, severity="critical"):
    return {"exp_labels": {"severity": severity, "instance": instance, "job": "node", "collector": collector},
            "exp_annotations": {"summary": SUMMARIES[name].format(c=collector, i=instance)}}


def run_promtool(promtool, directory, tests):
    path = directory / "afmetrics-rules.test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}))
    return subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120)


def test_each_way_a_node_fails_fires_its_alert_and_no_other(node, receiver, promtool, tmp_path):
    files = {}
    done, files["login01"] = node("login01")
    assert done.returncode == 0
    done, files["login02"] = node("login02", collectors=("-s",), env={"PATH": "/nonexistent"})
    assert done.returncode == 1  # who not found: a source failing
    assert node("login03")[0].returncode == 0
    config = tmp_path / "login03.conf"
    config.write_text("[afmetrics]\ntimeout = soon\n")
    done, files["login03"] = node("login03", "--config", config)
    assert done.returncode == 2
    config = tmp_path / "login04.conf"
    config.write_text("[afmetrics]\ncollectors = ssh, condor\n")
    written = time.time() - 1200  # the config file was written 20 minutes before the run
    os.utime(config, (written, written))
    done, files["login04"] = node("login04", "--config", config, collectors=("-s",))
    assert done.returncode == 0
    done, files["login05"] = node("login05")  # its cron stops after this run
    assert done.returncode == 0
    receiver.answer_always(503)
    done, files["login06"] = node("login06", "--send-budget", "1", collectors=("-s",))
    assert done.returncode == 1  # its documents kept: its endpoint is down, the others' is not
    texts = {name: (directory / "afmetrics.prom").read_text() for name, directory in files.items()}
    series = fleet_series(texts, stopped=("login05",))
    expected = {
        "AfmetricsSourceFailing": [alert("AfmetricsSourceFailing", "login02", "ssh")],
        "AfmetricsConfigError": [alert("AfmetricsConfigError", "login03", "host"),
                                 alert("AfmetricsConfigError", "login03", "ssh")],
        "AfmetricsCollectorNeverRan": [alert("AfmetricsCollectorNeverRan", "login04", "condor")],
        "AfmetricsCollectorNotRunning": [alert("AfmetricsCollectorNotRunning", "login05", "host"),
                                         alert("AfmetricsCollectorNotRunning", "login05", "ssh")],
        "AfmetricsSpoolGrowing": [alert("AfmetricsSpoolGrowing", "login06", "ssh", "warning")],
        "AfmetricsEndpointDown": [],
        "AfmetricsCollectorNoSuccess": [],
    }
    tests = [{"input_series": series, "interval": "1m",
              "alert_rule_test": [{"eval_time": "40m", "alertname": name, "exp_alerts": alerts}
                                  for name, alerts in expected.items()]}]
    checked = run_promtool(promtool, tmp_path, tests)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_endpoint_down_for_the_fleet_is_one_alert(node, receiver, promtool, tmp_path):
    done, directory = node("login01")
    assert done.returncode == 0
    texts = {"login01": (directory / "afmetrics.prom").read_text()}
    receiver.answer_always(503)
    for name in ("login02", "login03", "login04"):
        done, directory = node(name, "--send-budget", "1")
        assert done.returncode == 1
        texts[name] = (directory / "afmetrics.prom").read_text()
    series = fleet_series(texts)
    summary = "the afmetrics endpoint takes no documents: 75% of the login nodes keep theirs for later"
    tests = [{"input_series": series, "interval": "1m", "alert_rule_test": [
        {"eval_time": "5m", "alertname": "AfmetricsEndpointDown", "exp_alerts": []},  # for 10m
        {"eval_time": "40m", "alertname": "AfmetricsEndpointDown",
         "exp_alerts": [{"exp_labels": {"severity": "warning"}, "exp_annotations": {"summary": summary}}]},
        {"eval_time": "40m", "alertname": "AfmetricsSpoolGrowing", "exp_alerts": []},
        {"eval_time": "40m", "alertname": "AfmetricsCollectorNoSuccess", "exp_alerts": []},
        {"eval_time": "40m", "alertname": "AfmetricsCollectorNotRunning", "exp_alerts": []},
    ]}]
    checked = run_promtool(promtool, tmp_path, tests)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_one_of_two_nodes_spooling_is_that_nodes_trouble_not_the_endpoints(node, receiver, promtool, tmp_path):
    done, directory = node("login01", collectors=("-s",))
    assert done.returncode == 0
    texts = {"login01": (directory / "afmetrics.prom").read_text()}
    receiver.answer_always(503)  # login02's proxy is broken: half of a 2-node fleet, and still its own trouble
    done, directory = node("login02", "--send-budget", "1", collectors=("-s",))
    assert done.returncode == 1
    texts["login02"] = (directory / "afmetrics.prom").read_text()
    series = fleet_series(texts)
    tests = [{"input_series": series, "interval": "1m", "alert_rule_test": [
        {"eval_time": "40m", "alertname": "AfmetricsSpoolGrowing",
         "exp_alerts": [alert("AfmetricsSpoolGrowing", "login02", "ssh", "warning")]},
        {"eval_time": "40m", "alertname": "AfmetricsEndpointDown", "exp_alerts": []},
    ]}]
    checked = run_promtool(promtool, tmp_path, tests)
    assert checked.returncode == 0, checked.stdout + checked.stderr
