"""The least-privilege Kubernetes access docs/installing.md recommends, end to end against real components.

scripts/kube-apiserver runs kube-apiserver with RBAC and kube-controller-manager's token controller, and gives
Debian's kubectl of the same release. As an admin would, kubectl applies deploy/kubernetes/afmetrics-reader.yaml
and, in af-jupyter, afmetrics-reader-role.yaml; scripts/afmetrics-kubeconfig makes the kubeconfig from the admin's.
With it the reader lists the pods of af-jupyter, is refused (403) everything else, and jupyter.py reports those
pods. Then every error the script can meet, each in one line, and the token never in its output. The cluster
is test_jupyter_real.py's (its pods in af-jupyter and coffea-casa), started once for this module.

Tests marked k8s_real run in `make test-real`; the usage errors need no cluster and run in `make unit`.
"""
import base64
import json
import os
import pty
import shlex
import signal
import stat
import subprocess
import sys
import time

import pytest
import requests
import yaml
from kubernetes import client, config

from conftest import REPO, collector_environment
from test_jupyter import BOTH_SERVICES, COFFEA_NAMESPACE, ML_NAMESPACE, ML_ONLY, PODS, debug_documents, the_error
from test_jupyter_real import BINARY, real_kubernetes  # noqa: F401 (a fixture: this module's own cluster)

k8s_real = pytest.mark.k8s_real

KUBECTL = BINARY.parent / "kubectl"
SCRIPT = REPO / "scripts" / "afmetrics-kubeconfig"
MANIFEST = REPO / "deploy" / "kubernetes" / "afmetrics-reader.yaml"
ROLE_MANIFEST = REPO / "deploy" / "kubernetes" / "afmetrics-reader-role.yaml"
ACCOUNT_NAMESPACE = "afmetrics"
READER = "system:serviceaccount:afmetrics:afmetrics-reader"
SECRETS = "/api/v1/namespaces/afmetrics/secrets"


class Cluster:
    """The real cluster with the manifests applied: the admin's kubeconfig, kubectl and admin calls."""

    def __init__(self, real, admin_kubeconfig):
        self.real = real
        self.url = real.url
        self.admin_kubeconfig = admin_kubeconfig

    def kubectl(self, *args, check=True):
        done = subprocess.run([str(KUBECTL), "--kubeconfig", str(self.admin_kubeconfig)] + [str(a) for a in args],
                              capture_output=True, text=True, env=collector_environment(), timeout=60)
        assert done.returncode == 0 or not check, done.stderr
        return done.stdout.splitlines()

    def get(self, path):
        reply = self.real.admin.get(self.url + path)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def tokens(self):
        """Every token issued in the account's namespace, to prove that none is ever printed."""
        return [base64.b64decode(secret["data"]["token"]).decode() for secret in self.get(SECRETS)["items"]
                if (secret.get("data") or {}).get("token")]

    def token(self, secret="afmetrics-reader-token"):
        return base64.b64decode(self.get("%s/%s" % (SECRETS, secret))["data"]["token"]).decode()

    def token_secret(self, name, account="afmetrics-reader"):
        self.real.create(SECRETS, {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
            "metadata": {"name": name, "annotations": {"kubernetes.io/service-account.name": account}}})

    def pid(self, name):
        return int((self.real.directory / ("%s.pid" % name)).read_text())


@pytest.fixture(scope="module")
def cluster(real_kubernetes, tmp_path_factory):  # noqa: F811 (the imported fixture)
    admin = real_kubernetes.kubeconfig(tmp_path_factory.mktemp("admin") / "admin.conf",
                                       real_kubernetes.tokens["admin"])
    cluster = Cluster(real_kubernetes, admin)
    assert cluster.kubectl("apply", "-f", MANIFEST) == [
        "namespace/afmetrics created", "serviceaccount/afmetrics-reader created",
        "secret/afmetrics-reader-token created"]
    assert cluster.kubectl("apply", "-n", ML_NAMESPACE, "-f", ROLE_MANIFEST) == [
        "role.rbac.authorization.k8s.io/afmetrics-reader created",
        "rolebinding.rbac.authorization.k8s.io/afmetrics-reader created"]
    return cluster


