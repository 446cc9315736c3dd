"""Nothing leaked: the token and the salt never show in a log line, an error, a debug file, the spool or ps;
with obfuscation on, no raw user name or host name leaves the node."""
import json
import math
import pathlib
import socket
import subprocess
import sys
import time
import types

import pytest
from hypothesis import example, given, settings, strategies as st

import afmetrics_common as common
import afmetrics_privacy
import afmetrics_settings
import condor
import utmp
from conftest import COLLECTORS, CONDOR_VERSIONS, capture, collector_environment

TOKEN, SALT = "tok-8c41f0d2b7e5", "salt-e93a0b6f"
SSH_USERS = ["erin", "frank"]
JUPYTER_USERS = ["grace", "heidi"]


@pytest.fixture
def sessions(tmp_path):
    logins = [utmp.login(user, "pts/%d" % n, 60, 20 + n) for n, user in enumerate(SSH_USERS)]
    return utmp.write(tmp_path / "utmp", *logins)


def secret_config(path, *lines):
    path.write_text("\n".join(["[afmetrics]", "token = " + TOKEN, "salt = " + SALT] + list(lines)) + "\n")
    path.chmod(0o640)
    return path


def assert_no_secret_under(directory):
    for path in pathlib.Path(directory).rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert TOKEN.encode() not in content and SALT.encode() not in content, path


def test_secrets_never_in_logs_spool_or_debug_files(run_collector, receiver, sessions, tmp_path):
    # Three runs as operators make them: the endpoint refuses the token (spool), then takes everything
    # (replay), then a debug run; all with debug logging to a log file and obfuscation salted.
    work, logs = tmp_path / "work", tmp_path / "log"
    work.mkdir(), logs.mkdir()
    config = secret_config(tmp_path / "afmetrics.conf", "obfuscate_users = true", "url = " + receiver.url,
                           "ca_bundle = " + receiver.ca_file)
    args = ["afmetrics_collector", "-vv", "-s", "--host", "--disk", "/", "--utmp", sessions, "--config", config,
            "--state-dir", work / "state", "--log-file", logs / "afmetrics.log"]
    receiver.answer_always(401)
    refused = run_collector(*args, cwd=work)
    receiver.restore()
    replayed = run_collector(*args, cwd=work)
    debug = run_collector(*args, "-d", cwd=work)
    assert [refused.returncode, replayed.returncode, debug.returncode] == [1, 0, 0], replayed.stderr
    assert receiver.documents and all(d["token"] == TOKEN for d in receiver.documents)
    log_text = (logs / "afmetrics.log").read_text()
    assert "DEBUG:" in log_text and "re-sending" in log_text  # the log covers every path taken
    for done in (refused, replayed, debug):
        assert TOKEN not in done.stdout + done.stderr and SALT not in done.stdout + done.stderr
    assert_no_secret_under(work)
    assert_no_secret_under(logs)
    assert {json.loads(line)["token"] for line in (work / "host.json").read_text().splitlines()} == {"***"}


