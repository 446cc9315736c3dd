"""ssh.py: who and last over real utmp/wtmp files, then the script as cron runs it."""
import json
import subprocess

import pytest

import ssh
from conftest import log_lines
import utmp


@pytest.fixture
def utmp_file(tmp_path):
    return utmp.write(tmp_path / "utmp",
                      utmp.login("alice", "pts/0", 100, 101),
                      utmp.login("bob", "pts/1", 7200, 102),
                      utmp.login("alice", "pts/5", 30, 103),
                      utmp.login("a_very_long_username", "pts/2", 50, 104))


@pytest.fixture
def wtmp_file(tmp_path):
    return utmp.write(tmp_path / "wtmp",
                      utmp.reboot(200),
                      utmp.login("old", "pts/3", 3600, 201), utmp.logout("pts/3", 3000, 201),
                      utmp.login("flash", "pts/4", 90, 202), utmp.logout("pts/4", 80, 202),
                      utmp.login("a_very_long_username", "pts/2", 50, 203))


def real_output(*argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def test_parse_who_reads_every_session_of_real_who(utmp_file):
    assert ssh.parse_who(real_output("who", str(utmp_file))) == ["alice", "bob", "alice", "a_very_long_username"]


def test_parse_last_drops_reboot_and_trailer_of_real_last(wtmp_file):
    output = real_output("last", "-w", "-s", "-5min", "-f", str(wtmp_file))
    assert "wtmp begins" in output and "reboot" in output  # the real tool prints both: neither is a user
    assert sorted(ssh.parse_last(output)) == ["a_very_long_username", "flash"]


def test_parse_who_and_last_of_nothing():
    assert ssh.parse_who("") == []
    assert ssh.parse_last("\nwtmp begins Mon Nov 23 08:33:49 2026\n") == []


def test_ssh_document_in_debug_mode(run_collector, utmp_file, tmp_path):
    done = run_collector("ssh.py", "-d", "-c", "UC-AF", "--utmp", utmp_file, "--state-dir", tmp_path / "state",
                         cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [document] = [json.loads(line) for line in (tmp_path / "ssh.json").read_text().splitlines()]
    assert document["kind"] == "ssh" and document["cluster"] == "UC-AF" and document["token"] == ""
    assert document["users"] == ["a_very_long_username", "alice", "bob"]
    assert document["ssh_user_count"] == 3
    assert document["login_node"]


def test_ssh_history_adds_recent_logins(run_collector, utmp_file, wtmp_file, tmp_path):
    done = run_collector("ssh.py", "-d", "-S", "--utmp", utmp_file, "--wtmp", wtmp_file,
                         "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "ssh.json").read_text())
    assert document["users"] == ["a_very_long_username", "alice", "bob", "flash"]


def test_missing_who_is_one_line_error(run_collector, tmp_path):
    done = run_collector("ssh.py", "-d", "--state-dir", tmp_path / "state", cwd=tmp_path,
                         env={"PATH": str(tmp_path)})
    assert done.returncode == 1
    assert log_lines(done.stderr) == ["ERROR:ssh:who not found on PATH"]
    assert not (tmp_path / "ssh.json").exists()
