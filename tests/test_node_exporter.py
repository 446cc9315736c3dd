"""The role's warning when node_exporter does not read afmetrics_textfile_dir
(roles/afmetrics_collector/filter_plugins/afmetrics_node_exporter.py), against Debian's real
prometheus-node-exporter: what the role reads of a running one (vars/main.yml's script over /proc) must say the
directories it really scrapes (node_textfile_mtime_seconds on its /metrics), the package's own file of arguments
must give no warning for the role's Debian default, and that default must be the one Debian's binary is built
with.
"""
import contextlib
import os
import re
import subprocess
import time
import urllib.request

import pytest
import yaml

from conftest import ROLE, debian_package, role_module

node_exporter = role_module(ROLE / "filter_plugins" / "afmetrics_node_exporter.py")
warning = node_exporter.afmetrics_node_exporter_warning
CACHE = os.environ.get("AFMETRICS_NODE_EXPORTER_CACHE", "/var/cache/afmetrics-node-exporter")
LISTENING = re.compile(r'msg="Listening on" address=(127\.0\.0\.1:\d+)')
READ_FILE = re.compile(r'^node_textfile_mtime_seconds\{file="([^"]+)"\}', re.MULTILINE)


def role_vars(name):
    return yaml.safe_load((ROLE / "vars" / name).read_text())


@pytest.fixture(scope="module")
def package():
    """Debian's prometheus-node-exporter, unpacked."""
    return debian_package("prometheus-node-exporter", CACHE)


@contextlib.contextmanager
def running(package, *args):
    """The real node_exporter running with ARGS on a free port of 127.0.0.1: yields the URL of its /metrics."""
    process = subprocess.Popen([str(package / "usr" / "bin" / "prometheus-node-exporter"),
                                "--web.listen-address=127.0.0.1:0"] + list(args),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:
            match = LISTENING.search(line)
            if match:
                break
        else:
            pytest.fail("node_exporter %s exited (%s) without listening" % (" ".join(args), process.wait()))
        yield "http://%s/metrics" % match.group(1)
    finally:
        process.kill()
        process.wait()


def processes():
    """What the role reads of the running node_exporter processes."""
    return subprocess.run(["sh", "-c", role_vars("main.yml")["_afmetrics_node_exporter_processes"]],
                          capture_output=True, text=True, check=True).stdout


def scraped_directories(url):
    """The directories whose .prom files node_exporter read (one file in each), as its own metrics say."""
    deadline = time.monotonic() + 30
    while True:
        try:
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return sorted(os.path.dirname(path) for path in READ_FILE.findall(text))


def test_the_debian_default_is_the_directory_debians_binary_is_built_with(package):
    done = subprocess.run([str(package / "usr" / "bin" / "prometheus-node-exporter"), "--help"],
                          capture_output=True, text=True)
    built_in = re.search(r'--collector\.textfile\.directory="([^"]*)"', done.stdout + done.stderr).group(1)
    assert built_in == role_vars("Debian.yml")["_afmetrics_textfile_dir"] == node_exporter.BUILT_IN[
        "prometheus-node-exporter"]


@pytest.mark.parametrize("form", ["space", "equals", "off", "defaults off", "defaults off, textfile on"])
def test_the_directories_read_of_a_running_node_exporter_are_the_ones_it_scrapes(package, tmp_path, form):
    mine, other = tmp_path / "mine", tmp_path / "other"
    for directory in (mine, other):
        directory.mkdir()
        (directory / "x.prom").write_text("afmetrics_test 1\n")
    args = {"space": ["--collector.textfile.directory", str(other)],
            "equals": ["--collector.textfile.directory=%s" % other],
            "off": ["--no-collector.textfile", "--collector.textfile.directory=%s" % mine],
            "defaults off": ["--collector.disable-defaults", "--collector.textfile.directory=%s" % mine],
            "defaults off, textfile on": ["--collector.disable-defaults", "--collector.textfile",
                                          "--collector.textfile.directory=%s" % mine]}[form]
    with running(package, *args) as url:
        seen = processes()
        scraped = scraped_directories(url)
    [argv] = node_exporter.process_argvs(seen)
    assert node_exporter.textfile_directories(argv) == scraped
    message = warning(str(mine), seen)
    assert (message == "") is (str(mine) in scraped)
    if message:
        assert message.startswith("the running prometheus-node-exporter reads ")
        assert "not afmetrics_textfile_dir %s" % mine in message
        assert message.endswith("--collector.textfile.directory=%s" % mine)


def test_no_node_exporter_running_and_its_packages_file_of_arguments(package):
    debian = role_vars("Debian.yml")
    arguments = (package / debian["_afmetrics_node_exporter_args_file"].lstrip("/")).read_text()

    def told(directory, text, family=debian):
        return warning(directory, "", text, family["_afmetrics_node_exporter_args_variable"],
                       family["_afmetrics_node_exporter_binary"])
    # Debian's file as the package ships it (ARGS=""): the binary's own directory, the role's default.
    assert told(debian["_afmetrics_textfile_dir"], arguments) == ""
    assert "reads /var/lib/prometheus/node-exporter, not afmetrics_textfile_dir /var/lib/node_exporter" in told(
        "/var/lib/node_exporter", arguments)
    changed = arguments.replace('ARGS=""', "ARGS=\"--collector.textfile.directory /var/lib/node_exporter\"")
    assert told("/var/lib/node_exporter", changed) == ""
    assert told(debian["_afmetrics_textfile_dir"], changed).startswith(
        "prometheus-node-exporter as its package's ARGS sets it reads /var/lib/node_exporter, not")
    # EPEL's and Fedora's /etc/sysconfig/node_exporter (upstream's examples/systemd/sysconfig.node_exporter, the
    # flag spelled with two dashes as node_exporter takes it since 0.15): the role's EL default.
    redhat = role_vars("RedHat.yml")
    sysconfig = 'OPTIONS="--collector.textfile.directory /var/lib/node_exporter/textfile_collector"\n'
    assert told(redhat["_afmetrics_textfile_dir"], sysconfig, redhat) == ""
    # No file, an unreadable one, or one that does not set the variable: nothing can be told.
    assert told("/srv/x", "") == told("/srv/x", "ARGS=\"unbalanced\n") == told("/srv/x", "# ARGS=\n") == ""


@pytest.mark.parametrize("argv, directories", [
    (["/usr/bin/prometheus-node-exporter"], ["/var/lib/prometheus/node-exporter"]),
    (["/usr/local/bin/node_exporter"], []),
    (["node_exporter", "-collector.textfile.directory", "/a"], ["/a"]),
    (["node_exporter", "--collector.textfile.directory=/a", "--collector.textfile.directory=/b/*"], ["/a", "/b/*"]),
    (["node_exporter", "--collector.textfile.directory"], []),
    (["node_exporter", "--collector.textfile.directory="], []),
])
def test_textfile_directories(argv, directories):
    assert node_exporter.textfile_directories(argv) == directories


def test_a_glob_or_a_trailing_slash_still_reads_the_directory():
    assert warning("/var/lib/node_exporter/", "node_exporter\n--collector.textfile.directory=/var/lib/node_*\n\n") == ""
    assert warning("/var/lib/x", "") == warning("", "node_exporter\n\n") == ""
