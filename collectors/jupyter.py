#!/usr/bin/env python3
"""JupyterHub users: for each service (NAME:NAMESPACE:LABEL; by default, as the old tool's -j,
ml:af-jupyter:owner and coffea:coffea-casa:jhub_user) one document of kind jupyter-NAME with the distinct users of
the namespace's pods that carry LABEL and have not finished: a pod's annotation of the same key when it has one,
else its label (KubeSpawner's hub.jupyter.org/username unescaped).

Kubernetes access: --kubeconfig, else $KUBECONFIG, else the in-cluster service account.
Example: KUBECONFIG=afmetrics-reader.kubeconfig python3 collectors/jupyter.py -d -v
(the pod reader's kubeconfig: deploy/kubernetes and scripts/afmetrics-kubeconfig, docs/installing.md "Kubernetes
access for jupyter"; never the cluster's admin.conf)
"""
import json
import logging
import os
import signal
import sys

import afmetrics_common as common
import afmetrics_settings

NAME = "jupyter"
SETTINGS = common.COLLECTOR_SETTINGS[NAME]
FINISHED_PHASES = {"Succeeded", "Failed"}
# KubeSpawner, Zero-to-JupyterHub's spawner, puts the user name under this key twice (jupyterhub/kubespawner,
# kubespawner/spawner.py, _build_common_labels and _build_common_annotations): as it is in an annotation (since
# 0.9), and as a label escaped to fit a label's characters: before 7.0 by escapism with "-" as the escape
# character (test_user is test-5fuser), since 7.0 kept as it is when it fits, else cut and hashed.
KUBESPAWNER_USER_KEY = "hub.jupyter.org/username"


def add_arguments(parser):
    parser.add_argument("-n", "--namespace", help="namespace of the default ml service (default af-jupyter)")
    parser.add_argument("-l", "--label", help="pod label of the default ml service holding the user name "
                                              "(default owner)")
    parser.add_argument("--service", dest="services", action="append", metavar="NAME:NAMESPACE:LABEL",
                        help="a JupyterHub service to report as kind jupyter-NAME (repeatable)")
    parser.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig file (default $KUBECONFIG, else in-cluster)")
    parser.add_argument("--serviceaccount-dir", metavar="DIR",
                        help="in-cluster service account token and ca.crt (default %s)"
                        % common.KUBERNETES_SERVICEACCOUNT_DIR)


def services_of(opts):
    """[(name, namespace, label)] from the services setting; -n/-l change the default ml service only, as the
    old tool's do (its coffea service stays coffea-casa, jhub_user)."""
    default = opts.services == afmetrics_settings.DEFAULT_JUPYTER_SERVICES
    if not default and (opts.namespace or opts.label):
        raise common.UsageError("-n/-l set the default service only; with --service give NAME:NAMESPACE:LABEL")
    services = []
    for spec in opts.services:
        parts = spec.split(":")
        if len(parts) != 3 or not all(part.strip() for part in parts):
            raise common.UsageError("bad service %r: expected NAME:NAMESPACE:LABEL, e.g. ml:af-jupyter:owner" % spec)
        services.append(tuple(part.strip() for part in parts))
    if default:
        name, namespace, label = services[0]
        services[0] = (name, opts.namespace or namespace, opts.label or label)
    return services


def validate(opts):
    services_of(opts)


def unescaped(label):
    """The user name in a label KubeSpawner escaped before 7.0 (escapism, "-" the escape character: -5f is _);
    a label that holds no such escape, as 7.0's may not, as it is."""
    import escapism  # here: only KubeSpawner's labels without their annotation need it

    try:
        return escapism.unescape(label, escape_char="-")
    except ValueError:  # "-" followed by no hex byte, or bytes that are not UTF-8: not escapism's
        return label


def pod_user(metadata, key):
    """The user of a pod: the annotation KEY, else the label KEY, unescaped when KEY is KubeSpawner's; None."""
    if not isinstance(metadata, dict):
        return None
    values = [metadata.get(field) for field in ("annotations", "labels")]
    annotation, label = (value.get(key) if isinstance(value, dict) else None for value in values)
    if isinstance(annotation, str):
        return annotation
    if isinstance(label, str) and key == KUBESPAWNER_USER_KEY:
        return unescaped(label)
    return label


def pod_users(pod_list, label):
    """Distinct users (pod_user) of the pods in a PodList (parsed JSON) that are still pending or running."""
    if not isinstance(pod_list, dict) or not isinstance(pod_list.get("items"), list):
        raise common.SourceError("Kubernetes API answered something that is not a PodList")
    users = set()
    for pod in pod_list["items"]:
        metadata, status = (pod.get(key) if isinstance(pod, dict) else None for key in ("metadata", "status"))
        user = pod_user(metadata, label)
        finished = isinstance(status, dict) and status.get("phase") in FINISHED_PHASES
        if isinstance(user, str) and not finished:
            users.add(user)
    return users


