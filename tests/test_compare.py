"""The cutover from the old afmetrics_collector (issue 19): the role reads what its cron lines did
(filter_plugins/afmetrics_old_tool.py) and compares one debug run of it with one of the collectors
(files/afmetrics_compare_runs.py, filter_plugins/afmetrics_compare.py).

The old tool is molecule/default/old_tool, a stand-in written from the old code's formulas (the real one cannot
be committed here): Molecule installs it on its old tool's node; here it runs from that directory.
"""
import base64
import hashlib
import json
import os
import shlex
import subprocess
import sys

import pytest

import utmp
from conftest import COLLECTORS, REPO, ROLE, collector_environment, role_module, skip_or_fail


afmetrics_compare = role_module(ROLE / "filter_plugins" / "afmetrics_compare.py")
afmetrics_compare_runs = role_module(ROLE / "files" / "afmetrics_compare_runs.py")
afmetrics_old_tool = role_module(ROLE / "filter_plugins" / "afmetrics_old_tool.py")

INSTALL_DIR = "/opt/afmetrics"
OLD_TOOL = REPO / "molecule" / "default" / "old_tool"
SALT = "s#lt with 'quotes'"
# The old README's line, with every flag the role carries over (-S, -g, -O, -u and each -q too).
README_LINE = ("*/5 * * * * root (KUBECONFIG=/etc/kubernetes/admin.conf /usr/local/bin/afmetrics_collector -v -sjb "
               "--host -S -t \"tok en\" -c \"AF-1\" -o -z \"s#lt with 'quotes'\" -q all: -q 'short:queue==\"short\"' "
               "-g atlas -O bnl.gov -u https://af.example.org/) >> /var/log/afmetrics/afmetrics.log 2>&1\n")


def settings_of(*texts, config=""):
    return afmetrics_old_tool.old_tool_settings(list(texts), INSTALL_DIR, config)


# --- what the old lines did ------------------------------------------------------------------------------------
def test_every_flag_of_an_old_line_is_carried_over():
    old = settings_of("SHELL=/bin/bash\n" + README_LINE)
    assert old["settings"] == {
        "collectors": ["ssh", "batch", "jupyter", "host"], "ssh_history": True, "cluster": "AF-1",
        "url": "https://af.example.org/", "queues": ["all:", 'short:queue=="short"'], "group": "atlas",
        "obfuscate_users": True, "user_hash": "sha256", "salt": SALT, "obfuscate_hosts": "bnl.gov",
        "jupyter_services": [], "token": "tok en"}
    assert (old["lines"], old["active"], old["conflicts"], old["unparsed"]) == (1, True, {}, [])
    assert old["environment"] == {"KUBECONFIG": "/etc/kubernetes/admin.conf"}


def test_a_line_without_options_is_what_the_old_tool_sent_without_them():
    old = settings_of("*/5 * * * * /usr/local/bin/afmetrics_collector --host --tok=T >>/tmp/log\n")
    assert old["settings"]["cluster"] == "UC-AF"  # its -c default
    assert old["settings"]["collectors"] == ["host"] and old["settings"]["token"] == "T"
    assert "salt" not in old["settings"] and "ssh_history" not in old["settings"]  # no -o, no -s: no say


def test_namespace_and_label_move_the_ml_service():
    old = settings_of("* * * * * root afmetrics_collector -j -n hub -l user\n")
    assert old["settings"]["jupyter_services"] == ["ml:hub:user", "coffea:coffea-casa:jhub_user"]


def test_lines_that_disagree_carry_the_union_of_collectors_and_name_the_rest():
    old = settings_of(README_LINE, "*/5 * * * * afmetrics_collector -s -t other -c AF-2 -q gpu:x >>/tmp/log\n")
    assert old["settings"]["collectors"] == ["ssh", "batch", "jupyter", "host"]
    assert old["settings"]["queues"] == ["all:", 'short:queue=="short"', "gpu:x"]
    # The second line has no -o and no -S: obfuscation and history differ too.
    assert old["conflicts"] == {"cluster": 2, "token": 2, "url": 2, "group": 2, "obfuscate_hosts": 2,
                                "obfuscate_users": 2, "ssh_history": 2}
    report = afmetrics_old_tool.afmetrics_old_tool_report(old, {"collectors": ["ssh", "host"]})
    assert "afmetrics_collectors: ssh, host from the inventory, not the old line's ssh, batch, jupyter, host" in report
    assert "afmetrics_token: not carried over, the old lines have 2 different values: set it in the inventory" \
        in report
    assert not any("tok en" in line or "other" in line for line in report)


