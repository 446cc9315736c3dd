"""What the central AF endpoint's index ends up holding (tests/receiver.py models it from its published
configuration and its plugins' sources): the model itself, request by request, and then the collectors as cron
runs them, judged by the index rather than by what reached a socket."""
import calendar
import gzip
import json
import os
import subprocess
import sys
import time

import pytest
import urllib3

import afmetrics_privacy
from afmetrics_state import iso_timestamp
from conftest import COLLECTORS, REPO, collector_environment, fill, log_lines, spool_documents
from receiver import INGRESS_MAX_BODY

TOKEN = "tok-a1f0c3e9d2"
SSH = {"kind": "ssh", "cluster": "UC-AF", "login_node": afmetrics_privacy.host_name(), "ssh_user_count": 2,
       "users": ["alice", "bob"]}


@pytest.fixture
def endpoint(receiver):
    receiver.tokens.add(TOKEN)
    return receiver


def post(endpoint, body, content_type="application/json", encoding=None):
    """One POST straight to the model: (status, the index afterwards)."""
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    with urllib3.PoolManager(ca_certs=endpoint.ca_file, retries=False) as pool:
        reply = pool.request("POST", endpoint.url, body=body, headers=headers)
    return reply.status, endpoint.index


def job(job_id, state, owner="alice"):
    return {"kind": "condorjob", "cluster": "UC-AF", "users": owner, "Id": job_id, "Runtime": 10, "state": state}


# The model, request by request: each behaviour as the sources cited in tests/receiver.py give it.

def test_an_array_is_one_event_per_element_without_token_host_headers_or_timestamp(endpoint):
    body = json.dumps([dict(SSH, token=TOKEN), {"kind": "CPU", "cluster": "UC-AF", "load": 0.5, "token": TOKEN,
                                                "timestamp": "2026-12-07T04:30:00.123Z"}]).encode()
    status, index = post(endpoint, body)
    assert status == 200
    assert [{key: value for key, value in event.items() if key != "@timestamp"} for event in index] == [
        dict(SSH, **{"@version": "1"}), {"kind": "CPU", "cluster": "UC-AF", "load": 0.5, "@version": "1"}]
    assert index[1]["@timestamp"] == 1796617800.123  # the date filter's, not the arrival time
    assert endpoint.issues == []


def test_an_unknown_token_malformed_json_and_plain_text_are_taken_with_200_and_never_indexed(endpoint):
    assert post(endpoint, json.dumps(dict(SSH, token="not-known")).encode()) == (200, [])
    assert post(endpoint, b'{"kind": "ssh", "token": "%s"' % TOKEN.encode()) == (200, [])  # _jsonparsefailure
    assert post(endpoint, json.dumps(dict(SSH, token=TOKEN)).encode(), content_type="text/plain") == (200, [])
    assert post(endpoint, json.dumps([dict(SSH, token=TOKEN), 1]).encode()) == (200, [])  # not all objects
    assert len(endpoint.documents) == 4 and endpoint.issues == []  # they reached Logstash; the filter dropped them


def test_a_timestamp_that_is_not_an_iso8601_string_is_tagged_and_stamped_with_its_arrival(endpoint):
    before = time.time()
    status, [event] = post(endpoint, json.dumps(dict(SSH, token=TOKEN, timestamp=1796617800123)).encode())
    assert status == 200 and event["tags"] == ["_dateparsefailure"] and event["@timestamp"] >= before
    assert endpoint.issues == [event]  # AF.conf writes every tagged event to issues.txt too


def test_gzip_is_inflated_and_a_body_over_one_mib_as_sent_is_refused_by_the_ingress(endpoint):
    documents = [dict(SSH, token=TOKEN, users=["user%06d" % n for n in range(30000)])] * 4
    body = json.dumps(documents).encode()
    assert len(body) > INGRESS_MAX_BODY > len(gzip.compress(body))
    assert post(endpoint, body)[0] == 413
    status, index = post(endpoint, gzip.compress(body), encoding="gzip")
    assert status == 200 and len(index) == 4
    assert post(endpoint, b"\x1f\x8b not gzip", encoding="gzip")[0] == 400


def test_condorjob_is_upserted_by_cluster_users_and_id_and_the_last_write_wins(endpoint):
    post(endpoint, json.dumps([dict(job("7.0", "finished"), token=TOKEN), dict(job("8.0", "held"), token=TOKEN)])
         .encode())
    post(endpoint, json.dumps(dict(job("7.0", "running"), token=TOKEN)).encode())
    assert sorted((event["Id"], event["state"]) for event in endpoint.index) == [("7.0", "running"), ("8.0", "held")]


