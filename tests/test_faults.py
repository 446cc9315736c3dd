"""Nothing lost: the collectors against a real local HTTPS receiver that misbehaves, then recovers.

For each fault the collectors run (ssh.py's document from a utmp file written here, host.py's with --disk /),
the receiver is restored and they run again; every document collected must then have arrived, compared by
content, with duplicates only where the receiver kept a document but its reply was lost.
"""
import collections
import email.utils
import json
import os
import re
import shutil
import subprocess
import sys
import time
import types

import pytest
import trustme
import urllib3

import afmetrics_delivery
import afmetrics_privacy
from afmetrics_state import ISO_TIMESTAMP
from conftest import COLLECTORS, collector_environment, log_lines, spool_documents, write_spool
from receiver import Receiver

TOKEN = "tok-5e1d2a9c40"
COLLECTED_SSH = {"kind": "ssh", "cluster": "UC-AF", "login_node": afmetrics_privacy.host_name(),
                 "ssh_user_count": 2, "users": ["alice", "bob"]}
SPOOLS = ("spool-ssh.jsonl", "spool-host.jsonl")
PYTHON_START_SLACK = 5  # seconds a run may take beyond a budget: interpreter start, the other collector


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def umbrella_command(receiver, sessions, state, *more):
    return ["afmetrics_collector", "-v", "-s", "--host", "-c", "UC-AF", "--disk", "/", "--utmp", sessions,
            "--state-dir", state, "-u", receiver.url, "--ca-bundle", receiver.ca_file] + list(more)


def run_umbrella(run_collector, receiver, sessions, state, *more, env=None):
    return run_collector(*umbrella_command(receiver, sessions, state, *more),
                         env=dict({"AFMETRICS_TOKEN": TOKEN}, **(env or {})), cwd=state.parent)


def collected(done):
    """How many documents the run collected, from its 'collected N document(s)' lines."""
    lines = "\n".join(log_lines(done.stderr))
    return sum(int(count) for count in re.findall(r"INFO:\w+:collected (\d+) document", lines))


def problems(done):
    return [line for line in log_lines(done.stderr) if not line.startswith("INFO:")]


def spooled(state):
    return [document for name in SPOOLS for document in spool_documents(state / name)]


def without_timestamp(document):
    return {key: value for key, value in document.items() if key != "timestamp"}


def same_documents(first, second):
    """The same documents, as many times each, in any order."""
    def counted(documents):
        return collections.Counter(json.dumps(document, sort_keys=True) for document in documents)
    return counted(first) == counted(second)


@pytest.fixture(scope="session")
def foreign_certificate():
    """A certificate for 127.0.0.1 from a CA the collectors were not told to trust."""
    return trustme.CA(organization_name="someone else").issue_cert("127.0.0.1", "localhost")


