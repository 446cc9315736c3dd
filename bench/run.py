"""afmetrics benchmarks: every figure is the median of several runs on this machine.

Prints one table (markdown) and writes it to bench/results/latest.md. `make bench` runs it all;
`--only host,delivery` picks sections; `--runs N` sets the repetitions.
"""
import argparse
import itertools
import json
import logging
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = pathlib.Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "collectors"), str(BENCH)]

import trustme  # noqa: E402

import utmp  # noqa: E402
from latency_proxy import LatencyProxy  # noqa: E402
from receiver import Receiver  # noqa: E402

TOKEN = "bench-token"


class Table:
    def __init__(self):
        self.rows = []

    def add(self, what, wall=None, cpu=None, rss_mb=None, target="", command="", own_rss_mb=None):
        cells = ["%.3f s" % wall if wall is not None else "", "%.3f s" % cpu if cpu is not None else "",
                 ("%.1f MB" % rss_mb if rss_mb is not None else "")
                 + (" (own %.1f MB)" % own_rss_mb if own_rss_mb is not None else "")]
        self.rows.append([what] + cells + [target, "`%s`" % command if command else ""])
        print("  %-58s %10s %10s %9s  %s" % tuple([what] + cells + [target]), flush=True)

    def markdown(self):
        head = ["what", "wall (median)", "CPU (median)", "peak RSS (with children; own)", "target", "reproduce"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in self.rows]) + "\n"


def measure_collector(script, args, runs, env):
    """measure() of a collector, plus the median of its own peak RSS, without the commands it runs."""
    owns = []
    with tempfile.NamedTemporaryFile("r") as report:
        def run_once():
            result = measure([sys.executable, str(BENCH / "own_rss.py"), report.name,
                              str(REPO / "collectors" / script)] + list(args), 1, env)
            owns.append(int(open(report.name).read()) / 1024)
            return result
        # The byte-code caches a node has (the role byte-compiles the collectors): compileall writes them even
        # where PYTHONDONTWRITEBYTECODE keeps a run from doing so. One run unmeasured warms the page cache.
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "collectors")], check=True,
                       stdout=subprocess.DEVNULL)
        run_once()
        owns.clear()
        results = [run_once() for _ in range(runs)]
    wall, cpu, rss = (statistics.median(figures) for figures in zip(*results))
    return {"wall": wall, "cpu": cpu, "rss_mb": rss, "own_rss_mb": statistics.median(owns)}


def measure(argv, runs, env=None, cwd=None):
    """Median wall, CPU (user+sys) and peak RSS of a command, as GNU time reports them.

    Through /usr/bin/time rather than os.wait4 here: Linux charges a child the high-water RSS of the process
    it was forked from, and this process grows with every document its receiver keeps.
    """
    walls, cpus, peaks = [], [], []
    with tempfile.NamedTemporaryFile("r") as report:
        for _ in range(runs):
            done = subprocess.run(["/usr/bin/time", "-o", report.name, "-f", "%e %U %S %M"] + list(map(str, argv)),
                                  env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if done.returncode != 0:
                raise SystemExit("benchmark command failed: %s\n%s" % (" ".join(map(str, argv)), done.stderr[-2000:]))
            wall, user, system, peak_kb = open(report.name).read().split()[-4:]
            walls.append(float(wall))
            cpus.append(float(user) + float(system))
            peaks.append(int(peak_kb) / 1024)
    return statistics.median(walls), statistics.median(cpus), statistics.median(peaks)


def collector_env(extra=None):
    # As cron runs them: no AFMETRICS_* of the developer's, and byte-code caches written and used (a shell
    # here may set PYTHONDONTWRITEBYTECODE, which would add compiling afmetrics_common to every run).
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("AFMETRICS_") and key != "PYTHONDONTWRITEBYTECODE"}
    env.update({"AFMETRICS_CONFIG": "", "AFMETRICS_LOG_FILE": "", "AFMETRICS_TOKEN": TOKEN})
    env.update(extra or {})
    return env