def run_script(*args, env=None, stdout=subprocess.PIPE):
    return subprocess.run([sys.executable, str(SCRIPT)] + [str(arg) for arg in args], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, env=collector_environment(env),
                          stdin=subprocess.DEVNULL, timeout=120)


def make_kubeconfig(cluster, output, *args, admin=None, env=None):
    """Runs the script as the admin would; checks that no token it could have read shows in its output."""
    admin_args = [] if admin is False else ["--kubeconfig", admin or cluster.admin_kubeconfig]
    done = run_script("-o", output, *admin_args, *args, env=env)
    shown = done.stderr + (done.stdout if str(output) != "-" else "")
    assert not [token for token in cluster.tokens() if token in shown]
    assert len(done.stderr.splitlines()) == 1, done.stderr
    return done


def the_failure(done, output):
    """The script's one error line, having checked it failed and wrote nothing."""
    assert done.returncode == 1, done.stderr
    assert not output.exists()
    assert done.stderr.startswith("afmetrics-kubeconfig: error: ")
    return done.stderr.rstrip("\n")[len("afmetrics-kubeconfig: error: "):]


@pytest.fixture(scope="module")
def reader(cluster, tmp_path_factory):
    """The kubeconfig the script makes with its defaults (a test that rotates the token makes it again)."""
    output = tmp_path_factory.mktemp("reader") / "reader.kubeconfig"
    done = make_kubeconfig(cluster, output)
    assert done.returncode == 0, done.stderr
    return output


def call(kubeconfig, method, path, body=None, content_type="application/json"):
    """(HTTP status, parsed body) of one request with the server, CA and token that the kubernetes client (as
    jupyter.py uses it) loads from KUBECONFIG."""
    loaded = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=loaded)
    with requests.Session() as session:
        session.trust_env = False  # else $REQUESTS_CA_BUNDLE, where set, overrides verify
        reply = session.request(method, loaded.host + path, verify=loaded.ssl_ca_cert, json=body, headers={
            "Authorization": loaded.auth_settings()["BearerToken"]["value"], "Content-Type": content_type})
    return reply.status_code, reply.json()


# --- what the kubeconfig is and may do ---------------------------------------------------------------------------
@k8s_real
def test_kubeconfig_is_one_cluster_user_and_context_written_0600(cluster, tmp_path):
    output = tmp_path / "reader.kubeconfig"
    output.write_text("an older kubeconfig, world-readable\n")
    output.chmod(0o644)
    done = make_kubeconfig(cluster, output)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == ("afmetrics-kubeconfig: wrote the kubeconfig to %s: %s as service account "
                           "afmetrics/afmetrics-reader (lists pods in af-jupyter)\n" % (output, cluster.url))
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["reader.kubeconfig"]  # no temporary file left
    written = yaml.safe_load(output.read_text())
    assert written == {
        "apiVersion": "v1", "kind": "Config", "preferences": {}, "current-context": "afmetrics",
        "clusters": [{"name": "afmetrics", "cluster": {
            "server": cluster.url, "certificate-authority-data": base64.b64encode(cluster.real.ca_pem).decode()}}],
        "users": [{"name": "afmetrics-reader", "user": {"token": cluster.token()}}],
        "contexts": [{"name": "afmetrics", "context": {"cluster": "afmetrics", "user": "afmetrics-reader"}}]}


@k8s_real
def test_reader_lists_the_pods_of_its_namespace(cluster, reader):
    status, pods = call(reader, "GET", "/api/v1/namespaces/af-jupyter/pods")
    assert status == 200
    assert [pod["metadata"]["name"] for pod in pods["items"]] == [
        pod["metadata"]["name"] for pod in cluster.get("/api/v1/namespaces/af-jupyter/pods")["items"]]
    assert len(pods["items"]) == len([pod for pod in PODS if pod[0] == ML_NAMESPACE])


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "intruder"},
       "spec": {"containers": [{"name": "shell", "image": "debian:12"}]}}