Fault = collections.namedtuple("Fault", "name arm reason")
FAULTS = [
    Fault("connection refused", lambda receiver, cert: receiver.refuse(),
          "cannot reach {url}: NewConnectionError (Connection refused)"),
    Fault("HTTP 500", lambda receiver, cert: receiver.answer_always(500), "{url} answered HTTP 500"),
    Fault("HTTP 429 with Retry-After", lambda receiver, cert: receiver.answer_always(429, retry_after=1),
          "{url} answered HTTP 429"),
    Fault("HTTP 401 (token refused)", lambda receiver, cert: receiver.answer_always(401), "{url} answered HTTP 401"),
    # An ingress between deployments, a proxy in front of the wrong service: the endpoint is wrong, not the
    # documents, so they are kept like any other failure's.
    Fault("HTTP 404 (redeploy)", lambda receiver, cert: receiver.answer_always(404), "{url} answered HTTP 404"),
    Fault("HTTP 405", lambda receiver, cert: receiver.answer_always(405), "{url} answered HTTP 405"),
    Fault("hang", lambda receiver, cert: receiver.hang.set(),
          "no answer from {url} within the time budget to a request sent whole"),
    # Half the body read, then a reset: the kernel took the small body whole, so the collector cannot tell.
    Fault("reset mid-request", lambda receiver, cert: receiver.reset_mid_request(),
          "no answer from {url} to a request sent whole: ProtocolError (Remote end closed connection without "
          "response)"),
    Fault("reply lost", lambda receiver, cert: receiver.lose_replies(1000),
          "no answer from {url} to a request sent whole: ProtocolError (Remote end closed connection without "
          "response)"),
    Fault("certificate of another CA", lambda receiver, cert: receiver.present(cert),
          "TLS verification of {url} failed"),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_fault_then_recovery_loses_nothing(fault, run_collector, receiver, foreign_certificate, sessions, state):
    fault.arm(receiver, foreign_certificate)
    # A small budget keeps the hang case short; the other faults end the run well before it.
    first = run_umbrella(run_collector, receiver, sessions, state, "--send-budget", 3)
    assert first.returncode == 1, first.stderr
    reason = fault.reason.format(url=receiver.url)
    kept = spooled(state)
    # One line per collector says what happened; the ssh collector meets the fault, host.py's documents are
    # then kept without trying an endpoint known to be down.
    assert problems(first) == [
        "ERROR:ssh:1 document(s) not delivered (%s): kept for the next run" % reason,
        "ERROR:host:%d document(s) not delivered (%s): kept for the next run" % (len(kept) - 1, reason)]
    assert len(kept) == collected(first)
    assert [without_timestamp(d) for d in kept if d["kind"] == "ssh"] == [COLLECTED_SSH]
    assert all(ISO_TIMESTAMP.match(d["timestamp"]) and "token" not in d for d in kept)
    assert same_documents(receiver.documents, receiver.lost)  # only what the receiver kept without replying

    receiver.restore()
    arrived_before = len(receiver.documents)
    second = run_umbrella(run_collector, receiver, sessions, state)
    assert second.returncode == 0, second.stderr
    assert problems(second) == []
    assert spooled(state) == []
    replayed = [dict(d, token=TOKEN) for d in kept]
    this_run = [d for d in receiver.documents[arrived_before:] if "timestamp" not in d]
    assert len(this_run) == collected(second)
    assert dict(COLLECTED_SSH, token=TOKEN) in this_run
    assert sorted(d["kind"] for d in this_run) == ["CPU", "DISK", "MEM", "NETWORK", "ssh"]
    # Every document collected arrived; a second copy only of a document whose reply was lost.
    assert same_documents([without_timestamp(d) for d in receiver.documents],
                          [without_timestamp(d) for d in replayed + this_run] + receiver.lost)
    assert all(d in receiver.documents for d in replayed)  # with the time they were collected


def test_lost_reply_is_not_sent_again_in_the_run_and_the_next_run_may_index_it_twice(run_collector, receiver,
                                                                                      sessions, state):
    """The request went out whole and the endpoint indexed it, but its reply was lost: sending it again at once
    would index it twice for sure; kept for the next run, it is indexed twice only in that case (at-least-once)."""
    receiver.tokens.add(TOKEN)
    receiver.lose_replies(1)
    first = run_umbrella(run_collector, receiver, sessions, state, env={"AFMETRICS_CONNECTIONS": "1"})
    assert first.returncode == 1
    assert receiver.lost == [dict(COLLECTED_SSH, token=TOKEN)]
    # One lost answer is not an endpoint down: host.py's documents went (a second would have been).
    assert len(receiver.requests) == 2 and [without_timestamp(d) for d in spooled(state)] == [COLLECTED_SSH]

    receiver.restore()
    second = run_umbrella(run_collector, receiver, sessions, state, env={"AFMETRICS_CONNECTIONS": "1"})
    assert second.returncode == 0, second.stderr
    ssh = [d for d in receiver.index if d["kind"] == "ssh"]
    assert len(ssh) == 3  # the lost one, its copy from the spool, and the second run's own
    assert len(receiver.index) == collected(first) + collected(second) + 1
    assert spooled(state) == []


def test_fault_absorbed_by_retries_is_still_logged_in_one_line(run_collector, receiver, sessions, state):
    receiver.fail_next(503)
    done = run_umbrella(run_collector, receiver, sessions, state, env={"AFMETRICS_CONNECTIONS": "1"})
    assert done.returncode == 0, done.stderr
    assert len([line for line in problems(done) if receiver.url in line and "503" in line]) == 1


def test_run_killed_mid_delivery_keeps_the_spool_and_the_next_run_delivers_it(run_collector, receiver, sessions,
                                                                              state):
    receiver.answer_always(401)
    assert run_umbrella(run_collector, receiver, sessions, state).returncode == 1
    kept = {name: (state / name).read_bytes() for name in SPOOLS}
    assert all(kept.values())
    replayed = [dict(d, token=TOKEN) for d in spooled(state)]

    receiver.restore()
    receiver.hang.set()
    command = [sys.executable, str(COLLECTORS / "afmetrics_collector")] + [
        str(arg) for arg in umbrella_command(receiver, sessions, state)[1:]]
    killed = subprocess.Popen(command, env=collector_environment({"AFMETRICS_TOKEN": TOKEN}), cwd=state.parent,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        assert receiver.hanging.wait(30), "the run never reached the receiver"
    finally:
        killed.kill()
        killed.wait()
    assert {name: (state / name).read_bytes() for name in SPOOLS} == kept  # the old spool intact

    receiver.restore()
    last = run_umbrella(run_collector, receiver, sessions, state)
    assert last.returncode == 0, last.stderr
    assert problems(last) == []  # the killed run's lock went with it
    assert all(receiver.documents.count(d) == 1 for d in replayed)
    assert dict(COLLECTED_SSH, token=TOKEN) in receiver.documents  # collected again: the kill lost nothing lasting
    assert spooled(state) == []


def test_batches_and_gzip_are_spooled_and_replayed_like_single_documents(run_collector, receiver, sessions, state):
    env = {"AFMETRICS_BATCH_SIZE": "2", "AFMETRICS_GZIP": "true"}
    receiver.answer_always(401)
    first = run_umbrella(run_collector, receiver, sessions, state, env=env)
    assert first.returncode == 1
    kept = spooled(state)
    assert len(kept) == collected(first)

    receiver.restore()
    second = run_umbrella(run_collector, receiver, sessions, state, env=env)
    assert second.returncode == 0, second.stderr
    delivered = receiver.requests[1:]  # after the one refused request of the first run
    assert all(request["headers"].get("Content-Encoding") == "gzip" for request in delivered)
    batches = [json.loads(request["body"]) for request in delivered]
    assert all(isinstance(batch, list) and 1 <= len(batch) <= 2 for batch in batches)
    assert sum(map(len, batches)) == len(receiver.documents)
    assert len(receiver.documents) == len(kept) + collected(second)
    assert all(dict(d, token=TOKEN) in receiver.documents for d in kept)


@pytest.mark.parametrize("setting, value, seeded_age_hours, dropped, warning", [
    # 4 seeded + 1 new: the 2 oldest go
    ("AFMETRICS_SPOOL_MAX_DOCUMENTS", "3", 1, 2, "spool {spool} full (3 documents): dropped the oldest 2 snapshot(s) a later run sends again: ssh x2"),
    # every seeded document is too old: dropped as it is read, never sent
    ("AFMETRICS_SPOOL_MAX_AGE_HOURS", "24", 25, 4, "spool {spool}: 4 document(s) older than 24 hours dropped"),
])
def test_spool_is_bounded_and_counts_what_it_drops(setting, value, seeded_age_hours, dropped, warning, run_collector,
                                                   receiver, sessions, state):
    state.mkdir()
    collected_ms = int((time.time() - seeded_age_hours * 3600) * 1000)
    seeded = [dict(COLLECTED_SSH, users=["u%d" % n], timestamp=collected_ms + n) for n in range(4)]
    (state / "spool-ssh.jsonl").write_text("".join(json.dumps(d) + "\n" for d in seeded))
    receiver.answer_always(401)
    done = run_collector("ssh.py", "-c", "UC-AF", "--utmp", sessions, "--state-dir", state, "-u", receiver.url,
                         "--ca-bundle", receiver.ca_file, env={"AFMETRICS_TOKEN": TOKEN, setting: value},
                         cwd=state.parent)
    assert done.returncode == 1
    assert "WARNING:ssh:" + warning.format(spool=state / "spool-ssh.jsonl") in log_lines(done.stderr)
    kept = spooled(state)
    assert [without_timestamp(d) for d in kept[:-1]] == [without_timestamp(d) for d in seeded[dropped:]]  # the newest
    assert without_timestamp(kept[-1]) == COLLECTED_SSH


class _SleepRecorder:
    """Stands in for the time module in urllib3's Retry: records each sleep instead of sleeping."""

    def __init__(self):
        self.sleeps = []

    def sleep(self, seconds):
        self.sleeps.append(seconds)

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.fixture
def sleeps(monkeypatch):
    recorder = _SleepRecorder()
    monkeypatch.setattr(urllib3.util.retry, "time", recorder)
    # The budget's clock moves by what was slept, as it would have had the sleeps been real.
    monkeypatch.setattr(afmetrics_delivery, "time", types.SimpleNamespace(
        time=time.time, monotonic=lambda: time.monotonic() + sum(recorder.sleeps)))
    return recorder.sleeps


def delivery_to(receiver, send_budget=120.0):
    opts = types.SimpleNamespace(url=receiver.url, ca_bundle=receiver.ca_file, send_budget=send_budget, run_budget=240.0,
                                 connections=1, batch_size=1, batch_bytes=1000000, gzip=False)
    return afmetrics_delivery.Delivery(opts, time.monotonic() + opts.run_budget)


def deliver(delivery, documents):
    return delivery.deliver(documents, TOKEN)


def test_retry_after_is_honoured(receiver, sleeps):
    receiver.fail_next(429, retry_after=2)
    assert deliver(delivery_to(receiver), [COLLECTED_SSH]) == ([], [], ["HTTP 429"])
    assert sleeps == [2]
    assert len(receiver.requests) == 2


def test_backoff_is_exponential_with_jitter(receiver, sleeps):
    receiver.fail_next(500, 502, 503)
    assert deliver(delivery_to(receiver), [COLLECTED_SSH]) == ([], [], ["HTTP 500", "HTTP 502", "HTTP 503"])
    # urllib3 retries the first failure at once, then waits 0.5 * 2^n s plus up to 0.5 s of jitter.
    assert len(sleeps) == 2 and 1 <= sleeps[0] <= 1.5 and 2 <= sleeps[1] <= 2.5
    assert len(receiver.requests) == 4


def test_waits_between_retries_fit_in_the_send_budget(receiver, sleeps):
    receiver.answer_always(429, retry_after=3600)
    undelivered, refused, retried = deliver(delivery_to(receiver, send_budget=3), [COLLECTED_SSH])
    assert undelivered == [COLLECTED_SSH]
    assert sum(sleeps) <= 3


def test_spool_line_without_kind_refused_by_the_endpoint_is_a_log_line(run_collector, receiver, sessions, state):
    state.mkdir()
    (state / "spool-ssh.jsonl").write_text('{"users": [], "timestamp": %d}\n' % (time.time() * 1000))
    receiver.fail_next(400)
    done = run_collector("ssh.py", "--utmp", sessions, "--state-dir", state, "-u", receiver.url,
                         "--ca-bundle", receiver.ca_file, env={"AFMETRICS_TOKEN": TOKEN}, cwd=state.parent)
    assert done.returncode == 1
    # Every stderr line a log line (log_lines checks the format): no traceback.
    assert problems(done) == ["WARNING:ssh:spool %s: 1 corrupt line(s) dropped" % (state / "spool-ssh.jsonl"),
                              "ERROR:ssh:1 document(s) not delivered (%s refused every document (HTTP 400)): kept "
                              "for the next run" % receiver.url]


@pytest.mark.parametrize("value", ["1.5", "in 3 s as an HTTP-date"])
def test_retry_after_as_a_fraction_or_an_http_date_is_honoured(value, receiver, sleeps):
    """RFC 9110 allows an HTTP-date; a fraction is not allowed but seen, and urllib3 raises on it."""
    header = value if value == "1.5" else email.utils.formatdate(time.time() + 3, usegmt=True)
    receiver.fail_next(429, retry_after=header)
    assert deliver(delivery_to(receiver), [COLLECTED_SSH]) == ([], [], ["HTTP 429"])
    [slept] = sleeps
    assert slept == 1.5 if value == "1.5" else 1 <= slept <= 3


def test_batch_too_large_for_the_endpoint_is_split_down_to_single_documents(run_collector, receiver, sessions,
                                                                              state):
    receiver.max_body = 400  # an endpoint whose limit is below batch_bytes: each document fits alone
    done = run_umbrella(run_collector, receiver, sessions, state, env={"AFMETRICS_BATCH_SIZE": "4"})
    assert done.returncode == 0, done.stderr
    assert sorted(d["kind"] for d in receiver.documents) == ["CPU", "DISK", "MEM", "ssh"]
    assert len(receiver.documents) == collected(done)
    [warning] = problems(done)
    assert warning.startswith("WARNING:host:%s failed HTTP 413 (batch split) x" % receiver.url)


@pytest.mark.parametrize("status, batch_size", [(400, 4), (422, 4), (422, 1), (413, 1)])
def test_only_the_document_the_endpoint_refuses_is_dropped(status, batch_size, run_collector, receiver, sessions,
                                                          state):
    receiver.refuse_documents(status, lambda document: document["kind"] == "MEM")
    done = run_umbrella(run_collector, receiver, sessions, state, env={"AFMETRICS_BATCH_SIZE": str(batch_size)})
    assert done.returncode == 1
    assert sorted(d["kind"] for d in receiver.documents) == ["CPU", "DISK", "ssh"]
    assert [line for line in problems(done) if line.startswith("ERROR")] == [
        "ERROR:host:%s refused a MEM document with HTTP %d: dropped" % (receiver.url, status)]
    assert spooled(state) == []


def test_a_spooled_document_refused_while_the_endpoint_takes_others_is_dropped_once(run_collector, receiver,
                                                                                    sessions, state):
    """The spooled document is refused on its own merits (the run's own document went): dropped with one line,
    and gone from the spool, not sent again by every later run."""
    state.mkdir()
    write_spool(state / "spool-ssh.jsonl", [dict(COLLECTED_SSH, users=["refused"])], 60)
    receiver.refuse_documents(400, lambda document: document.get("users") == ["refused"])
    args = ["ssh.py", "-c", "UC-AF", "--utmp", sessions, "--state-dir", state, *receiver.args()]
    first = run_collector(*args, env={"AFMETRICS_TOKEN": TOKEN}, cwd=state.parent)
    assert first.returncode == 1
    assert problems(first) == ["ERROR:ssh:%s refused a ssh document with HTTP 400: dropped" % receiver.url]
    assert spooled(state) == []
    assert run_collector(*args, env={"AFMETRICS_TOKEN": TOKEN}, cwd=state.parent).returncode == 0
    assert [d["users"] for d in receiver.documents] == [["alice", "bob"]] * 2


def slow_tool(directory, tool, seconds):
    """TOOL on PATH: the real one, started after SECONDS (a busy schedd, an NSS lookup that hangs)."""
    directory.mkdir(exist_ok=True)
    wrapper = directory / tool
    wrapper.write_text('#!/bin/sh\nsleep %s\nexec %s "$@"\n' % (seconds, shutil.which(tool)))
    wrapper.chmod(0o755)
    return {"PATH": "%s:%s" % (directory, os.environ["PATH"])}


def test_send_budget_counts_from_delivery_not_from_a_slow_source(run_collector, receiver, sessions, state):
    env = slow_tool(state.parent / "bin", "who", 4)
    done = run_umbrella(run_collector, receiver, sessions, state, "--send-budget", 2, env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(d["kind"] for d in receiver.documents) == ["CPU", "DISK", "MEM", "ssh"]


def test_run_budget_ends_a_slow_source_and_keeps_what_is_left(run_collector, receiver, sessions, state):
    env = slow_tool(state.parent / "bin", "who", 30)
    started = time.monotonic()
    done = run_umbrella(run_collector, receiver, sessions, state, "--run-budget", 3, env=env)
    assert time.monotonic() - started < 3 + PYTHON_START_SLACK
    assert done.returncode == 1
    who_failed, disks_failed, host_kept = problems(done)
    assert re.match(r"ERROR:ssh:who did not answer within [\d.]+ s$", who_failed), who_failed
    # Reading a disk's usage is a command too (host.py's docstring says why), and gets no more than is left.
    assert disks_failed == "ERROR:host:DISK not reported: run budget of 3 s used up"
    assert host_kept == "ERROR:host:2 document(s) not delivered (run budget of 3 s used up): kept for the next run"
    assert receiver.documents == []


def test_retry_after_of_a_year_no_clock_reaches_is_ignored(receiver, sleeps):
    receiver.fail_next(429, retry_after="Mon, 01 Jan 99999999999999999999 00:00:00 GMT")
    assert deliver(delivery_to(receiver), [COLLECTED_SSH]) == ([], [], ["HTTP 429"])


def test_a_redirect_is_not_followed_and_the_documents_are_kept(run_collector, receiver, certificate_authority,
                                                               sessions, state):
    maintenance = Receiver(certificate_authority.issue_cert("127.0.0.1"), receiver.ca_file)
    try:
        receiver.redirect_to(maintenance.url + "maintenance")
        done = run_umbrella(run_collector, receiver, sessions, state)
        assert done.returncode == 1
        assert maintenance.requests == []  # neither the documents nor the token went there
    finally:
        maintenance.close()
    reason = "%s answered HTTP 302 (a redirect to %smaintenance)" % (receiver.url, maintenance.url)
    assert problems(done)[0] == "ERROR:ssh:1 document(s) not delivered (%s): kept for the next run" % reason
    assert len(spooled(state)) == collected(done)


def test_an_endpoint_trickling_its_reply_cannot_hold_the_run_past_its_budget(run_collector, receiver, sessions,
                                                                             state):
    receiver.trickle()
    started = time.monotonic()
    done = run_umbrella(run_collector, receiver, sessions, state, "--send-budget", 2)
    took = time.monotonic() - started
    assert took < 2 + afmetrics_delivery.Delivery.STRAGGLER_GRACE + PYTHON_START_SLACK, took
    assert done.returncode == 1
    assert problems(done)[0] == ("ERROR:ssh:1 document(s) not delivered (%s did not finish answering within the "
                                 "time budget): kept for the next run" % receiver.url)
    assert len(spooled(state)) == collected(done)


def test_an_endpoint_refusing_every_document_keeps_them(run_collector, receiver, state):
    receiver.answer_always(400)
    done = run_collector("host.py", "--disk", "/", "--state-dir", state, *receiver.args(),
                         env={"AFMETRICS_TOKEN": TOKEN}, cwd=state.parent)
    assert done.returncode == 1
    assert problems(done) == ["ERROR:host:3 document(s) not delivered (%s refused every document (HTTP 400)): "
                              "kept for the next run" % receiver.url]
    assert sorted(d["kind"] for d in spooled(state)) == ["CPU", "DISK", "MEM"]
