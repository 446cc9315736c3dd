"""afmetrics_privacy: user hashes and node names exactly as the old tool (afmetrics_collector) sent them, so that a
site's numbers stay the same at cutover (issue 11), in process and as the scripts run. Group filter: test_common.py.
"""
import argparse
import hashlib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

import afmetrics_privacy
import afmetrics_settings
import utmp
from conftest import COLLECTORS, collector_environment, json_lines, log_lines, skip_or_fail


# The old tool's own formulas, written out from its skeleton.py (not imported: it is not installed here).
def old_tool_user(name, salt):
    """What every collector of the old tool sends with -o: SHA-256, the first 8 hex digits."""
    return hashlib.sha256((salt + name).encode('utf-8')).hexdigest()[:8]


def old_readme_user(name, salt):
    """What the old README says: "MD5 hashes username and truncates to the last 8 characters"."""
    return hashlib.md5((salt + name).encode("utf-8")).hexdigest()[-8:]


def old_tool_host(hostname, domain):
    """The old tool's -O, on socket.gethostname(): every digit of it."""
    return ''.join(['atlas', ''.join([n for n in hostname if n.isdigit()]), ".", domain])


LONG_NAME = "a_thirty_two_character_user_name"  # as long as utmp allows
assert len(LONG_NAME) == 32
README_SALT = "5tKC%>f&%#hg"  # the old README's example salt

# name, salt, md5 (last 8), sha256 (first 8): from coreutils, printf %s "$salt$name" | md5sum / sha256sum.
USERS = [
    ("alice", "", "a7a6563c", "2bd806c9"),
    ("alice", "s3cret", "88e9f4c4", "636ac7a9"),
    ("root", "", "85481845", "4813494d"),
    ("jürgen", "", "77a86ed3", "19b720a9"),
    ("名前", "pepper", "f453d24c", "16126c09"),
    (LONG_NAME, "", "97bb2964", "f7951828"),
    (LONG_NAME, "salt with spaces", "ddd7741d", "d10004d0"),
    ("bob", "  a salt with spaces ", "509f34da", "446ffa29"),
    ("milaivanovska", README_SALT, "7a20107e", "70c546f1"),
    ("o'brien", "sel épicé", "5019cd10", "5787430d"),
]

# socket.gethostname(), and what -O bnl.gov makes of it: every digit of the name, as the old tool takes them.
HOSTS = [
    ("condor123.example.edu", "atlas123.bnl.gov"),  # the old README's example
    ("login01", "atlas01.bnl.gov"),
    ("login1.t2.example.edu", "atlas12.bnl.gov"),  # issue 11: not atlas1 (the short name's digits only)
    ("login2.af9.example", "atlas29.bnl.gov"),
    ("node-3.rack12.dc4.example.org", "atlas3124.bnl.gov"),
    ("ip-10-0-0-12.ec2.internal", "atlas1000122.bnl.gov"),  # the 2 of ec2 too
    ("gateway.example.edu", "atlas.bnl.gov"),  # no digits at all, as the old tool sends it
    ("localhost", "atlas.bnl.gov"),
    ("localhost.localdomain", "atlas.bnl.gov"),
]


def user_filter(user_hash, salt="", obfuscate=True):
    opts = argparse.Namespace(group="", obfuscate_users=obfuscate, salt=salt, user_hash=user_hash)
    return afmetrics_privacy.UserFilter(opts, logging.getLogger("test"))


def node_opts(login_node="", obfuscate_hosts=""):
    return argparse.Namespace(login_node=login_node, obfuscate_hosts=obfuscate_hosts)


@pytest.fixture
def host_named(monkeypatch):
    """Make socket.gethostname() answer name, and getfqdn() extend it to fqdn (as DNS or /etc/hosts would)."""
    def rename(name, fqdn=None):
        monkeypatch.setattr(socket, "gethostname", lambda: name)
        monkeypatch.setattr(socket, "getfqdn", lambda host="": fqdn or name)
    return rename