WIDER_ROLE = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "afmetrics-reader"},
              "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}
ADMIN_BINDING = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "afmetrics-admin"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
                 "subjects": [{"kind": "ServiceAccount", "name": "afmetrics-reader", "namespace": "afmetrics"}]}


@k8s_real
@pytest.mark.parametrize("method, path, body", [
    ("GET", "/api/v1/namespaces/af-jupyter/secrets", None),
    ("GET", "/api/v1/namespaces/afmetrics/secrets/afmetrics-reader-token", None),  # not even its own token
    ("GET", "/api/v1/namespaces/coffea-casa/pods", None),  # another hub's namespace
    ("GET", "/api/v1/pods", None),  # every namespace at once
    ("GET", "/api/v1/namespaces/af-jupyter/pods/jupyter-1", None),  # list, not get
    ("GET", "/api/v1/namespaces/af-jupyter/pods?watch=true", None),  # list, not watch
    ("GET", "/api/v1/namespaces/af-jupyter/pods/jupyter-1/log", None),
    ("POST", "/api/v1/namespaces/af-jupyter/pods", POD),
    ("POST", "/api/v1/namespaces/af-jupyter/pods/jupyter-1/exec?command=id&stdout=true", None),
    ("PATCH", "/api/v1/namespaces/af-jupyter/pods/jupyter-1", {"metadata": {"labels": {"owner": "mallory"}}}),
    ("DELETE", "/api/v1/namespaces/af-jupyter/pods/jupyter-1", None),
    ("DELETE", "/api/v1/namespaces/af-jupyter/pods", None),  # deletecollection
    ("POST", "/api/v1/namespaces/af-jupyter/secrets", {"apiVersion": "v1", "kind": "Secret",
                                                       "metadata": {"name": "planted"}}),
    ("PUT", "/apis/rbac.authorization.k8s.io/v1/namespaces/af-jupyter/roles/afmetrics-reader", WIDER_ROLE),
    ("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/af-jupyter/rolebindings", ADMIN_BINDING),
    ("DELETE", "/api/v1/namespaces/af-jupyter", None),
])
def test_reader_is_refused_everything_else(cluster, reader, method, path, body):
    content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
    status, answer = call(reader, method, path, body, content_type)
    assert (status, answer["reason"]) == (403, "Forbidden"), answer
    assert ' is forbidden: User "%s" cannot ' % READER in answer["message"]  # RBAC's refusal, not another


def until_status(kubeconfig, path, status, seconds):
    """Waits until the reader's GET of PATH answers STATUS: RBAC's and authentication's caches take a moment."""
    deadline = time.monotonic() + seconds
    while call(kubeconfig, "GET", path)[0] != status:
        assert time.monotonic() < deadline, "%s did not answer %s within %s s" % (path, status, seconds)
        time.sleep(0.2)


def resource_rules(kubeconfig, namespace):
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
              "spec": {"namespace": namespace}}
    status, answer = call(kubeconfig, "POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", review)
    assert status == 201, answer
    assert answer["status"]["incomplete"] is False
    return answer["status"]["resourceRules"]


