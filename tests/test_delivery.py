"""Collectors as cron runs them, POSTing to a real local HTTPS receiver: documents field by field,
config-file secrets, keep-alive, retries, the spool, and the endpoint's faults."""
import json
import socket
import time

from hypothesis import given, strategies as st

import afmetrics_privacy
from afmetrics_delivery import request_bodies
from afmetrics_state import ISO_TIMESTAMP, iso_timestamp
from conftest import log_lines, spool_documents

TOKEN, SALT = "tok-3f9a1c77e2", "salt-b71d0c"


def test_umbrella_delivers_every_document_with_token_and_cluster(run_collector, receiver, sessions, tmp_path):
    receiver.tokens.add(TOKEN)
    done = run_collector("afmetrics_collector", "-vv", "-s", "--host", "-c", "UC-AF", "--utmp", sessions,
                         "--disk", "/", "--state-dir", tmp_path / "state", *receiver.args(),
                         env={"AFMETRICS_TOKEN": TOKEN, "AFMETRICS_CONNECTIONS": "1"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert receiver.kinds() == ["CPU", "DISK", "MEM", "ssh"]
    assert all(d["token"] == TOKEN and d["cluster"] == "UC-AF" for d in receiver.documents)
    [ssh] = receiver.of_kind("ssh")
    assert ssh == {"kind": "ssh", "cluster": "UC-AF", "token": TOKEN, "login_node": socket.gethostname(),
                   "ssh_user_count": 2, "users": ["alice", "bob"]}
    [memory] = receiver.of_kind("MEM")
    assert set(memory) == {"kind", "cluster", "token", "login_node", "total", "available"}
    # One JSON array per collector, over one kept-alive connection.
    assert [len(json.loads(r["body"])) for r in receiver.requests] == [1, 3]
    assert all(r["headers"]["Content-Type"] == "application/json" for r in receiver.requests)
    assert len({r["connection"] for r in receiver.requests}) == 1
    # The index: each document once, without its token, at the time it arrived.
    assert sorted(d["kind"] for d in receiver.index) == ["CPU", "DISK", "MEM", "ssh"]
    assert not any("token" in d or "tags" in d for d in receiver.index) and receiver.issues == []
    assert TOKEN not in done.stderr
    assert not list(tmp_path.glob("*.json"))


def test_config_file_carries_every_secret_and_option(run_collector, receiver, sessions, tmp_path):
    config = tmp_path / "afmetrics.conf"
    config.write_text("[afmetrics]\ntoken = %s\ncluster = BNL-AF\nurl = %s\nca_bundle = %s\nsalt = %s\n"
                      "obfuscate_users = true\nobfuscate_hosts = bnl.gov\nutmp = %s\ndisks = /\n"
                      % (TOKEN, receiver.url, receiver.ca_file, SALT, sessions))
    config.chmod(0o640)
    done = run_collector("afmetrics_collector", "-v", "-s", "--host", "--config", config,
                         "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert all(d["token"] == TOKEN and d["cluster"] == "BNL-AF" for d in receiver.documents)
    [ssh] = receiver.of_kind("ssh")
    assert ssh["users"] == sorted([afmetrics_privacy.obfuscate_user("alice", SALT), afmetrics_privacy.obfuscate_user("bob", SALT)])
    assert {d["login_node"] for d in receiver.documents} == {afmetrics_privacy.obfuscate_host(socket.gethostname(), "bnl.gov")}
    assert TOKEN not in done.stderr and SALT not in done.stderr and "WARNING" not in done.stderr


def test_secrets_on_the_command_line_work_but_warn(run_collector, receiver, sessions, tmp_path):
    done = run_collector("ssh.py", "-t", TOKEN, "-o", "-z", SALT, "--utmp", sessions,
                         "--state-dir", tmp_path / "state", *receiver.args(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert receiver.documents[0]["token"] == TOKEN
    lines = log_lines(done.stderr)
    assert any("token was given on the command line, which every user sees in ps" in line for line in lines)
    assert any("salt was given on the command line" in line for line in lines)
    assert TOKEN not in done.stderr and SALT not in done.stderr


def test_sending_without_token_is_a_usage_error(run_collector, receiver, tmp_path):
    done = run_collector("host.py", "--state-dir", tmp_path / "state", *receiver.args(), cwd=tmp_path)
    assert done.returncode == 2
    assert log_lines(done.stderr) == ["ERROR:afmetrics:no token: set token in the config file, AFMETRICS_TOKEN "
                                      "or -t (or use -d)"]
    assert receiver.requests == []


def test_busy_endpoint_is_retried_honouring_retry_after(run_collector, receiver, sessions, tmp_path):
    receiver.fail_next(429, 503, retry_after=1)
    done = run_collector("ssh.py", "--utmp", sessions, "--state-dir", tmp_path / "state", *receiver.args(),
                         env={"AFMETRICS_TOKEN": TOKEN}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(receiver.requests) == 3 and receiver.kinds() == ["ssh"]


def test_failed_delivery_is_spooled_and_sent_first_next_run(run_collector, receiver, sessions, tmp_path):
    state = tmp_path / "state"
    receiver.fail_next(*[500] * 4)  # every attempt of the first document: the endpoint is down
    args = ["afmetrics_collector", "-s", "--host", "--disk", "/", "--utmp", sessions, "--state-dir", state,
            *receiver.args()]
    env = {"AFMETRICS_TOKEN": TOKEN, "AFMETRICS_CONNECTIONS": "1"}  # one connection: arrival order is exact
    first = run_collector(*args, env=env, cwd=tmp_path)
    assert first.returncode == 1
    errors = [line for line in log_lines(first.stderr) if line.startswith("ERROR")]
    assert errors == ["ERROR:ssh:1 document(s) not delivered (%s answered HTTP 500): kept for the next run"
                      % receiver.url,
                      "ERROR:host:3 document(s) not delivered (%s answered HTTP 500): kept for the next run"
                      % receiver.url]
    assert receiver.documents == []
    spooled = [document for name in ("spool-ssh.jsonl", "spool-host.jsonl") for document in spool_documents(state / name)]
    assert [d["kind"] for d in spooled] == ["ssh", "CPU", "MEM", "DISK"]
    assert all("token" not in d and ISO_TIMESTAMP.match(d["timestamp"]) for d in spooled)

    second = run_collector(*args, env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    # Spooled documents first, carrying the time they were collected; then this run's.
    assert [d["kind"] for d in receiver.documents] == ["ssh", "ssh", "CPU", "MEM", "DISK", "CPU", "MEM", "NETWORK",
                                                       "DISK"]
    assert [("timestamp" in d) for d in receiver.documents] == [True, False, True, True, True] + [False] * 4
    assert [receiver.documents[i]["timestamp"] for i in (0, 2, 3, 4)] == [d["timestamp"] for d in spooled]
    assert (state / "spool-host.jsonl").read_text() == ""


def test_unreachable_endpoint_is_one_line_and_nothing_lost(run_collector, sessions, tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = "https://127.0.0.1:%d/" % closed.getsockname()[1]
    done = run_collector("ssh.py", "--utmp", sessions, "--state-dir", tmp_path, "-u", url,
                         env={"AFMETRICS_TOKEN": TOKEN}, cwd=tmp_path)
    assert done.returncode == 1
    assert log_lines(done.stderr) == ["ERROR:ssh:1 document(s) not delivered (cannot reach %s: NewConnectionError (Connection refused)): "
                                      "kept for the next run" % url]
    assert [d["users"] for d in spool_documents(tmp_path / "spool-ssh.jsonl")] == [["alice", "bob"]]


def test_certificate_from_another_ca_is_refused(run_collector, receiver, sessions, tmp_path):
    done = run_collector("ssh.py", "--utmp", sessions, "--state-dir", tmp_path, "-u", receiver.url,
                         env={"AFMETRICS_TOKEN": TOKEN}, cwd=tmp_path)  # the system CAs, not the receiver's
    assert done.returncode == 1
    assert "TLS verification of %s failed" % receiver.url in done.stderr
    assert receiver.documents == [] and (tmp_path / "spool-ssh.jsonl").exists()


def test_a_lone_document_refused_by_an_endpoint_that_took_nothing_is_kept(run_collector, receiver, sessions,
                                                                            tmp_path):
    """ssh.py sends one document: refused with 400, it cannot tell a bad document from a wrong endpoint (a front
    end answering 400 to all), so it is kept as host.py's several are, not dropped on every run of the outage."""
    receiver.answer_always(400)
    args = ["--utmp", sessions, "--state-dir", tmp_path, *receiver.args()]
    done = run_collector("ssh.py", *args, env={"AFMETRICS_TOKEN": TOKEN}, cwd=tmp_path)
    assert done.returncode == 1
    assert log_lines(done.stderr) == ["ERROR:ssh:1 document(s) not delivered (%s refused every document (HTTP 400)): "
                                      "kept for the next run" % receiver.url]
    assert len(receiver.requests) == 1
    [kept] = spool_documents(tmp_path / "spool-ssh.jsonl")

    receiver.restore()
    receiver.tokens.add(TOKEN)
    assert run_collector("ssh.py", *args, env={"AFMETRICS_TOKEN": TOKEN}, cwd=tmp_path).returncode == 0
    assert [d["users"] for d in receiver.index] == [["alice", "bob"]] * 2
    assert spool_documents(tmp_path / "spool-ssh.jsonl") == []


def test_corrupt_spool_lines_are_dropped_with_a_warning(run_collector, receiver, sessions, tmp_path):
    collected = int(time.time() * 1000) - 60000
    (tmp_path / "spool-ssh.jsonl").write_text('{"kind": "ssh", "users": [], "timestamp": %d}\n{torn\n[1]\n'
                                              % collected)
    done = run_collector("ssh.py", "--utmp", sessions, "--state-dir", tmp_path, *receiver.args(),
                         env={"AFMETRICS_TOKEN": TOKEN, "AFMETRICS_CONNECTIONS": "1"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "WARNING:ssh:spool %s: 2 corrupt line(s) dropped" % (tmp_path / "spool-ssh.jsonl") in log_lines(done.stderr)
    # The line an earlier version wrote (its timestamp in milliseconds) goes with the time as the endpoint reads it.
    assert [d.get("timestamp") for d in receiver.documents] == [iso_timestamp(collected / 1000.0), None]


@given(sizes=st.lists(st.integers(min_value=0, max_value=3000), max_size=60),
       batch_size=st.integers(min_value=1, max_value=20), batch_bytes=st.integers(min_value=50, max_value=8000))
def test_request_bodies_keep_order_and_bounds(sizes, batch_size, batch_bytes):
    """Every document once, in order; an array never over batch_size documents nor over batch_bytes bytes
    unless it is one document larger than that alone; each body the JSON the endpoint's codec reads back."""
    documents = [{"kind": "ssh", "users": ["x" * size]} for size in sizes]
    bodies = list(request_bodies(documents, TOKEN, batch_size, batch_bytes))
    assert [d for chunk, _ in bodies for d in chunk] == documents
    for chunk, body in bodies:
        decoded = json.loads(body)
        assert (decoded if batch_size > 1 else [decoded]) == [dict(d, token=TOKEN) for d in chunk]
        assert len(chunk) <= batch_size
        assert len(body) <= batch_bytes or len(chunk) == 1
