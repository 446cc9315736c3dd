"""jupyter.py against a real kube-apiserver (scripts/kube-apiserver: Debian's kubernetes 1.20 + etcd 3.4).

Pods are created through the API and their phases patched through the status subresource, as the kubelet would
(no scheduler or kubelet runs). RBAC: user `reader` may list pods in the two namespaces, user `nobody` nowhere.
The first tests run test_jupyter.py's scenarios; the last ones ask the stand-in and the real server the same
questions and compare the answers. Skipped unless `scripts/kube-apiserver build` has run (make test-real).
"""
import hashlib
import json
import os
import pathlib
import signal
import socket
import subprocess

import pytest
import requests

from conftest import REPO
from k8s_standin import write_kubeconfig, write_serviceaccount
from test_jupyter import (BOTH_SERVICES, COFFEA_LABEL, COFFEA_NAMESPACE, COFFEA_USERS, ML_NAMESPACE, ML_ONLY, ML_USERS,
                          PODS, Z2JH_NAMESPACE, Z2JH_PODS, Z2JH_SERVICE, Z2JH_USERS, debug_documents,
                          exec_credential, the_error, with_exec_plugin)

pytestmark = pytest.mark.k8s_real

SCRIPT = REPO / "scripts" / "kube-apiserver"
BINARY = pathlib.Path(os.environ.get("AFMETRICS_K8S_CACHE", "/var/cache/afmetrics-k8s")) / "bin" / "kube-apiserver"


