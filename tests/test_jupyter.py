"""jupyter.py end to end, run as cron runs it, against the HTTPS Kubernetes API stand-in (tests/k8s_standin.py).

The same scenarios run against a real kube-apiserver in test_jupyter_real.py (make test-real).
"""
import hashlib
import json
import os
import signal
import socket
import time

import psutil
import pytest
import requests

from conftest import json_lines, log_lines
from k8s_standin import parse_label_selector, SelectorError

READER = "reader-token-7f3a"  # may list pods in both namespaces
NO_RIGHTS = "nobody-token-19c2"  # authenticated, but bound to no role
ML_NAMESPACE, COFFEA_NAMESPACE = "af-jupyter", "coffea-casa"
COFFEA_LABEL = "jhub_user"  # the label the old tool reads on coffea-casa's pods
# (namespace, pod, labels, phase): pod names sort in another order than their owners, owners repeat,
# and some pods have finished or carry no owner label.
PODS = [
    (ML_NAMESPACE, "jupyter-1", {"owner": "zoe"}, "Running"),
    (ML_NAMESPACE, "jupyter-2", {"owner": "alice"}, "Pending"),
    (ML_NAMESPACE, "jupyter-3", {"owner": "alice"}, "Running"),
    (ML_NAMESPACE, "jupyter-4", {"owner": "bob"}, "Succeeded"),
    (ML_NAMESPACE, "jupyter-5", {"owner": "carol"}, "Failed"),
    (ML_NAMESPACE, "jupyter-6", {"owner": "dave"}, "Unknown"),  # node lost: the user may still be there
    (ML_NAMESPACE, "hub-5d8c", {"component": "hub"}, "Running"),
    (COFFEA_NAMESPACE, "jupyter-alice", {COFFEA_LABEL: "alice"}, "Running"),
    (COFFEA_NAMESPACE, "jupyter-frank", {COFFEA_LABEL: "frank", "owner": "not-this-label"}, "Pending"),
    (COFFEA_NAMESPACE, "jupyter-gina", {COFFEA_LABEL: "gina"}, "Succeeded"),
    (COFFEA_NAMESPACE, "dask-scheduler", {"app": "dask"}, "Running"),
]
ML_USERS = ["alice", "dave", "zoe"]
COFFEA_USERS = ["alice", "frank"]
# A Zero-to-JupyterHub hub, its pods as KubeSpawner makes them (jupyterhub/kubespawner, kubespawner/spawner.py:
# _build_pod_labels, _build_common_annotations): the user name escaped in the label, as it is in the annotation of
# the same key. (namespace, pod, labels, phase, annotations).
Z2JH_NAMESPACE = "jhub"
KUBESPAWNER_LABEL = "hub.jupyter.org/username"
Z2JH_SERVICE = "z2jh:%s:%s" % (Z2JH_NAMESPACE, KUBESPAWNER_LABEL)


def kubespawner_labels(label, server=""):
    return {KUBESPAWNER_LABEL: label, "component": "singleuser-server", "app": "jupyterhub",
            "hub.jupyter.org/servername": server}


Z2JH_PODS = [
    # Before KubeSpawner 7.0 the label escapes "_" as -5f; a second, named server of the same user.
    (Z2JH_NAMESPACE, "jupyter-test-5fuser", kubespawner_labels("test-5fuser"), "Running",
     {KUBESPAWNER_LABEL: "test_user"}),
    (Z2JH_NAMESPACE, "jupyter-test-5fuser--gpu", kubespawner_labels("test-5fuser", "gpu"), "Pending",
     {KUBESPAWNER_LABEL: "test_user", "hub.jupyter.org/servername": "gpu"}),
    # 7.0's label of a name that does not fit one: cut and hashed, which no one can undo.
    (Z2JH_NAMESPACE, "jupyter-erin-cern-ch---5c2a1f0e", kubespawner_labels("erin-cern-ch---5c2a1f0e"), "Running",
     {KUBESPAWNER_LABEL: "Erin@cern.ch"}),
    (Z2JH_NAMESPACE, "jupyter-alice", kubespawner_labels("alice"), "Running", {KUBESPAWNER_LABEL: "alice"}),
    (Z2JH_NAMESPACE, "jupyter-bob", kubespawner_labels("bob"), "Succeeded", {KUBESPAWNER_LABEL: "bob"}),
    # Only the label (a spawner older than the annotation, 0.9): escapism's escape undone.
    (Z2JH_NAMESPACE, "jupyter-dave-5fx", kubespawner_labels("dave-5fx"), "Running", None),
    (Z2JH_NAMESPACE, "hub-7b9f", {"component": "hub", "app": "jupyterhub"}, "Running", None),
]
Z2JH_USERS = ["Erin@cern.ch", "alice", "dave_x", "test_user"]
BOTH_SERVICES = ["--service", "ml:%s:owner" % ML_NAMESPACE, "--service", "coffea:%s:%s" % (COFFEA_NAMESPACE,
                                                                                           COFFEA_LABEL)]
