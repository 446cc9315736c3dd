"""ssh.py: who and last over real utmp/wtmp files, then the script as cron runs it; and on a real Debian 13
tree (tests/debian13.py), where last is wtmpdb's or missing and who may have no utmp file to read."""
import calendar
import json
import shutil
import subprocess
import time

import pytest

import ssh
import utmp
from conftest import falling_back, json_lines, local_time, log_lines, skip_or_fail, user_database
from debian13 import Debian13, Unavailable, cached_tarball

# A user name as long as utmp allows (glibc's UT_NAMESIZE).
LONG_NAME = "a_thirty_two_character_user_name"
assert len(LONG_NAME) == 32


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


def warnings(stderr):
    return [line for line in log_lines(stderr) if line.startswith("WARNING")]


def test_parse_who_reads_every_session_of_real_who(utmp_file):
    assert ssh.parse_who(real_output("who", str(utmp_file))) == ["alice", "bob", "alice", "a_very_long_username"]


def test_parse_last_drops_reboot_and_trailer_of_real_last(wtmp_file):
    output = real_output(*ssh.last_argv(time.time(), str(wtmp_file)))
    assert "wtmp begins" in output and "reboot" in output  # the real tool prints both: neither is a user
    assert sorted(ssh.parse_last(output)) == ["a_very_long_username", "flash"]


def test_last_argv_asks_for_the_last_5_minutes_in_utc_as_both_lasts_read_a_time():
    now = calendar.timegm((2026, 11, 23, 8, 33, 49))
    assert ssh.last_argv(now, "") == ["last", "-w", "-s", "2026-11-23 08:28:49"]
    assert ssh.last_argv(now, "/var/log/wtmp.db")[-2:] == ["-f", "/var/log/wtmp.db"]


def test_parse_who_and_last_of_nothing():
    assert ssh.parse_who("") == []
    assert ssh.parse_last("\nwtmp begins Mon Nov 23 08:33:49 2026\n") == []