def test_secrets_not_in_any_process_command_line_or_environment(receiver, sessions, tmp_path):
    config = secret_config(tmp_path / "afmetrics.conf", "obfuscate_users = true")
    receiver.hang.set()
    command = [sys.executable, str(COLLECTORS / "afmetrics_collector"), "-s", "--host", "--disk", "/", "--utmp",
               str(sessions), "--config", str(config), "--state-dir", str(tmp_path / "state"), "-u", receiver.url,
               "--ca-bundle", receiver.ca_file, "--send-budget", "3"]
    running = subprocess.Popen(command, env=collector_environment(), cwd=tmp_path, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert receiver.hanging.wait(30), "the run never reached the receiver"
        seen = 0
        for process in pathlib.Path("/proc").glob("[0-9]*"):
            for name in ("cmdline", "environ"):
                try:
                    content = (process / name).read_bytes()
                except OSError:  # gone meanwhile, or another user's environment
                    continue
                seen += process.name == str(running.pid) and name == "cmdline"
                assert TOKEN.encode() not in content and SALT.encode() not in content, (process, name)
        assert seen == 1  # the collector itself was among the processes read
    finally:
        receiver.restore()
        running.wait(60)


def test_obfuscation_leaves_no_raw_user_or_host_name_in_any_document(run_collector, kubernetes_api, sessions,
                                                                     tmp_path):
    kubernetes_api.allow("reader-token", "reader", ["af-jupyter", "coffea-casa"])
    for n, user in enumerate(JUPYTER_USERS):
        kubernetes_api.add_pod("af-jupyter", "jupyter-%d" % n, {"owner": user}, "Running")
        kubernetes_api.add_pod("coffea-casa", "jupyter-%d" % n, {"jhub_user": user}, "Running")
    done = run_collector("afmetrics_collector", "-d", "-s", "-j", "--host", "--disk", "/", "-o", "-O", "bnl.gov",
                         "--utmp", sessions, "--state-dir", tmp_path / "state",
                         "--kubeconfig", kubernetes_api.write_kubeconfig(tmp_path / "kubeconfig", "reader-token"),
                         env={"AFMETRICS_SALT": SALT}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    documents = [json.loads(line) for name in ("ssh", "jupyter", "host")
                 for line in (tmp_path / (name + ".json")).read_text().splitlines()]
    assert {d["kind"] for d in documents} == {"ssh", "jupyter-ml", "jupyter-coffea", "CPU", "MEM", "DISK"}
    assert_anonymous(documents, SSH_USERS + JUPYTER_USERS)
    [ssh] = [d for d in documents if d["kind"] == "ssh"]
    assert ssh["users"] == sorted(afmetrics_privacy.obfuscate_user(user, SALT) for user in SSH_USERS)


@pytest.mark.parametrize("version", CONDOR_VERSIONS)
def test_obfuscation_hides_condor_owners(version, monkeypatch, tmp_path):
    # The owners and job ids of a real pool's condor_q and condor_history replies, in the columns condor.py
    # asks for (the captures were taken with fewer attributes), fed to collect() in place of the commands;
    # the finished jobs dated now, so that the first run's look-back reports them.
    now = int(time.time())
    queue = [line.split() for line in capture(version, "q_all_af").splitlines() if line.strip()]
    history = [line.split() for line in capture(version, "history_completedsince_af").splitlines() if line.strip()]
    replies = {"condor_q": "".join("%s %s %s 0 undefined undefined 2 1 2048\n" % tuple(row[:3]) for row in queue),
               "condor_history": "".join("%s %s %s 4 1.0 %d %d\n" % (row[0], row[1], row[2], now, now)
                                         for row in history)}
    monkeypatch.setattr(common, "run_command", lambda argv, timeout, env=None: replies[argv[0]])
    defaults = {setting.name: setting.default for setting in afmetrics_settings.COMMON_SETTINGS + condor.SETTINGS}
    opts = types.SimpleNamespace(**dict(defaults, obfuscate_users=True, salt=SALT, obfuscate_hosts="bnl.gov",
                                        queues=["all:"], state_dir=str(tmp_path)))
    users = afmetrics_privacy.UserFilter(opts, common.log)
    documents = list(condor.collect(common.Run(condor.NAME, opts, users, math.inf)))
    owners = {row[0] for row in queue + history}
    assert len([d for d in documents if d["kind"] == "condorjob"]) == len(queue) + len(history)
    assert {d["users"] for d in documents if d["kind"] == "condorjob"} == {
        afmetrics_privacy.obfuscate_user(owner, SALT) for owner in owners}
    assert_anonymous(documents, owners)


def assert_anonymous(documents, raw_users):
    """No raw user name in any string of any document, and no real host name."""
    host_names = {socket.gethostname(), socket.getfqdn()}
    for document in documents:
        for value in strings_in(document):
            assert not any(user in value for user in raw_users), (value, document)
            assert value not in host_names and not value.startswith(socket.gethostname() + "."), (value, document)
        assert document.get("login_node", "atlas").startswith("atlas")


def strings_in(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


@settings(max_examples=150, deadline=None)
@given(before=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30), max_size=4),
       token_line=st.sampled_from(["token = {}", "{}", "token={}\ntoken={}", "  {}", "[{}", "[afmetrics]\n{}",
                                   "token: {}\n[afmetrics]"]),
       after=st.lists(st.text(max_size=30), max_size=4))
@example(before=["[afmetrics]"], token_line="{}", after=[])
@example(before=["[afmetrics]"], token_line="token={}\ntoken={}", after=[])
@example(before=[], token_line="{}", after=[])
def test_config_file_errors_never_quote_the_token(before, token_line, after, tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "afmetrics.conf"
    path.write_text("\n".join(before + [token_line.format(TOKEN, TOKEN)] + after), encoding="utf-8")
    try:
        afmetrics_settings.read_config_file(str(path), explicit=True)
    except common.UsageError as error:
        assert TOKEN not in str(error)