# The collectors against the model.

def run_ssh(run_collector, endpoint, sessions, state, *more, env=None):
    return run_collector("ssh.py", "-c", "UC-AF", "--utmp", sessions, "--state-dir", state, *endpoint.args(), *more,
                         env=dict({"AFMETRICS_TOKEN": TOKEN}, **(env or {})), cwd=state.parent)


def test_a_document_sent_again_after_an_outage_is_indexed_at_the_time_it_was_collected(run_collector, endpoint,
                                                                                       sessions, tmp_path):
    state = tmp_path / "state"
    endpoint.answer_always(503)
    started = time.time()
    assert run_ssh(run_collector, endpoint, sessions, state).returncode == 1
    ended = time.time()
    [kept] = spool_documents(state / "spool-ssh.jsonl")
    collected = calendar.timegm(time.strptime(kept["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")) \
        + int(kept["timestamp"][20:23]) / 1000.0
    assert int(started) <= collected <= ended
    time.sleep(1.1)  # the index must tell collection from arrival

    endpoint.restore()
    arrived = time.time()
    done = run_ssh(run_collector, endpoint, sessions, state)
    assert done.returncode == 0, done.stderr
    resent, fresh = endpoint.index
    assert resent["@timestamp"] == collected < arrived <= fresh["@timestamp"]
    assert "timestamp" not in endpoint.documents[1]  # this run's own: the endpoint stamps its arrival
    assert endpoint.issues == []


def test_a_spool_line_of_an_earlier_version_is_indexed_at_its_collection_time(run_collector, endpoint, sessions,
                                                                              tmp_path):
    """Written by 1.0 (timestamp an integer of milliseconds) before an upgrade in the middle of an outage."""
    state = tmp_path / "state"
    state.mkdir()
    collected_ms = int(time.time() * 1000) - 3 * 3600 * 1000
    (state / "spool-ssh.jsonl").write_text(json.dumps(dict(SSH, timestamp=collected_ms)) + "\n")
    done = run_ssh(run_collector, endpoint, sessions, state)
    assert done.returncode == 0, done.stderr
    assert endpoint.documents[0]["timestamp"] == iso_timestamp(collected_ms / 1000.0)
    assert endpoint.index[0]["@timestamp"] == collected_ms / 1000.0
    assert endpoint.issues == []


# ssh.py run with the wall clock (time.time, which every time the collector writes comes from) DAYS behind;
# the boot clock and the kernel's own time as they are. libfaketime would do it for the whole process, but here
# it makes Python's subprocess and socket calls fail with EINVAL now and then.
CLOCK_BEHIND = """import os, runpy, sys, time
wall, behind = time.time, float(sys.argv.pop(1)) * 86400
time.time = lambda: wall() - behind
sys.argv[0] = sys.argv.pop(1)
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_documents_spooled_while_the_clock_was_far_behind_are_sent_once_it_is_right(run_collector, endpoint,
                                                                                     sessions, tmp_path):
    """A node booted with a reset clock and no NTP yet, 400 days behind, while the endpoint is down: its ssh
    document is kept, and once the clock is right and the endpoint back it is sent, not expired as 400 days
    old: its age is the time it was kept, by the boot clock."""
    state = tmp_path / "state"
    endpoint.answer_always(503)
    argv = [sys.executable, "-c", CLOCK_BEHIND, "400", str(COLLECTORS / "ssh.py"), "-c", "UC-AF", "--utmp",
            str(sessions), "--state-dir", str(state), *endpoint.args()]
    behind = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, cwd=tmp_path,
                            env=collector_environment({"AFMETRICS_TOKEN": TOKEN}))
    assert behind.returncode == 1, behind.stderr
    [kept] = spool_documents(state / "spool-ssh.jsonl")
    assert kept["timestamp"] < iso_timestamp(time.time() - 399 * 86400)

    endpoint.restore()
    done = run_ssh(run_collector, endpoint, sessions, state)
    assert done.returncode == 0, done.stderr
    assert log_lines(done.stderr) == []
    resent, _ = endpoint.index
    assert resent["@timestamp"] < time.time() - 399 * 86400  # where the wrong clock put it: all it knew


def big_ssh_documents(count, users):
    """ssh documents of USERS users each, about 13 bytes a user."""
    return [dict(SSH, users=["user%06d" % n for n in range(users)], ssh_user_count=users + i) for i in range(count)]


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_documents_go_as_arrays_none_over_the_ingress_limit_as_sent(compressed, run_collector, endpoint, sessions,
                                                                    tmp_path):
    """Forty spooled documents of 130 kB each (5.2 MB) and the run's own, with the default settings."""
    state = tmp_path / "state"
    state.mkdir()
    waiting = big_ssh_documents(40, 10000)
    (state / "spool-ssh.jsonl").write_text("".join(json.dumps(dict(d, timestamp=int(time.time() * 1000))) + "\n"
                                                   for d in waiting))
    done = run_ssh(run_collector, endpoint, sessions, state, env={"AFMETRICS_GZIP": str(compressed).lower()})
    assert done.returncode == 0, done.stderr
    assert endpoint.too_large == 0
    sizes = [int(request["headers"]["Content-Length"]) for request in endpoint.requests]
    assert max(sizes) <= INGRESS_MAX_BODY
    assert len(endpoint.requests) <= 6 + 1  # 5.2 MB in bodies of up to 1 MB, and the run's own document
    assert sorted(d["ssh_user_count"] for d in endpoint.index) == [2] + sorted(d["ssh_user_count"] for d in waiting)


def run_jobs(endpoint, state, jobs, env=None):
    """tests/jobs_collector.py with the queue JOBS, as cron runs it."""
    jobs_file = state.parent / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    env = collector_environment(dict({"AFMETRICS_TOKEN": TOKEN, "JOBS_FILE": str(jobs_file),
                                      "PYTHONPATH": str(COLLECTORS)}, **(env or {})))
    return subprocess.run([sys.executable, str(REPO / "tests" / "jobs_collector.py"), "-v", "-c", "UC-AF",
                           "--state-dir", str(state), *endpoint.args()], capture_output=True, text=True, env=env,
                          cwd=state.parent, timeout=120, stdin=subprocess.DEVNULL)


def test_only_the_newest_snapshot_of_a_job_is_sent_from_the_spool_and_in_flight(endpoint, tmp_path):
    """Six jobs seen held while the endpoint was down, then seen finished while it still was; six seen held,
    then running once it is back; and one finished job kept from the outage that no later run sees."""
    state = tmp_path / "state"
    endpoint.answer_always(503)
    held = [job("%d.0" % n, "held") for n in range(12)] + [job("99.0", "finished", owner="bob")]
    assert run_jobs(endpoint, state, held).returncode == 1
    assert run_jobs(endpoint, state, [job("%d.0" % n, "finished") for n in range(6)]).returncode == 1
    kept = spool_documents(state / "spool-condor.jsonl")
    assert sorted((d["Id"], d["state"]) for d in kept) == sorted(
        [("%d.0" % n, "finished") for n in range(6)] + [("%d.0" % n, "held") for n in range(6, 12)]
        + [("99.0", "finished")])  # the spool dropped each older snapshot when it kept a newer one

    endpoint.restore()
    done = run_jobs(endpoint, state, [job("%d.0" % n, "running") for n in range(6, 12)])
    assert done.returncode == 0, done.stderr
    # Each job's snapshot went once, the newest: no order of arrival can leave an older one in the index.
    assert sorted((d["Id"], d["state"]) for d in endpoint.documents) == sorted(
        [("%d.0" % n, "finished") for n in range(6)] + [("%d.0" % n, "running") for n in range(6, 12)]
        + [("99.0", "finished")])
    assert len(endpoint.index) == 13
    assert spool_documents(state / "spool-condor.jsonl") == []


def test_a_spool_of_1_0_holding_every_snapshot_gives_no_age_to_the_new_documents(endpoint, tmp_path):
    """1.0 kept every snapshot of a job: loading such a spool drops the older ones, whose ages must not pass to
    the documents this run makes (they would expire early and the record would call the spool old)."""
    state = tmp_path / "state"
    state.mkdir()
    now_ms = int(time.time() * 1000)
    lines = [dict(job("%d.0" % n, "running"), timestamp=now_ms - hours * 3600 * 1000)
             for hours in (150, 149, 0.1) for n in range(50)]
    (state / "spool-condor.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    endpoint.answer_always(503)
    assert run_jobs(endpoint, state, [job("%d.0" % n, "idle") for n in range(100, 200)]).returncode == 1
    kept = [json.loads(line) for line in (state / "spool-condor.jsonl").read_text().splitlines()[1:]]
    assert len(kept) == 150 and max(line["kept"] for line in kept) < 0.2 * 3600
    record = json.loads((state / "last-run-condor.json").read_text())
    assert time.time() - record["spool_oldest_timestamp"] < 0.2 * 3600


def test_spooled_documents_refused_by_an_endpoint_taking_nothing_survive_a_full_state_dir(endpoint,
                                                                                          small_file_system):
    """A front end answering 400 to everything while the state dir is full: the spooled document is kept, not
    rewritten away before the run decided it was the endpoint's fault."""
    state = small_file_system / "state"
    big = dict(SSH, users=["user%05d" % n for n in range(2000)])
    endpoint.answer_always(503)
    assert run_jobs(endpoint, state, [big]).returncode == 1
    endpoint.restore()
    endpoint.answer_always(400)
    fill(small_file_system)
    assert run_jobs(endpoint, state, [SSH]).returncode == 1
    assert [d["users"] for d in spool_documents(state / "spool-condor.jsonl")] == [big["users"]]


def test_a_spool_that_cannot_be_rewritten_after_a_job_was_sent_anew_keeps_the_cursor(endpoint, small_file_system):
    """The spool holds job 1.0 running; this run sends 1.0 finished, then cannot rewrite the spool (its state dir
    full) while one spooled request failed: the file still holds 1.0 running, which the next run would send
    after the finished one, so the cursor (condor.py's history cursor) must not move past 1.0's end."""
    state = small_file_system / "state"
    owner = "a-user-with-a-long-name-" + "x" * 300  # documents that fill the small file system's pages
    endpoint.answer_always(503)
    queue = [job("%d.0" % n, "running", owner) for n in [1] + list(range(100, 250))]
    assert run_jobs(endpoint, state, queue).returncode == 1
    cursor = (state / "jobs-cursor.json").read_text()  # the documents were kept: the state moved on
    endpoint.restore()
    endpoint.refuse_documents(503, lambda event: event.get("Id") == "100.0")
    filler = fill(small_file_system)
    os.truncate(filler, os.path.getsize(filler) - 2 * 4096)  # room for the record and the cursor, not the spool
    # One connection: the first spooled request fails and the rest are kept untried, as many as the spool held.
    done = run_jobs(endpoint, state, [job("1.0", "finished", owner)], env={"AFMETRICS_CONNECTIONS": "1"})
    assert done.returncode == 1
    assert (state / "jobs-cursor.json").read_text() == cursor, done.stderr


def test_an_answer_late_within_the_budget_is_awaited_and_each_document_indexed_once(run_collector, endpoint,
                                                                                    sessions, tmp_path):
    """A blocked Logstash queue answers 4 s late: with a 12 s send budget each request is awaited, not sent
    again (a quarter of the budget was each attempt's read timeout before). bench/run.py measures 45 s late
    with the default budget."""
    state = tmp_path / "state"
    endpoint.block(4)
    done = run_collector("afmetrics_collector", "-s", "--host", "-c", "UC-AF", "--disk", "/", "--utmp", sessions,
                         "--state-dir", state, "--send-budget", 12, *endpoint.args(),
                         env={"AFMETRICS_TOKEN": TOKEN}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(endpoint.requests) == 2  # ssh's array and host's
    assert sorted(d["kind"] for d in endpoint.index) == ["CPU", "DISK", "MEM", "ssh"]


def test_a_gateway_timeout_is_not_sent_again_in_the_run_and_the_next_run_may_index_it_twice(run_collector, endpoint,
                                                                                           sessions, tmp_path):
    """The ingress gives up on a blocked Logstash (504) that indexes the documents all the same: the collector
    keeps them rather than sending them again at once; the next run sends them, so they are indexed twice
    (at-least-once: dropping them would lose them whenever the endpoint did not take them)."""
    state = tmp_path / "state"
    endpoint.gateway_timeout = 1
    endpoint.block(2)
    first = run_ssh(run_collector, endpoint, sessions, state)
    assert first.returncode == 1
    assert log_lines(first.stderr) == ["ERROR:ssh:1 document(s) not delivered (%s answered HTTP 504): kept for the "
                                       "next run" % endpoint.url]
    assert len(endpoint.requests) == 1 and len(endpoint.index) == 1

    endpoint.restore()
    assert run_ssh(run_collector, endpoint, sessions, state).returncode == 0
    assert [d["users"] for d in endpoint.index] == [["alice", "bob"]] * 3


def test_a_token_the_endpoint_does_not_know_is_invisible_to_the_collector(run_collector, endpoint, sessions,
                                                                          tmp_path):
    """AF.conf drops the documents of an unknown token and the http input has answered 200 already: the run
    succeeds and nothing is indexed. Only the dashboards can tell (docs/delivery.md)."""
    done = run_ssh(run_collector, endpoint, sessions, tmp_path / "state", env={"AFMETRICS_TOKEN": "tok-mistyped"})
    assert done.returncode == 0, done.stderr
    assert len(endpoint.documents) == 1 and endpoint.index == []

