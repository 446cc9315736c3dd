"""afmetrics_compare(runs): what differs between the old afmetrics_collector's debug run and the role's collectors'
on one node (files/afmetrics_compare_runs.py's output), as {"differences": [...], "expected": [...],
"same": [...]}, one line each, by kind.

differences are what a site's dashboards would see change at cutover and should not: a kind one tool sends and
the other does not, another count, user id, node name, device, size, queue total, job owner or state. expected
are the project's fixes, said in words: JobStatus 6 and 7 named (the old tool says submission_err and unknown),
the Runtime of a running job counting its current run, removed jobs reported from the history, NETWORK from the
second run on, jupyter pods that have finished left out. Values that move between two runs a second apart
(load, free memory and disk, used bytes, network bytes) are not compared.
"""

# The old tool's names for JobStatus 6 and 7 (maniaclab/afmetrics_collector src/afmetrics_collector/condor.py,
# job_st: 6 submission_err, 7 missing, so "unknown") and ours (SPEC.md).
RENAMED_STATES = {("submission_err", "transferring_output"), ("unknown", "suspended")}
# States in which a job's current run counts in its Runtime here, not in the old tool's.
RUNNING_STATES = {"running", "suspended", "transferring_output"}
COLLECTOR_KINDS = {"ssh": "ssh", "batch": "condor", "jupyter": "jupyter", "host": "CPU, MEM, NETWORK, DISK"}


def by_kind(documents):
    kinds = {}
    for document in documents:
        kinds.setdefault(document.get("kind"), []).append(document)
    return kinds


class Comparison:
    def __init__(self):
        self.differences, self.expected, self.same = [], [], []

    def check(self, where, old, new, what):
        """A difference when old and new differ, else a line saying they are the same."""
        if old == new:
            self.same.append("%s: %s the same (%s)" % (where, what, _short(new)))
        else:
            self.differences.append("%s: %s differs: old tool %s, afmetrics %s" % (where, what, _short(old),
                                                                                  _short(new)))


def _short(value):
    text = ", ".join(map(str, value)) if isinstance(value, (list, tuple, set)) else str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def compare_node_names(comparison, kind, old, new):
    comparison.check(kind, sorted({d.get("login_node") for d in old}), sorted({d.get("login_node") for d in new}),
                     "login_node")


def compare_ssh(comparison, old, new):
    compare_node_names(comparison, "ssh", old, new)
    old_users = sorted({user for d in old for user in d.get("users", [])})
    comparison.check("ssh", old_users, sorted({user for d in new for user in d.get("users", [])}), "user ids")
    old_counts = [d.get("ssh_user_count") for d in old]
    if old_counts and old_counts[0] != len(old_users):
        comparison.expected.append("ssh: the old tool counted %d sessions of %d users (a user in who and in last "
                                   "twice); afmetrics counts each user once" % (old_counts[0], len(old_users)))
        old_counts = [len(old_users)]
    comparison.check("ssh", old_counts, [d.get("ssh_user_count") for d in new], "ssh_user_count")


def compare_jupyter(comparison, kind, old, new):
    old_users = {user for d in old for user in d.get("users", [])}
    new_users = {user for d in new for user in d.get("users", [])}
    if new_users <= old_users and old_users - new_users:
        comparison.expected.append("%s: %d user(s) the old tool counted have only finished pods, which afmetrics "
                                   "leaves out" % (kind, len(old_users - new_users)))
        old_users = new_users
    comparison.check(kind, sorted(old_users), sorted(new_users), "user ids")
    comparison.check(kind, len(old_users), sum(d.get("jupyter_user_count", 0) for d in new), "jupyter_user_count")


def compare_host(comparison, kind, old, new):
    compare_node_names(comparison, kind, old, new)
    if kind == "MEM":
        comparison.check(kind, [d.get("total") for d in old], [d.get("total") for d in new], "total")
    if kind == "DISK":
        old_mounts, new_mounts = ({d.get("mount"): d for d in docs} for docs in (old, new))
        comparison.check(kind, sorted(old_mounts), sorted(new_mounts), "mounts")
        for mount in sorted(set(old_mounts) & set(new_mounts)):
            before, after = old_mounts[mount], new_mounts[mount]
            if "device" in before:
                comparison.check("DISK %s" % mount, before["device"], after.get("device"), "device")
            else:
                comparison.expected.append("DISK %s: not a mount point, for which the old tool sends no device; "
                                           "afmetrics names the file system it is on (%s)"
                                           % (mount, after.get("device")))
            comparison.check("DISK %s" % mount, before.get("total"), after.get("total"), "total bytes")


def compare_queues(comparison, old, new):
    old_queues, new_queues = ({d.get("queue"): d for d in docs} for docs in (old, new))
    comparison.check("condorqueue", sorted(old_queues), sorted(new_queues), "queues")
    for name in sorted(set(old_queues) & set(new_queues)):
        for field in ("idle", "running", "held", "allocated_cores", "allocated_mem"):
            comparison.check("condorqueue %s" % name, old_queues[name].get(field), new_queues[name].get(field),
                             field)


