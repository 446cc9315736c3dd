"""A stand-in for the old afmetrics_collector (maniaclab/afmetrics_collector at 6778f64, src/afmetrics_collector/),
which cannot be committed here and which no container can fetch: what its -d writes, by its formulas, written
from reading its code, for Molecule and tests/test_compare.py to compare the role's collectors with.

Like the old tool: the same options; each collector in its order (jupyter, ssh, host, batch) and the first that
fails ends the run with a traceback; -d appends json.dumps(document, indent=4) to jupyter-debug.json, ssh.json,
host.json and condor.json in the current directory, nothing between two documents. Without -d it only logs the
line its cron runs leave in the log, and collects nothing (the old tool POSTs each document: nothing here could
reach an endpoint). Unlike it: no Kubernetes client, so -j fails
as the old tool does where it cannot load a kubeconfig; /proc read directly where it used psutil (the same
figures: psutil's total memory is MemTotal, its network counters /proc/net/dev's).
"""
import argparse
import grp
import hashlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time

from afmetrics_collector import __version__

JOB_STATES = {"0": "unexpanded", "1": "idle", "2": "running", "3": "removed", "4": "finished", "5": "held",
              "6": "submission_err"}
EXCLUDED_OWNER = "atlas-coffea"
DISKS = ["/home", "/data", "/scratch"]
NETWORK_STATE = "/run/afmetrics.json"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="afmetrics_collector")
    for flags, dest in [(["--host"], "host"), (["-s", "--ssh"], "ssh"), (["-S", "--ssh-history"], "ssh_history"),
                        (["-j", "--jupyter"], "jupyter"), (["-b", "--batch"], "batch"),
                        (["-o", "--obfuscate-users"], "obf_users"), (["-d", "--debug"], "debug_local")]:
        parser.add_argument(*flags, dest=dest, action="store_true")
    parser.add_argument("-v", "--verbose", dest="loglevel", action="store_const", const=1)
    parser.add_argument("-vv", "--very-verbose", dest="loglevel", action="store_const", const=2)
    for flags, dest, default in [(["-n", "--namespace"], "ns", "af-jupyter"), (["-l", "--label"], "label", "owner"),
                                 (["-t", "--token"], "token", None), (["-c", "--cluster"], "cluster", "UC-AF"),
                                 (["-u", "--url"], "url", "https://af.atlas-ml.org/"),
                                 (["-O", "--obfuscate-hosts"], "obf_hosts", ""), (["-z", "--salt"], "salt", ""),
                                 (["-g", "--group"], "group", "")]:
        parser.add_argument(*flags, dest=dest, default=default)
    parser.add_argument("-q", "--queue", dest="queue", action="append", default=[])
    parser.add_argument("--version", action="version", version="afmetrics_collector " + __version__)
    return parser.parse_args(argv)


def in_group(user, group):
    groups = [g.gr_name for g in grp.getgrall() if user in g.gr_mem]
    groups.append(grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name)  # an unknown user: KeyError, as there
    return group in groups


def user_id(args, user):
    return hashlib.sha256((args.salt + user).encode("utf-8")).hexdigest()[:8] if args.obf_users else user


def node_name(args):
    name = socket.gethostname()
    return "atlas" + "".join(c for c in name if c.isdigit()) + "." + args.obf_hosts if args.obf_hosts else name


def first_words(argv, shell=False):
    """The distinct first words of a command's output lines, in order."""
    words = []
    output = subprocess.run(argv, shell=shell, stdout=subprocess.PIPE, check=False).stdout.decode("utf-8")
    for line in output.splitlines():
        if line.split() and line.split()[0] not in words:
            words.append(line.split()[0])
    return words


def users_documents(args, kind, users, fields):
    if args.group:
        users = [user for user in users if in_group(user, args.group)]
    users = [user_id(args, user) for user in users]
    return [dict({"token": args.token, "kind": kind, "cluster": args.cluster}, **fields(users))]


def jupyter(args):
    kubeconfig = os.environ.get("KUBECONFIG", os.path.expanduser("~/.kube/config"))
    raise RuntimeError("Invalid kube-config file. No configuration found: %s (the stand-in has no Kubernetes "
                       "client)" % kubeconfig)


def ssh(args):
    users = first_words(["who"])
    if args.ssh_history:
        users.extend(first_words("/usr/bin/last -w -s -5min | head -n -2", shell=True))
    return users_documents(args, "ssh", users, lambda names: {
        "login_node": node_name(args), "ssh_user_count": len(names), "users": names})


def meminfo():
    fields = {}
    with open("/proc/meminfo") as handle:
        for line in handle:
            name, value = line.split(":")
            fields[name] = int(value.split()[0]) * 1024
    return fields["MemTotal"], fields["MemAvailable"]


def network_counters():
    sent = received = 0
    with open("/proc/net/dev") as handle:
        for line in handle.readlines()[2:]:
            counters = line.split(":", 1)[1].split()
            received, sent = received + int(counters[0]), sent + int(counters[8])
    return sent, received