class KubeconfigError(Exception):
    """A kubeconfig that loaded but gave no credential."""


class ExecPluginTimeout(BaseException):
    """The exec plugin's time is up: a BaseException, since the client catches every Exception of its plugin."""


class ClientErrors(logging.Filter):
    """Keeps the errors the kubernetes client logs to the root logger instead of raising (an exec plugin that
    failed: it goes on without a credential, and the API answers 401), so that they become the one error."""

    def __init__(self):
        super().__init__()
        self.messages = []

    def filter(self, record):
        if record.levelno < logging.ERROR:
            return True
        self.messages.append(" ".join(record.getMessage().split()))
        return False


def load_kubeconfig(config, kubeconfig, configuration, timeout):
    """config.load_kube_config within timeout seconds, or KubeconfigError. The client runs the kubeconfig's exec
    plugin (a credential helper) with no time limit, and one waiting for a login would hold the run and its lock
    for ever: SIGALRM ends the wait, since the client gives no hook, and the plugin's processes are killed (the
    run has no other children while it loads). The client would run the plugin again, unbounded, before any
    API call once the credential is within 5 minutes of expiring: a run lasts seconds, and keeps the one it has."""
    loading = [True]

    def expired(signum, frame):
        if loading[0]:
            raise ExecPluginTimeout()

    errors, root = ClientErrors(), logging.getLogger()
    previous = signal.signal(signal.SIGALRM, expired)
    root.addFilter(errors)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.001))  # 0 would be no limit at all
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
            loading[0] = False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except ExecPluginTimeout:
        stop_children()
        raise KubeconfigError("its exec plugin gave no credential within %g s" % timeout)
    finally:
        signal.signal(signal.SIGALRM, previous)
        root.removeFilter(errors)
    configuration.refresh_api_key_hook = None
    # The client would fall back to the user's username and password, which no kube-apiserver takes since 1.19.
    if errors.messages:
        raise KubeconfigError(errors.messages[0])


def stop_children():
    """Kills every process this one started, and reaps them."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass  # gone already
    psutil.wait_procs(children, timeout=5)


def core_api(opts, timeout):
    # Imported here: kubernetes costs 0.2 s and 44 MB, which the other collectors must not pay.
    try:
        import yaml
        from kubernetes import client, config
    except ImportError as error:
        raise common.SourceError("the kubernetes package is not installed (%s): pip install 'afmetrics[jupyter]' "
                                 "or -r requirements-jupyter.txt" % error.name)

    configuration = client.Configuration()
    kubeconfig = opts.kubeconfig or os.environ.get("KUBECONFIG")
    try:
        if kubeconfig:
            load_kubeconfig(config, kubeconfig, configuration, timeout)
        else:
            config.incluster_config.InClusterConfigLoader(
                token_filename=os.path.join(opts.serviceaccount_dir, "token"),
                cert_filename=os.path.join(opts.serviceaccount_dir, "ca.crt")).load_and_set(configuration)
    except (config.ConfigException, KubeconfigError, yaml.YAMLError, TypeError, ValueError, OSError) as error:
        where = "kubeconfig %s" % kubeconfig if kubeconfig else "in-cluster config (no KUBECONFIG set)"
        raise common.SourceError("cannot load %s: %s" % (where, " ".join(str(error).split())[:200]))
    # The client retries 3 times by default, which would turn --timeout into four times itself.
    configuration.retries = 0
    return client.CoreV1Api(client.ApiClient(configuration)), configuration.host


def list_pods(api, host, namespace, label, timeout):
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        # Raw JSON: building V1Pod objects for thousands of pods costs more than the whole API call.
        reply = api.list_namespaced_pod(namespace, label_selector=label, _preload_content=False,
                                        _request_timeout=timeout)
        return json.loads(reply.data)
    except ApiException as error:
        raise common.SourceError("Kubernetes API %s refused to list pods in %s: HTTP %s %s"
                                 % (host, namespace, error.status, error.reason))
    except HTTPError as error:
        raise common.SourceError("cannot reach Kubernetes API %s: %s" % (host, common.network_failure(error)))
    except ValueError:
        raise common.SourceError("Kubernetes API %s answered with something that is not JSON" % host)


def replaced_by_next_run(document):
    return True  # user lists: the next run's replaces this one


def collect(run):
    api, host = core_api(run.opts, run.timeout())
    documents = []
    for name, namespace, label in services_of(run.opts):
        try:
            users = run.users.report_names(pod_users(list_pods(api, host, namespace, label, run.timeout()), label))
        except common.SourceError as error:
            run.source_failed(error)
            continue
        documents.append(common.jupyter_document(name, users))
    return documents


if __name__ == "__main__":
    sys.exit(common.script_main(sys.modules[__name__]))