class Endpoint:
    """A local HTTPS receiver, optionally behind a proxy adding a round-trip time."""

    numbers = itertools.count()

    def __init__(self, workdir, rtt=0.0):
        self.rtt = rtt
        ca = trustme.CA()
        self.ca_file = str(workdir / ("ca-%d.pem" % next(Endpoint.numbers)))  # one CA each
        ca.cert_pem.write_to_path(self.ca_file)
        self.receiver = Receiver(ca.issue_cert("127.0.0.1"), self.ca_file)
        self.proxy = LatencyProxy(self.receiver.server.server_address[1], rtt) if rtt else None
        self.url = "https://127.0.0.1:%d/" % self.proxy.port if self.proxy else self.receiver.url

    def args(self):
        return ["-u", self.url, "--ca-bundle", self.ca_file]

    def close(self):
        if self.proxy:
            self.proxy.close()
        self.receiver.close()


def bench_host_and_ssh(table, runs, workdir):
    endpoint = Endpoint(workdir)
    try:
        state = workdir / "state"
        args = ["--disk", "/", "--state-dir", str(state)] + endpoint.args()
        table.add("host.py as cron runs it (CPU, MEM, NETWORK, DISK /)",
                  **measure_collector("host.py", args, runs, collector_env()),
                  target="<= 120 ms, <= 40 MB", command="python3 collectors/host.py --disk /")
        sessions = utmp.write(workdir / "utmp", *[utmp.login("user%03d" % i, "pts/%d" % i, i, 1000 + i)
                                                  for i in range(500)])
        args = ["--utmp", str(sessions), "--state-dir", str(state)] + endpoint.args()
        table.add("ssh.py, 500 sessions in a real utmp file", **measure_collector("ssh.py", args, runs, collector_env()),
                  target="<= 120 ms, <= 40 MB", command="python3 collectors/ssh.py --utmp FILE")
    finally:
        endpoint.close()


RTTS = (0.0, 0.020)  # the endpoint on this machine, and across a WAN


def add_delivery_rows(table, what, script, args, runs, env, endpoints, command, rss_target=""):
    """A batch collector with the default settings at each round trip of ENDPOINTS, and one document per POST
    (batch_size 1, as the old tool sent them) at the first."""
    for endpoint in endpoints:
        table.add("%s, default settings, delivered at %d ms" % (what, endpoint.rtt * 1000),
                  **measure_collector(script, args + endpoint.args(), runs, env),
                  target="<= floor + 0.5 s" + rss_target, command=command)
    table.add("%s, one document per POST (batch_size 1), at 0 ms" % what,
              **measure_collector(script, args + endpoints[0].args(), runs, dict(env, AFMETRICS_BATCH_SIZE="1")),
              command="AFMETRICS_BATCH_SIZE=1 " + command)


