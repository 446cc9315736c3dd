"""Bad input: every parser, given arbitrary text, gives documents or a clean SourceError/UsageError, never a
traceback; a huge condor_q reply still parses.
"""
import argparse
import json
import logging
import math
import os
import tempfile
import time

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import afmetrics_common as common
import afmetrics_privacy
import afmetrics_settings
import condor
import host
import jupyter
import ssh
from conftest import log_lines

LOG = logging.getLogger("test")
EXAMPLES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))
any_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                        lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=12)
# Tokens condor -af could print, and some it should not: enough structure to reach past the column count.
condor_token = st.sampled_from(["alice", "bob", "undefined", "0", "1", "2", "5", "7", "9", "-1", "2.5", "1e3",
                                "1795504699", "x", '"quoted"', "[]"]) | st.text(min_size=1, max_size=6).filter(
                                    lambda token: not token.isspace())


def condor_lines(width):
    return st.lists(st.lists(condor_token, min_size=width, max_size=width).map(" ".join) | any_text,
                    max_size=8).map("\n".join)


@EXAMPLES
@given(any_text)
@example(text="alice  pts/0  2026-11-24 08:00 (10.0.0.1)\n\n \x0b\x1c\n")
def test_who_and_last_give_user_names_for_any_text(text):
    for users in (ssh.parse_who(text), ssh.parse_last(text)):
        assert all(isinstance(user, str) and user and not any(c.isspace() for c in user) for user in users)


@EXAMPLES
@given(any_text)
@example(text="   8       0 sda 1 2 3 4 5 6 7 8 9 10 11\n8 1 sdb x 2 3\n1 2\n")
def test_diskstats_gives_four_counters_per_device_for_any_text(text):
    for counters in host.parse_diskstats(text).values():
        assert len(counters) == 4 and all(isinstance(value, int) for value in counters)


class FakeCondorRun(common.Run):
    """A Run whose commands answer fixed text: condor.collect() in process, without a pool."""

    def __init__(self, replies, state_dir):
        opts = argparse.Namespace(queues=["all:", 'short:queue=="short"'], exclude_owners=[], obfuscate_users=True,
                                  salt="s", group="", obfuscate_hosts="", timeout=60, state_dir=state_dir,
                                  history_scan_limit=100000, condor_jupyter=[], jupyter_pending=False)
        super().__init__(condor.NAME, opts, afmetrics_privacy.UserFilter(opts, LOG), math.inf)
        self.replies = replies

    def command(self, argv):
        return self.replies[argv[0]]


def collect_condor(queue_text, history_text, state_dir):
    run = FakeCondorRun({"condor_q": queue_text, "condor_history": history_text}, state_dir)
    documents = list(condor.collect(run))
    for commit in run.after_delivery:
        commit()
    return documents


@EXAMPLES
@given(queue=condor_lines(len(condor.JOB_ATTRS)), history=condor_lines(len(condor.HISTORY_ATTRS)))
@example(queue="alice 3 0 0.0 undefined undefined 2 1 2048\n\x00\xff garbage", history="bob 1 0 4 2.0 1 1")
def test_condor_gives_documents_for_any_condor_af_text(queue, history, tmp_path):
    documents = collect_condor(queue, history, str(tmp_path))
    assert [d["queue"] for d in documents if d["kind"] == "condorqueue"] == ["all", "short"]
    json.dumps(documents, allow_nan=False)


@pytest.mark.parametrize("column, value", [("ClusterId", "nan"), ("RemoteWallClockTime", "inf"),
                                           ("CpusProvisioned", "1e400")])
def test_non_finite_condor_numbers_are_skipped_lines(column, value, tmp_path):
    row = dict(zip(condor.JOB_ATTRS, "alice 3 0 0.0 100 200 2 1 2048".split()), **{column: value})
    good = "bob 4 0 0.0 100 200 2 1 2048"
    documents = collect_condor(" ".join(row[a] for a in condor.JOB_ATTRS) + "\n" + good, "", str(tmp_path))
    assert [d["Id"] for d in documents if d["kind"] == "condorjob"] == ["4.0"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stored=any_json)