def test_lines_a_previous_run_disabled_give_the_same_settings_with_the_secrets_of_its_config_file():
    disabled = afmetrics_old_tool.afmetrics_disable_old_tool(README_LINE, INSTALL_DIR)
    assert "tok en" not in disabled and SALT not in disabled
    config = "[afmetrics]\ntoken = tok en\nsalt = %s\n" % SALT
    again = settings_of(disabled, config=config)
    assert again["settings"] == settings_of(README_LINE)["settings"]
    assert again["active"] is False


def test_an_unreadable_line_is_named_without_its_secrets():
    old = settings_of("* * * * * root afmetrics_collector -s -t SECRET --no-such-flag\n")
    assert old["lines"] == 0
    assert old["unparsed"] == ["* * * * * root afmetrics_collector -s -t *** --no-such-flag "
                               "(unrecognized arguments: --no-such-flag)"]


def test_nodes_that_disagree_are_named_and_secrets_never_shown():
    def node(salt, cluster):
        return settings_of("* * * * * root afmetrics_collector -s -o -z %s -c %s -t T\n" % (salt, cluster))
    report = afmetrics_old_tool.afmetrics_old_tool_disagreements(
        {"login1": node("pepper", "AF"), "login2": node("pepper", "AF"), "login3": node("salt2", "AF")})
    assert len(report) == 1 and report[0].startswith("afmetrics_salt differs between the nodes' old lines: ")
    assert "login1, login2: fingerprint" in report[0] and "login3: fingerprint" in report[0]
    assert "pepper" not in report[0] and "salt2" not in report[0]


def test_the_old_tools_debug_arguments_carry_the_salt_and_queues():
    old = settings_of(README_LINE)
    assert afmetrics_old_tool.afmetrics_old_tool_argv("batch", old) == [
        "-d", "-b", "-c", "AF-1", "-o", "-z", SALT, "-O", "bnl.gov", "-g", "atlas", "-q", "all:",
        "-q", 'short:queue=="short"']
    assert afmetrics_old_tool.afmetrics_old_tool_argv("ssh", old)[:5] == ["-d", "-s", "-c", "AF-1", "-S"]


# --- what differs ----------------------------------------------------------------------------------------------
def job(job_id, state, runtime, users="alice"):
    return {"kind": "condorjob", "cluster": "AF", "users": users, "Id": job_id, "Runtime": runtime, "state": state}


def runs(old, new, old_rc=0, new_rc=0):
    return {"batch": {"old": {"rc": old_rc, "errors": [], "documents": old},
                      "new": {"rc": new_rc, "errors": [], "documents": new}}}


def test_the_projects_fixes_are_expected_differences():
    old = [job("1.0", "running", 10), job("2.0", "submission_err", 5), job("3.0", "unknown", 7),
           job("4.0", "finished", 30), job("4.0", "finished", 30)]
    new = [job("1.0", "running", 70), job("2.0", "transferring_output", 65), job("3.0", "suspended", 90),
           job("4.0", "finished", 30), job("5.0", "removed", 3)]
    result = afmetrics_compare.afmetrics_compare(runs(old, new))
    assert result["differences"] == []
    assert result["expected"] == [
        "condorjob: 1 removed job(s) afmetrics reports from the history, which the old tool never did",
        "condorjob: 2 job(s) in JobStatus 6 or 7, which the old tool calls submission_err or unknown and afmetrics "
        "transferring_output or suspended",
        "condorjob: 3 running job(s) whose Runtime counts the current run here; the old tool's counts only the runs "
        "that ended (RemoteWallClockTime)"]


def test_numbers_that_should_be_the_same_are_differences():
    old = [job("1.0", "idle", 0, "2bd806c9"), job("4.0", "finished", 30), job("6.0", "held", 4)]
    new = [job("1.0", "idle", 0, "a7a6563c"), job("4.0", "finished", 31),
           {"kind": "condorqueue", "cluster": "AF", "queue": "all"}]
    result = afmetrics_compare.afmetrics_compare(runs(old, new))
    assert result["differences"] == [
        "batch: kinds sent differs: old tool condorjob, afmetrics condorjob, condorqueue",
        "condorjob: job Ids differs: old tool 1.0, 4.0, 6.0, afmetrics 1.0, 4.0",
        "condorjob 1.0: owner differs: old tool 2bd806c9, afmetrics a7a6563c",
        "condorjob 4.0: Runtime differs: old tool 30, afmetrics 31"]


