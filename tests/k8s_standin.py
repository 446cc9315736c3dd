"""A local HTTPS Kubernetes API stand-in for the jupyter.py tests, and its pytest fixtures.

It answers what jupyter.py asks, as kube-apiserver 1.20 with static-token auth and RBAC does (compared with
scripts/kube-apiserver): `GET /api/v1/namespaces/{ns}/pods?labelSelector=...` gives a PodList sorted by pod name;
a missing or unknown bearer token gives a 401 `Status`, a known token without rights in the namespace a 403.
Its own CA (trustme) signs the server certificate; write_kubeconfig() and write_serviceaccount() give the
collector what it needs to trust and authenticate to it. `delay` holds every answer back (timeout tests).

Fixtures: `kubernetes_api` (a fresh stand-in per test), `unreachable_kubernetes_url` and `run_jupyter`. A pytest
plugin (pytest_plugins in tests/conftest.py) that also registers the `k8s_real` marker: those tests run only with
-m k8s_real.
Elsewhere (bench/): `ca = trustme.CA(); ca.cert_pem.write_to_path(path); api = KubernetesStandIn(ca, path)`, then
api.allow(token, user, namespaces), api.add_pod(...), api.write_kubeconfig(...), and api.close() at the end.
"""
import base64
import datetime
import http.server
import json
import re
import socket
import ssl
import sys
import threading
import urllib.parse
import uuid

import pytest
import trustme

from conftest import write_ca_file

_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?%s$" % _LABEL_NAME)
_LABEL_VALUE = re.compile(r"^(%s)?$" % _LABEL_NAME)
_REQUIREMENT = re.compile(r"^\s*(?P<key>[^\s!=(),]+)\s*(?:(?P<operator>==|=|!=)\s*(?P<value>[^\s!=(),]*)"
                          r"|\s(?P<set_operator>in|notin)\s*\((?P<values>[^()]*)\))?\s*$")
_PODS_PATH = re.compile(r"^/api/v1/namespaces/(?P<namespace>[a-z0-9]([-a-z0-9]*[a-z0-9])?)/pods/?$")


class SelectorError(ValueError):
    pass


def parse_label_selector(text):
    """Label selector -> a predicate on a labels dict; the syntax kube-apiserver accepts, else SelectorError.

    Terms, joined by commas: `key`, `!key`, `key=value`, `key==value`, `key!=value`, `key in (a,b)`,
    `key notin (a,b)`. As in Kubernetes, `!=` and `notin` also match pods that lack the key.
    """
    requirements = []
    for term in _split_terms(text):
        term = term.strip()
        if not term:
            if text.strip():
                raise SelectorError("unable to parse requirement: found ',', expected: identifier")
            continue
        negated = term.startswith("!")
        match = _REQUIREMENT.match(term[1:] if negated else term)
        if not match or (negated and (match.group("operator") or match.group("set_operator"))):
            raise SelectorError("unable to parse requirement: %r is not a valid requirement" % term)
        key = match.group("key")
        if not _LABEL_KEY.match(key):
            raise SelectorError("unable to parse requirement: invalid label key %r" % key)
        if match.group("set_operator"):
            values = {value.strip() for value in match.group("values").split(",")}
            operator = match.group("set_operator")
        elif match.group("operator"):
            values = {match.group("value")}
            operator = "notin" if match.group("operator") == "!=" else "in"
        else:
            values, operator = None, "doesnotexist" if negated else "exists"
        for value in values or ():
            if not _LABEL_VALUE.match(value):
                raise SelectorError("unable to parse requirement: invalid label value %r" % value)
        requirements.append((key, operator, values))
    return lambda labels: all(_satisfies(labels, *requirement) for requirement in requirements)


def _split_terms(text):
    """Split at the commas that separate terms, not those inside `in (a,b)`."""
    terms, depth, start = [], 0, 0
    for index, character in enumerate(text):
        depth += {"(": 1, ")": -1}.get(character, 0)
        if character == "," and depth == 0:
            terms.append(text[start:index])
            start = index + 1
    terms.append(text[start:])
    return terms