@example(stored={"time": float("nan"), "ids": []})
@example(stored={"time": float("inf"), "ids": []})
@example(stored={"time": 0, "ids": [[1]]})
@example(stored={"time": 1e10, "ids": []})  # ahead of the clock: it would hide every job until 2286
def test_corrupt_history_watermark_is_a_fresh_start(stored, tmp_path):
    # Completed in 2255: after the look-back of a fresh start, and after any watermark a state may hold (none is
    # ahead of the clock); a cursor reports what condor_history printed.
    with tempfile.TemporaryDirectory() as state_dir:
        with open(os.path.join(state_dir, condor.WATERMARK_STATE), "w") as handle:
            handle.write(json.dumps(stored))
        documents = collect_condor("", "bob 1 0 4 2.0 %d %d" % (9e9, 9e9), state_dir)
        assert [(d["Id"], d["state"]) for d in documents if d["kind"] == "condorjob"] == [("1.0", "finished")]
        with open(os.path.join(state_dir, condor.WATERMARK_STATE)) as handle:
            assert json.load(handle)["cursor"] == "1.0"


class HostRun(common.Run):
    def __init__(self, state_dir):
        opts = argparse.Namespace(disks=["/"], obfuscate_hosts="", state_dir=state_dir, baseline_max_age=3600.0,
                                  debug=False, timeout=60.0)
        super().__init__(host.NAME, opts, None, math.inf)


@settings(max_examples=100, deadline=None)
@given(network=any_json, diskstats=any_json)
@example(network={"time": "x", "counters": [1, 2]}, diskstats=None)
@example(network={"time": time.time() - 60, "interfaces": {"1": {"name": "lo", "sent": "x", "received": 1}}},
         diskstats=None)
@example(network={"time": time.time() - 60, "boot": common.this_boot(), "interfaces": {"1": {"name": 7}}},
         diskstats=None)
@example(network={"time": time.time() - 60, "boot": common.this_boot(), "interfaces": {"1": {
    "name": "lo", "sent": 2 ** 70, "received": -1}}}, diskstats=None)
@example(network={"time": time.time() - 60, "counters": {"lo": [1, 2]}}, diskstats=None)
@example(network=None, diskstats={"time": 5, "devices": []})
def test_corrupt_host_state_is_a_fresh_start(network, diskstats):
    with tempfile.TemporaryDirectory() as state_dir:
        for name, value in ((host.NETWORK_STATE, network), (host.DISKSTATS_STATE, diskstats)):
            with open(os.path.join(state_dir, name), "w") as handle:
                handle.write(json.dumps(value))
        run = HostRun(state_dir)
        assert {"CPU", "MEM", "DISK"} <= {d["kind"] for d in host.collect(run)}
        for commit in run.after_delivery:
            commit()


@settings(max_examples=200, deadline=None)
@given(stored=any_json)
def test_any_stuck_children_state_holds_no_stuck_child(stored):
    """Whatever the state file of stuck usage children holds, none of it is taken for a child still stuck (which
    would leave its mount unread) unless it names a live process by its pid, start and boot."""
    assert host.still_stuck(stored) == {}


@settings(max_examples=200, deadline=None)
@given(pod_list=st.fixed_dictionaries({"items": st.lists(any_json, max_size=4)}) | any_json)
@example(pod_list={"items": [1]})
@example(pod_list={"items": [{"metadata": {"labels": {"owner": ["a"]}}}]})
@example(pod_list={"items": [{"metadata": {"labels": {"owner": 5}}}, {"metadata": {"labels": {"owner": "x"}}}]})
def test_any_pod_list_gives_users_or_a_source_error(pod_list):
    try:
        users = jupyter.pod_users(pod_list, "owner")
    except common.SourceError:
        return
    names = afmetrics_privacy.UserFilter(argparse.Namespace(salt="", obfuscate_users=True, group=""), LOG).report_names(users)
    assert all(isinstance(name, str) for name in names)


def settings_table():
    return afmetrics_settings.COMMON_SETTINGS + condor.SETTINGS + host.SETTINGS + ssh.SETTINGS + jupyter.SETTINGS


def resolve_with_config(text, directory):
    path = os.path.join(directory, "afmetrics.conf")
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write(text)
    parser = argparse.ArgumentParser()
    afmetrics_settings.add_common_arguments(parser)
    return afmetrics_settings.resolve_settings(parser, settings_table(), ["--config", path])


