"""pip packaging and the first run.

The wheel that `pip install .` builds (made by `make wheel`, mk/package.mk) is installed into a fresh venv with
its dependencies from the package index, as a site would, and every command it installs runs in debug mode
there, away from the checkout. `make run` runs on this machine as a newcomer's would, with and without condor_q
and a way into Kubernetes, and with EL9's Python 3.9 in a copy of the checkout (its own .venv, only the runtime
dependencies), where `make wheel` runs too. About 50 s, most of it pip installing requests, psutil and kubernetes
into the new venvs. AFMETRICS_PACKAGE_PYTHON names another interpreter for the wheel's venv (e.g. a Python 3.9).
"""
import configparser
import email.parser
import os
import pathlib
import re
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement

import afmetrics_commands
import afmetrics_common as common
from conftest import CAPTURES, COLLECTORS, REPO, collector_environment, json_lines, log_lines, skip_or_fail

# The interpreter of the fresh venv: this one unless told otherwise.
PACKAGE_PYTHON = os.environ.get("AFMETRICS_PACKAGE_PYTHON") or sys.executable
# pool-down: condor_q and condor_history as a real HTCondor 25 answers when the collector cannot reach the pool.
POOL_DOWN = CAPTURES / "sid-htcondor-25.14.1" / "pool-down"
POOL_DOWN_TOOLS = {"condor_q": "q_all_af", "condor_history": "history_completedsince_af"}
SKIPPED_BATCH = "make run: batch skipped: no condor_q on PATH"
SKIPPED_SLURM = "make run: slurm skipped: no squeue on PATH"
SKIPPED_JUPYTER = ("make run: jupyter skipped: no kubeconfig ($KUBECONFIG, ~/.kube/config) "
                   "and no in-cluster service account")


def collector_scripts():
    """NAME of every collector script collectors/NAME.py: the modules that run script_main when run."""
    return sorted(path.stem for path in COLLECTORS.glob("*.py")
                  if "common.script_main(sys.modules[__name__])" in path.read_text())