# One service: the tests of how a failure reads want one error line.
ML_ONLY = ["--service", "ml:%s:owner" % ML_NAMESPACE]
# What the old tool's -j sends (maniaclab/afmetrics_collector src/afmetrics_collector/skeleton.py): jupyter-ml,
# the af-jupyter pods' owner label, then jupyter-coffea, the coffea-casa pods' jhub_user label; each users list as
# its get_jupyter_users() makes it, the label's distinct values (written out here, not imported).
OLD_TOOL_JUPYTER = [("jupyter-ml", ML_NAMESPACE, "owner"), ("jupyter-coffea", COFFEA_NAMESPACE, "jhub_user")]


def old_tool_users(namespace, label):
    """The old tool's users of a namespace: the label's distinct values on its pods (it listed finished ones too;
    ours leave them out, one of the differences docs/migrating.md lists)."""
    return sorted({labels[label] for space, _, labels, phase in PODS
                   if space == namespace and label in labels and phase not in ("Succeeded", "Failed")})


@pytest.fixture
def api(kubernetes_api):
    kubernetes_api.allow(NO_RIGHTS, "nobody")
    kubernetes_api.allow(READER, "reader", [ML_NAMESPACE, COFFEA_NAMESPACE, Z2JH_NAMESPACE])
    for pod in PODS + Z2JH_PODS:
        kubernetes_api.add_pod(*pod)
    return kubernetes_api


def debug_documents(directory):
    return json_lines(directory / "jupyter.json")


def the_error(done):
    """The one log line of a failed run (no -v: nothing else is logged)."""
    assert done.returncode == 1, done.stderr
    lines = log_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("ERROR:jupyter:"), lines
    return lines[0]


# --- configuration: kubeconfig, $KUBECONFIG, in-cluster ---------------------------------------------------------
def test_kubeconfig_with_a_token_reports_both_services_of_the_old_tools_j(api, run_jupyter, tmp_path):
    done = run_jupyter("--kubeconfig", api.write_kubeconfig(tmp_path / "kubeconfig", READER))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert debug_documents(tmp_path) == [
        {"kind": kind, "cluster": "UC-AF", "token": "", "jupyter_user_count": len(old_tool_users(namespace, label)),
         "users": old_tool_users(namespace, label)} for kind, namespace, label in OLD_TOOL_JUPYTER]
    assert [d["users"] for d in debug_documents(tmp_path)] == [ML_USERS, COFFEA_USERS]
    # One call a service: the label selector leaves the hub and other pods to the API.
    assert [(r["path"], r["query"], r["authorization"]) for r in api.requests] == [
        ("/api/v1/namespaces/%s/pods" % namespace, {"labelSelector": [label]}, "Bearer " + READER)
        for _, namespace, label in OLD_TOOL_JUPYTER]


def test_kubeconfig_from_the_environment(api, run_jupyter, tmp_path):
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", READER)
    done = run_jupyter(env={"KUBECONFIG": str(kubeconfig)})
    assert done.returncode == 0, done.stderr
    assert debug_documents(tmp_path)[0]["users"] == ML_USERS


def test_kubeconfig_option_wins_over_the_environment(api, run_jupyter, tmp_path):
    refused = api.write_kubeconfig(tmp_path / "nobody.kubeconfig", NO_RIGHTS)
    done = run_jupyter("--kubeconfig", api.write_kubeconfig(tmp_path / "kubeconfig", READER),
                       env={"KUBECONFIG": str(refused)})
    assert done.returncode == 0, done.stderr
    assert debug_documents(tmp_path)[0]["users"] == ML_USERS