def network(previous_path=NETWORK_STATE):
    sent, received = network_counters()
    now = int(time.time() * 1000)
    try:
        with open(previous_path) as handle:
            previous = json.load(handle)
    except (OSError, ValueError):
        previous = {}
    if previous.get("timestamp", 0) < now - 3600 * 1000:
        previous = {"sent": sent, "received": received, "timestamp": now}
    with open(previous_path, "w") as handle:
        json.dump({"sent": sent, "received": received, "timestamp": now}, handle)
    return {"sent": sent - previous["sent"], "received": received - previous["received"],
            "interval": (now - previous["timestamp"]) / 1000}


def mtab_device(path):
    with open("/etc/mtab") as handle:
        for line in handle:
            words = line.split(" ")
            if len(words) > 1 and words[1] == path:
                return words[0].replace("/dev/", "")
    return ""


def host(args):
    header = {"token": args.token, "kind": "host", "cluster": args.cluster, "login_node": node_name(args)}
    total, available = meminfo()
    documents = [dict(header, kind="CPU", load=os.getloadavg()[0]),
                 dict(header, kind="MEM", total=total, available=available),
                 dict(header, kind="NETWORK", network=network())]
    for path in DISKS:
        document = dict(header, kind="DISK")
        device = mtab_device(path)
        if device:
            document["device"] = device
        document["mount"] = path
        usage = shutil.disk_usage(path)  # a missing mount: FileNotFoundError, no host document at all
        document.update(total=usage.total, used=usage.used, free=usage.free, utilization=usage.used / usage.total)
        documents.append(document)
    return documents


def condor_json(argv):
    return json.loads(subprocess.run(argv, stdout=subprocess.PIPE, check=False).stdout)


def batch(args):
    header = {"token": args.token, "cluster": args.cluster}
    documents = []
    for spec in args.queue:
        queue = dict(zip(["name", "constraint"], spec.split(":")))
        constraint = ["-constraint", queue["constraint"]] if queue["constraint"] else []
        totals = condor_json(["condor_q", "-all", "-totals", "-json"] + constraint)[0]
        running = condor_json(["condor_q", "-all", "-run", "-autoformat", "CpusProvisioned", "MemoryProvisioned",
                               "-json"] + constraint) or []
        documents.append(dict(header, kind="condorqueue", queue=queue["name"], idle=totals["Idle"],
                              running=totals["Running"], held=totals["Held"],
                              allocated_cores=sum(int(ad.get("CpusProvisioned", 0)) for ad in running),
                              allocated_mem=sum(int(ad.get("MemoryProvisioned", 0)) for ad in running)))
    queued = subprocess.run(["condor_q", "-all", "-constraint", 'Owner =!= "%s"' % EXCLUDED_OWNER,
                             "-format", "%s ", "Owner", "-format", "%d.", "ClusterId", "-format", "%d ", "ProcId",
                             "-format", "%d ", "RemoteWallClockTime", "-format", "%s \n", "JobStatus"],
                            stdout=subprocess.PIPE, check=False).stdout.decode("utf-8")
    finished = subprocess.run(["condor_history", "-constraint",
                               'JobStatus==4 && JobFinishedHookDone>=%s && Owner =!= "%s"'
                               % (time.time() - 360, EXCLUDED_OWNER),
                               "-format", "%s ", "Owner", "-format", "%d.", "ClusterId", "-format", "%d ", "ProcId",
                               "-format", "%d \n", "RemoteWallClockTime"],
                              stdout=subprocess.PIPE, check=False).stdout.decode("utf-8")
    jobs = [dict(header, kind="condorjob", users=w[0], Id=w[1], Runtime=int(w[2]),
                 state=JOB_STATES.get(w[3], "unknown")) for w in map(str.split, queued.splitlines()) if w]
    jobs += [dict(header, kind="condorjob", state="finished", users=w[0], Id=w[1], Runtime=int(w[2]))
             for w in map(str.split, finished.splitlines()) if w]
    for job in jobs:
        if args.group and not in_group(job["users"], args.group):
            continue
        documents.append(dict(job, users=user_id(args, job["users"])))
    return documents


COLLECTORS = [("jupyter", jupyter, "jupyter-debug.json"), ("ssh", ssh, "ssh.json"), ("host", host, "host.json"),
              ("batch", batch, "condor.json")]


def main(argv):
    args = parse_args(argv)
    if not args.debug_local:
        # What its cron line leaves in the log; nothing is collected or sent.
        print("[%s] INFO:afmetrics_collector.skeleton:the old afmetrics_collector %s ran"
              % (time.strftime("%Y-%m-%d %H:%M:%S"), __version__))
        return
    for flag, collect, debug_file in COLLECTORS:
        if getattr(args, flag):
            for document in collect(args):
                with open(debug_file, "a") as handle:
                    handle.write(json.dumps(document, indent=4))


def run():
    main(sys.argv[1:])


if __name__ == "__main__":
    run()
