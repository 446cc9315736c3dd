"""afmetrics_collector, the seed's umbrella command: its documented command lines, logs, locks and usage errors."""
import json
import os
import re
import socket

import pytest

import afmetrics_common as common
import afmetrics_privacy
import afmetrics_state
import utmp
from conftest import log_lines

TOKEN, SALT = "tok-5d2e8a", "5tKC%>f&%#hg"


def read_documents(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_seed_debug_command_line(run_collector, tmp_path):
    sessions = utmp.write(tmp_path / "utmp", utmp.login("root", "pts/0", 10, 7))
    log_file = tmp_path / "afmetrics.log"
    done = run_collector("afmetrics_collector", "-d", "-vv", "-sjb", "--host", "-t", TOKEN, "-c", "UC-AF", "-o",
                         "-O", "bnl.gov", "-z", SALT, "-g", "atlas", "-q", "all:", "-q", 'short:queue=="short"',
                         "--utmp", sessions, "--state-dir", tmp_path / "state", "--log-file", log_file,
                         cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "KUBECONFIG": ""})
    assert done.returncode == 1  # no condor_q and no Kubernetes here; the rest is still written
    assert done.stderr == ""  # cron's stderr stays quiet: the seed logs to its log file
    lines = log_lines(log_file.read_text())
    assert "ERROR:condor:condor_q not found on PATH" in lines
    assert "ERROR:jupyter:cannot load in-cluster config (no KUBECONFIG set): Service host/port is not set." in lines
    assert any(line.startswith("DEBUG:") for line in lines)  # -vv
    # No group atlas here: nothing of users goes, rather than a count of 0 (the directory may be down).
    assert ("ERROR:ssh:group atlas cannot be resolved (getgrnam: no such group, or the user directory is down): "
            "users cannot be filtered") in lines
    for secret in ("token", "salt"):  # the seed's -t and -z still work, with a warning
        assert ("WARNING:afmetrics:the %s was given on the command line, which every user sees in ps: put it in "
                "the config file or AFMETRICS_%s instead" % (secret, secret.upper())) in lines
    assert TOKEN not in log_file.read_text() and SALT not in log_file.read_text()

    node = afmetrics_privacy.obfuscate_host(socket.gethostname(), "bnl.gov")
    host = read_documents(tmp_path / "host.json")
    assert [d["kind"] for d in host][:2] == ["CPU", "MEM"]
    assert all(d["login_node"] == node and d["token"] == "***" for d in host)
    assert not any((tmp_path / ("%s.json" % name)).exists() for name in ("ssh", "condor", "jupyter"))


@pytest.mark.parametrize("in_file, switches, runs_last", [("false", ["-dsS"], True), ("true", ["-ds"], True),
                                                         ("true", ["-ds", "--no-ssh-history"], False)])
def test_bundled_short_flags_and_no_forms(in_file, switches, runs_last, run_collector, sessions, tmp_path):
    config = tmp_path / "a.conf"
    config.write_text("[afmetrics]\nssh_history = %s\n" % in_file)
    done = run_collector("afmetrics_collector", "-vv", *switches, "--config", config, "--utmp", sessions,
                         "--wtmp", tmp_path / "wtmp", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert any(line.startswith("DEBUG:ssh:running last ") for line in log_lines(done.stderr)) is runs_last
    assert (tmp_path / "ssh.json").exists()


def test_per_script_run_without_a_token_writes_debug_file(run_collector, tmp_path):
    done = run_collector("host.py", "-d", "-v", "--disk", "/", "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert {d["token"] for d in read_documents(tmp_path / "host.json")} == {""}
    assert "INFO:host:collected 3 document(s)" in log_lines(done.stderr)


def test_bad_config_stops_before_collecting(run_collector, tmp_path):
    config = tmp_path / "bad.conf"
    config.write_text("token = %s\n" % TOKEN)  # no [afmetrics] header
    done = run_collector("afmetrics_collector", "-d", "-s", "--host", "--config", config,
                         "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 2
    assert log_lines(done.stderr) == ["ERROR:afmetrics:cannot read config file %s: MissingSectionHeaderError "
                                      "at line 1" % config]
    assert not list(tmp_path.glob("*.json"))


def test_no_collector_chosen_is_a_usage_error(run_collector, tmp_path):
    done = run_collector("afmetrics_collector", "-d", cwd=tmp_path)
    assert done.returncode == 2
    assert log_lines(done.stderr) == ["ERROR:afmetrics:no collector chosen: give at least one of -s -b --slurm -j --host"]


def test_argparse_usage_error_exits_2(run_collector, tmp_path):
    done = run_collector("host.py", "--timeout", "soon", cwd=tmp_path)
    assert done.returncode == 2 and "invalid non_negative_number value: 'soon'" in done.stderr


def test_run_still_going_makes_the_next_one_skip(run_collector, receiver, sessions, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    with afmetrics_state.StateDir(str(state), common.log).try_lock("host"):
        done = run_collector("afmetrics_collector", "-s", "--host", "--utmp", sessions, "--state-dir", state,
                             *receiver.args(), env={"AFMETRICS_TOKEN": "tok-skip"}, cwd=tmp_path)
    assert done.returncode == 0
    # The line names the run holding the lock, here this process.
    assert any(re.fullmatch(r"WARNING:host:previous host run still going \(pid %d, started "
                            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\): this run skipped" % os.getpid(), line)
               for line in log_lines(done.stderr)), done.stderr
    assert receiver.kinds() == ["ssh"]


def test_unwritable_state_dir_is_a_usage_error(run_collector, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = run_collector("host.py", "--state-dir", blocker / "state", env={"AFMETRICS_TOKEN": "tok-state"},
                         cwd=tmp_path)
    assert done.returncode == 2
    assert log_lines(done.stderr) == ["ERROR:afmetrics:cannot create state dir %s: Not a directory "
                                      "(set --state-dir)" % (blocker / "state")]


def test_version_and_help(run_collector):
    assert run_collector("afmetrics_collector", "--version").stdout.strip() == "afmetrics " + common.__version__
    helped = run_collector("condor.py", "--help")
    assert helped.returncode == 0 and "NAME:CONSTRAINT" in helped.stdout and "--obfuscate-hosts" in helped.stdout