def _satisfies(labels, key, operator, values):
    if operator == "exists":
        return key in labels
    if operator == "doesnotexist":
        return key not in labels
    if operator == "in":
        return key in labels and labels[key] in values
    return key not in labels or labels[key] not in values  # notin


def status(code, reason, message, details=None):
    """A Kubernetes `Status` object, as the apiserver sends with every error."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    if details is not None:
        body["details"] = details
    return body


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as kube-apiserver does

    def log_message(self, *args):
        pass

    def do_GET(self):
        api = self.server.api
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        authorization = self.headers.get("Authorization", "")
        with api.lock:
            api.requests.append({"path": url.path, "query": query, "authorization": authorization})
        if api.delay:
            api.released.wait(api.delay)
        code, body = api.answer(url.path, query, authorization)
        self._send(code, body)

    def _send(self, code, body):
        payload = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def finish_request(self, request, client_address):
        # Nagle's algorithm would hold each answer back until the client's delayed ACK: 43 ms a call.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The TLS handshake runs here, in the connection's thread, so a stalled client blocks no one else.
        try:
            connection = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client gave up or does not trust our CA, as with any server
        try:
            super().finish_request(connection, client_address)
        finally:
            connection.close()

    def handle_error(self, request, client_address):
        # A client that timed out and hung up while we answered (the slow mode's purpose) is no error here.
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):
            super().handle_error(request, client_address)


class KubernetesStandIn:
    """An HTTPS Kubernetes API on 127.0.0.1 serving pods of any namespace to the tokens allowed to list them."""

    def __init__(self, ca, ca_file):
        """CA: a trustme.CA, which signs the server's certificate; CA_FILE: that CA as a PEM file."""
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.delay = 0.0  # seconds every answer is held back
        self.requests = []  # {"path", "query", "authorization"} of every request, in order
        self._users = {}  # bearer token -> (user name, namespaces the user may list pods in)
        self._pods = {}  # namespace -> {pod name: pod}
        self._resource_version = 1000
        self.ca_pem, self.ca_file = ca.cert_pem.bytes(), ca_file
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.api = self
        self.server.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(self.server.tls)
        self.port = self.server.server_address[1]
        self.url = "https://127.0.0.1:%d" % self.port
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def allow(self, token, user, namespaces=()):
        """Accept TOKEN as USER, who may list pods in NAMESPACES (none: authenticated, yet every list is 403)."""
        with self.lock:
            self._users[token] = (user, set(namespaces))

    def add_pod(self, namespace, name, labels=None, phase="Pending", annotations=None):
        """Create a pod (as the API would: uid, resourceVersion, creationTimestamp) and return it."""
        with self.lock:
            self._resource_version += 1
            pod = {
                "metadata": {
                    "name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                    "resourceVersion": str(self._resource_version),
                    "creationTimestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
                "spec": {
                    "containers": [{"name": "notebook", "image": "jupyter/scipy-notebook:latest", "resources": {},
                                    "terminationMessagePath": "/dev/termination-log",
                                    "terminationMessagePolicy": "File", "imagePullPolicy": "Always"}],
                    "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                    "securityContext": {}, "schedulerName": "default-scheduler", "priority": 0,
                    "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
                },
                "status": {"phase": phase, "qosClass": "BestEffort"},
            }
            if labels:  # the API leaves out an empty labels map, and an empty annotations map
                pod["metadata"]["labels"] = dict(labels)
            if annotations:
                pod["metadata"]["annotations"] = dict(annotations)
            self._pods.setdefault(namespace, {})[name] = pod
            return pod

    def answer(self, path, query, authorization):
        """(HTTP status, JSON body) for a GET, in the apiserver's order: authenticate, authorize, then serve."""
        scheme, _, token = authorization.partition(" ")
        with self.lock:
            user = self._users.get(token.strip()) if scheme.lower() == "bearer" else None
            if user is None:
                return 401, status(401, "Unauthorized", "Unauthorized")
            match = _PODS_PATH.match(path)
            if not match:
                return 404, status(404, "NotFound", "the server could not find the requested resource", {})
            name, namespaces = user
            namespace = match.group("namespace")
            if namespace not in namespaces:
                return 403, status(403, "Forbidden", 'pods is forbidden: User "%s" cannot list resource "pods" in '
                                   'API group "" in the namespace "%s"' % (name, namespace), {"kind": "pods"})
            try:
                selected = parse_label_selector(query.get("labelSelector", [""])[0])
            except SelectorError as error:
                return 400, status(400, "BadRequest", str(error))
            pods = self._pods.get(namespace, {})
            items = [pods[pod] for pod in sorted(pods) if selected(pods[pod]["metadata"].get("labels", {}))]
            return 200, {"kind": "PodList", "apiVersion": "v1",
                         "metadata": {"resourceVersion": str(self._resource_version)}, "items": items}

    def in_cluster_environment(self):
        """The environment a pod sees: where the API is (the service account files say who the pod is)."""
        return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.port)}

    def write_kubeconfig(self, path, token, server=None):
        """A kubeconfig for TOKEN that trusts this stand-in's CA (SERVER: another URL, e.g. an unreachable one)."""
        return write_kubeconfig(path, server or self.url, self.ca_pem, token)

    def write_serviceaccount(self, directory, token, namespace="af-jupyter"):
        """A pod's service account files for TOKEN, trusting this stand-in's CA."""
        return write_serviceaccount(directory, self.ca_pem, token, namespace)

    def close(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def write_kubeconfig(path, server, ca_pem, token):
    """A kubeconfig (JSON, which is YAML too) with one cluster, user and current context."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "af",
        "clusters": [{"name": "af", "cluster": {"server": server,
                                                "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": "collector", "user": {"token": token}}],
        "contexts": [{"name": "af", "context": {"cluster": "af", "user": "collector"}}],
    }
    path.write_text(json.dumps(config, indent=2))
    return path


def write_serviceaccount(directory, ca_pem, token, namespace):
    """The files Kubernetes mounts at /var/run/secrets/kubernetes.io/serviceaccount in a pod."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes(ca_pem)
    (directory / "namespace").write_text(namespace)
    return directory


def pytest_configure(config):
    config.addinivalue_line("markers", "k8s_real: needs the real kube-apiserver of scripts/kube-apiserver "
                                       "(make test-real)")


def pytest_collection_modifyitems(config, items):
    # `make unit` runs every file in tests/; the real apiserver's tests run once, in `make test-real` (-m k8s_real).
    # Deselected rather than skipped: they are not passing here, they are run there.
    if "k8s_real" in config.getoption("markexpr"):
        return
    real = [item for item in items if "k8s_real" in item.keywords]
    if real:
        config.hook.pytest_deselected(items=real)
        items[:] = [item for item in items if "k8s_real" not in item.keywords]


@pytest.fixture(scope="session")
def kubernetes_ca():
    return trustme.CA(organization_name="afmetrics Kubernetes stand-in")


@pytest.fixture(scope="session")
def kubernetes_ca_file(kubernetes_ca, tmp_path_factory):
    return write_ca_file(kubernetes_ca, tmp_path_factory, "ca.crt")


@pytest.fixture
def kubernetes_api(kubernetes_ca, kubernetes_ca_file):
    """A fresh stand-in: no pods, no tokens (add them with allow() and add_pod())."""
    api = KubernetesStandIn(kubernetes_ca, kubernetes_ca_file)
    yield api
    api.close()


@pytest.fixture
def run_jupyter(run_collector, tmp_path):
    """run_jupyter(*args, env=None) runs collectors/jupyter.py in debug mode (-d) in tmp_path, for cluster UC-AF."""
    def run(*args, env=None):
        return run_collector("jupyter.py", "-d", "-c", "UC-AF", "--state-dir", tmp_path / "state", *args,
                             env=env, cwd=tmp_path)
    return run


@pytest.fixture
def unreachable_kubernetes_url():
    """An https URL on 127.0.0.1 where nothing listens: the port was free a moment ago, and is closed now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return "https://127.0.0.1:%d" % port
