"""Shared fixtures: paths, a real HTTPS receiver, and the collectors run as cron runs them."""
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import trustme

import utmp
from receiver import Receiver

REPO = pathlib.Path(__file__).resolve().parent.parent
COLLECTORS = REPO / "collectors"
ROLE = REPO / "roles" / "afmetrics_collector"
# Real HTCondor outputs (tests/htcondor-captures/README.md says how they were made).
CAPTURES = REPO / "tests" / "htcondor-captures"
CONDOR_VERSIONS = ["trixie-htcondor-23.9.6", "sid-htcondor-25.14.1"]

# In CI a test that needs root or a daemon it cannot have fails instead of being skipped.
IN_CI = os.environ.get("CI") == "true"

sys.path.insert(0, str(COLLECTORS))


def skip_or_fail(reason):
    """Skip a test that cannot run on this machine; in CI, where everything must run, fail it."""
    if IN_CI:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def apt_get(*args, cwd=None):
    """apt-get -q -y ARGS, never asking; a CompletedProcess (text)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(["apt-get", "-q", "-y"] + list(args), capture_output=True, text=True, env=env,
                          timeout=600, stdin=subprocess.DEVNULL, cwd=cwd)


def installed(program, package):
    """The path of PROGRAM; apt-get installs PACKAGE when it is missing (root only)."""
    path = "/usr/sbin:/usr/bin:/bin"
    found = shutil.which(program) or shutil.which(program, path=path)
    if found:
        return found
    if not shutil.which("apt-get"):
        skip_or_fail("%s is not installed and there is no apt-get to install it" % program)
    if os.geteuid() != 0:
        skip_or_fail("%s is not installed (apt-get install %s needs root)" % (program, package))
    done = apt_get("install", "--no-install-recommends", package)
    if done.returncode != 0:  # package lists missing or stale
        apt_get("update")
        done = apt_get("install", "--no-install-recommends", package)
    found = shutil.which(program, path=path)
    if done.returncode != 0 or not found:
        skip_or_fail("apt-get install %s failed: %s" % (package, (done.stderr.strip().splitlines() or ["?"])[-1]))
    return found


def role_module(path):
    """A module of the role (a filter plugin, a file it runs on the node), loaded from its file: the role's
    directories never go on sys.path, where its filter plugin afmetrics_status would hide the collectors' module
    of that name."""
    spec = importlib.util.spec_from_file_location("role_" + path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def debian_package(package, cache):
    """The files of Debian's PACKAGE, unpacked once into the directory CACHE (apt-get download, dpkg-deb) without
    installing it: no service of its own starts, nothing on the machine changes. CACHE when that is done."""
    cache = pathlib.Path(cache)
    if (cache / ".unpacked").exists():
        return cache
    if not shutil.which("apt-get"):
        skip_or_fail("%s is not unpacked in %s and there is no apt-get to fetch it" % (package, cache))
    with tempfile.TemporaryDirectory() as directory:
        done = apt_get("download", package, cwd=directory)
        if done.returncode != 0 and os.geteuid() == 0:  # package lists missing or stale
            apt_get("update")
            done = apt_get("download", package, cwd=directory)
        debs = list(pathlib.Path(directory).glob(package + "_*.deb"))
        if done.returncode != 0 or not debs:
            skip_or_fail("apt-get download %s failed: %s" % (package, (done.stderr.strip().splitlines() or ["?"])[-1]))
        try:
            cache.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(cache)], check=True)
            (cache / ".unpacked").touch()
        except (OSError, subprocess.CalledProcessError) as error:
            skip_or_fail("cannot unpack %s into %s: %s" % (package, cache, error))
    return cache


def json_lines(path):
    """The documents of a JSON Lines file (a debug file or a spool); [] when there is no such file."""
    path = pathlib.Path(path)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def spool_documents(path):
    """The documents a spool file holds, oldest first (its clock line and each line's age left out)."""
    return [entry.get("document", entry) for entry in json_lines(path) if "clock" not in entry]


def write_spool(path, documents, age_seconds):
    """A spool file as this version writes it, holding documents collected AGE_SECONDS ago (a millisecond apart,
    in order); returns them as the spool holds them, each with its timestamp."""
    from afmetrics_state import iso_timestamp, this_boot  # the format afmetrics_state.Spool's docstring gives

    collected = time.time() - age_seconds
    seeded = [dict(document, timestamp=iso_timestamp(collected + n / 1000.0)) for n, document in enumerate(documents)]
    clock = {"boot": this_boot(), "uptime": time.clock_gettime(time.CLOCK_BOOTTIME)}
    lines = [{"clock": clock}] + [{"kept": age_seconds, "document": document} for document in seeded]
    pathlib.Path(path).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return seeded


def capture(version, name, stream="stdout"):
    """A real HTCondor output from tests/htcondor-captures."""
    return (CAPTURES / version / ("%s.%s" % (name, stream))).read_text()


def log_lines(stderr):
    """LEVEL:name:message of each log line, checking the format SPEC.md gives ([YYYY-mm-dd HH:MM:SS] ...)."""
    lines = stderr.strip().splitlines()
    for line in lines:
        assert re.match(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] [A-Z]+:[\w.]+:", line), line
    return [line.split("] ", 1)[1] for line in lines]


@pytest.fixture(scope="session")
def certificate_authority():
    return trustme.CA()


def write_ca_file(ca, tmp_path_factory, name):
    """The CA's certificate as a PEM file, for a client's --ca-bundle or a kubeconfig."""
    path = tmp_path_factory.mktemp("ca") / name
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def ca_file(certificate_authority, tmp_path_factory):
    return write_ca_file(certificate_authority, tmp_path_factory, "ca.pem")


@pytest.fixture
def receiver(certificate_authority, ca_file):
    server = Receiver(certificate_authority.issue_cert("127.0.0.1", "localhost"), ca_file)
    yield server
    server.close()


def collector_environment(extra=None):
    """The environment of a cron run: nothing of the developer's AFMETRICS_* settings leaks in."""
    # Nor the developer's proxy: the collectors honour it, as requests does, and the receiver is on loopback.
    proxies = {"https_proxy", "http_proxy", "all_proxy", "no_proxy"}
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AFMETRICS_", "KUBECONFIG")) and key.lower() not in proxies}
    env["AFMETRICS_CONFIG"] = ""  # never the machine's /etc/afmetrics/afmetrics.conf
    env["AFMETRICS_LOG_FILE"] = ""  # logs on stderr, where the tests read them
    env.update(extra or {})
    return env


def private_mounts(setup):
    """The argv prefix that runs a command (a collector, as cron runs it) in a mount namespace of its own, which no
    mount outlives, once the shell lines setup ran there (root; the command's environment reaches them)."""
    if os.geteuid() != 0:
        skip_or_fail("a private mount namespace needs root")
    return ["unshare", "-m", "--propagation", "private", "sh", "-euc", setup + '\nexec "$@"', "sh"]


@pytest.fixture
def small_file_system(tmp_path):
    """A real 256 KiB tmpfs on tmp_path/small for the test's time (root, as in CI)."""
    if os.geteuid() != 0:
        skip_or_fail("mounting a tmpfs needs root")
    path = tmp_path / "small"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "afmetrics-small", str(path)], check=True)
    yield path
    subprocess.run(["umount", str(path)], check=True)