@k8s_real
@pytest.mark.parametrize("namespace, granted", [
    (ML_NAMESPACE, [{"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}]),
    (COFFEA_NAMESPACE, []),
    (ACCOUNT_NAMESPACE, []),
    ("kube-system", []),
])
def test_reader_may_list_pods_and_nothing_else(cluster, reader, tmp_path, namespace, granted):
    # What the API server itself says the reader may do, beyond what every authenticated user may
    # (system:basic-user's self-reviews), as seen by a user bound to no role at all.
    nobody = cluster.real.kubeconfig(tmp_path / "nobody.kubeconfig", cluster.real.tokens["nobody"])
    everyone = resource_rules(nobody, namespace)
    assert everyone  # the self-reviews: the comparison means something
    assert [rule for rule in resource_rules(reader, namespace) if rule not in everyone] == granted


# --- jupyter.py with that kubeconfig -----------------------------------------------------------------------------
@k8s_real
@pytest.mark.parametrize("how", ["--kubeconfig", "KUBECONFIG"])
def test_jupyter_reports_the_pods_with_the_kubeconfig(cluster, reader, run_jupyter, tmp_path, how):
    # The reader's Role is in af-jupyter alone here, so the ml service alone (the default adds coffea-casa's).
    done = (run_jupyter("--kubeconfig", reader, *ML_ONLY) if how == "--kubeconfig" else
            run_jupyter(*ML_ONLY, env={"KUBECONFIG": str(reader)}))  # as the role's cron line gives it
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    pods = cluster.get("/api/v1/namespaces/af-jupyter/pods")["items"]
    owners = sorted({pod["metadata"]["labels"]["owner"] for pod in pods
                     if "owner" in pod["metadata"].get("labels", {})
                     and pod["status"]["phase"] not in ("Succeeded", "Failed")})
    assert owners  # the pods of test_jupyter.PODS are there
    assert debug_documents(tmp_path) == [{"kind": "jupyter-ml", "cluster": "UC-AF", "token": "",
                                          "jupyter_user_count": len(owners), "users": owners}]


@k8s_real
def test_each_hub_namespace_takes_one_role_and_binding(cluster, reader, run_jupyter, tmp_path):
    refused = "ERROR:jupyter:Kubernetes API %s refused to list pods in coffea-casa: HTTP 403 Forbidden" % cluster.url
    assert the_error(run_jupyter("--kubeconfig", reader, *BOTH_SERVICES)) == refused
    assert [document["kind"] for document in debug_documents(tmp_path)] == ["jupyter-ml"]
    (tmp_path / "jupyter.json").unlink()
    assert cluster.kubectl("apply", "-n", COFFEA_NAMESPACE, "-f", ROLE_MANIFEST) == [
        "role.rbac.authorization.k8s.io/afmetrics-reader created",
        "rolebinding.rbac.authorization.k8s.io/afmetrics-reader created"]
    try:
        until_status(reader, "/api/v1/namespaces/coffea-casa/pods", 200, 10)
        done = run_jupyter("--kubeconfig", reader, *BOTH_SERVICES)
        checked = make_kubeconfig(cluster, tmp_path / "both.kubeconfig", "--check-namespace", ML_NAMESPACE,
                                  "--check-namespace", COFFEA_NAMESPACE)
    finally:
        removed = cluster.kubectl("delete", "-n", COFFEA_NAMESPACE, "-f", ROLE_MANIFEST)
    assert done.returncode == 0, done.stderr
    assert [(document["kind"], document["users"]) for document in debug_documents(tmp_path)] == [
        ("jupyter-ml", ["alice", "dave", "zoe"]), ("jupyter-coffea", ["alice", "frank"])]
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.endswith("(lists pods in af-jupyter, coffea-casa)\n")
    # The documented way to take a namespace's access away.
    assert removed == ['role.rbac.authorization.k8s.io "afmetrics-reader" deleted',
                       'rolebinding.rbac.authorization.k8s.io "afmetrics-reader" deleted']
    until_status(reader, "/api/v1/namespaces/coffea-casa/pods", 403, 10)
    assert the_error(run_jupyter("--kubeconfig", reader, *BOTH_SERVICES)) == refused


@k8s_real
def test_rotated_token_is_refused_until_the_kubeconfig_is_made_again(cluster, reader, run_jupyter, tmp_path):
    old_token = cluster.token()
    delete, apply = documented_rotation()
    try:
        # The controller deletes the Secret of a deleted ServiceAccount at once: in the other order kubectl may
        # find it gone (NotFound, exit 1), as CI once did.
        assert cluster.kubectl(*delete) == [
            'secret "afmetrics-reader-token" deleted', 'serviceaccount "afmetrics-reader" deleted']
        assert cluster.kubectl(*apply) == [
            "namespace/afmetrics unchanged", "serviceaccount/afmetrics-reader created",
            "secret/afmetrics-reader-token created"]
        # kube-apiserver caches each token it accepted for 10 s: the old one is refused within that.
        until_status(reader, "/api/v1/namespaces/af-jupyter/pods", 401, 20)
        assert the_error(run_jupyter("--kubeconfig", reader, *ML_ONLY)) == (
            "ERROR:jupyter:Kubernetes API %s refused to list pods in af-jupyter: HTTP 401 Unauthorized"
            % cluster.url)
    finally:
        # The account the module's other tests use, whatever failed (and without hiding it).
        cluster.kubectl("apply", "-f", MANIFEST, check=False)
        done = make_kubeconfig(cluster, reader)  # waits for the controller to issue the new token
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(reader.read_text())["users"][0]["user"]["token"] not in ("", old_token)
    assert run_jupyter("--kubeconfig", reader, *ML_ONLY).returncode == 0


def documented_rotation():
    """docs/installing.md's two kubectl commands that rotate the token, as arguments (the manifest's path made whole)."""
    guide = (REPO / "docs" / "installing.md").read_text()
    block = guide[guide.index("To rotate the token"):].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("kubectl ")]
    assert len(commands) == 2, block
    return [[str(REPO / arg) if arg.startswith("deploy/") else arg for arg in command] for command in commands]


# --- the script's other paths ------------------------------------------------------------------------------------
@k8s_real
def test_admin_kubeconfig_from_the_environment_and_stdout(cluster, tmp_path):
    done = make_kubeconfig(cluster, "-", admin=False, env={"KUBECONFIG": str(cluster.admin_kubeconfig)})
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["users"] == [{"name": "afmetrics-reader",
                                                     "user": {"token": cluster.token()}}]
    assert done.stderr.startswith("afmetrics-kubeconfig: wrote the kubeconfig to stdout: %s " % cluster.url)


@k8s_real
def test_ansible_variables_are_the_same_access(cluster, tmp_path):
    output = tmp_path / "kube_vault.yml"
    done = make_kubeconfig(cluster, output, "--format", "ansible")
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("afmetrics-kubeconfig: wrote the role's variables to %s: " % output)
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert yaml.safe_load(output.read_text()) == {"afmetrics_kube_server": cluster.url,
                                                  "afmetrics_kube_ca": cluster.real.ca_pem.decode(),
                                                  "afmetrics_kube_token": cluster.token()}


@k8s_real
def test_server_named_otherwise_is_the_one_written_and_checked(cluster, tmp_path):
    other_name = cluster.url.replace("127.0.0.1", "localhost")  # in the server certificate too
    output = tmp_path / "reader.kubeconfig"
    done = make_kubeconfig(cluster, output, "--server", other_name + "/")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(output.read_text())["clusters"][0]["cluster"]["server"] == other_name


@k8s_real
def test_certificate_authority_that_does_not_verify_the_server(cluster, tmp_path, ca_file):
    output = tmp_path / "reader.kubeconfig"
    error = the_failure(make_kubeconfig(cluster, output, "--certificate-authority", ca_file), output)
    assert error.startswith("cannot reach Kubernetes API %s to list pods in af-jupyter with the new kubeconfig: "
                            "SSLError (" % cluster.url), error
    assert "certificate verify failed" in error
    # Unchecked, it is written with that CA: for a server this machine cannot reach.
    done = make_kubeconfig(cluster, output, "--certificate-authority", ca_file, "--no-check")
    assert done.returncode == 0, done.stderr
    assert done.stderr.endswith("(not checked)\n")
    written = yaml.safe_load(output.read_text())["clusters"][0]["cluster"]["certificate-authority-data"]
    assert base64.b64decode(written) == open(ca_file, "rb").read()


@k8s_real
def test_check_fails_in_a_namespace_without_the_role(cluster, tmp_path):
    output = tmp_path / "reader.kubeconfig"
    assert the_failure(make_kubeconfig(cluster, output, "--check-namespace", COFFEA_NAMESPACE), output) == (
        "Kubernetes API %s refused to list pods in coffea-casa with the new kubeconfig: HTTP 403 Forbidden: "
        "kubectl apply -n coffea-casa -f deploy/kubernetes/afmetrics-reader-role.yaml" % cluster.url)


@k8s_real
def test_token_not_yet_issued_then_issued(cluster, tmp_path):
    output = tmp_path / "reader.kubeconfig"
    controller = cluster.pid("kube-controller-manager")
    os.kill(controller, signal.SIGSTOP)  # a controller-manager that is down or behind
    try:
        cluster.token_secret("afmetrics-reader-late-token")
        done = make_kubeconfig(cluster, output, "--secret", "afmetrics-reader-late-token", "--wait", "1")
    finally:
        os.kill(controller, signal.SIGCONT)
    assert the_failure(done, output) == (
        "token not yet issued: Secret afmetrics/afmetrics-reader-late-token has no token after 1 s; "
        "kube-controller-manager's token controller fills it in: is it running? (--wait S waits longer)")
    done = make_kubeconfig(cluster, output, "--secret", "afmetrics-reader-late-token")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(output.read_text())["users"][0]["user"]["token"] == cluster.token(
        "afmetrics-reader-late-token")


@pytest.fixture(scope="module")
def strays(cluster):
    """Secrets beside the reader's that --secret may name by mistake: another account's token, an Opaque one."""
    cluster.real.create("/api/v1/namespaces/afmetrics/serviceaccounts", {
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "afmetrics-other"}})
    cluster.token_secret("afmetrics-other-token", account="afmetrics-other")
    cluster.real.create(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "afmetrics-opaque"},
                                  "data": {"token": base64.b64encode(b"not-a-token").decode()}})