# User hashes

def test_user_table_holds_the_old_formulas_values():
    for name, salt, md5, sha256 in USERS:
        assert (old_readme_user(name, salt), old_tool_user(name, salt)) == (md5, sha256), name


@pytest.mark.parametrize("name, salt, md5, sha256", USERS)
def test_user_hash_md5_is_the_old_readme_and_sha256_the_old_tool(name, salt, md5, sha256):
    assert user_filter("md5", salt).report_name(name) == md5
    assert user_filter("sha256", salt).report_name(name) == sha256
    assert afmetrics_privacy.obfuscate_user(name, salt) == sha256  # the old tool's code unless told otherwise
    assert afmetrics_privacy.obfuscate_user(name, salt, "sha256") == sha256


def test_user_hash_defaults_to_sha256_as_the_old_tools_code_sends():
    [setting] = [s for s in afmetrics_settings.COMMON_SETTINGS if s.name == "user_hash"]
    assert setting.default == "sha256"
    assert user_filter(setting.default).report_name("alice") == "2bd806c9"


def test_without_obfuscation_names_stay_whatever_the_hash():
    assert user_filter("sha256", "s3cret", obfuscate=False).report_names(["bob", "alice", "bob"]) == ["alice", "bob"]


@pytest.mark.parametrize("bad", ["sha1", "SHA256", "md5 ", ""])
def test_an_unknown_user_hash_is_a_usage_error(bad, monkeypatch):
    monkeypatch.setenv("AFMETRICS_USER_HASH", "x")
    with pytest.raises(afmetrics_settings.UsageError, match=r"^\$AFMETRICS_USER_HASH: bad value for user_hash: "
                       + re.escape(repr(bad)) + r" \(expected md5 or sha256\)$"):
        user_filter(bad)


@settings(max_examples=300, deadline=None)
@given(names=st.lists(st.text(max_size=40)), salt=st.text(max_size=40))
def test_every_name_and_salt_hash_as_the_old_tool_and_readme_have_it(names, salt):
    assert user_filter("sha256", salt).report_names(names) == sorted({old_tool_user(n, salt) for n in names})
    assert user_filter("md5", salt).report_names(names) == sorted({old_readme_user(n, salt) for n in names})


# Node names

def test_node_name_is_the_host_name_even_where_getfqdn_extends_it(host_named):
    host_named("login1", "login1.t2.example.edu")
    assert afmetrics_privacy.login_node(node_opts()) == "login1"
    host_named("login1.t2.example.edu")
    assert afmetrics_privacy.login_node(node_opts()) == "login1.t2.example.edu"


@pytest.mark.parametrize("hostname, obfuscated", HOSTS)
def test_obfuscated_node_name_takes_every_digit_of_the_host_name(hostname, obfuscated, host_named):
    host_named(hostname, hostname + ".example.net")
    assert old_tool_host(hostname, "bnl.gov") == obfuscated
    assert afmetrics_privacy.login_node(node_opts(obfuscate_hosts="bnl.gov")) == obfuscated
    assert afmetrics_privacy.obfuscate_host(hostname, "bnl.gov") == obfuscated


@pytest.mark.parametrize("login_node, domain, expected", [
    ("login07.bnl.gov", "", "login07.bnl.gov"),
    ("login07.bnl.gov", "bnl.gov", "atlas07.bnl.gov"),  # -O hides an overriding name too
    ("", "", "vm99"),
    ("", "bnl.gov", "atlas99.bnl.gov"),
])
def test_login_node_setting_replaces_the_host_name_before_obfuscation(login_node, domain, expected, host_named):
    host_named("vm99", "vm99.example.net")
    assert afmetrics_privacy.login_node(node_opts(login_node, domain)) == expected


hostnames = st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,15}(\.[a-z0-9][a-z0-9-]{0,10}){0,4}\Z")
domains = st.from_regex(r"\A[a-z][a-z0-9-]{0,10}(\.[a-z]{2,6}){1,2}\Z")