def fill(directory):
    """Write a file in directory until its file system is full; the file."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        with pytest.raises(OSError, match="No space left on device"):
            while True:
                handle.write(b"\0" * 4096)
    return filler


def user_database(directory, passwd=(), group=()):
    """(argv prefix, environment) that run a collector with this host's /etc/passwd and /etc/group, the given
    lines added, bound over the real ones in a private mount namespace: glibc's getpwnam and getgrnam (the files
    backend) answer from them."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, lines in (("passwd", passwd), ("group", group)):
        files[name] = directory / name
        files[name].write_text(pathlib.Path("/etc", name).read_text() + "".join(line + "\n" for line in lines))
    setup = 'mount --bind "$AFM_PASSWD" /etc/passwd\nmount --bind "$AFM_GROUP" /etc/group'
    return private_mounts(setup), {"AFM_PASSWD": str(files["passwd"]), "AFM_GROUP": str(files["group"])}


def falling_back(moment):
    """A POSIX TZ whose daylight saving ends (UTC-5 to UTC-6, as in America/Chicago) half an hour before moment,
    which is then in the second of the two hours local time repeats; the rule starts daylight saving half a year
    before."""
    change = time.gmtime(moment - 1800 - 5 * 3600)  # the local time of the change, by the daylight clock
    day = change.tm_yday - 1  # POSIX TZ days count from 0
    return "CST6CDT,%d/0,%d/%02d:%02d:%02d" % ((day + 183) % 365, day, change.tm_hour, change.tm_min, change.tm_sec)