@k8s_real
@pytest.mark.parametrize("args, expected", [
    (["--service-account", "afmetrics-nobody"],
     "no service account afmetrics/afmetrics-nobody: kubectl apply -f deploy/kubernetes/afmetrics-reader.yaml first"),
    (["--namespace", "no-such-namespace"], "no service account no-such-namespace/afmetrics-reader: kubectl apply "
                                           "-f deploy/kubernetes/afmetrics-reader.yaml first"),
    (["--secret", "afmetrics-missing"],
     "no Secret afmetrics/afmetrics-missing: kubectl apply -f deploy/kubernetes/afmetrics-reader.yaml first"),
    (["--secret", "afmetrics-other-token"], "Secret afmetrics/afmetrics-other-token is not a token of service "
                                            "account afmetrics/afmetrics-reader (type "
                                            "kubernetes.io/service-account-token, for afmetrics-other)"),
    (["--secret", "afmetrics-opaque"], "Secret afmetrics/afmetrics-opaque is not a token of service account "
                                       "afmetrics/afmetrics-reader (type Opaque, for no service account)"),
    (["--context", "no-such-context"], "cannot load the admin kubeconfig {admin}: Invalid kube-config file. "
                                       "Expected object with name no-such-context in {admin}/contexts list"),
    (["--certificate-authority", "/nonexistent/ca.crt"],
     "cannot read --certificate-authority /nonexistent/ca.crt: No such file or directory"),
    (["--certificate-authority", str(MANIFEST)], "--certificate-authority %s is not a PEM certificate" % MANIFEST),
])
def test_what_the_cluster_lacks_is_one_line(cluster, strays, tmp_path, args, expected):
    output = tmp_path / "reader.kubeconfig"
    assert the_failure(make_kubeconfig(cluster, output, *args), output) == expected.format(
        admin=cluster.admin_kubeconfig)