def run(argv, env=None, cwd=None, timeout=120):
    return subprocess.run([str(arg) for arg in argv], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def requirement_lines(path):
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def applying(requirements, python, extra=""):
    """The (name, version specifier) pairs that REQUIREMENTS install on PYTHON with EXTRA asked for."""
    environment = {"python_version": python, "python_full_version": python + ".0", "extra": extra}
    return {(req.name, str(req.specifier)) for req in requirements
            if req.marker is None or req.marker.evaluate(environment)}


def replay_tools(directory, captures, names):
    """Commands on PATH that print a real captured reply: {command: capture name in CAPTURES}."""
    directory.mkdir(parents=True)
    for tool, name in names.items():
        base = captures / name
        script = directory / tool
        script.write_text("#!/bin/sh\ncat '%s.stdout'; cat '%s.stderr' >&2; exit $(cat '%s.rc')\n"
                          % (base, base, base))
        script.chmod(0o755)
    return directory


def path_without(command, *first):
    """This PATH less the directories that hold COMMAND, after the directories FIRST."""
    kept = [entry for entry in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
            if entry and not os.path.exists(os.path.join(entry, command))]
    return os.pathsep.join([str(entry) for entry in first] + kept)


def kinds(path):
    return [document["kind"] for document in json_lines(path)]


# --- the wheel ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel `make wheel` builds from the checkout as it is now."""
    directory = tmp_path_factory.mktemp("dist")
    done = make("wheel", "WHEEL_DIR=%s" % directory, env=dict(os.environ))
    assert done.returncode == 0, done.stdout + done.stderr
    wheels = list(directory.glob("afmetrics-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def wheel_file(wheel, name):
    with zipfile.ZipFile(wheel) as archive:
        return archive.read("afmetrics-%s.dist-info/%s" % (common.__version__, name)).decode()


def test_every_collector_script_and_the_umbrella_have_a_command(wheel):
    assert {"ssh", "condor", "slurm", "jupyter", "host"} <= set(collector_scripts())
    expected = {"afmetrics_collector": "afmetrics.afmetrics_commands:collector"}
    expected.update(("afmetrics_" + name, "afmetrics.afmetrics_commands:" + name) for name in collector_scripts())
    entry_points = configparser.ConfigParser(delimiters=("=",))
    entry_points.optionxform = str
    entry_points.read_string(wheel_file(wheel, "entry_points.txt"))
    assert dict(entry_points["console_scripts"]) == expected, "pyproject.toml's [project.scripts]"
    for name in collector_scripts():
        assert callable(getattr(afmetrics_commands, name, None)), "collectors/afmetrics_commands.py has no %s()" % name


def test_the_wheel_holds_the_collectors_as_the_package_afmetrics(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    top_level = wheel_file(wheel, "top_level.txt").split()
    expected = {"afmetrics/" + path.name for path in COLLECTORS.glob("*.py")}
    expected |= {"afmetrics/afmetrics_collector", "afmetrics/afmetrics.conf.example"}
    assert {name for name in names if not name.startswith("afmetrics-")} == expected
    assert top_level == ["afmetrics"]  # no top-level ssh, host, condor or jupyter module beside other packages'


def test_the_wheel_depends_on_what_the_requirements_files_pin(wheel):
    metadata = email.parser.Parser().parsestr(wheel_file(wheel, "METADATA"))
    assert metadata["Name"] == "afmetrics" and metadata["Version"] == common.__version__
    assert metadata["Requires-Python"] == ">=3.9"
    assert metadata.get_all("Provides-Extra") == ["jupyter"]
    declared = [Requirement(line) for line in metadata.get_all("Requires-Dist")]
    runtime = requirement_lines(REPO / "requirements.txt")
    jupyter = requirement_lines(REPO / "requirements-jupyter.txt")
    for python in ("3.9", "3.11", "3.13"):
        assert applying(declared, python) == applying(runtime, python)
        assert applying(declared, python, "jupyter") == applying(runtime + jupyter, python)
        assert not any(name == "kubernetes" for name, _ in applying(declared, python))


# --- the wheel installed into a fresh venv ------------------------------------------------------------------

@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A fresh venv holding the wheel with its jupyter extra, installed from the wheel and the package index."""
    directory = tmp_path_factory.mktemp("venv") / "venv"
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")}
    done = run([PACKAGE_PYTHON, "-m", "venv", directory], env=env)
    assert done.returncode == 0, done.stderr
    done = run([directory / "bin" / "python", "-m", "pip", "install", "-q", "%s[jupyter]" % wheel], env=env,
               timeout=600)
    assert done.returncode == 0, done.stderr
    return directory


def command(venv, *argv, env=None, cwd=None):
    """Run an installed command by its name, found on PATH as an admin's shell finds it."""
    extra = {"PATH": "%s:/usr/bin:/bin" % (venv / "bin")}
    extra.update(env or {})
    return run(argv, env=collector_environment(extra), cwd=cwd)


def test_the_commands_run_the_installed_copy(venv, tmp_path):
    done = run([venv / "bin" / "python", "-c",
                "import importlib.util, afmetrics.afmetrics_commands as c; "
                "print(c.HERE); print([importlib.util.find_spec(m) for m in ('ssh', 'host', 'condor', 'jupyter')])"],
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    here, specs = done.stdout.splitlines()
    assert pathlib.Path(here).is_relative_to(venv) and pathlib.Path(here, "afmetrics_collector").is_file()
    assert specs == "[None, None, None, None]"  # nothing installed as a top-level module
    for name in ["afmetrics_collector"] + ["afmetrics_" + name for name in collector_scripts()]:
        assert (venv / "bin" / name).is_file(), name


def test_afmetrics_collector_writes_the_debug_documents(venv, sessions, tmp_path):
    done = command(venv, "afmetrics_collector", "-d", "-v", "-s", "--host", "--utmp", sessions, "--disk", "/",
                   "-c", "UC-AF", "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [document] = json_lines(tmp_path / "ssh.json")
    assert document == {"token": "", "kind": "ssh", "cluster": "UC-AF", "login_node": document["login_node"],
                        "ssh_user_count": 2, "users": ["alice", "bob"]}
    assert kinds(tmp_path / "host.json") == ["CPU", "MEM", "DISK"]  # NETWORK and DISK I/O: first run, baseline


def test_afmetrics_ssh_and_afmetrics_host(venv, sessions, tmp_path):
    done = command(venv, "afmetrics_ssh", "-d", "--utmp", sessions, "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [document["users"] for document in json_lines(tmp_path / "ssh.json")] == [["alice", "bob"]]
    done = command(venv, "afmetrics_host", "-d", "--disk", "/", "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert kinds(tmp_path / "host.json") == ["CPU", "MEM", "DISK"]


def test_afmetrics_condor_runs_condor_q(venv, tmp_path):
    tools = replay_tools(tmp_path / "bin", POOL_DOWN, POOL_DOWN_TOOLS)
    done = command(venv, "afmetrics_condor", "-d", "-q", "all:", "--state-dir", tmp_path / "state", cwd=tmp_path,
                   env={"PATH": "%s:%s:/usr/bin:/bin" % (tools, venv / "bin")})
    assert done.returncode == 1
    errors = [line for line in log_lines(done.stderr) if line.startswith("ERROR")]
    assert len(errors) == 1 and errors[0].startswith("ERROR:condor:") and "condor_q" in errors[0], done.stderr


def test_afmetrics_jupyter_with_the_jupyter_extra(venv, kubernetes_api, tmp_path):
    kubernetes_api.allow("reader-token", "reader", ["af-jupyter", "coffea-casa"])
    kubernetes_api.add_pod("af-jupyter", "jupyter-1", {"owner": "zoe"}, "Running")
    kubernetes_api.add_pod("af-jupyter", "jupyter-2", {"owner": "alice"}, "Pending")
    kubeconfig = kubernetes_api.write_kubeconfig(tmp_path / "kubeconfig", "reader-token")
    done = command(venv, "afmetrics_jupyter", "-d", "-c", "UC-AF", "--kubeconfig", kubeconfig,
                   "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json_lines(tmp_path / "jupyter.json") == [
        {"token": "", "kind": "jupyter-ml", "cluster": "UC-AF", "jupyter_user_count": 2, "users": ["alice", "zoe"]},
        {"token": "", "kind": "jupyter-coffea", "cluster": "UC-AF", "jupyter_user_count": 0, "users": []}]


@pytest.mark.parametrize("name", ["afmetrics_collector", "afmetrics_ssh", "afmetrics_condor", "afmetrics_slurm",
                                  "afmetrics_jupyter", "afmetrics_host"])
def test_every_command_has_help_and_version(venv, name, tmp_path):
    helped = command(venv, name, "--help", cwd=tmp_path)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: "), helped.stderr
    assert "--state-dir" in helped.stdout
    versioned = command(venv, name, "--version", cwd=tmp_path)
    assert (versioned.returncode, versioned.stdout.strip()) == (0, "afmetrics " + common.__version__)


# --- make run -----------------------------------------------------------------------------------------------

def make(*args, env, checkout=REPO, timeout=300):
    """make TARGET... in CHECKOUT; in the checkout itself with this test run's venv, which must not be rebuilt
    from in here."""
    for variable in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):  # when pytest runs under `make unit`
        env.pop(variable, None)
    argv = ["make", "-s", "-C", checkout]
    if checkout == REPO:
        argv += ["VENV=%s" % sys.prefix]
        argv += ["-o%s" % (pathlib.Path(sys.prefix) / stamp) for stamp in (".installed", ".installed-run")]
    return run(argv + list(args), env=env, timeout=timeout)


def newcomer_environment(tmp_path, path=None, env=None):
    """A newcomer's shell without HTCondor or Kubernetes, unless PATH or ENV add them."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    environment = collector_environment()
    for variable in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):  # as when not in a pod
        environment.pop(variable, None)
    environment.update({"HOME": str(home), "PATH": path or path_without("condor_q")}, **(env or {}))
    return environment


def make_run(tmp_path, path=None, env=None, checkout=REPO, python=None):
    """`make run` as a newcomer runs it, documents in TMP_PATH/run; PYTHON makes the venv of a fresh CHECKOUT."""
    args = ["run", "RUN_DIR=%s" % (tmp_path / "run"), "KUBERNETES_SERVICEACCOUNT=%s" % (tmp_path / "serviceaccount")]
    return make(*args + (["PYTHON=%s" % python] if python else []), env=newcomer_environment(tmp_path, path, env),
                checkout=checkout, timeout=900)


def test_make_run_without_htcondor_or_kubernetes_says_what_it_skipped_and_exits_0(tmp_path):
    done = make_run(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[:3] == [SKIPPED_BATCH, SKIPPED_SLURM, SKIPPED_JUPYTER]
    assert "Error" not in done.stderr and "ERROR" not in done.stderr
    assert kinds(tmp_path / "run" / "ssh.json") == ["ssh"]
    assert kinds(tmp_path / "run" / "host.json")[:2] == ["CPU", "MEM"]
    assert sorted(path.name for path in (tmp_path / "run").glob("*.json")) == ["host.json", "ssh.json"]


def test_make_run_fails_when_a_collector_that_can_run_fails(tmp_path):
    tools = replay_tools(tmp_path / "bin", POOL_DOWN, POOL_DOWN_TOOLS)
    done = make_run(tmp_path, path=path_without("condor_q", tools))
    assert done.returncode != 0
    assert SKIPPED_BATCH not in done.stdout and SKIPPED_JUPYTER in done.stdout
    assert "ERROR:condor:" in done.stderr and "Error 1" in done.stderr
    assert kinds(tmp_path / "run" / "ssh.json") == ["ssh"]  # the others still ran


def test_make_run_collects_slurm_where_squeue_is_on_path(slurm_cluster, tmp_path):
    done = make_run(tmp_path, path=path_without("condor_q", slurm_cluster.bin))
    assert done.returncode == 0, done.stdout + done.stderr
    assert SKIPPED_SLURM not in done.stdout and SKIPPED_BATCH in done.stdout
    assert re.search(r"INFO:slurm:collected \d+ document\(s\)", done.stderr), done.stderr


@pytest.mark.parametrize("access", ["KUBECONFIG", "~/.kube/config", "in-cluster"])
def test_make_run_collects_jupyter_where_kubernetes_is_reachable(access, kubernetes_api, tmp_path):
    kubernetes_api.allow("reader-token", "reader", ["af-jupyter", "coffea-casa"])
    kubernetes_api.add_pod("af-jupyter", "jupyter-1", {"owner": "zoe"}, "Running")
    env = {}
    if access == "KUBECONFIG":
        env["KUBECONFIG"] = str(kubernetes_api.write_kubeconfig(tmp_path / "kubeconfig", "reader-token"))
    elif access == "~/.kube/config":
        (tmp_path / "home" / ".kube").mkdir(parents=True)
        kubernetes_api.write_kubeconfig(tmp_path / "home" / ".kube" / "config", "reader-token")
    else:
        kubernetes_api.write_serviceaccount(tmp_path / "serviceaccount", "reader-token")
        env.update(kubernetes_api.in_cluster_environment())
    done = make_run(tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == SKIPPED_BATCH and SKIPPED_JUPYTER not in done.stdout
    assert [document["users"] for document in json_lines(tmp_path / "run" / "jupyter.json")] == [["zoe"], []]
    assert kinds(tmp_path / "run" / "ssh.json") == ["ssh"]


# --- make run and make wheel on EL9's Python 3.9 ------------------------------------------------------------

@pytest.fixture(scope="module")
def python39():
    """The Python 3.9 that mk/py39.mk finds (PYTHON39, as `make test-py39` uses it), by its real path: a pyenv
    shim needs the HOME that make_run replaces."""
    found = make("python39", env=dict(os.environ)).stdout.strip()
    if not found:
        skip_or_fail("no Python 3.9 on this machine (set PYTHON39)")
    return run([found, "-c", "import sys; print(sys.executable)"]).stdout.strip()


def test_make_run_and_make_wheel_on_python_3_9_need_only_the_runtime_dependencies(python39, checkout_copy,
                                                                                   tmp_path):
    done = make_run(tmp_path, checkout=checkout_copy, python=python39)
    assert done.returncode == 0, done.stdout + done.stderr
    assert kinds(tmp_path / "run" / "ssh.json") == ["ssh"]
    venv_python = checkout_copy / ".venv" / "bin" / "python"
    imported = run([venv_python, "-c", "import sys, requests, psutil, kubernetes, escapism; print(sys.version_info[:2]);"
                    "import pytest"])
    assert imported.stdout.strip() == "(3, 9)"
    assert "No module named 'pytest'" in imported.stderr  # pytest 9 of requirements-dev.txt needs Python 3.10
    done = make("wheel", "WHEEL_DIR=%s" % (tmp_path / "dist"), env=newcomer_environment(tmp_path),
                checkout=checkout_copy)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [path.name for path in (tmp_path / "dist").iterdir()] == [
        "afmetrics-%s-py3-none-any.whl" % common.__version__]
    planned = make("-n", "unit", env=newcomer_environment(tmp_path), checkout=checkout_copy)
    assert "pip install -q -r requirements-dev.txt" in planned.stdout  # `make test` installs its tools itself