def test_a_collector_that_fails_only_here_is_a_difference_and_one_failing_in_both_is_not_compared():
    failing = afmetrics_compare.afmetrics_compare(runs([job("1.0", "idle", 0)], [], new_rc=1))
    assert failing["differences"][0] == "batch: afmetrics failed where the old tool did not: exit 1"
    both = afmetrics_compare.afmetrics_compare(runs([], [], old_rc=1, new_rc=1))
    assert both["differences"] == [] and both["expected"][0].startswith("batch: not compared, both failed here")


# --- both tools on this machine --------------------------------------------------------------------------------
# In a mount namespace of its own: a tmpfs on /run holding the utmp written for the test, which who (the old
# tool's source) and ssh.py both read; then the role's comparison helper as the role runs it.
WITH_SESSIONS = r"""
mount -t tmpfs afmetrics-run /run
cp "$UTMP" /run/utmp
exec "$PYTHON" "$HELPER"
"""


@pytest.mark.parametrize("user_hash, differs", [("sha256", False), ("md5", True)])
def test_the_old_tool_and_ssh_py_send_the_same_user_ids_by_default(user_hash, differs, tmp_path):
    if os.geteuid() != 0:
        skip_or_fail("a private mount namespace needs root")
    # who (the old tool's source and ssh.py's) lists a session only while its process lives: these do.
    sessions = utmp.write(tmp_path / "utmp", utmp.login("alice", "pts/0", 60, 1),
                          utmp.login("bob", "pts/1", 30, os.getpid()), utmp.login("alice", "pts/2", 20, os.getppid()))
    old = settings_of("*/5 * * * * root afmetrics_collector -s -c AF-1 -o -z %s\n" % shlex.quote(SALT))
    request = {
        "collectors": ["ssh"], "old_python": sys.executable,
        "old_argv": {"ssh": afmetrics_old_tool.afmetrics_old_tool_argv("ssh", old)},
        "old_environment": {"PYTHONPATH": str(OLD_TOOL)},
        # The role passes --config; the environment stands in for the config file here.
        "new_command": [sys.executable, str(COLLECTORS / "afmetrics_collector"), "--config", "", "-d",
                        "--log-file", ""] + (["--user-hash", "md5"] if user_hash == "md5" else []),
        "new_flags": {"ssh": "-s"}, "new_user": "root", "timeout": 60}
    env = collector_environment({"PYTHON": sys.executable, "UTMP": str(sessions),
                                 "HELPER": str(ROLE / "files" / "afmetrics_compare_runs.py"),
                                 "AFMETRICS_CLUSTER": "AF-1", "AFMETRICS_OBFUSCATE_USERS": "true",
                                 "AFMETRICS_SALT": SALT})
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-euc", WITH_SESSIONS],
                          input=json.dumps(request), capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    old_users = sorted({afmetrics_old_tool_user(name) for name in ("alice", "bob")})
    assert result["ssh"]["old"]["documents"][0]["users"] == [afmetrics_old_tool_user(n) for n in ("alice", "bob")]
    comparison = afmetrics_compare.afmetrics_compare(result)
    if differs:
        assert comparison["differences"][0].startswith("ssh: user ids differs: old tool %s" % ", ".join(old_users))
    else:
        assert comparison["differences"] == []
        assert "ssh: user ids the same (%s)" % ", ".join(old_users) in comparison["same"]
        assert "ssh: ssh_user_count the same (2)" in comparison["same"]


def afmetrics_old_tool_user(name):
    """The old tool's -o -z (its skeleton.py): sha256((salt + name).encode('utf-8')).hexdigest()[:8]."""
    return hashlib.sha256((SALT + name).encode("utf-8")).hexdigest()[:8]


def test_the_old_tools_debug_files_are_read_whole(tmp_path):
    """Its -d writes json.dumps(document, indent=4) one after another, nothing between."""
    documents = [{"kind": "ssh", "users": ["a"]}, {"kind": "CPU", "load": 0.5}]
    (tmp_path / "ssh.json").write_text("".join(json.dumps(d, indent=4) for d in documents))
    assert afmetrics_compare_runs.documents_in(str(tmp_path), ["ssh.json", "host.json"]) == documents


def test_slurped_cron_files_are_read_as_the_role_reads_them():
    slurped = [{"source": "/etc/cron.d/afmetrics.cron", "content": base64.b64encode(README_LINE.encode()).decode()},
               {"source": "/etc/cron.d/missing", "failed": True}]
    assert afmetrics_old_tool.afmetrics_old_tool_settings(slurped, INSTALL_DIR)["settings"]["cluster"] == "AF-1"