@k8s_real
def test_unreachable_server(cluster, tmp_path, unreachable_kubernetes_url):
    admin = cluster.real.kubeconfig(tmp_path / "admin.conf", cluster.real.tokens["admin"],
                                    server=unreachable_kubernetes_url)
    output = tmp_path / "reader.kubeconfig"
    error = the_failure(make_kubeconfig(cluster, output, admin=admin), output)
    assert error.startswith("cannot reach Kubernetes API %s to read service account afmetrics/afmetrics-reader: "
                            % unreachable_kubernetes_url), error
    assert "refused" in error.lower()


@k8s_real
@pytest.mark.parametrize("token, expected", [
    ("nobody", "Kubernetes API {url} refused to read service account afmetrics/afmetrics-reader: HTTP 403 "
               "Forbidden (the admin kubeconfig needs get on serviceaccounts and secrets in afmetrics)"),
    ("revoked", "Kubernetes API {url} refused to read service account afmetrics/afmetrics-reader: HTTP 401 "
                "Unauthorized (the admin kubeconfig needs get on serviceaccounts and secrets in afmetrics)"),
])
def test_admin_without_rights(cluster, tmp_path, token, expected):
    admin = cluster.real.kubeconfig(tmp_path / "admin.conf", cluster.real.tokens.get(token, token))
    output = tmp_path / "reader.kubeconfig"
    assert the_failure(make_kubeconfig(cluster, output, admin=admin), output) == expected.format(url=cluster.url)