def test_in_cluster_service_account(api, run_jupyter, tmp_path):
    account = api.write_serviceaccount(tmp_path / "serviceaccount", READER)
    done = run_jupyter("--serviceaccount-dir", account, env=api.in_cluster_environment())
    assert done.returncode == 0, done.stderr
    assert debug_documents(tmp_path)[0]["users"] == ML_USERS
    # The client's in-cluster loader writes the scheme in lower case, which the API accepts.
    assert api.requests[0]["authorization"] == "bearer " + READER


def test_neither_kubeconfig_nor_in_cluster_is_a_one_line_error(run_jupyter, tmp_path):
    error = the_error(run_jupyter("--serviceaccount-dir", tmp_path / "no-such-dir"))
    assert error.startswith("ERROR:jupyter:cannot load in-cluster config (no KUBECONFIG set): ")


def test_malformed_kubeconfig_is_a_one_line_error(run_jupyter, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("clusters: [unclosed\n")
    error = the_error(run_jupyter("--kubeconfig", kubeconfig))
    assert error.startswith("ERROR:jupyter:cannot load kubeconfig %s: " % kubeconfig)


def with_exec_plugin(kubeconfig, script):
    """The kubeconfig with its user's credential from an exec plugin, sh -c SCRIPT, as sites get one from a
    credential helper (kubelogin, aws eks get-token)."""
    config = json.loads(kubeconfig.read_text())
    config["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "sh",
                                           "args": ["-c", script], "interactiveMode": "Never"}}
    kubeconfig.write_text(json.dumps(config))
    return kubeconfig


def exec_credential(token):
    return json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                       "status": {"token": token}})


def test_credential_from_an_exec_plugin(api, run_jupyter, tmp_path):
    kubeconfig = with_exec_plugin(api.write_kubeconfig(tmp_path / "kubeconfig", ""),
                                  "echo '%s'" % exec_credential(READER))
    done = run_jupyter("--kubeconfig", kubeconfig)
    assert done.returncode == 0, done.stderr
    assert debug_documents(tmp_path)[0]["users"] == ML_USERS