def test_ssh_document_in_debug_mode(run_collector, utmp_file, tmp_path):
    done = run_collector("ssh.py", "-d", "-c", "UC-AF", "--utmp", utmp_file, "--state-dir", tmp_path / "state",
                         cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [document] = json_lines(tmp_path / "ssh.json")
    assert document["kind"] == "ssh" and document["cluster"] == "UC-AF" and document["token"] == ""
    assert document["users"] == ["a_very_long_username", "alice", "bob"]
    assert document["ssh_user_count"] == 3
    assert document["login_node"]
    assert done.stderr == ""


def test_ssh_history_adds_recent_logins(run_collector, utmp_file, wtmp_file, tmp_path):
    done = run_collector("ssh.py", "-d", "-S", "--utmp", utmp_file, "--wtmp", wtmp_file,
                         "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "ssh.json").read_text())
    assert document["users"] == ["a_very_long_username", "alice", "bob", "flash"]


def test_ssh_history_is_5_minutes_also_in_the_hour_daylight_saving_repeats(run_collector, sessions, tmp_path):
    """5 minutes ago in the second of the two hours local time repeats, which a last given local time reads as
    the first: the session that ended half an hour ago would count."""
    earlier = utmp.write(tmp_path / "wtmp", utmp.login("earlier", "pts/7", 1800, 301), utmp.logout("pts/7", 1700, 301))
    since = time.time() - ssh.HISTORY_SECONDS
    zone = falling_back(since)
    assert local_time(since, zone) == local_time(since - 3600, zone)  # the repeated hour
    done = run_collector("ssh.py", "-d", "-S", "--utmp", sessions, "--wtmp", earlier, "--state-dir",
                         tmp_path / "state", cwd=tmp_path, env={"TZ": zone})
    assert done.returncode == 0, done.stderr
    assert json_lines(tmp_path / "ssh.json")[0]["users"] == ["alice", "bob"]


def test_32_character_name_counted_once_though_last_cuts_it(run_collector, tmp_path):
    """util-linux 2.38's last -w prints an open session's 32-character name cut to 31; who prints it whole."""
    sessions = utmp.write(tmp_path / "utmp", utmp.login(LONG_NAME, "pts/2", 50, 104))
    logins = utmp.write(tmp_path / "wtmp", utmp.login(LONG_NAME, "pts/2", 50, 104))
    assert ssh.parse_who(real_output("who", str(sessions))) == [LONG_NAME]
    assert ssh.parse_last(real_output("last", "-w", "-f", str(logins))) == [LONG_NAME[:31]]
    done = run_collector("ssh.py", "-d", "-S", "--utmp", sessions, "--wtmp", logins,
                         "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [document] = json_lines(tmp_path / "ssh.json")
    assert document["users"] == [LONG_NAME] and document["ssh_user_count"] == 1


def test_32_character_name_that_logged_out_is_whole_in_last(run_collector, sessions, tmp_path):
    logins = utmp.write(tmp_path / "wtmp", utmp.login(LONG_NAME, "pts/6", 100, 105), utmp.logout("pts/6", 60, 105))
    done = run_collector("ssh.py", "-d", "-S", "--utmp", sessions, "--wtmp", logins,
                         "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json_lines(tmp_path / "ssh.json")[0]["users"] == [LONG_NAME, "alice", "bob"]


def test_ssh_history_without_last_keeps_who_users(run_collector, sessions, tmp_path):
    only_who = tmp_path / "bin"
    only_who.mkdir()
    (only_who / "who").symlink_to(shutil.which("who"))
    done = run_collector("ssh.py", "-d", "-S", "--utmp", sessions, "--state-dir", tmp_path / "state", cwd=tmp_path,
                         env={"PATH": str(only_who)})
    assert done.returncode == 0, done.stderr
    assert log_lines(done.stderr) == ["WARNING:ssh:last not found on PATH: only users logged in now are counted"]
    assert json_lines(tmp_path / "ssh.json")[0]["users"] == ["alice", "bob"]


def test_ssh_history_with_failing_last_keeps_who_users(run_collector, sessions, tmp_path):
    done = run_collector("ssh.py", "-d", "-S", "--utmp", sessions, "--wtmp", tmp_path / "no-such-wtmp",
                         "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [warning] = warnings(done.stderr)
    assert warning.startswith("WARNING:ssh:last failed (exit 1): ") and "no-such-wtmp" in warning
    assert warning.endswith(": only users logged in now are counted")
    assert json_lines(tmp_path / "ssh.json")[0]["users"] == ["alice", "bob"]


def test_missing_utmp_file_is_one_warning(run_collector, tmp_path):
    missing = tmp_path / "utmp"
    done = run_collector("ssh.py", "-d", "--utmp", missing, "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert log_lines(done.stderr) == ["WARNING:ssh:who found no sessions and there is no %s: a host that keeps "
                                      "no utmp (logind only) reports 0 users" % missing]
    assert json_lines(tmp_path / "ssh.json")[0]["ssh_user_count"] == 0


def test_empty_utmp_file_is_no_warning(run_collector, tmp_path):
    nobody = utmp.write(tmp_path / "utmp")
    done = run_collector("ssh.py", "-d", "--utmp", nobody, "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == ""
    assert json_lines(tmp_path / "ssh.json")[0]["users"] == []


FILTER_GROUP = "afmfilter"
# alice's primary group is FILTER_GROUP, bob's is not: each is decided on through getpwnam.
ALICE, BOB = "alice:x:4301:4300::/nonexistent:/usr/sbin/nologin", "bob:x:4302:4302::/nonexistent:/usr/sbin/nologin"
GROUP_LINE = "%s:x:4300:" % FILTER_GROUP


@pytest.mark.parametrize("passwd, group, error", [
    ([ALICE, BOB], [GROUP_LINE], None),
    # The directory down: getgrnam answers as for a group that does not exist.
    ([ALICE, BOB], [], "ERROR:ssh:group %s cannot be resolved (getgrnam: no such group, or the user directory is "
                       "down): users cannot be filtered" % FILTER_GROUP),
    # bob unknown (SPEC.md: an unknown user is dropped), with the group resolved: the directory answers.
    ([ALICE], [GROUP_LINE], None),
])
def test_group_filter_that_cannot_resolve_a_name_sends_no_user_count(run_collector, receiver, sessions, tmp_path,
                                                                      passwd, group, error):
    """Real getgrnam and getpwnam over the files a private mount namespace puts on /etc/group and /etc/passwd:
    a group they cannot resolve is the run's one error, and no document says fewer users than are logged in."""
    prefix, env = user_database(tmp_path, passwd, group)
    done = run_collector("ssh.py", "-g", FILTER_GROUP, "--utmp", sessions, "--state-dir", tmp_path / "state",
                         *receiver.args(), env=dict(env, AFMETRICS_TOKEN="tok"), cwd=tmp_path, prefix=prefix)
    if error is None:
        assert (done.returncode, done.stderr) == (0, "")
        assert [document["users"] for document in receiver.documents] == [["alice"]]
    else:
        assert done.returncode == 1
        assert log_lines(done.stderr) == [error]
        assert receiver.documents == []


def test_missing_who_is_one_line_error(run_collector, tmp_path):
    done = run_collector("ssh.py", "-d", "--state-dir", tmp_path / "state", cwd=tmp_path,
                         env={"PATH": str(tmp_path)})
    assert done.returncode == 1
    assert log_lines(done.stderr) == ["ERROR:ssh:who not found on PATH"]
    assert not (tmp_path / "ssh.json").exists()


# Debian 13: coreutils 9.7's who, wtmpdb 0.73's last (util-linux 2.41 has none), python3 3.13.

@pytest.fixture(scope="session")
def debian13(tmp_path_factory):
    try:
        tarball = cached_tarball()
    except (Unavailable, OSError, subprocess.TimeoutExpired) as error:
        skip_or_fail("no Debian 13 tree: %s" % error)
    tree = Debian13.extract(tarball, tmp_path_factory.mktemp("debian13") / "root")
    yield tree
    shutil.rmtree(str(tree.root))  # 250 MB that pytest would otherwise keep for its last three runs


@pytest.fixture
def trixie(debian13, request):
    """debian13 and a fresh directory inside it (its path there) with a real utmp of alice and bob."""
    directory = debian13.directory(request.node.name)
    utmp.write(debian13.host_path(directory + "/utmp"),
               utmp.login("alice", "pts/0", 60, 11), utmp.login("bob", "pts/1", 30, 12))
    return debian13, directory


def recent_logins(debian13, directory):
    """A wtmpdb database in DIRECTORY: alice still logged in, flash in and out within the last 5 minutes,
    old an hour ago; and a boot entry."""
    return debian13.wtmpdb(directory + "/wtmp.db",
                           utmp.login("old", "pts/3", 3600, 201), utmp.logout("pts/3", 3000, 201),
                           utmp.login("alice", "pts/0", 60, 11),
                           utmp.login("flash", "pts/4", 90, 202), utmp.logout("pts/4", 80, 202))


def test_parse_last_of_real_wtmpdb_last(trixie):
    debian13, directory = trixie
    database = recent_logins(debian13, directory)
    output = debian13.run("last", "-w", "-f", database).stdout
    assert "system boot" in output and "%s begins" % database in output  # neither is a user
    assert ssh.parse_last(output) == ["alice", "flash", "old"]  # newest first


def test_debian13_wtmpdb_last_merges_with_who(trixie):
    debian13, directory = trixie
    database = recent_logins(debian13, directory)
    done = debian13.collector("ssh.py", "-d", "-S", "--utmp", directory + "/utmp", "--wtmp", database,
                              "--state-dir", directory + "/state", cwd=directory)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    [document] = json_lines(debian13.host_path(directory + "/ssh.json"))
    assert document["users"] == ["alice", "bob", "flash"] and document["ssh_user_count"] == 3


def test_debian13_without_last_reports_who_users_and_one_warning(trixie):
    debian13, directory = trixie
    with debian13.without("last"):
        done = debian13.collector("ssh.py", "-d", "-S", "--utmp", directory + "/utmp",
                                  "--state-dir", directory + "/state", cwd=directory)
    assert done.returncode == 0, done.stderr
    assert log_lines(done.stderr) == ["WARNING:ssh:last not found on PATH: only users logged in now are counted"]
    assert json_lines(debian13.host_path(directory + "/ssh.json"))[0]["users"] == ["alice", "bob"]


def test_debian13_without_utmp_warns_once(trixie):
    """Debian 13's who reads systemd-logind for its default utmp file; with neither a utmp file nor logind
    sessions it prints nothing, as on a logind-only host."""
    debian13, directory = trixie
    assert not debian13.host_path("/var/run/utmp").exists()
    done = debian13.collector("ssh.py", "-d", "--state-dir", directory + "/state", cwd=directory)
    assert done.returncode == 0, done.stderr
    assert log_lines(done.stderr) == ["WARNING:ssh:who found no sessions and there is no /var/run/utmp: a host "
                                      "that keeps no utmp (logind only) reports 0 users"]
    assert json_lines(debian13.host_path(directory + "/ssh.json"))[0]["users"] == []