@k8s_real
def test_output_that_cannot_be_written(cluster, tmp_path):
    output = tmp_path / "missing" / "reader.kubeconfig"
    assert the_failure(make_kubeconfig(cluster, output), output) == (
        "cannot write %s: No such file or directory" % output)


@k8s_real
def test_admin_kubeconfig_that_does_not_load(cluster, tmp_path):
    output = tmp_path / "reader.kubeconfig"
    broken = tmp_path / "admin.conf"
    broken.write_text("clusters: [unclosed\n")
    error = the_failure(make_kubeconfig(cluster, output, admin=broken), output)
    assert error.startswith("cannot load the admin kubeconfig %s: " % broken), error
    # Neither --kubeconfig nor $KUBECONFIG, and no ~/.kube/config.
    error = the_failure(make_kubeconfig(cluster, output, admin=False, env={"HOME": str(tmp_path)}), output)
    assert error.startswith("cannot load the admin kubeconfig ~/.kube/config: "), error


# --- usage errors: no cluster needed -----------------------------------------------------------------------------
@pytest.mark.parametrize("args, expected", [
    ([], "the following arguments are required: -o/--output"),
    (["-o", "x", "--wait", "-1"], "argument --wait: '-1' is not a number of seconds >= 0"),
    (["-o", "x", "--timeout", "soon"], "argument --timeout: 'soon' is not a number of seconds"),
    (["-o", "x", "--server", "http://k8s.example:6443"],
     "argument --server: 'http://k8s.example:6443' is not an https:// URL"),
    (["-o", "x", "--no-check", "--check-namespace", "af-jupyter"],
     "--no-check and --check-namespace contradict each other"),
])
def test_bad_usage_is_one_line(args, expected):
    done = run_script(*args)
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", "afmetrics-kubeconfig: error: %s (see --help)\n" % expected)


def test_never_writes_the_token_to_a_terminal():
    terminal, other_end = pty.openpty()
    try:
        done = run_script("-o", "-", stdout=other_end)
    finally:
        os.close(other_end)
        os.close(terminal)
    assert (done.returncode, done.stderr) == (2, "afmetrics-kubeconfig: error: refusing to write the token to a "
                                                 "terminal: give -o FILE or redirect stdout (see --help)\n")


def test_help_gives_the_steps():
    done = run_script("--help")
    assert done.returncode == 0, done.stderr
    for step in ("kubectl apply -f deploy/kubernetes/afmetrics-reader.yaml",
                 "kubectl apply -n af-jupyter -f deploy/kubernetes/afmetrics-reader-role.yaml",
                 "scripts/afmetrics-kubeconfig -o afmetrics-reader.kubeconfig",
                 "kubectl " + " ".join(documented_rotation()[0])):  # the documented rotation, the Secret first
        assert step in done.stdout