def bench_condor(table, runs, workdir, sizes=(10000, 50000)):
    """condor.py against a real personal HTCondor (23.9.6) holding SIZES queued jobs (held jobs stay queued)."""
    import condor
    from condor_pool import SCRIPT, CondorPool

    subprocess.run([str(SCRIPT), "build", "trixie"], check=True)
    subprocess.run([str(SCRIPT), "start", "trixie"], check=True)
    pool, endpoints = CondorPool("trixie"), [Endpoint(workdir, rtt) for rtt in RTTS]
    try:
        env = collector_env(pool.environment())
        queued = 0
        for size in sizes:
            while queued < size:
                batch = min(5000, size - queued)
                # Every fourth batch is bob's and in the short queue, so both queues have work to count.
                short = queued // 5000 % 4 == 3
                pool.submit("bob" if short else "alice", "bench%d" % queued,
                            {"executable": "/bin/true", "hold": "true", "+queue": '"short"' if short else '"long"'},
                            count=batch)
                queued += batch
            print("  %d jobs queued" % queued, flush=True)
            queues = ["-q", "all:", "-q", 'short:queue=="short"']
            args = queues + ["--state-dir", str(workdir / "condor-state")]
            command = "python3 collectors/condor.py -q all: -q 'short:queue==\"short\"'"
            add_delivery_rows(table, "condor.py, %d queued jobs, 2 queues" % size, "condor.py", args, runs, env,
                              endpoints, command, rss_target=", <= 150 MB" if size >= 50000 else "")
            # The floor: the same condor_q and condor_history calls, and nothing else.
            calls = [condor.condor_command("condor_q", condor.JOB_ATTRS),
                     condor.condor_command("condor_q", condor.QUEUE_ATTRS, 'queue=="short"'),
                     ["condor_history", "-completedsince", "%d" % (time.time() - 360), "-af"] + condor.HISTORY_ATTRS]
            script = " && ".join(" ".join("'%s'" % arg for arg in call) + " >/dev/null" for call in calls)
            table.add("  floor: its condor_q and condor_history calls alone, %d jobs" % size,
                      *measure(["sh", "-c", script], runs, env), command="condor_q -all -af ...")
    finally:
        for endpoint in endpoints:
            endpoint.close()
        subprocess.run([str(SCRIPT), "stop", "trixie"], check=False)


def bench_slurm(table, runs, workdir, sizes=(10000, 50000)):
    """slurm.py against a real Slurm 22.05 (scripts/slurm-cluster) holding SIZES queued jobs: held arrays, whose
    tasks squeue --array lists one a line, as it does any pending job."""
    import slurm
    from slurm_cluster import SCRIPT, SlurmCluster, cluster_script

    cluster_script("build")
    cluster_script("start", env={"AFMETRICS_SLURM_MAX_JOBS": str(max(sizes))})
    cluster, endpoints = SlurmCluster(), [Endpoint(workdir, rtt) for rtt in RTTS]
    try:
        env = collector_env(cluster.environment())
        queued = 0
        for size in sizes:
            # The second array is bob's and in the short queue, so both queues have work to count.
            short = queued > 0
            cluster.sbatch("bob" if short else "alice", "--hold", "--array=0-%d" % (size - queued - 1),
                           "-p", "short" if short else "long")
            queued = size
            print("  %d jobs queued" % queued, flush=True)
            args = ["--slurm-queue", "all:", "--slurm-queue", "short:short", "--state-dir", str(workdir / "slurm-state")]
            command = "python3 collectors/slurm.py --slurm-queue all: --slurm-queue short:short"
            add_delivery_rows(table, "slurm.py, %d queued jobs, 2 queues" % size, "slurm.py", args, runs, env,
                              endpoints, command, rss_target=", own RSS flat" if size >= 50000 else "")
            # The floor: the same squeue, sdiag and sacct calls, and nothing else.
            calls = [slurm.squeue_command(), ["sdiag"], slurm.sacct_command(time.time() - 360, time.time() + 86400)]
            script = " && ".join(" ".join("'%s'" % arg for arg in call) + " >/dev/null" for call in calls)
            table.add("  floor: its squeue, sdiag and sacct calls alone, %d jobs" % size,
                      *measure(["sh", "-c", script], runs, dict(env, **slurm.SACCT_ENVIRONMENT)),
                      command="squeue --all --array --noheader --Format=...")
    finally:
        for endpoint in endpoints:
            endpoint.close()
        subprocess.run([str(SCRIPT), "stop"], check=False)