@EXAMPLES
@given(text=any_text | st.lists(st.tuples(st.sampled_from([s.name for s in settings_table()] + ["other"]), any_text)
                                .map(lambda pair: "%s = %s" % pair), max_size=6)
       .map(lambda lines: "[afmetrics]\n" + "\n".join(lines)))
@example(text="[afmetrics]\ntimeout = soon\n")
@example(text="[afmetrics]\n[afmetrics]\n")
@example(text="no section\n")
@example(text="[afmetrics]\nqueues = all:\n  short:x\n\tlong")
def test_any_config_file_gives_settings_or_a_usage_error(text, monkeypatch, tmp_path):
    for name in [name for name in os.environ if name.startswith("AFMETRICS_")]:
        monkeypatch.delenv(name)
    try:
        resolve_with_config(text, str(tmp_path))
    except common.UsageError as error:
        assert "\n" not in str(error)


@pytest.mark.parametrize("line", ["send_budget = nan", "send_budget = inf", "send_budget = -1", "timeout = nan",
                                  "timeout = -5"])
def test_budget_and_timeout_must_be_finite_and_positive(line, monkeypatch, tmp_path):
    monkeypatch.delenv("AFMETRICS_SEND_BUDGET", raising=False)
    monkeypatch.delenv("AFMETRICS_TIMEOUT", raising=False)
    with pytest.raises(common.UsageError):
        resolve_with_config("[afmetrics]\n%s\n" % line, str(tmp_path))


@pytest.mark.parametrize("url, why", [
    ("https://[2001:db8::10/", "Invalid IPv6 URL"),
    ("https://af.example.org:99999/", "Port out of range 0-65535"),
    ("https://af.example.org:0/", "Port out of range 1-65535"),
    ("https://af.example.org:x/", "Port could not be cast to integer value as 'x'"),
    ("https://af example.org/", "Failed to parse: Host 'af example.org' contains invalid character ' '"),
    ("https:///", "no host in it: give the endpoint as https://HOST/..."),
])
def test_a_url_delivery_cannot_split_is_one_usage_error_line(url, why, run_collector, tmp_path):
    done = run_collector("host.py", "--disk", "/", "-u", url, "--state-dir", tmp_path / "state",
                         env={"AFMETRICS_TOKEN": "tok-url"}, cwd=tmp_path)
    assert done.returncode == 2
    assert log_lines(done.stderr) == ["ERROR:afmetrics:url %s: %s" % (url, why)]
    assert not (tmp_path / "state").exists()  # up front: nothing was collected, sent or spooled


def test_condor_q_of_100000_jobs_parses(tmp_path):
    queue = "".join("user%d %d 0 10.0 100 200 2 1 2048\n" % (job % 500, job) for job in range(100000))
    documents = collect_condor(queue, "", str(tmp_path))
    assert len(documents) == 2 + 100000
    assert documents[0] == {"kind": "condorqueue", "queue": "all", "idle": 0, "running": 100000, "held": 0,
                            "allocated_cores": 100000, "allocated_mem": 204800000}


def test_garbage_from_condor_q_is_one_warning_line_not_a_traceback(run_collector, tmp_path):
    # Bad-input test only: condor_q and condor_history here are scripts printing fixed text.
    tools = tmp_path / "bin"
    tools.mkdir()
    replies = {"condor_q": b"\x00\xff\xfe binary \x1b[2J\nalice 3 0 0.0 100 200 2 1 2048\nonly three tokens\n",
               "condor_history": b"\xc3\x28 undefined\n"}
    for tool, reply in replies.items():
        (tools / (tool + ".out")).write_bytes(reply)
        (tools / tool).write_text("#!/bin/sh\ncat '%s'\n" % (tools / (tool + ".out")))
        (tools / tool).chmod(0o755)
    done = run_collector("condor.py", "-d", "-q", "all:", "--state-dir", tmp_path / "state", cwd=tmp_path,
                         env={"PATH": "%s:%s" % (tools, os.environ["PATH"])})
    assert done.returncode == 0, done.stderr
    # condor_history's one bad line is counted first: its reply is read before the queue's jobs stream.
    assert log_lines(done.stderr) == ["WARNING:condor:1 line(s) of condor output did not parse and were skipped",
                                      "WARNING:condor:2 line(s) of condor output did not parse and were skipped"]
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "condor.json").read_text().splitlines()]
    assert kinds == ["condorqueue", "condorjob"]
