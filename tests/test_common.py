"""afmetrics_common and its helpers: group filter, state, commands (settings: test_settings.py; user and host
obfuscation: test_privacy.py)."""
import argparse
import logging
import os
import subprocess

import pytest

import afmetrics_common as common
import afmetrics_privacy
import afmetrics_state

GROUP, MEMBER_PRIMARY, MEMBER_SUPPLEMENTARY, OUTSIDER = "afmatlas", "afmalice", "afmbob", "afmcarol"


@pytest.fixture(scope="module")
def group_database():
    """Real users and a real group in the system database (root only, as in CI)."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: group filter tests must run there")
        pytest.skip("needs root to add test users and a group")
    commands = [["groupadd", "-f", GROUP], ["groupadd", "-f", "afmother"]]
    for user, options in ((MEMBER_PRIMARY, ["-g", GROUP]), (MEMBER_SUPPLEMENTARY, ["-g", "afmother", "-G", GROUP]),
                          (OUTSIDER, ["-g", "afmother"])):
        if subprocess.run(["id", user], capture_output=True).returncode != 0:
            commands.append(["useradd", "-M", "-s", "/usr/sbin/nologin"] + options + [user])
    for command in commands:
        subprocess.run(command, check=True, capture_output=True)
    return GROUP


def filter_for(group, obfuscate=False, salt="", user_hash="md5"):
    opts = argparse.Namespace(group=group, obfuscate_users=obfuscate, salt=salt, user_hash=user_hash)
    return afmetrics_privacy.UserFilter(opts, logging.getLogger("test"))


def test_group_filter_keeps_primary_and_supplementary_members(group_database):
    users = filter_for(group_database)
    assert users.report_names([OUTSIDER, MEMBER_SUPPLEMENTARY, MEMBER_PRIMARY, MEMBER_PRIMARY]) == [
        MEMBER_PRIMARY, MEMBER_SUPPLEMENTARY]


def test_group_filter_leaves_an_unknown_user_out(group_database):
    """SPEC.md: an unknown user is dropped (a deleted account's job must not stop every later run); the group
    resolving shows the directory answers."""
    users = filter_for(group_database)
    assert users.report_names([MEMBER_PRIMARY, "nosuchuser42"]) == [MEMBER_PRIMARY]
    assert users.report_name(MEMBER_SUPPLEMENTARY) == MEMBER_SUPPLEMENTARY  # a listed member needs no getpwnam


@pytest.mark.parametrize("users", [["root", "alice"], []])
def test_group_that_cannot_be_resolved_decides_on_no_one(users):
    with pytest.raises(afmetrics_privacy.UnresolvedName, match="^group nosuchgroup42 cannot be resolved "):
        filter_for("nosuchgroup42").report_names(users)


@pytest.mark.parametrize("user_hash", ["md5", "sha256"])
def test_group_filter_then_obfuscation(group_database, user_hash):
    users = filter_for(group_database, obfuscate=True, salt="pepper", user_hash=user_hash)
    assert users.report_names([MEMBER_PRIMARY, OUTSIDER]) == [
        afmetrics_privacy.obfuscate_user(MEMBER_PRIMARY, "pepper", user_hash)]


def test_state_survives_corruption_and_writes_atomically(tmp_path, caplog):
    state = afmetrics_state.StateDir(str(tmp_path), logging.getLogger("test"))
    state.save("x.json", {"a": 1})
    assert state.load("x.json") == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["x.json"]  # no temporary file left behind
    (tmp_path / "x.json").write_text('{"a": ')
    with caplog.at_level(logging.WARNING):
        assert state.load("x.json") is None
    assert "unreadable" in caplog.text
    assert state.load("absent.json") is None


def test_lock_is_exclusive(tmp_path):
    state = afmetrics_state.StateDir(str(tmp_path), logging.getLogger("test"))
    first = state.try_lock("host")
    assert first is not None
    assert state.try_lock("host") is None
    first.close()
    assert state.try_lock("host") is not None


def test_run_command_errors_are_one_line():
    with pytest.raises(common.SourceError, match="^no-such-tool-42 not found on PATH$"):
        common.run_command(["no-such-tool-42"], 5)
    with pytest.raises(common.SourceError, match=r"^sh failed \(exit 3\): broken here$"):
        common.run_command(["sh", "-c", "echo out; printf 'broken\\nhere\\n' >&2; exit 3"], 5)
    with pytest.raises(common.SourceError, match="did not answer within 0.2 s"):
        common.run_command(["sleep", "5"], 0.2)