def bench_jupyter(table, runs, workdir, pods=2000):
    from k8s_standin import KubernetesStandIn

    ca = trustme.CA()
    ca_file = str(workdir / "k8s-ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    api = KubernetesStandIn(ca, ca_file)
    endpoint = Endpoint(workdir)
    try:
        api.allow("bench-reader", "reader", ["af-jupyter"])
        phases = ["Running", "Pending", "Succeeded", "Failed"]
        for i in range(pods):
            api.add_pod("af-jupyter", "jupyter-%05d" % i, {"owner": "user%04d" % (i % 1500)}, phases[i % 4])
        kubeconfig = api.write_kubeconfig(workdir / "kubeconfig", "bench-reader")
        args = ["--kubeconfig", str(kubeconfig), "--state-dir", str(workdir / "state")] + endpoint.args()
        table.add("jupyter.py, %d pods from the Kubernetes API stand-in" % pods,
                  **measure_collector("jupyter.py", args, runs, collector_env()), target="<= 1.5 s",
                  command="python3 collectors/jupyter.py --kubeconfig FILE")
    finally:
        endpoint.close()
        api.close()


def bench_delivery(table, runs, workdir, count=10000):
    sender = [sys.executable, str(BENCH / "send_documents.py")]
    for rtt in (0.0, 0.020):
        endpoint = Endpoint(workdir, rtt)
        label = "%d ms RTT" % (rtt * 1000)
        try:
            # The tool sites run today opens a connection per document: 10,000 of them at 20 ms would take
            # ten minutes, so that row sends a tenth as many once and its figures are scaled up (marked).
            cases = [("bare http.client, 10 connections (receiver ceiling)", ["bare", "--connections", "10"], runs, 1),
                     ("afmetrics default (arrays of 300, 10 connections)", ["afmetrics"], runs, 1),
                     ("afmetrics, arrays of 300, 1 connection", ["afmetrics", "--connections", "1"], 1, 1),
                     ("afmetrics, one document per POST (batch_size 1)", ["afmetrics", "--batch-size", "1"], runs,
                      1),
                     ("new connection per document (today's tool), x10 from %d" % (count // 10),
                      ["new-connection"], 1, 10)]
            for what, args, repetitions, scale in cases:
                wall, cpu, rss = measure(sender + args + ["--url", endpoint.url, "--ca", endpoint.ca_file,
                                                          "--count", str(count // scale)], repetitions)
                table.add("delivery of %d documents, %s: %s" % (count, label, what), wall * scale, cpu * scale, rss,
                          target="< 30 s at 20 ms" if args == ["afmetrics"] and rtt else "",
                          command="python3 bench/send_documents.py %s --count %d" % (" ".join(args), count // scale))
        finally:
            endpoint.close()


def bench_spool_during_an_outage(table, runs, workdir, queues=(1000, 10000), hours=(1, 6, 24), churn=0.01):
    """condor.py's spool while the endpoint is down: every 5 minutes a run keeps its condorqueue totals (2 queues)
    and a snapshot of each of QUEUE queued jobs, of which CHURN end (a finished document each, an event) and are
    replaced by new ones. The spool (afmetrics_state.Spool, a real file) keeps only each job's newest snapshot;
    1.0 kept every snapshot, up to spool_max_documents (100,000), then dropped the oldest."""
    import types

    import afmetrics_state
    from condor import replaced_by_next_run

    opts = types.SimpleNamespace(spool_max_documents=100000, spool_max_age_hours=168.0)
    log = logging.getLogger("bench")
    log.setLevel(logging.ERROR)  # the full spool's drop lines are part of the figures, not news
    for queue in queues:
        state = afmetrics_state.StateDir(str(workdir / ("spool-%d" % queue)), log)
        state.prepare()
        jobs, next_job, every_snapshot = list(range(queue)), queue, 0
        for run in range(1, max(hours) * 12 + 1):
            ending = jobs[:int(queue * churn)]
            jobs = jobs[len(ending):] + list(range(next_job, next_job + len(ending)))
            next_job += len(ending)
            made = [{"kind": "condorqueue", "cluster": "B", "queue": name, "idle": 0, "running": queue, "held": 0,
                     "allocated_cores": 0, "allocated_mem": 0, "timestamp": "2026-12-07T04:30:00.000Z"}
                    for name in ("all", "short")]
            made += [{"kind": "condorjob", "cluster": "B", "users": "user%03d" % (job % 300), "Id": "%d.0" % job,
                      "Runtime": run * 300, "state": "finished" if job in ending else "running",
                      "timestamp": "2026-12-07T04:30:00.000Z"} for job in ending + jobs]
            every_snapshot += len(made)
            spool = afmetrics_state.Spool(state, "condor", opts, log, replaced_by_next_run)
            started = time.monotonic()
            kept = spool.save(spool.load() + made)
            took = time.monotonic() - started
            if run % 12 == 0 and run // 12 in hours:
                size = os.path.getsize(spool.path())
                table.add("spool after %d h down, %d queued jobs: %d documents, %.1f MB (1.0: %d)"
                          % (run // 12, queue, len(kept), size / 1e6, min(every_snapshot, opts.spool_max_documents)),
                          wall=took, target="one run's load and save",
                          command="python3 bench/run.py --only spool")


def bench_late_endpoint(table, runs, workdir, late=45.0):
    """ssh.py and host.py (the umbrella, default settings) against an endpoint whose blocked queue answers LATE
    seconds after it indexed each request: how many of the documents the index holds, and how many twice."""
    endpoint = Endpoint(workdir)
    try:
        receiver = endpoint.receiver
        receiver.tokens.add(TOKEN)
        receiver.block(late)
        sessions = utmp.write(workdir / "utmp-late", utmp.login("alice", "pts/0", 60, 11))
        argv = [sys.executable, str(REPO / "collectors" / "afmetrics_collector"), "-s", "--host", "--disk", "/",
                "--utmp", str(sessions), "--state-dir", str(workdir / "late-state")] + endpoint.args()
        wall, cpu, rss = measure(argv, 1, collector_env())
        sent = len(receiver.documents)
        twice = sent - len({json.dumps(document, sort_keys=True) for document in receiver.documents})
        table.add("endpoint answering %g s late: %d documents sent, %d indexed, %d twice"
                  % (late, sent, len(receiver.index), twice), wall, cpu, rss, target="each indexed once",
                  command="python3 bench/run.py --only late")
    finally:
        endpoint.close()


def bench_group_filter(table, runs, workdir):
    results = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, str(BENCH / "group_filter.py")], capture_output=True, text=True,
                              check=True)
        results.append(json.loads(done.stdout))
    for users in results[0]:
        seconds = statistics.median(result[users]["seconds"] for result in results)
        table.add("group filter: %s users, 50,000 groups (files backend)" % users, wall=seconds,
                  target="<= 0.5 s at 5,000, linear", command="python3 bench/group_filter.py")


SECTIONS = {"host": bench_host_and_ssh, "condor": bench_condor, "slurm": bench_slurm, "jupyter": bench_jupyter,
            "delivery": bench_delivery, "late": bench_late_endpoint, "spool": bench_spool_during_an_outage,
            "groups": bench_group_filter}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections: " + ",".join(SECTIONS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--jobs", default="10000,50000", help="queue sizes of the condor and slurm sections")
    args = parser.parse_args()
    sizes = tuple(int(size) for size in args.jobs.split(","))
    table = Table()
    with tempfile.TemporaryDirectory(prefix="afmetrics-bench-") as workdir:
        for name in args.only.split(","):
            print("== %s" % name, flush=True)
            extra = {"sizes": sizes} if name in ("condor", "slurm") else {}
            SECTIONS[name](table, args.runs, pathlib.Path(workdir), **extra)
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    header = "# afmetrics benchmarks\n\n%s, %d CPUs, Python %s, median of %d runs\n\n" % (
        time.strftime("%Y-%m-%d %H:%M"), os.cpu_count(), sys.version.split()[0], args.runs)
    (results / "latest.md").write_text(header + table.markdown())
    print("\n" + table.markdown())
    print("written to %s" % (results / "latest.md"))


if __name__ == "__main__":
    main()