def compare_jobs(comparison, old, new):
    # The old tool sends a job finished in the queue and in the history twice; one is enough to compare.
    old_jobs, new_jobs = ({d.get("Id"): d for d in docs} for docs in (old, new))
    removed = sorted(job for job in set(new_jobs) - set(old_jobs) if new_jobs[job].get("state") == "removed")
    if removed:
        comparison.expected.append("condorjob: %d removed job(s) afmetrics reports from the history, which the old "
                                   "tool never did" % len(removed))
    comparison.check("condorjob", sorted(set(old_jobs)), sorted(set(new_jobs) - set(removed)), "job Ids")
    renamed = runtimes = 0
    for job in sorted(set(old_jobs) & set(new_jobs)):
        before, after = old_jobs[job], new_jobs[job]
        where = "condorjob %s" % job
        comparison.check(where, before.get("users"), after.get("users"), "owner")
        if (before.get("state"), after.get("state")) in RENAMED_STATES:
            renamed += 1
        else:
            comparison.check(where, before.get("state"), after.get("state"), "state")
        if after.get("state") in RUNNING_STATES and after.get("Runtime", 0) >= before.get("Runtime", 0):
            runtimes += before.get("Runtime") != after.get("Runtime")
        else:
            comparison.check(where, before.get("Runtime"), after.get("Runtime"), "Runtime")
    if renamed:
        comparison.expected.append("condorjob: %d job(s) in JobStatus 6 or 7, which the old tool calls "
                                   "submission_err or unknown and afmetrics transferring_output or suspended" % renamed)
    if runtimes:
        comparison.expected.append("condorjob: %d running job(s) whose Runtime counts the current run here; the old "
                                   "tool's counts only the runs that ended (RemoteWallClockTime)" % runtimes)


def compare_collector(comparison, collector, runs):
    old, new = runs["old"], runs["new"]
    old_failed, new_failed = old["rc"] != 0, new["rc"] not in (0,)
    if old_failed and new_failed and not old["documents"] and not new["documents"]:
        comparison.expected.append("%s: not compared, both failed here (old tool: %s; afmetrics: %s)" % (
            collector, "; ".join(old["errors"][-1:]) or "exit %s" % old["rc"],
            "; ".join(new["errors"][-1:]) or "exit %s" % new["rc"]))
        return
    if old_failed and not old["documents"]:
        comparison.expected.append("%s (%s): the old tool failed here and sent nothing (%s); afmetrics sent %d "
                                   "document(s)" % (collector, COLLECTOR_KINDS[collector],
                                                    "; ".join(old["errors"][-1:]) or "exit %s" % old["rc"],
                                                    len(new["documents"])))
        return
    if new_failed:
        comparison.differences.append("%s: afmetrics failed where the old tool did not: %s" % (
            collector, "; ".join(new["errors"]) or "exit %s" % new["rc"]))
    old_kinds, new_kinds = by_kind(old["documents"]), by_kind(new["documents"])
    comparison.check(collector, sorted({d.get("cluster") for d in old["documents"]}),
                     sorted({d.get("cluster") for d in new["documents"]}), "cluster")
    if "NETWORK" in old_kinds and "NETWORK" not in new_kinds:
        comparison.expected.append("NETWORK: afmetrics sends it from its second run on (its first stores the "
                                   "counters); the old tool sent the bytes since its own last run")
        del old_kinds["NETWORK"]
    comparison.check(collector, sorted(old_kinds, key=str), sorted(new_kinds, key=str), "kinds sent")
    for kind in sorted(set(old_kinds) & set(new_kinds), key=str):
        old_documents, new_documents = old_kinds[kind], new_kinds[kind]
        if kind != "condorjob":
            comparison.check(kind, len(old_documents), len(new_documents), "documents")
        if kind == "ssh":
            compare_ssh(comparison, old_documents, new_documents)
        elif str(kind).startswith("jupyter-"):
            compare_jupyter(comparison, kind, old_documents, new_documents)
        elif kind in ("CPU", "MEM", "NETWORK", "DISK"):
            compare_host(comparison, kind, old_documents, new_documents)
        elif kind == "condorqueue":
            compare_queues(comparison, old_documents, new_documents)
        elif kind == "condorjob":
            compare_jobs(comparison, old_documents, new_documents)


def afmetrics_compare(runs):
    comparison = Comparison()
    for collector in sorted(runs):
        compare_collector(comparison, collector, runs[collector])
    return {"differences": comparison.differences, "expected": comparison.expected, "same": comparison.same}


class FilterModule:
    def filters(self):
        return {"afmetrics_compare": afmetrics_compare}
