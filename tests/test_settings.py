"""afmetrics_settings: precedence, the config file and its errors, empty variables, --no- switches, lists on the
command line split as the file splits them, the CA bundle checked before a run, secrets on the command line."""
import argparse
import json
import logging
import os

import pytest
from hypothesis import example, given, settings, strategies as st

import afmetrics_common as common
import afmetrics_settings
import condor
import host
import jupyter
import slurm
import ssh
from conftest import log_lines

TOKEN, SALT = "tok-71c9e04a", "salt-2f8d6b"
EVERY_SETTING = afmetrics_settings.COMMON_SETTINGS + [setting for settings_of in
                                                      afmetrics_settings.COLLECTOR_SETTINGS.values()
                                                      for setting in settings_of]
# The settings whose empty value is a choice of its own: log_file '' logs to stderr only.
EMPTY_IS_A_CHOICE = {"log_file"}
# A value of each kind as the config file writes it, and what it reads as.
SAMPLES = {"str": ("x", "x"), "secret": ("x", "x"), "int": ("3", 3), "number": ("2.5", 2.5), "bool": ("yes", True),
           "words": ("a, b", ["a", "b"]), "lines": ("\n    a:\n    b:c", ["a:", "b:c"])}
BOOLEANS = sorted(setting.name for setting in EVERY_SETTING if setting.kind == "bool")
# How the command line turns each boolean setting on (the short flag where there is one) and off.
SWITCHES = {"debug": ("-d", "--no-debug"), "obfuscate_users": ("-o", "--no-obfuscate-users"),
            "ssh_history": ("-S", "--no-ssh-history"), "gzip": ("--gzip", "--no-gzip"),
            "jupyter_pending": ("--jupyter-pending", "--no-jupyter-pending")}


