"""The role as the Ansible collection atlas_analytics.afmetrics (galaxy.yml, `make collection`).

The collection `make collection` builds is installed with ansible-galaxy into a collections path of its own, as a
site's controller installs it without this checkout, and a site's playbook that names the role by its full name
passes ansible-playbook's syntax check there, and the role's filters are the collection's. The role takes the
collectors and requirements files from its collection's root: the collection must carry the checkout's own.
ansible-galaxy and ansible-playbook are requirements-ansible.txt's, which `make unit` installs. About 10 s.
"""
import filecmp
import os
import pathlib
import re
import subprocess
import sys
import tarfile

import pytest
import yaml

import afmetrics_common as common
from conftest import COLLECTORS, REPO

BIN = pathlib.Path(sys.executable).parent
ROLE = "atlas_analytics.afmetrics.afmetrics_collector"
SITE_PLAYBOOK = """---
- name: Deploy the afmetrics collectors
  hosts: login_nodes
  become: true
  gather_facts: false
  roles:
    - role: %s
""" % ROLE


def ansible(tool, *args, cwd, env=None):
    """An ansible command of this venv, away from the checkout's roles/ and ansible.cfg."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    environment.update({"ANSIBLE_ROLES_PATH": str(cwd / "roles"), "ANSIBLE_NOCOLOR": "1"}, **(env or {}))
    for variable in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):  # when pytest runs under `make unit`
        environment.pop(variable, None)
    return subprocess.run([str(BIN / tool)] + [str(arg) for arg in args], capture_output=True, text=True,
                          env=environment, cwd=cwd, timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The collection tarball `make collection` builds from the checkout as it is now."""
    directory = tmp_path_factory.mktemp("dist")
    done = subprocess.run(["make", "-s", "-C", REPO, "VENV=%s" % sys.prefix, "-o%s/.installed-ansible" % sys.prefix,
                           "collection", "COLLECTION_DIR=%s" % directory], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL,
                          env={key: value for key, value in os.environ.items() if not key.startswith("MAKE")})
    assert done.returncode == 0, done.stdout + done.stderr
    [tarball] = directory.glob("*.tar.gz")
    return tarball


@pytest.fixture(scope="module")
def site(built, tmp_path_factory):
    """A site's Ansible directory: the collection installed into its collections path, its playbook beside."""
    directory = tmp_path_factory.mktemp("site")
    collections = directory / "installed"  # not "collections", which Ansible searches beside a playbook
    done = ansible("ansible-galaxy", "collection", "install", "--force", "-p", collections, built, cwd=directory,
                   env={"ANSIBLE_COLLECTIONS_PATH": str(collections)})  # not another copy on the machine's paths
    assert done.returncode == 0, done.stdout + done.stderr
    (directory / "site.yml").write_text(SITE_PLAYBOOK)
    (directory / "hosts.yml").write_text("login_nodes:\n  hosts:\n    node1.example.edu:\n")
    return directory


def test_the_collection_is_named_and_versioned_as_galaxy_yml_and_the_collectors_say(built):
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    assert built.name == "atlas_analytics-afmetrics-%s.tar.gz" % common.__version__
    assert (galaxy["namespace"], galaxy["name"], galaxy["version"]) == ("atlas_analytics", "afmetrics",
                                                                        common.__version__)


def test_the_collection_carries_the_role_the_collectors_and_the_pins_and_no_tests(built):
    with tarfile.open(built) as archive:
        names = set(archive.getnames())
    collectors = {"collectors/" + path.name for path in COLLECTORS.iterdir() if path.is_file()}
    assert collectors <= names
    assert {"requirements.txt", "requirements-jupyter.txt", "roles/afmetrics_collector/tasks/install.yml",
            "roles/afmetrics_collector/meta/argument_specs.yml", "meta/runtime.yml"} <= names
    assert not [name for name in names if re.match(r"(tests|molecule|bench|\.venv|\.git)(/|$)", name)]
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def test_the_installed_collection_holds_the_checkouts_collectors(site):
    root = site / "installed" / "ansible_collections" / "atlas_analytics" / "afmetrics"
    # The role's afmetrics_source_dir, {{ role_path }}/../.., is the collection's root there.
    assert (root / "roles" / "afmetrics_collector" / ".." / ".." / "collectors").resolve() == root / "collectors"
    names = [path.name for path in COLLECTORS.iterdir() if path.is_file()]
    match, mismatch, errors = filecmp.cmpfiles(COLLECTORS, root / "collectors", names, shallow=False)
    assert (mismatch, errors) == ([], [])
    for name in ("requirements.txt", "requirements-jupyter.txt"):
        assert (root / name).read_text() == (REPO / name).read_text()