class RealKubernetes:
    """A running kube-apiserver: its URL, CA file, the tokens of tokens.csv and an admin session."""

    def __init__(self, directory):
        self.directory = directory
        self.url = (directory / "server").read_text().strip()
        self.ca_file = str(directory / "ca.crt")
        self.ca_pem = (directory / "ca.crt").read_bytes()
        self.tokens = {line.split(",")[1]: line.split(",")[0]
                       for line in (directory / "tokens.csv").read_text().splitlines()}
        self.admin = requests.Session()
        self.admin.verify = self.ca_file
        self.admin.trust_env = False  # else $REQUESTS_CA_BUNDLE, where set, overrides verify
        self.admin.headers["Authorization"] = "Bearer " + self.tokens["admin"]

    def create(self, path, body):
        reply = self.admin.post(self.url + path, json=body)
        assert reply.status_code == 201, reply.text

    def add_pod(self, namespace, name, labels, phase, annotations=None):
        self.create("/api/v1/namespaces/%s/pods" % namespace, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels,
                                                            "annotations": annotations or {}},
            "spec": {"containers": [{"name": "notebook", "image": "jupyter/scipy-notebook:latest"}]}})
        if phase != "Pending":  # what a kubelet reports; without one a pod stays Pending
            reply = self.admin.patch("%s/api/v1/namespaces/%s/pods/%s/status" % (self.url, namespace, name),
                                     data=json.dumps({"status": {"phase": phase}}),
                                     headers={"Content-Type": "application/merge-patch+json"})
            assert reply.status_code == 200, reply.text

    def grant_pod_listing(self, user, namespace):
        self.create("/apis/rbac.authorization.k8s.io/v1/namespaces/%s/rolebindings" % namespace, {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "%s-lists-pods" % user},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pod-lister"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})

    def kubeconfig(self, path, token=None, server=None):
        """A kubeconfig for TOKEN (default: reader's) that trusts this server's CA, pointing at SERVER if given."""
        return write_kubeconfig(path, server or self.url, self.ca_pem, token or self.tokens["reader"])

    def pid(self):
        return int((self.directory / "kube-apiserver.pid").read_text())


def free_port_pair():
    """A port P with P+1 free as well (etcd's client and peer ports)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


@pytest.fixture(scope="session")
def real_kubernetes(tmp_path_factory):
    if not BINARY.exists():
        pytest.skip("no kube-apiserver built: make test-real builds it (%s)" % BINARY)
    directory = tmp_path_factory.mktemp("kube-apiserver")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        api_port = probe.getsockname()[1]
    env = dict(os.environ, KUBE_APISERVER_PORT=str(api_port), ETCD_PORT=str(free_port_pair()))
    started = subprocess.run([str(SCRIPT), "start", str(directory)], env=env, capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stderr
        cluster = RealKubernetes(directory)
        cluster.create("/apis/rbac.authorization.k8s.io/v1/clusterroles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "pod-lister"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]})
        for namespace in (ML_NAMESPACE, COFFEA_NAMESPACE, Z2JH_NAMESPACE):
            cluster.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": namespace}})
            cluster.grant_pod_listing("reader", namespace)
        for pod in PODS + Z2JH_PODS:
            cluster.add_pod(*pod)
        yield cluster
    finally:
        subprocess.run([str(SCRIPT), "stop", str(directory)], check=True)


# --- test_jupyter.py's scenarios -------------------------------------------------------------------------------
def test_kubeconfig_with_a_token(real_kubernetes, run_jupyter, tmp_path):
    done = run_jupyter("--kubeconfig", real_kubernetes.kubeconfig(tmp_path / "kubeconfig"))
    assert done.returncode == 0, done.stderr
    assert debug_documents(tmp_path) == [
        {"kind": "jupyter-ml", "cluster": "UC-AF", "token": "", "jupyter_user_count": 3, "users": ML_USERS},
        {"kind": "jupyter-coffea", "cluster": "UC-AF", "token": "", "jupyter_user_count": 2, "users": COFFEA_USERS}]


def test_credential_from_an_exec_plugin(real_kubernetes, run_jupyter, tmp_path):
    kubeconfig = with_exec_plugin(real_kubernetes.kubeconfig(tmp_path / "kubeconfig", ""),
                                  "echo '%s'" % exec_credential(real_kubernetes.tokens["reader"]))
    done = run_jupyter("--kubeconfig", kubeconfig)
    assert done.returncode == 0, done.stderr
    assert debug_documents(tmp_path)[0]["users"] == ML_USERS


def test_in_cluster_service_account(real_kubernetes, run_jupyter, tmp_path):
    account = write_serviceaccount(tmp_path / "serviceaccount", real_kubernetes.ca_pem,
                                   real_kubernetes.tokens["reader"], ML_NAMESPACE)
    port = real_kubernetes.url.rsplit(":", 1)[1]
    done = run_jupyter("--serviceaccount-dir", account,
                       env={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port})
    assert done.returncode == 0, done.stderr
    assert debug_documents(tmp_path)[0]["users"] == ML_USERS


def test_token_without_rights_is_a_one_line_403(real_kubernetes, run_jupyter, tmp_path):
    kubeconfig = real_kubernetes.kubeconfig(tmp_path / "kubeconfig", real_kubernetes.tokens["nobody"])
    done = run_jupyter("--kubeconfig", kubeconfig, *ML_ONLY)
    assert the_error(done) == ("ERROR:jupyter:Kubernetes API %s refused to list pods in af-jupyter: HTTP 403 "
                               "Forbidden" % real_kubernetes.url)


def test_unknown_token_is_a_one_line_401(real_kubernetes, run_jupyter, tmp_path):
    done = run_jupyter("--kubeconfig", real_kubernetes.kubeconfig(tmp_path / "kubeconfig", "revoked-token"), *ML_ONLY)
    assert the_error(done) == ("ERROR:jupyter:Kubernetes API %s refused to list pods in af-jupyter: HTTP 401 "
                               "Unauthorized" % real_kubernetes.url)


def test_unreachable_server_is_a_one_line_error(real_kubernetes, run_jupyter, tmp_path, unreachable_kubernetes_url):
    kubeconfig = real_kubernetes.kubeconfig(tmp_path / "kubeconfig", server=unreachable_kubernetes_url)
    error = the_error(run_jupyter("--kubeconfig", kubeconfig, *ML_ONLY))
    assert error.startswith("ERROR:jupyter:cannot reach Kubernetes API %s: " % unreachable_kubernetes_url)
    assert "refused" in error.lower()


def test_stalled_server_ends_at_the_timeout(real_kubernetes, run_jupyter, tmp_path):
    # A stopped apiserver still completes TCP handshakes (the kernel does), then never answers: an overloaded one.
    os.kill(real_kubernetes.pid(), signal.SIGSTOP)
    try:
        done = run_jupyter("--timeout", "1", "--kubeconfig", real_kubernetes.kubeconfig(tmp_path / "kubeconfig"), *ML_ONLY)
    finally:
        os.kill(real_kubernetes.pid(), signal.SIGCONT)
    error = the_error(done)
    assert error.startswith("ERROR:jupyter:cannot reach Kubernetes API %s: " % real_kubernetes.url)
    assert "timeout" in error.lower() or "timed out" in error.lower()


def test_two_services_phases_duplicates_and_sorting(real_kubernetes, run_jupyter, tmp_path):
    done = run_jupyter("--kubeconfig", real_kubernetes.kubeconfig(tmp_path / "kubeconfig"),
                       *BOTH_SERVICES)
    assert done.returncode == 0, done.stderr
    assert debug_documents(tmp_path) == [
        {"kind": "jupyter-ml", "cluster": "UC-AF", "token": "", "jupyter_user_count": 3, "users": ML_USERS},
        {"kind": "jupyter-coffea", "cluster": "UC-AF", "token": "", "jupyter_user_count": 2, "users": COFFEA_USERS},
    ]


def test_zero_to_jupyterhub_users_from_kubespawner_annotations_and_labels(real_kubernetes, run_jupyter, tmp_path):
    done = run_jupyter("--kubeconfig", real_kubernetes.kubeconfig(tmp_path / "kubeconfig"), "--service", Z2JH_SERVICE)
    assert done.returncode == 0, done.stderr
    assert debug_documents(tmp_path) == [{"kind": "jupyter-z2jh", "cluster": "UC-AF", "token": "",
                                          "jupyter_user_count": len(Z2JH_USERS), "users": Z2JH_USERS}]


def test_obfuscation_and_debug_file(real_kubernetes, run_jupyter, tmp_path):
    done = run_jupyter("--kubeconfig", real_kubernetes.kubeconfig(tmp_path / "kubeconfig"),
                       "-o", "-z", "pepper", env={"AFMETRICS_TOKEN": "endpoint-secret"})
    assert done.returncode == 0, done.stderr
    document = debug_documents(tmp_path)[0]
    assert document["token"] == "***"
    assert document["users"] == sorted(hashlib.sha256(("pepper" + user).encode()).hexdigest()[:8] for user in ML_USERS)


# --- the stand-in answers as the real server does --------------------------------------------------------------
def comparable(reply):
    """Status and body without what differs by nature: uids, resource versions, timestamps, defaulted fields."""
    body = reply.json()
    if body.get("reason") == "BadRequest":
        del body["message"]  # the stand-in's selector parser words its complaints differently
    elif body.get("kind") == "PodList":
        body["metadata"] = sorted(body["metadata"])
        body["items"] = [(pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"].get("labels"),
                          pod["status"]["phase"], pod["spec"]["containers"][0]["name"],
                          {"uid", "resourceVersion", "creationTimestamp"} <= set(pod["metadata"]), "kind" in pod)
                         for pod in body["items"]]
    return reply.status_code, reply.headers["Content-Type"], body


@pytest.mark.parametrize("namespace, selector, authorization", [
    (ML_NAMESPACE, "owner", "Bearer {reader}"),
    (ML_NAMESPACE, None, "bearer {reader}"),
    (COFFEA_NAMESPACE, COFFEA_LABEL, "BEARER {reader}"),
    (ML_NAMESPACE, "owner!=alice,!component", "Bearer {reader}"),
    (ML_NAMESPACE, "owner in (alice,zoe)", "Bearer {reader}"),
    (ML_NAMESPACE, "owner,", "Bearer {reader}"),
    ("no-such-namespace", "owner", "Bearer {admin}"),
    ("kube-system", "owner", "Bearer {reader}"),
    (ML_NAMESPACE, "owner", "Bearer {nobody}"),
    (ML_NAMESPACE, "owner", "Bearer revoked"),
    (ML_NAMESPACE, "owner", "Basic {reader}"),
    (ML_NAMESPACE, "owner", ""),
])
def test_standin_answers_as_the_real_server(real_kubernetes, kubernetes_api, namespace, selector, authorization):
    kubernetes_api.allow(real_kubernetes.tokens["reader"], "reader", [ML_NAMESPACE, COFFEA_NAMESPACE])
    kubernetes_api.allow(real_kubernetes.tokens["admin"], "admin", ["no-such-namespace"])
    kubernetes_api.allow(real_kubernetes.tokens["nobody"], "nobody")
    for pod in PODS:
        kubernetes_api.add_pod(*pod)
    answers = []
    for server in (real_kubernetes, kubernetes_api):
        header = authorization.format(**real_kubernetes.tokens)
        answers.append(comparable(requests.get(
            "%s/api/v1/namespaces/%s/pods" % (server.url, namespace), verify=server.ca_file,
            params={"labelSelector": selector} if selector is not None else None,
            headers={"Authorization": header} if header else {})))
    assert answers[1] == answers[0]