@settings(max_examples=300, deadline=None)
@given(hostname=hostnames, domain=domains)
def test_every_host_name_obfuscates_as_the_old_tool_and_only_its_digits_show(hostname, domain):
    opts = node_opts(login_node=hostname, obfuscate_hosts=domain)
    assert afmetrics_privacy.login_node(opts) == old_tool_host(hostname, domain)
    assert re.fullmatch(r"atlas[0-9]*\." + re.escape(domain), afmetrics_privacy.login_node(opts))
    assert afmetrics_privacy.login_node(node_opts(login_node=hostname)) == hostname


# The scripts as cron runs them

@pytest.fixture
def logged_in(tmp_path):
    """A real utmp file: ASCII, non-ASCII and 32-character names, alice twice."""
    return utmp.write(tmp_path / "utmp", utmp.login("alice", "pts/0", 60, 11), utmp.login("jürgen", "pts/1", 50, 12),
                      utmp.login(LONG_NAME, "pts/2", 40, 13), utmp.login("alice", "pts/3", 30, 14))


SSH_USERS = ["alice", "jürgen", LONG_NAME]


def write_config(path, *lines):
    path.write_text("[afmetrics]\n" + "".join(line + "\n" for line in lines))
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("how", ["command line", "environment", "config file"])
def test_ssh_with_sha256_sends_exactly_the_old_tools_hashes(how, run_collector, logged_in, tmp_path):
    salt = {"command line": README_SALT, "environment": "salt with spaces", "config file": "s3cret"}[how]
    args, env = ["-d", "--utmp", logged_in, "--state-dir", tmp_path / "state"], {}
    if how == "command line":
        args += ["-o", "--user-hash", "sha256", "-z", salt]
    elif how == "environment":
        env = {"AFMETRICS_OBFUSCATE_USERS": "true", "AFMETRICS_USER_HASH": "sha256", "AFMETRICS_SALT": salt}
    else:
        args += ["--config", write_config(tmp_path / "a.conf", "obfuscate_users = true", "user_hash = sha256",
                                          "salt = " + salt)]
    done = run_collector("ssh.py", *args, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [document] = json_lines(tmp_path / "ssh.json")
    assert document["users"] == sorted(old_tool_user(name, salt) for name in SSH_USERS)
    assert document["ssh_user_count"] == 3


def test_ssh_hashes_as_the_old_tools_code_by_default(run_collector, logged_in, tmp_path):
    """No user_hash anywhere: the old tool's -o -z SALT, the user ids the dashboards hold (issue 19)."""
    done = run_collector("ssh.py", "-d", "-o", "--utmp", logged_in, "--state-dir", tmp_path / "state",
                         env={"AFMETRICS_SALT": README_SALT}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json_lines(tmp_path / "ssh.json")[0]["users"] == sorted(old_tool_user(n, README_SALT) for n in SSH_USERS)


def test_ssh_with_md5_hashes_as_the_old_readme_says(run_collector, logged_in, tmp_path):
    done = run_collector("ssh.py", "-d", "-o", "--user-hash", "md5", "--utmp", logged_in, "--state-dir",
                         tmp_path / "state", env={"AFMETRICS_SALT": README_SALT}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json_lines(tmp_path / "ssh.json")[0]["users"] == sorted(old_readme_user(n, README_SALT) for n in SSH_USERS)


@pytest.mark.parametrize("how", ["environment", "config file"])
@pytest.mark.parametrize("obfuscate", [True, False])
def test_ssh_with_an_unknown_user_hash_is_a_usage_error(how, obfuscate, run_collector, logged_in, tmp_path):
    config = write_config(tmp_path / "a.conf", *(["user_hash = SHA-256"] if how == "config file" else []))
    done = run_collector("ssh.py", "-d", "--utmp", logged_in, "--state-dir", tmp_path / "state", "--config", config,
                         *(["-o"] if obfuscate else []),
                         env={"AFMETRICS_USER_HASH": "SHA-256"} if how == "environment" else {}, cwd=tmp_path)
    origin = "$AFMETRICS_USER_HASH" if how == "environment" else str(config)
    assert done.returncode == 2
    assert log_lines(done.stderr) == ["ERROR:afmetrics:%s: bad value for user_hash: 'SHA-256' (expected md5 or sha256)"
                                      % origin]
    assert not (tmp_path / "ssh.json").exists()


@pytest.mark.parametrize("args, expected", [
    (["--login-node", "login07.bnl.gov"], "login07.bnl.gov"),
    (["--login-node", "login07.bnl.gov", "-O", "bnl.gov"], "atlas07.bnl.gov"),
    ([], socket.gethostname()),
    (["--login-node", ""], socket.gethostname()),
])
def test_ssh_reports_the_login_node_setting(args, expected, run_collector, logged_in, tmp_path):
    done = run_collector("ssh.py", "-d", "--utmp", logged_in, "--state-dir", tmp_path / "state", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json_lines(tmp_path / "ssh.json")[0]["login_node"] == expected


def test_login_node_from_the_config_file_reaches_every_host_document(run_collector, tmp_path):
    config = write_config(tmp_path / "a.conf", "login_node = login07.bnl.gov", "obfuscate_hosts = bnl.gov")
    done = run_collector("host.py", "-d", "--disk", "/", "--config", config, "--state-dir", tmp_path / "state",
                         cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert {d["login_node"] for d in json_lines(tmp_path / "host.json")} == {"atlas07.bnl.gov"}


# On a host of a given name: a UTS namespace of its own, with /etc/hosts extending that name as DNS would.
ON_HOST = r"""
hostname "$NAME"
mount --bind "$HOSTS" /etc/hosts
"$PYTHON" -c 'import socket; print(socket.gethostname(), socket.getfqdn())' > names
"$PYTHON" "$COLLECTORS/ssh.py" -d --utmp "$UTMP" "$@"
"$PYTHON" "$COLLECTORS/host.py" -d --disk / "$@"
"""


def on_host(name, tmp_path, logged_in, *args):
    if os.geteuid() != 0:
        skip_or_fail("a host name of its own (a UTS namespace) needs root")
    if not shutil.which("unshare"):
        skip_or_fail("not installed: unshare")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n10.11.12.13 login1.t2.example.edu login1\n")
    env = collector_environment({"NAME": name, "HOSTS": str(hosts), "PYTHON": sys.executable,
                                 "COLLECTORS": str(COLLECTORS), "UTMP": str(logged_in)})
    done = subprocess.run(["unshare", "-u", "-m", "--propagation", "private", "sh", "-euc", ON_HOST, "sh",
                           "--state-dir", str(tmp_path / "state")] + list(args), capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL)
    if not (tmp_path / "names").exists():
        skip_or_fail("cannot rename the host in a namespace of its own here: %s" % done.stderr.strip())
    assert done.returncode == 0, done.stderr
    documents = json_lines(tmp_path / "ssh.json") + json_lines(tmp_path / "host.json")
    return (tmp_path / "names").read_text().split(), documents


def test_short_host_name_is_sent_as_it_is_though_it_resolves_to_an_fqdn(tmp_path, logged_in):
    names, documents = on_host("login1", tmp_path, logged_in)
    assert names == ["login1", "login1.t2.example.edu"]  # getfqdn() extends it: the old afmetrics sent that
    assert [d["kind"] for d in documents] == ["ssh", "CPU", "MEM", "DISK"]
    assert {d["login_node"] for d in documents} == {"login1"}


def test_obfuscated_fqdn_host_name_keeps_every_digit(tmp_path, logged_in):
    names, documents = on_host("login1.t2.example.edu", tmp_path, logged_in, "-O", "bnl.gov")
    assert names == ["login1.t2.example.edu", "login1.t2.example.edu"]
    assert {d["login_node"] for d in documents} == {"atlas12.bnl.gov"}  # the old tool's, not atlas1