def test_credential_about_to_expire_is_not_asked_for_again(api, run_jupyter, tmp_path):
    """The client runs the plugin again, with no time limit, before a call when the credential expires within 5
    minutes; a run lasts seconds and keeps the one it has. The plugin here would answer only once."""
    expiring = json.loads(exec_credential(READER))
    expiring["status"]["expirationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    asked, again = tmp_path / "asked", tmp_path / "asked-again.pid"
    kubeconfig = with_exec_plugin(api.write_kubeconfig(tmp_path / "kubeconfig", ""), (
        "if [ -e {asked} ]; then echo $$ > {again}; exec sleep 600; fi; touch {asked}; echo '{credential}'"
        .format(asked=asked, again=again, credential=json.dumps(expiring))))
    try:
        done = run_jupyter("--kubeconfig", kubeconfig, "--timeout", "10")
    finally:
        if again.exists():
            os.kill(int(again.read_text()), signal.SIGKILL)
    assert done.returncode == 0, done.stderr
    assert not again.exists()
    assert debug_documents(tmp_path)[0]["users"] == ML_USERS


def test_exec_plugin_that_fails_is_a_one_line_error(api, run_jupyter, tmp_path):
    """The client logs a failed plugin and goes on without a credential: the error would be the API's 401."""
    kubeconfig = with_exec_plugin(api.write_kubeconfig(tmp_path / "kubeconfig", ""),
                                  "echo 'cannot log in: no browser' >&2; exit 1")
    assert the_error(run_jupyter("--kubeconfig", kubeconfig)) == (
        "ERROR:jupyter:cannot load kubeconfig %s: exec: process returned 1. cannot log in: no browser" % kubeconfig)
    assert api.requests == []


def test_exec_plugin_that_never_answers_is_stopped_at_the_timeout(api, run_collector, tmp_path):
    """The client waits for its exec plugin with no limit: one waiting for a login would hold the run (and its
    lock) for ever. The other collectors of the run still report."""
    plugin_pid = tmp_path / "plugin.pid"
    kubeconfig = with_exec_plugin(api.write_kubeconfig(tmp_path / "kubeconfig", ""),
                                  "echo $$ > %s; exec sleep 600" % plugin_pid)
    done = run_collector("afmetrics_collector", "-d", "-j", "--host", "--disk", "/", "--kubeconfig", kubeconfig,
                         "--timeout", "2", "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert log_lines(done.stderr) == [
        "ERROR:jupyter:cannot load kubeconfig %s: its exec plugin gave no credential within 2 s" % kubeconfig]
    assert not psutil.pid_exists(int(plugin_pid.read_text()))  # killed, and reaped
    assert {document["kind"] for document in json_lines(tmp_path / "host.json")} == {"CPU", "MEM", "DISK"}
    assert api.requests == []


# --- the API refuses, is gone, or is slow ----------------------------------------------------------------------
def test_token_without_rights_is_a_one_line_403(api, run_jupyter, tmp_path):
    done = run_jupyter("--kubeconfig", api.write_kubeconfig(tmp_path / "kubeconfig", NO_RIGHTS), *ML_ONLY)
    assert the_error(done) == ("ERROR:jupyter:Kubernetes API %s refused to list pods in af-jupyter: HTTP 403 "
                               "Forbidden" % api.url)
    assert not (tmp_path / "jupyter.json").exists()


def test_unknown_token_is_a_one_line_401(api, run_jupyter, tmp_path):
    done = run_jupyter("--kubeconfig", api.write_kubeconfig(tmp_path / "kubeconfig", "revoked-token"), *ML_ONLY)
    assert the_error(done) == ("ERROR:jupyter:Kubernetes API %s refused to list pods in af-jupyter: HTTP 401 "
                               "Unauthorized" % api.url)


def test_service_account_without_rights_in_its_namespace(api, run_jupyter, tmp_path):
    api.allow("coffea-only", "coffea-reader", [COFFEA_NAMESPACE])
    account = api.write_serviceaccount(tmp_path / "serviceaccount", "coffea-only")
    done = run_jupyter("--serviceaccount-dir", account, env=api.in_cluster_environment())
    assert "refused to list pods in af-jupyter: HTTP 403 Forbidden" in the_error(done)


def test_unreachable_server_is_a_one_line_error(api, run_jupyter, tmp_path, unreachable_kubernetes_url):
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", READER, server=unreachable_kubernetes_url)
    error = the_error(run_jupyter("--kubeconfig", kubeconfig, *ML_ONLY))
    assert error.startswith("ERROR:jupyter:cannot reach Kubernetes API %s: " % unreachable_kubernetes_url)
    assert "refused" in error.lower()  # the operator learns why: nothing listens there


def test_slow_server_ends_at_the_timeout_with_a_one_line_error(api, run_jupyter, tmp_path):
    api.delay = 60  # far beyond --timeout and the run_collector limit alike
    done = run_jupyter("--timeout", "1", "--kubeconfig", api.write_kubeconfig(tmp_path / "kubeconfig", READER), *ML_ONLY)
    error = the_error(done)
    assert error.startswith("ERROR:jupyter:cannot reach Kubernetes API %s: " % api.url)
    assert "timeout" in error.lower() or "timed out" in error.lower()
    assert len(api.requests) == 1  # no retries: --timeout bounds the whole call


def test_server_that_never_answers_the_tls_handshake_ends_at_the_timeout(api, run_jupyter, tmp_path):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the TCP handshake; nobody ever accepts
        url = "https://127.0.0.1:%d" % silent.getsockname()[1]
        done = run_jupyter("--timeout", "1", "--kubeconfig",
                           api.write_kubeconfig(tmp_path / "kubeconfig", READER, server=url), *ML_ONLY)
    error = the_error(done)
    assert error.startswith("ERROR:jupyter:cannot reach Kubernetes API %s: " % url)
    assert "timeout" in error.lower() or "timed out" in error.lower()


# --- what is counted -------------------------------------------------------------------------------------------
def test_two_services_in_two_namespaces(api, run_jupyter, tmp_path):
    done = run_jupyter("--kubeconfig", api.write_kubeconfig(tmp_path / "kubeconfig", READER), *BOTH_SERVICES)
    assert done.returncode == 0, done.stderr
    assert debug_documents(tmp_path) == [
        {"kind": "jupyter-ml", "cluster": "UC-AF", "token": "", "jupyter_user_count": 3, "users": ML_USERS},
        {"kind": "jupyter-coffea", "cluster": "UC-AF", "token": "", "jupyter_user_count": 2, "users": COFFEA_USERS},
    ]
    assert [r["query"]["labelSelector"] for r in api.requests] == [["owner"], [COFFEA_LABEL]]


def test_one_refused_service_does_not_cost_the_others(api, run_jupyter, tmp_path):
    api.allow("coffea-only", "coffea-reader", [COFFEA_NAMESPACE])
    done = run_jupyter("--kubeconfig", api.write_kubeconfig(tmp_path / "kubeconfig", "coffea-only"), *BOTH_SERVICES)
    assert done.returncode == 1
    assert the_error(done) == ("ERROR:jupyter:Kubernetes API %s refused to list pods in af-jupyter: HTTP 403 "
                               "Forbidden" % api.url)
    assert debug_documents(tmp_path) == [
        {"kind": "jupyter-coffea", "cluster": "UC-AF", "token": "", "jupyter_user_count": 2, "users": COFFEA_USERS},
    ]


def test_zero_to_jupyterhub_users_are_the_names_kubespawner_escaped(api, run_jupyter, tmp_path):
    """The annotation's name where there is one, the label unescaped where not: hashed, the same as the person's
    ssh or batch user."""
    done = run_jupyter("--kubeconfig", api.write_kubeconfig(tmp_path / "kubeconfig", READER), "--service",
                       Z2JH_SERVICE, "-o", "-z", "pepper")
    assert done.returncode == 0, done.stderr
    assert debug_documents(tmp_path) == [{
        "kind": "jupyter-z2jh", "cluster": "UC-AF", "token": "", "jupyter_user_count": len(Z2JH_USERS),
        "users": sorted(hashlib.sha256(("pepper" + user).encode()).hexdigest()[:8] for user in Z2JH_USERS)}]


@pytest.mark.parametrize("labels, annotations, user", [
    ({KUBESPAWNER_LABEL: "test-5fuser"}, {KUBESPAWNER_LABEL: "test_user"}, "test_user"),
    ({KUBESPAWNER_LABEL: "test-5fuser"}, None, "test_user"),
    ({KUBESPAWNER_LABEL: "-41lice-2ejones"}, {}, "Alice.jones"),  # upper case letters are escaped too
    ({KUBESPAWNER_LABEL: "test-user"}, None, "test-user"),  # 7.0 keeps a name that fits: "-us" is no escape
    ({"owner": "test-5fuser"}, None, "test-5fuser"),  # af-portal's label is the name as it is
    ({"owner": "alice"}, {"owner": "alice2"}, "alice2"),
    ({}, {KUBESPAWNER_LABEL: "test_user"}, "test_user"),
])
def test_pod_user_from_annotation_or_unescaped_label(labels, annotations, user):
    import jupyter

    key = next(iter(labels or annotations))
    assert jupyter.pod_user({"labels": labels, "annotations": annotations}, key) == user


def test_namespace_and_label_options_move_the_ml_service_only(api, run_jupyter, tmp_path):
    """As the old tool's -n and -l: its coffea service stays coffea-casa, jhub_user."""
    done = run_jupyter("--kubeconfig", api.write_kubeconfig(tmp_path / "kubeconfig", READER),
                       "-n", COFFEA_NAMESPACE, "-l", COFFEA_LABEL)
    assert done.returncode == 0, done.stderr
    assert [(d["kind"], d["users"]) for d in debug_documents(tmp_path)] == [("jupyter-ml", COFFEA_USERS),
                                                                           ("jupyter-coffea", COFFEA_USERS)]


def test_namespace_option_with_services_given_is_a_usage_error(run_jupyter, tmp_path):
    done = run_jupyter("--service", "ml:af-jupyter:owner", "-n", COFFEA_NAMESPACE)
    assert done.returncode == 2
    assert log_lines(done.stderr) == ["ERROR:afmetrics:-n/-l set the default service only; with --service give "
                                      "NAME:NAMESPACE:LABEL"]


def test_namespace_without_pods_reports_no_users(api, run_jupyter, tmp_path):
    api.allow("empty-reader", "empty-reader", ["empty", COFFEA_NAMESPACE])
    done = run_jupyter("--kubeconfig", api.write_kubeconfig(tmp_path / "kubeconfig", "empty-reader"), "-n", "empty")
    assert done.returncode == 0, done.stderr
    assert debug_documents(tmp_path)[0]["users"] == [] and debug_documents(tmp_path)[0]["jupyter_user_count"] == 0


def test_one_refused_service_fails_the_run(api, run_jupyter, tmp_path):
    done = run_jupyter("--kubeconfig", api.write_kubeconfig(tmp_path / "kubeconfig", READER),
                       *BOTH_SERVICES, "--service", "forbidden:kube-system:owner")
    assert "refused to list pods in kube-system: HTTP 403 Forbidden" in the_error(done)


def test_obfuscated_users_are_the_old_tools_sha256_of_salt_and_name_sorted(api, run_jupyter, tmp_path):
    done = run_jupyter("--kubeconfig", api.write_kubeconfig(tmp_path / "kubeconfig", READER), "-o", "-z", "pepper")
    assert done.returncode == 0, done.stderr
    # The old tool's skeleton.py: sha256((args.salt + x).encode('utf-8')).hexdigest()[:8].
    expected = sorted(hashlib.sha256(("pepper" + user).encode("utf-8")).hexdigest()[:8] for user in ML_USERS)
    assert debug_documents(tmp_path)[0]["users"] == expected
    assert debug_documents(tmp_path)[0]["jupyter_user_count"] == 3
    assert "pepper" not in done.stderr


def test_group_filter_keeps_members_only(kubernetes_api, run_jupyter, tmp_path):
    kubernetes_api.allow(READER, "reader", [ML_NAMESPACE, COFFEA_NAMESPACE])
    kubernetes_api.add_pod(ML_NAMESPACE, "jupyter-root", {"owner": "root"}, "Running")
    kubernetes_api.add_pod(ML_NAMESPACE, "jupyter-daemon", {"owner": "daemon"}, "Running")
    kubeconfig = kubernetes_api.write_kubeconfig(tmp_path / "kubeconfig", READER)
    done = run_jupyter("--kubeconfig", kubeconfig, "-g", "root")
    assert done.returncode == 0, done.stderr
    assert debug_documents(tmp_path)[0]["users"] == ["root"]
    # A user unknown here is left out (SPEC.md), the group resolving.
    kubernetes_api.add_pod(ML_NAMESPACE, "jupyter-stranger", {"owner": "no-such-user-here"}, "Running")
    (tmp_path / "jupyter.json").unlink()
    done = run_jupyter("--kubeconfig", kubeconfig, "-g", "root")
    assert done.returncode == 0, done.stderr
    assert debug_documents(tmp_path)[0]["users"] == ["root"]


def test_debug_file_appends_one_line_per_document_and_masks_the_token(api, run_jupyter, tmp_path):
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", READER)
    for _ in range(2):
        done = run_jupyter("--kubeconfig", kubeconfig, *BOTH_SERVICES, env={"AFMETRICS_TOKEN": "endpoint-secret"})
        assert done.returncode == 0, done.stderr
    lines = (tmp_path / "jupyter.json").read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["jupyter-ml", "jupyter-coffea"] * 2
    assert all(json.loads(line)["token"] == "***" for line in lines)
    assert "endpoint-secret" not in (tmp_path / "jupyter.json").read_text()


def test_documents_are_delivered_with_the_token(api, run_collector, receiver, tmp_path):
    done = run_collector("jupyter.py", "-c", "UC-AF", "-u", receiver.url, "--ca-bundle", receiver.ca_file,
                         "--state-dir", tmp_path / "state", *BOTH_SERVICES,
                         "--kubeconfig", api.write_kubeconfig(tmp_path / "kubeconfig", READER),
                         env={"AFMETRICS_TOKEN": "endpoint-secret"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(receiver.documents, key=lambda document: document["kind"]) == [
        {"kind": "jupyter-coffea", "cluster": "UC-AF", "token": "endpoint-secret", "jupyter_user_count": 2,
         "users": COFFEA_USERS},
        {"kind": "jupyter-ml", "cluster": "UC-AF", "token": "endpoint-secret", "jupyter_user_count": 3,
         "users": ML_USERS},
    ]


def test_bad_service_is_usage_error(run_jupyter):
    done = run_jupyter("--service", "ml:af-jupyter")
    assert done.returncode == 2
    assert log_lines(done.stderr) == ["ERROR:afmetrics:bad service 'ml:af-jupyter': expected NAME:NAMESPACE:LABEL, "
                                      "e.g. ml:af-jupyter:owner"]


# --- the stand-in answers as kube-apiserver does ---------------------------------------------------------------
@pytest.mark.parametrize("selector, matching", [
    ("", ["a", "b", "none"]),
    ("owner", ["a", "b"]),
    ("!owner", ["none"]),
    ("owner=alice", ["a"]),
    ("owner==alice", ["a"]),
    ("owner!=alice", ["b", "none"]),  # != also matches pods without the key, as in Kubernetes
    ("owner,app=jupyter", ["a"]),
    ("owner in (alice, bob)", ["a", "b"]),
    ("owner notin (alice)", ["b", "none"]),
    ("hub.jupyter.org/username", []),
])
def test_label_selectors(selector, matching):
    pods = {"a": {"owner": "alice", "app": "jupyter"}, "b": {"owner": "bob"}, "none": {"app": "jupyter"}}
    selected = parse_label_selector(selector)
    assert [name for name, labels in pods.items() if selected(labels)] == matching


@pytest.mark.parametrize("selector", ["owner,", "=alice", "owner=alice=bob", "Bad_Prefix/owner", "owner in alice",
                                      "!owner=alice", "owner=no spaces"])
def test_invalid_label_selectors(selector):
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


def get_pods(api, namespace, authorization, selector=None):
    return requests.get("%s/api/v1/namespaces/%s/pods" % (api.url, namespace),
                        params={"labelSelector": selector} if selector is not None else None,
                        headers={"Authorization": authorization} if authorization else {}, verify=api.ca_file)


def test_standin_pod_list_is_sorted_by_name_and_shaped_as_the_api_sends_it(api):
    reply = get_pods(api, ML_NAMESPACE, "Bearer " + READER)
    assert reply.status_code == 200 and reply.headers["Content-Type"] == "application/json"
    pod_list = reply.json()
    assert (pod_list["kind"], pod_list["apiVersion"]) == ("PodList", "v1")
    assert int(pod_list["metadata"]["resourceVersion"]) > 0
    names = [pod["metadata"]["name"] for pod in pod_list["items"]]
    assert names == sorted(name for namespace, name, _, _ in PODS if namespace == ML_NAMESPACE)
    first = pod_list["items"][0]
    assert "kind" not in first  # items of a list carry no kind of their own
    assert {"name", "namespace", "uid", "resourceVersion", "creationTimestamp", "labels"} <= set(first["metadata"])
    assert first["spec"]["containers"][0]["name"] and first["status"]["phase"] == "Running"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_standin_bearer_scheme_is_case_insensitive(api, scheme):
    assert get_pods(api, ML_NAMESPACE, "%s %s" % (scheme, READER), "owner=zoe").json()["items"][0]["metadata"][
        "labels"] == {"owner": "zoe"}


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic " + READER])
def test_standin_unauthenticated_is_a_401_status(api, authorization):
    reply = get_pods(api, ML_NAMESPACE, authorization)
    assert reply.status_code == 401
    assert reply.json() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": "Unauthorized", "reason": "Unauthorized", "code": 401}


def test_standin_unauthorized_is_a_403_status(api):
    reply = get_pods(api, "kube-system", "Bearer " + READER)
    assert reply.status_code == 403
    assert reply.json() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": 'pods is forbidden: User "reader" cannot list resource "pods" in API group "" '
                                       'in the namespace "kube-system"',
                            "reason": "Forbidden", "details": {"kind": "pods"}, "code": 403}


def test_standin_bad_selector_is_a_400_status(api):
    reply = get_pods(api, ML_NAMESPACE, "Bearer " + READER, "owner,")
    assert reply.status_code == 400 and reply.json()["reason"] == "BadRequest"