def local_time(moment, zone):
    """moment (seconds since the epoch) as the wall clock of zone (a TZ value) shows it, as date(1) tells."""
    return subprocess.run(["date", "-d", "@%d" % moment, "+%F %T"], capture_output=True, text=True, check=True,
                          env=dict(os.environ, TZ=zone)).stdout


# bob in /etc/passwd, outside afmgroup: a user the filter must look up, and leave out.
BOB_PASSWD = "bob:x:4402:4402::/nonexistent:/usr/sbin/nologin"


def group_filter_runs(system, collect, directory, users, *args, passwd=()):
    """(with_group, directory_down): functions running collect(*args, "-g", "afmgroup") against the batch system,
    the first with a group afmgroup of users in /etc/group (and the PASSWD lines in /etc/passwd: users outside the
    group the filter must know), the second with none, as getgrnam sees it with the user directory down
    (user_database)."""
    def runner(database):
        prefix, env = database
        return lambda: collect(*args, "-g", "afmgroup", prefix=prefix, env=dict(system.environment(), **env))
    return (runner(user_database(directory / "up", passwd, ["afmgroup:x:4400:" + ",".join(users)])),
            runner(user_database(directory / "down")))


def errors(done):
    """The ERROR and CRITICAL lines a collector logged."""
    return [line for line in log_lines(done.stderr) if line.startswith(("ERROR", "CRITICAL"))]


UNRESOLVED_GROUP = ("cannot be resolved (getgrnam: no such group, or the user directory is down): users cannot be "
                    "filtered")


@pytest.fixture
def sessions(tmp_path):
    """A real utmp file with alice and bob logged in."""
    return utmp.write(tmp_path / "utmp", utmp.login("alice", "pts/0", 60, 11), utmp.login("bob", "pts/1", 30, 12))


@pytest.fixture
def run_collector():
    """run_collector("host.py", "-d", ..., env={...}, cwd=..., prefix=[...]) -> CompletedProcess (text); prefix:
    what runs the collector (private_mounts)."""
    def run(script, *args, env=None, cwd=None, timeout=120, prefix=()):
        return subprocess.run(list(prefix) + [sys.executable, str(COLLECTORS / script)] + [str(arg) for arg in args],
                              capture_output=True, text=True, env=collector_environment(env),
                              cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL)
    return run


def batch_collector(system, script, receiver, run_collector, directory, token, cluster):
    """run(*args, script=SCRIPT, state=None, env=None, prefix=()): the batch collector (or the umbrella) against a
    real batch system (condor_pool, slurm_cluster), delivering to the receiver; returns (CompletedProcess, the
    documents this run delivered, seconds it took)."""
    receiver.tokens.add(token)

    def run(*args, script=script, state=None, env=None, prefix=()):
        before = len(receiver.documents)
        started = time.monotonic()
        done = run_collector(script, "-t", token, "-c", cluster, "-u", receiver.url, "--ca-bundle",
                             receiver.ca_file, "--state-dir", state or directory / "state", *args,
                             env=env or system.environment(), cwd=directory, prefix=prefix)
        return done, receiver.documents[before:], time.monotonic() - started
    return run


def indexed(receiver, documents):
    """Whether the endpoint's index holds each of documents as it was sent, without its token, and nothing went
    to its issues file."""
    held = [{key: value for key, value in event.items() if not key.startswith("@")} for event in receiver.index]
    return receiver.issues == [] and all({key: value for key, value in document.items() if key != "token"} in held
                                         for document in documents)


def of_kind(documents, kind):
    return [document for document in documents if document["kind"] == kind]


def jobs_by_id_of_kind(documents, kind):
    """{Id: document} of the job documents of that kind; a job twice in one run fails the test."""
    jobs = of_kind(documents, kind)
    ids = [job["Id"] for job in jobs]
    assert len(ids) == len(set(ids)), "a job reported twice in one run: %s" % sorted(ids)
    return {job["Id"]: job for job in jobs}


pytest_plugins = ["k8s_standin", "condor_pool", "slurm_cluster", "proxy", "promtool"]


@pytest.fixture(scope="module")
def checkout_copy(tmp_path_factory):
    """The checkout's tracked files as they are now (symlinks as symlinks), in a new directory: what runs there
    leaves the checkout alone."""
    copy = tmp_path_factory.mktemp("checkout")
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    for name in filter(None, listed.stdout.split("\0")):
        if (REPO / name).is_symlink() or (REPO / name).is_file():  # not a file deleted and not yet committed
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name, follow_symlinks=False)
    return copy