@pytest.fixture(autouse=True)
def no_outside_settings(monkeypatch, tmp_path):
    """Neither the developer's AFMETRICS_* nor the machine's /etc/afmetrics/afmetrics.conf reach a test."""
    for name in [name for name in os.environ if name.startswith("AFMETRICS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(afmetrics_settings, "DEFAULT_CONFIG", str(tmp_path / "no-default.conf"))


def parser_with(*modules):
    """The parser and settings of a script running these collectors, as script_main and the umbrella build it."""
    parser = argparse.ArgumentParser()
    afmetrics_settings.add_common_arguments(parser)
    for module in modules:
        module.add_arguments(parser.add_argument_group(module.NAME))
    return parser, afmetrics_settings.COMMON_SETTINGS + [setting for module in modules for setting in module.SETTINGS]


def resolve(argv, *modules):
    parser, settings_of = parser_with(*modules)
    return afmetrics_settings.resolve_settings(parser, settings_of, [str(arg) for arg in argv])


def write_config(path, text, mode=0o640):
    path.write_text("[afmetrics]\n" + text)
    path.chmod(mode)
    return path


def test_precedence_command_line_then_environment_then_file_then_default(tmp_path, monkeypatch):
    config = write_config(tmp_path / "a.conf", "cluster = FROM-FILE\nurl = https://file/\ntoken = t-file\n"
                                               "timeout = 7\n")
    monkeypatch.setenv("AFMETRICS_URL", "https://env/")
    monkeypatch.setenv("AFMETRICS_TOKEN", "t-env")
    opts = resolve(["--config", config, "-t", "t-cli"])
    assert (opts.token, opts.url, opts.cluster, opts.timeout) == ("t-cli", "https://env/", "FROM-FILE", 7.0)
    assert opts.send_budget == 120.0 and opts.obfuscate_users is False


def test_config_types_lists_and_booleans(tmp_path, monkeypatch):
    config = write_config(tmp_path / "a.conf", "obfuscate_users = yes\nqueues =\n    all:\n"
                                               "    short:queue==\"short\"\nexclude_owners = a, b c\n")
    monkeypatch.setenv("AFMETRICS_CONFIG", str(config))
    opts = resolve([], condor)
    assert opts.obfuscate_users is True
    assert opts.queues == ["all:", 'short:queue=="short"']
    assert opts.exclude_owners == ["a", "b", "c"]


@pytest.mark.parametrize("text, message", [
    ("[afmetrics\ntoken = x\n", "cannot read config file .*bad.conf: MissingSectionHeaderError at line 1$"),
    ("[afmetrics]\ntoken = x\n  \nnot a pair\n", "bad.conf: ParsingError at line 4$"),
    ("[other]\ntoken = x\n", r"bad.conf has no \[afmetrics\] section"),
    ("[afmetrics]\ntimeout = soon\n", "bad.conf: bad value for timeout: 'soon'"),
    ("[afmetrics]\ndebug = maybe\n", "bad.conf: bad value for debug: 'maybe'"),
    ("\xff\xfe", "cannot read config file .*bad.conf: not UTF-8 text$"),
])
def test_bad_config_is_a_usage_error_naming_the_problem(tmp_path, text, message):
    config = tmp_path / "bad.conf"
    config.write_bytes(text.encode("latin-1"))
    with pytest.raises(common.UsageError, match=message):
        resolve(["--config", config])


def test_explicit_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(common.UsageError, match="does not exist"):
        resolve(["--config", tmp_path / "nope.conf"])


def test_world_readable_token_and_unknown_keys_warn(tmp_path, caplog):
    config = write_config(tmp_path / "open.conf", "token = t0ps3cret\ncluser = typo\n", mode=0o644)
    with caplog.at_level(logging.WARNING):
        resolve(["--config", config])
    text = caplog.text
    assert "every user can read it: chmod o-r %s" % config in text
    assert "unknown setting 'cluser'" in text
    assert "t0ps3cret" not in text


# --- issue 10, item 17: an empty variable is unset ---

@pytest.mark.parametrize("setting", [s for s in EVERY_SETTING if s.name not in EMPTY_IS_A_CHOICE], ids=lambda s: s.name)
def test_empty_environment_variable_falls_through_to_the_file(setting, tmp_path, monkeypatch, ca_file):
    # A real run loads the CA bundle and checks the URL.
    text, value = {"ca_bundle": (ca_file, ca_file), "url": ("https://e/", "https://e/"),
                   "collectors": ("ssh, host", ["ssh", "host"])}.get(setting.name, SAMPLES[setting.kind])
    config = write_config(tmp_path / "a.conf", "%s = %s\n" % (setting.name, text))
    monkeypatch.setenv("AFMETRICS_" + setting.name.upper(), "")
    opts = resolve(["--config", config], ssh, condor, slurm, jupyter, host)
    assert getattr(opts, setting.name) == value


def test_empty_environment_variable_falls_through_to_the_default(monkeypatch):
    for setting in EVERY_SETTING:
        monkeypatch.setenv("AFMETRICS_" + setting.name.upper(), "")
    opts = resolve([], ssh, condor, slurm, jupyter, host)
    assert (opts.url, opts.timeout, opts.verbose, opts.disks) == ("https://af.atlas-ml.org/", 60.0, 0,
                                                                  ["/home", "/data", "/scratch"])


def test_empty_log_file_variable_still_means_stderr_only(tmp_path, monkeypatch):
    config = write_config(tmp_path / "a.conf", "log_file = %s\n" % (tmp_path / "a.log"))
    monkeypatch.setenv("AFMETRICS_LOG_FILE", "")
    assert resolve(["--config", config]).log_file == ""


@pytest.mark.parametrize("how", ["AFMETRICS_CONFIG=", "--config ''"])
def test_empty_config_path_means_no_config_file(how, tmp_path, monkeypatch):
    default = write_config(tmp_path / "default.conf", "cluster = FROM-DEFAULT\n")
    monkeypatch.setattr(afmetrics_settings, "DEFAULT_CONFIG", str(default))
    assert resolve([]).cluster == "FROM-DEFAULT"
    if how == "AFMETRICS_CONFIG=":
        monkeypatch.setenv("AFMETRICS_CONFIG", "")
    opts = resolve(["--config", ""] if how == "--config ''" else [])
    assert opts.cluster == ""


def test_help_says_how_to_read_no_config_file_and_how_to_turn_a_switch_off(run_collector):
    helped = " ".join(run_collector("ssh.py", "--help").stdout.split())
    assert "--config PATH INI config file (default $AFMETRICS_CONFIG, else /etc/afmetrics/afmetrics.conf when " \
           "present); '' = no config file" in helped
    assert "--no-ssh-history turn -S, --ssh-history off" in helped and "--no-gzip turn --gzip off" in helped


def test_empty_token_and_disks_variables_leave_the_config_file_in_charge(run_collector, receiver, tmp_path):
    config = write_config(tmp_path / "a.conf", "token = %s\ndisks = /\n" % TOKEN)
    done = run_collector("host.py", "--config", config, "--state-dir", tmp_path / "state", *receiver.args(),
                         env={"AFMETRICS_TOKEN": "", "AFMETRICS_DISKS": ""}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [disk] = receiver.of_kind("DISK")
    assert disk["mount"] == "/" and disk["token"] == TOKEN


# --- item 18: every boolean has its --no- form ---

ABSENT = None


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(BOOLEANS), in_file=st.sampled_from([ABSENT, "true", "false"]),
       in_environment=st.sampled_from([ABSENT, "", "true", "false"]),
       on_command_line=st.sampled_from([ABSENT, "on", "long on", "off"]))
def test_a_boolean_takes_the_first_of_command_line_environment_file_default(name, in_file, in_environment,
                                                                            on_command_line, tmp_path_factory):
    config = write_config(tmp_path_factory.mktemp("c") / "a.conf",
                          "" if in_file is ABSENT else "%s = %s\n" % (name, in_file))
    on, off = SWITCHES[name]
    argv = {ABSENT: [], "on": [on], "long on": ["--" + name.replace("_", "-")], "off": [off]}[on_command_line]
    expected = next(value for value in [
        None if on_command_line is ABSENT else on_command_line != "off",
        in_environment == "true" if in_environment else None,
        None if in_file is ABSENT else in_file == "true",
        False] if value is not None)
    with pytest.MonkeyPatch.context() as patch:
        if in_environment is not ABSENT:
            patch.setenv("AFMETRICS_" + name.upper(), in_environment)
        # condor and slurm both take --jupyter-pending: the umbrella's parser has it once.
        assert getattr(resolve(["--config", config] + argv, ssh, condor, slurm), name) is expected


def test_switches_on_in_the_file_turn_off_on_the_command_line(run_collector, receiver, sessions, tmp_path):
    config = write_config(tmp_path / "a.conf", "token = %s\nurl = %s\nca_bundle = %s\ndebug = true\n"
                                               "obfuscate_users = true\nssh_history = true\ngzip = true\n"
                          % (TOKEN, receiver.url, receiver.ca_file))
    args = ["ssh.py", "-vv", "--config", config, "--utmp", sessions, "--wtmp", tmp_path / "no-wtmp",
            "--state-dir", tmp_path / "state"]
    as_in_file = run_collector(*args, cwd=tmp_path)
    assert as_in_file.returncode == 0, as_in_file.stderr
    [written] = [json.loads(line) for line in (tmp_path / "ssh.json").read_text().splitlines()]
    assert "alice" not in written["users"] and "DEBUG:ssh:running last" in " ".join(as_in_file.stderr.split())
    (tmp_path / "ssh.json").unlink()

    done = run_collector(*args, "--no-debug", "--no-obfuscate-users", "--no-ssh-history", "--no-gzip", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [sent] = receiver.documents
    assert sent["users"] == ["alice", "bob"] and not (tmp_path / "ssh.json").exists()
    assert "running last" not in done.stderr
    assert [request["headers"].get("Content-Encoding") for request in receiver.requests] == [None]


# --- item 19: lists on the command line split as the file splits them ---

word = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")).filter(lambda c: c != ","),
               min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(option=st.sampled_from([("--disk", "disks"), ("--exclude-owner", "exclude_owners")]),
       values=st.lists(st.lists(word, max_size=4), min_size=1, max_size=3),
       separator=st.sampled_from([",", ", ", " ", ",,", "\t"]))
@example(option=("--disk", "disks"), values=[["/home", "/scratch"], ["/data"]], separator=",")
def test_a_words_list_on_the_command_line_reads_as_in_the_file(option, values, separator, tmp_path_factory):
    flag, name = option
    config = write_config(tmp_path_factory.mktemp("c") / "a.conf",
                          "%s = %s\n" % (name, " ".join(separator.join(group) for group in values)))
    from_file = getattr(resolve(["--config", config], condor, host), name)
    from_command_line = getattr(resolve(["%s=%s" % (flag, separator.join(group)) for group in values], condor, host),
                                name)
    assert from_command_line == from_file == [item for group in values for item in group]


def test_queues_and_services_are_one_per_option_as_one_per_line_in_the_file():
    opts = resolve(["-q", 'short:queue=="a,b" || x', "-q", "all:", "--service", "ml:af-jupyter:owner"], condor, jupyter)
    assert opts.queues == ['short:queue=="a,b" || x', "all:"] and opts.services == ["ml:af-jupyter:owner"]


def test_disks_given_with_a_comma_are_each_reported(run_collector, tmp_path):
    other = "/dev/shm"  # a mount point on any Linux with glibc's POSIX shared memory (a directory alone is left out)
    done = run_collector("host.py", "-d", "--disk", "/,%s" % other, "--state-dir", tmp_path / "state",
                         cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    mounts = [json.loads(line)["mount"] for line in (tmp_path / "host.json").read_text().splitlines()
              if json.loads(line)["kind"] == "DISK"]
    assert mounts == ["/", other]


# --- item 20: a CA bundle that cannot be loaded is a usage error ---

@pytest.mark.parametrize("origin", ["command line", "environment", "config file"])
@pytest.mark.parametrize("bundle, reason", [("none.pem", "No such file or directory"), (".", "Is a directory"),
                                            ("a.conf", "no PEM certificate in it")])
def test_unusable_ca_bundle_is_a_usage_error_naming_it(origin, bundle, reason, run_collector, receiver, tmp_path):
    path = tmp_path / bundle
    config = write_config(tmp_path / "a.conf", "token = %s\n" % TOKEN
                          + ("ca_bundle = %s\n" % path if origin == "config file" else ""))
    done = run_collector("host.py", "--disk", "/", "--config", config, "--state-dir", tmp_path / "state",
                         "-u", receiver.url, *(["--ca-bundle", path] if origin == "command line" else []),
                         env={"AFMETRICS_CA_BUNDLE": str(path)} if origin == "environment" else {}, cwd=tmp_path)
    assert done.returncode == 2
    assert log_lines(done.stderr) == ["ERROR:afmetrics:ca_bundle %s: %s" % (path, reason)]
    assert receiver.requests == [] and not (tmp_path / "state").exists()


def test_ca_bundle_is_not_needed_in_a_debug_run(run_collector, tmp_path):
    done = run_collector("host.py", "-d", "--disk", "/", "--ca-bundle", tmp_path / "none.pem",
                         "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "host.json").exists()


# --- item 21: secrets on the command line, as argparse parses them ---

VISIBLE = [
    (["-t", TOKEN], ["token"]), (["--token", TOKEN], ["token"]), (["--token=" + TOKEN], ["token"]),
    (["-t" + TOKEN], ["token"]), (["-dt" + TOKEN], ["token"]), (["-vdt", TOKEN], ["token"]),
    (["--tok=" + TOKEN], ["token"]), (["--to", TOKEN], ["token"]),
    (["-z", SALT], ["salt"]), (["-z" + SALT], ["salt"]), (["-oz" + SALT], ["salt"]), (["--sal", SALT], ["salt"]),
    (["--salt=" + SALT], ["salt"]), (["-t", TOKEN, "--sa=" + SALT], ["token", "salt"]),
]


@pytest.mark.parametrize("argv, secrets", VISIBLE, ids=lambda value: " ".join(value))
def test_a_secret_on_the_command_line_warns_without_showing_it(argv, secrets, run_collector, tmp_path):
    done = run_collector("host.py", "-d", "--disk", "/", "--state-dir", tmp_path / "state", *argv, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in log_lines(done.stderr) if "every user sees in ps" in line]
    assert warnings == ["WARNING:afmetrics:the %s was given on the command line, which every user sees in ps: "
                        "put it in the config file or AFMETRICS_%s instead" % (name, name.upper())
                        for name in secrets]
    assert TOKEN not in done.stdout + done.stderr and SALT not in done.stdout + done.stderr


# A proxy URL's password, in the forms requests reads: with a scheme or not, percent-encoded, after a user with an @.
PROXY_PASSWORD = "pw-5e7a"


@pytest.mark.parametrize("proxy", ["http://alice:%s@proxy.example.org:3128" % PROXY_PASSWORD,
                                   "alice:%s@proxy.example.org:3128" % PROXY_PASSWORD,
                                   "https://alice:%s@proxy.example.org/" % PROXY_PASSWORD.replace("-", "%2D"),
                                   "http://al@ice:%s@proxy.example.org:3128" % PROXY_PASSWORD])
def test_a_proxy_password_on_the_command_line_warns_without_showing_it(proxy, run_collector, tmp_path):
    done = run_collector("host.py", "-d", "--disk", "/", "--state-dir", tmp_path / "state", "--proxy", proxy,
                         cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [line for line in log_lines(done.stderr) if "every user sees in ps" in line] == [
        "WARNING:afmetrics:the proxy password was given on the command line, which every user sees in ps: put it "
        "in the config file or AFMETRICS_PROXY instead"]
    assert PROXY_PASSWORD not in done.stderr


def test_secrets_from_the_file_or_the_environment_do_not_warn(run_collector, tmp_path):
    config = write_config(tmp_path / "a.conf", "token = %s\n" % TOKEN)
    with_password = "http://alice:%s@proxy.example.org:3128" % PROXY_PASSWORD
    for proxy_options in ([], ["--proxy", "http://alice@proxy.example.org:3128/a:b@c"]):
        done = run_collector("host.py", "-d", "--disk", "/", "--config", config, "--state-dir", tmp_path / "state",
                             "--cluster=-t-is-no-flag", *proxy_options,
                             env={"AFMETRICS_SALT": SALT, "AFMETRICS_PROXY": with_password}, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "every user sees in ps" not in done.stderr


@pytest.mark.parametrize("bundle", ["-vt" + TOKEN, "-St" + TOKEN, "-dSt"])
def test_a_secret_after_a_bundle_of_collector_flags_still_warns(bundle, run_collector, sessions, tmp_path):
    more = [TOKEN] if bundle == "-dSt" else ["-d"]
    done = run_collector("ssh.py", "--utmp", sessions, bundle, *more, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "WARNING:afmetrics:the token was given on the command line" in done.stderr


# Whatever a command line of common, ssh.py and host.py options holds, the secrets warned about are those
# the script's own parser takes from it.
short_flags = st.text(alphabet="dvo", max_size=3)
arguments = st.one_of(
    short_flags.filter(bool).map(lambda flags: ("-" + flags,)),
    st.tuples(short_flags, st.sampled_from("tz"), st.booleans()).map(
        lambda t: ("-%s%s%s" % (t[0], t[1], TOKEN),) if t[2] else ("-%s%s" % (t[0], t[1]), TOKEN)),
    st.sampled_from([("--tok=" + TOKEN,), ("--to", TOKEN), ("--token", TOKEN), ("--sal", SALT), ("--salt=" + SALT,),
                     ("--disk", "/"), ("--disk=-t",), ("-c", "tz"), ("-g", "zt"), ("--cl=-z",), ("-O", "t.org"),
                     ("--obfuscate-hosts=-tx",), ("--no-debug",), ("--ti", "5"), ("-S",), ("-dS",), ("-oSv",),
                     ("--no-ssh-history",), ("--utmp", "-"), ("--wtmp=-z",)]))


@settings(max_examples=300, deadline=None)
@given(argv=st.lists(arguments, max_size=5).map(lambda parts: [arg for part in parts for arg in part]))
def test_secrets_warned_about_are_those_argparse_parsed(argv):
    parser, settings_of = parser_with(ssh, host)
    opts = afmetrics_settings.resolve_settings(parser, settings_of, argv)
    parsed = {name for name in ("token", "salt") if getattr(opts, name)}
    assert set(opts.command_line_secrets) == parsed