def test_a_sites_playbook_names_the_role_by_its_full_name(site):
    done = ansible("ansible-playbook", "--syntax-check", "-i", "hosts.yml", "site.yml", cwd=site,
                   env={"ANSIBLE_COLLECTIONS_PATH": str(site / "installed")})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "playbook: site.yml" in done.stdout
    done = ansible("ansible-doc", "-t", "role", ROLE, cwd=site, env={"ANSIBLE_COLLECTIONS_PATH": str(site / "installed")})
    assert done.returncode == 0 and "afmetrics_pip_wheels" in done.stdout, done.stderr


def role_filters():
    """The filters the role's filter_plugins/ define (FilterModule.filters: {"NAME": function})."""
    return sorted({name for path in (REPO / "roles" / "afmetrics_collector" / "filter_plugins").glob("*.py")
                   for name in re.findall(r'"(afmetrics_\w+)": afmetrics_\w+', path.read_text())})


def test_the_collection_has_the_roles_filters(site):
    """A role in a collection loads no filter_plugins/ of its own: its filters must be the collection's
    (plugins/filter, a link to the role's directory), found there by their full names."""
    assert len(role_filters()) >= 9
    # Called on nothing: a filter may refuse that input, but it must be found.
    tasks = "".join('    - ansible.builtin.debug:\n        msg: "{{ none | %s.%s }}"\n      ignore_errors: true\n'
                    % (ROLE.rsplit(".", 1)[0], name) for name in role_filters())
    (site / "filters.yml").write_text("---\n- name: Filters\n  hosts: localhost\n  gather_facts: false\n"
                                      "  tasks:\n" + tasks)
    done = ansible("ansible-playbook", "-c", "local", "-i", "localhost,", "filters.yml", cwd=site,
                   env={"ANSIBLE_COLLECTIONS_PATH": str(site / "installed")})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No filter named" not in done.stdout + done.stderr, done.stdout
    assert len(re.findall(r"^TASK \[", done.stdout, re.M)) == len(role_filters())


def test_a_git_url_installs_the_same_collection(checkout_copy, site, tmp_path):
    """git+URL,VERSION: ansible-galaxy clones the repository and builds the collection from its galaxy.yml."""
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@example.edu", "commit", "-q", "-m", "release"]):
        done = subprocess.run(["git", "-C", str(checkout_copy)] + argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    installed = tmp_path / "installed"
    done = ansible("ansible-galaxy", "collection", "install", "--force", "-p", installed,
                   "git+file://%s/.git,main" % checkout_copy, cwd=tmp_path, env={"ANSIBLE_COLLECTIONS_PATH": str(installed)})
    assert done.returncode == 0, done.stdout + done.stderr
    from_git = installed / "ansible_collections" / "atlas_analytics" / "afmetrics"
    from_file = site / "installed" / "ansible_collections" / "atlas_analytics" / "afmetrics"
    assert sorted(path.relative_to(from_git) for path in from_git.rglob("*") if path.name != "MANIFEST.json") == \
        sorted(path.relative_to(from_file) for path in from_file.rglob("*") if path.name != "MANIFEST.json")


def test_without_the_collection_the_playbook_does_not_find_the_role(site, tmp_path):
    done = ansible("ansible-playbook", "--syntax-check", "-i", "hosts.yml", "site.yml", cwd=site,
                   env={"ANSIBLE_COLLECTIONS_PATH": str(tmp_path)})
    assert done.returncode != 0
    assert ROLE in done.stdout + done.stderr
