"""host.py: /proc/diskstats parsing, counters across runs, missing mounts and corrupt state."""
import collections
import json
import os
import pathlib
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time

import pytest

import host
from conftest import (COLLECTORS, collector_environment, fill, json_lines, log_lines, private_mounts, skip_or_fail,
                      spool_documents)

TOKEN = "tok-host-5a1e"
MIB = 1024 * 1024


def test_parse_real_diskstats():
    text = open("/proc/diskstats").read()
    counters = host.parse_diskstats(text)
    first = text.split()
    assert counters[first[2]] == [int(first[3]), int(first[5]) * 512, int(first[7]), int(first[9]) * 512]
    assert len(counters) == len([line for line in text.splitlines() if line.strip()])


def test_parse_diskstats_skips_malformed_lines():
    text = " 8 0 sda 10 0 80 5 20 0 160 7 0 12 12\n garbage\n 8 1 sda1 x 0 8 0 0 0 0 0 0 0 0\n\n"
    assert host.parse_diskstats(text) == {"sda": [10, 80 * 512, 20, 160 * 512]}


def test_counter_deltas_rebaseline_when_a_counter_goes_backwards():
    assert host.counter_deltas(None, [5, 5]) is None
    assert host.counter_deltas([1, 2], [4, 6]) == [3, 4]
    assert host.counter_deltas([10, 2], [4, 6]) is None  # reboot reset the counters
    assert host.counter_deltas([1, 2, 3], [4, 6]) is None


def interfaces(**counters):
    """interface_counters' shape: name=(index, sent, received)."""
    return {str(index): {"name": name, "sent": sent, "received": received}
            for name, (index, sent, received) in counters.items()}


def test_network_deltas_count_each_interface_by_its_index():
    before = interfaces(lo=(1, 100, 100), eth0=(2, 1000, 5000), veth1=(7, 700, 900), tun0=(8, 400, 400),
                        eno1=(3, 50, 50))
    # veth1 went with its container; tun0 came back with its VPN under a new index (all the new one's bytes are
    # the interval's, the old one's since the baseline are lost), veth2 is new; eno1 was renamed uplink; eth0's
    # driver reset its counters.
    now = interfaces(lo=(1, 150, 150), eth0=(2, 10, 20), tun0=(9, 30, 40), veth2=(10, 70, 90), uplink=(3, 60, 80))
    assert host.network_deltas(before, now) == ([50 + 30 + 70 + 10, 50 + 40 + 90 + 30],
                                                {"veth1": "gone", "eth0": "went back", "tun0": "made again"})
    assert host.network_deltas(before, before) == ([0, 0], {})


def test_network_deltas_of_a_reboot_without_a_boot_id():
    """Every interface of both went back: a reboot, though new ones (a container started since) count up."""
    before = interfaces(lo=(1, 100, 100), eth0=(2, 1000, 5000))
    assert host.network_deltas(before, interfaces(lo=(1, 10, 10), eth0=(2, 20, 50), veth0=(3, 5, 5))) == (
        None, {"lo": "went back", "eth0": "went back"})
    # Nothing of the baseline is left, nothing went back: the new interfaces' bytes are the interval's.
    assert host.network_deltas(before, interfaces(veth0=(3, 5, 6))) == ([5, 6], {"lo": "gone", "eth0": "gone"})


def test_total_baseline_of_earlier_versions_is_one_interface():
    now = interfaces(lo=(1, 150, 150), eth0=(2, 1200, 5600))
    before = host.baseline_interfaces({"counters": [1000, 5000]})
    assert host.network_deltas(before, host.all_interfaces(now)) == ([350, 750], {})
    before = host.baseline_interfaces({"counters": [9000, 5000]})
    assert host.network_deltas(before, host.all_interfaces(now)) == (None, {"all interfaces": "went back"})


@pytest.mark.parametrize("baseline", [
    {"interfaces": [["lo", 1, 2]]}, {"interfaces": {"1": {"name": "lo", "sent": 1}}},
    {"interfaces": {"1": {"name": "lo", "sent": True, "received": 2}}}, {"counters": [1, 2, 3]},
    {"counters": {"lo": [1, 2]}}, {"counters": [1.5, 2]}])
def test_malformed_network_baseline_is_none(baseline):
    assert host.baseline_interfaces(baseline) is None


def test_interface_counters_are_this_namespace_interfaces():
    counters = host.interface_counters()
    assert {entry["name"] for entry in counters.values()} == set(os.listdir("/sys/class/net"))
    for index, entry in counters.items():
        assert pathlib.Path("/sys/class/net/%s/ifindex" % entry["name"]).read_text().strip() == index


def run_host(run_collector, receiver, state, *more, prefix=(), timeout=120):
    return run_collector("host.py", "-c", "UC-AF", "--disk", "/", "--state-dir", state, *receiver.args(), *more,
                         env={"AFMETRICS_TOKEN": TOKEN}, cwd=state.parent, prefix=prefix, timeout=timeout)


def test_first_run_baselines_network_second_run_reports_it(run_collector, receiver, tmp_path):
    state = tmp_path / "state"
    first = run_host(run_collector, receiver, state)
    assert first.returncode == 0, first.stderr
    assert receiver.kinds() == ["CPU", "DISK", "MEM"]
    second = run_host(run_collector, receiver, state)
    assert second.returncode == 0, second.stderr
    # Documents of one run may arrive in any order (several connections).
    cpu, memory, network, disk = (receiver.of_kind(kind)[-1] for kind in ("CPU", "MEM", "NETWORK", "DISK"))
    assert isinstance(cpu["load"], float) and cpu["login_node"] == network["login_node"]
    assert 0 < memory["available"] <= memory["total"]
    assert network["kind"] == "NETWORK" and network["network"]["interval"] > 0
    assert network["network"]["sent"] >= 0 and network["network"]["received"] >= 0
    # Reserved blocks belong to neither used nor free.
    assert disk["mount"] == "/" and 0 < disk["used"] + disk["free"] <= disk["total"]
    assert disk["utilization"] == disk["used"] / disk["total"]
    assert {"kind", "cluster", "token", "login_node", "mount", "total", "used", "free", "utilization",
            "device"} <= set(disk)
    if "io" in disk:  # a device /proc/diskstats knows: I/O since the first run
        assert set(disk["io"]) == {"reads", "read_bytes", "writes", "write_bytes", "interval"}


def test_missing_mount_is_a_warning_and_others_are_reported(run_collector, tmp_path):
    done = run_collector("host.py", "-d", "--disk", "/no/such/mount", "--disk", "/", "--state-dir",
                         tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 0
    assert "WARNING:host:DISK /no/such/mount not reported: No such file or directory" in log_lines(done.stderr)
    assert [d["mount"] for d in json_lines(tmp_path / "host.json") if d["kind"] == "DISK"] == ["/"]


def test_directory_whose_mount_failed_is_a_warning_not_the_file_system_under_it(run_collector, tmp_path):
    """A mount point /etc/fstab names with nothing mounted on it (its mount failed at boot) beside a real mount,
    and a directory fstab does not name, which is reported with the file system holding it (the old tool's
    numbers for a /home that is a directory of /)."""
    unmounted, mounted = tmp_path / "unmounted", tmp_path / "mounted"
    unmounted.mkdir()
    mounted.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text("# <file system> <mount point> <type> <options> <dump> <pass>\n"
                     "UUID=0a1b /  ext4 errors=remount-ro 0 1\n/dev/sdb1 none swap sw 0 0\n"
                     "server:/export %s nfs4 defaults,_netdev 0 0\n" % unmounted)
    done = run_collector("host.py", "-d", "--disk", unmounted, "--disk", mounted, "--disk", mounted / "plain",
                         "--state-dir", tmp_path / "state", env={"MOUNTED": str(mounted), "FSTAB": str(fstab)},
                         cwd=tmp_path, prefix=private_mounts('mount -t tmpfs -o size=1m afmetrics-mounted "$MOUNTED"\n'
                                                             'mkdir "$MOUNTED/plain"\nmount --bind "$FSTAB" /etc/fstab'))
    assert done.returncode == 0, done.stderr
    assert log_lines(done.stderr) == ["WARNING:host:DISK %s not reported: nothing is mounted there (/etc/fstab "
                                      "names it)" % unmounted]
    disks = [d for d in json_lines(tmp_path / "host.json") if d["kind"] == "DISK"]
    assert [(d["mount"], d["device"], d["total"]) for d in disks] == [
        (str(mounted), "afmetrics-mounted", MIB), (str(mounted / "plain"), "afmetrics-mounted", MIB)]


@pytest.mark.parametrize("text, points", [
    ("", set()),
    ("# /etc/fstab\n\nUUID=1 / ext4 defaults 0 1\n/dev/sdb1 none swap sw 0 0\n", {"/"}),
    ("srv:/home\t/home  nfs4 rw 0 0\n/dev/x /mnt/My\\040Disk/ ext4 noauto 0 0\n", {"/home", "/mnt/My Disk"}),
    ("/dev/sdc1\n  # /data ext4\nLABEL=d /data\n", {"/data"}),
])
def test_fstab_mount_points(text, points):
    assert host.fstab_mount_points(text) == points


HUNG_FUSE = pathlib.Path(__file__).resolve().parent / "hung_fuse.py"
FUSE_INTERRUPT = 36  # what the kernel sends the server after a signal to a process waiting on a request it read
BOUND = 3  # host.py's --timeout in the runs on a hung mount
RUN_LIMIT = 120  # what run_collector allows a run
# A mount namespace of its own, where the hung mount is made and host.py runs (nsenter): no process outside it sees
# the mount, and no mount outlives it.
NAMESPACE = "echo ready; exec sleep infinity"


class HungMount:
    """A FUSE mount on path that never answers (hung_fuse.py in mode), in a mount namespace of its own where
    run() runs host.py; abort() ends its server, which aborts the connection and frees whatever waits on it."""

    def __init__(self, path, mode, directory):
        self.path, self.log = path, directory / "fuse-requests"
        self.holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", NAMESPACE],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        self.holder.stdout.readline()  # in its namespace now
        self.enter = ["nsenter", "-t", str(self.holder.pid), "-m", "--"]
        # The server and the mount(2) share the open /dev/fuse; once mount has exited, the server is its only holder.
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        try:
            self.server = subprocess.Popen([sys.executable, str(HUNG_FUSE), str(fd), mode, str(self.log)],
                                           pass_fds=(fd,), stdin=subprocess.DEVNULL)
            self.mounted = subprocess.run(
                self.enter + ["mount", "-i", "-t", "fuse", "-o", "fd=%d,rootmode=40000,user_id=0,group_id=0" % fd,
                              "afmetrics-hung", str(path)], pass_fds=(fd,), capture_output=True, text=True, timeout=60)
        finally:
            os.close(fd)

    def run(self, run_collector, receiver, state, *more):
        """host.py on / and this mount (--timeout BOUND, then more), in its namespace. Should it hang there (what this tests for), the mount is
        aborted when run_collector gives up, so that the test fails instead of waiting for ever on a process that
        SIGKILL does not end."""
        watchdog = threading.Timer(RUN_LIMIT, self.abort)
        watchdog.start()
        try:
            return run_host(run_collector, receiver, state, "--disk", self.path, "--timeout", BOUND, *more,
                            prefix=self.enter, timeout=RUN_LIMIT)
        finally:
            watchdog.cancel()

    def requests(self):
        """The opcodes of the requests the server read, but FUSE_INTERRUPT."""
        opcodes = [int(line) for line in self.log.read_text().split()] if self.log.exists() else []
        return [opcode for opcode in opcodes if opcode != FUSE_INTERRUPT]

    def abort(self):
        self.server.kill()
        self.server.wait()

    def close(self):
        self.abort()
        self.holder.kill()
        self.holder.wait()


@pytest.fixture
def hung_mount(tmp_path):
    """hung_mount(mode) -> a HungMount on tmp_path/hung (root, /dev/fuse), aborted and unmounted after the test."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        skip_or_fail("a FUSE mount needs root and /dev/fuse")
    missing = [tool for tool in ("unshare", "nsenter", "mount") if not shutil.which(tool)]
    if missing:
        skip_or_fail("not installed: %s" % " ".join(missing))
    made = []

    def make(mode):
        path = tmp_path / "hung"
        path.mkdir()
        made.append(HungMount(path, mode, tmp_path))
        if made[-1].mounted.returncode != 0:
            skip_or_fail("cannot mount a FUSE file system here: %s" % made[-1].mounted.stderr.strip())
        return made[-1]
    yield make
    for mount in made:
        mount.close()


def process_state(pid):
    """The state letter of process pid (proc(5)), None when there is none."""
    try:
        return pathlib.Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def test_still_stuck_is_the_same_process_not_ended():
    """A stuck child is known by its pid, start and boot: a pid taken again by another process, one gone (or
    a zombie), a record of another boot or without a start is not one."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        child = {"pid": sleeper.pid, "start": host.running_since(sleeper.pid), "boot": host.common.this_boot()}
        assert host.still_stuck({"/home": child}) == {"/home": child}
        for other in ({"start": child["start"] - 1}, {"start": None}, {"boot": "another boot"}, {"pid": "1"}):
            assert host.still_stuck({"/home": dict(child, **other)}) == {}
    finally:
        sleeper.kill()
    sleeper.wait()
    assert host.running_since(sleeper.pid) is None
    assert host.still_stuck({"/home": child}) == host.still_stuck({"/home": dict(child, start=None)}) == {}
    assert host.still_stuck(["not", "a", "record"]) == {}


def delivered_kinds(receiver, before):
    return sorted(document["kind"] for document in receiver.documents[before:])


def test_mount_whose_fuse_daemon_holds_its_request_is_one_warning_and_one_stuck_child(hung_mount, run_collector,
                                                                                       receiver, tmp_path):
    """A wedged FUSE daemon, which read the request and never answers: the usage child stays stuck in the kernel,
    SIGKILL or not. The run ends at its bound all the same, with the other documents delivered, and the lock free;
    the next run leaves no second child stuck there but says the mount is still hung; once the file system is
    aborted the child is gone, and the mount is asked again."""
    hung = hung_mount("holding")
    state = tmp_path / "state"
    first = hung.run(run_collector, receiver, state)
    assert first.returncode == 0, first.stderr
    [warning] = log_lines(first.stderr)
    pid = int(re.search(r"pid (\d+)", warning).group(1))
    assert warning == ("WARNING:host:DISK %s not reported: no answer within %d s, a hung mount: its usage child, "
                       "pid %d, is stuck there (not asked again until it returns)" % (hung.path, BOUND, pid))
    assert process_state(pid) == "D"  # killed, and still in the kernel
    asked = hung.requests()
    assert asked  # it reached the file system
    assert receiver.kinds() == ["CPU", "DISK", "MEM"] and receiver.of_kind("DISK")[0]["mount"] == "/"
    assert json.loads((state / "last-run-host.json").read_text())["exit_status"] == 0

    before = len(receiver.documents)
    second = hung.run(run_collector, receiver, state)  # not skipped: the stuck child holds no lock
    assert second.returncode == 0, second.stderr
    [warning] = log_lines(second.stderr)
    assert re.fullmatch(r"WARNING:host:DISK %s not reported: still hung: the usage child of an earlier run, pid %d, "
                        r"has been stuck there for \d+ (s|min) \(not asked again until it returns\)"
                        % (re.escape(str(hung.path)), pid), warning), warning
    assert hung.requests() == asked and process_state(pid) == "D"
    assert delivered_kinds(receiver, before) == ["CPU", "DISK", "MEM", "NETWORK"]

    hung.abort()
    deadline = time.monotonic() + 30
    while process_state(pid) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process_state(pid) in (None, "Z")
    third = hung.run(run_collector, receiver, state)
    assert third.returncode == 0, third.stderr
    assert log_lines(third.stderr) == [
        "WARNING:host:DISK %s not reported: Transport endpoint is not connected" % hung.path]
    assert json.loads((state / host.STUCK_STATE).read_text()) == {}


def test_mount_that_never_answers_is_one_warning_each_run_and_leaves_no_child(hung_mount, run_collector, receiver,
                                                                            tmp_path):
    """A mount whose server never answers at all, as an NFS hard mount's whose server is gone: the usage child's
    wait is one SIGKILL ends, so it is gone at the bound, nothing is kept, and every run asks again."""
    hung = hung_mount("silent")
    state = tmp_path / "state"
    for _ in range(2):
        before = len(receiver.documents)
        done = hung.run(run_collector, receiver, state)
        assert done.returncode == 0, done.stderr
        assert log_lines(done.stderr) == [
            "WARNING:host:DISK %s not reported: no answer within %d s, a hung mount" % (hung.path, BOUND)]
        assert [kind for kind in delivered_kinds(receiver, before) if kind != "NETWORK"] == ["CPU", "DISK", "MEM"]
    assert not (state / host.STUCK_STATE).exists()


def test_hung_mount_gets_no_more_than_is_left_of_the_run_budget(hung_mount, run_collector, receiver, tmp_path):
    """A run budget shorter than the timeout bounds the usage children too, and the warning says which bound it
    was; the documents made are kept."""
    hung = hung_mount("silent")
    state = tmp_path / "state"
    done = hung.run(run_collector, receiver, state, "--timeout", 60, "--run-budget", BOUND)
    assert done.returncode == 1, done.stderr
    [warning] = [line for line in log_lines(done.stderr) if line.startswith("WARNING")]
    assert re.fullmatch(r"WARNING:host:DISK %s not reported: no answer within [\d.]+ s, what was left of the run "
                        r"budget" % re.escape(str(hung.path)), warning), warning
    kept = receiver.documents + spool_documents(state / "spool-host.jsonl")
    assert sorted(document["kind"] for document in kept) == ["CPU", "DISK", "MEM"]


def test_interval_whose_end_cannot_be_stored_is_not_sent(run_collector, receiver, small_file_system):
    """The state dir's file system full for one run: its NETWORK and DISK I/O figures, whose end it cannot
    record, do not go, and the next run's cover that time once: the intervals sent add up to the time between the
    first baseline and the last."""
    state = small_file_system / "state"
    assert run_host(run_collector, receiver, state).returncode == 0
    first = {name: json.loads((state / name).read_text())["time"] for name in (host.NETWORK_STATE,
                                                                              host.DISKSTATS_STATE)}
    filler = fill(small_file_system)
    full = run_host(run_collector, receiver, state)
    assert full.returncode == 1
    assert [line.split(": ", 1)[0] for line in log_lines(full.stderr)] == [
        "ERROR:host:cannot store the NETWORK baseline", "ERROR:host:cannot store the DISK I/O baseline",
        "ERROR:host:cannot write the run record"], full.stderr
    assert "NETWORK" not in receiver.kinds()
    filler.unlink()
    assert run_host(run_collector, receiver, state).returncode == 0
    last = {name: json.loads((state / name).read_text())["time"] for name in first}
    [network] = receiver.of_kind("NETWORK")
    assert network["network"]["interval"] == round(last[host.NETWORK_STATE] - first[host.NETWORK_STATE], 3)
    disks = receiver.of_kind("DISK")
    assert len(disks) == 3
    if disks[2]["device"] in host.parse_diskstats(open("/proc/diskstats").read()):  # not an overlay root
        assert [disk["io"]["interval"] for disk in disks if "io" in disk] == [
            round(last[host.DISKSTATS_STATE] - first[host.DISKSTATS_STATE], 3)]


def test_disk_interval_whose_usage_the_run_budget_left_unread_goes_with_the_next_run(run_collector, receiver,
                                                                                       tmp_path):
    """The run budget used up before the disk reads: no DISK document goes, so the DISK I/O baseline stays the one
    from before that run, and the next run's interval covers its time; the other documents are spooled."""
    state = tmp_path / "state"
    assert run_host(run_collector, receiver, state).returncode == 0
    before, sent = (state / host.DISKSTATS_STATE).read_text(), len(receiver.documents)
    late = run_host(run_collector, receiver, state, "--run-budget", "0.0000001")
    assert late.returncode == 1, late.stderr
    assert "ERROR:host:DISK not reported: run budget of 1e-07 s used up" in log_lines(late.stderr), late.stderr
    kept = receiver.documents[sent:] + spool_documents(state / "spool-host.jsonl")
    assert sorted(document["kind"] for document in kept) == ["CPU", "MEM", "NETWORK"]
    assert (state / host.DISKSTATS_STATE).read_text() == before


def test_corrupt_state_is_a_fresh_start(run_collector, receiver, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / host.NETWORK_STATE).write_text("{not json")
    (state / host.DISKSTATS_STATE).write_text('["wrong shape"]')
    done = run_host(run_collector, receiver, state)
    assert done.returncode == 0
    assert any(line.startswith("WARNING:host:state file %s is unreadable" % (state / host.NETWORK_STATE))
               for line in log_lines(done.stderr))
    assert json.loads((state / host.NETWORK_STATE).read_text())["interfaces"]  # a new baseline was stored


class NetworkNamespace:
    """A network namespace of one test's own (ip netns), lo up: host.py run there (ip netns exec, which mounts its
    own /sys) sees only the interfaces the test makes there, so other processes' interfaces (a container's, another
    test's) come and go unseen, and the bytes counted are those the test sends. The receiver is not reachable
    from there: each run spools its documents (an unreachable endpoint), and the baseline moves as it does when
    they are delivered."""

    def __init__(self, name):
        self.name = name

    def run(self, *argv, env=None, check=True):
        return subprocess.run(["ip", "netns", "exec", self.name] + [str(arg) for arg in argv], capture_output=True,
                              text=True, env=collector_environment(env), check=check, timeout=120)

    def make_pair(self, traffic_bytes, names=("veth-a", "veth-b")):
        """A veth pair (the peer's end stays here too), with that many bytes sent from the first end."""
        self.run("ip", "link", "add", names[0], "type", "veth", "peer", "name", names[1])
        for name in names:
            self.run("ip", "link", "set", name, "up")
        self.send(traffic_bytes, names[0])

    def send(self, traffic_bytes, name="veth-a"):
        """TRAFFIC_BYTES in raw broadcast frames of 1500 bytes (the last one shorter) out of interface NAME: sent
        there, received on its peer."""
        self.run(sys.executable, "-c", SEND_FRAMES, name, traffic_bytes)

    def delete(self, name="veth-a"):
        self.run("ip", "link", "delete", name)  # a veth's peer goes with it

    def counters(self):
        """(sent, received) of every interface here now, as the kernel counts them in /sys."""
        script = "for i in /sys/class/net/*/statistics; do cat $i/tx_bytes $i/rx_bytes; done"
        values = [int(value) for value in self.run("sh", "-c", script).stdout.split()]
        return sum(values[0::2]), sum(values[1::2])

    def run_host(self, state, *more):
        return self.run(sys.executable, COLLECTORS / "host.py", "-c", "UC-AF", "--disk", "/", "--state-dir", state,
                        "-u", "https://127.0.0.1:9/", "--send-budget", "1", *more, env={"AFMETRICS_TOKEN": TOKEN},
                        check=False)


SEND_FRAMES = """import socket, sys
frame = b"\\xff" * 6 + b"\\x02\\x00\\x00\\x00\\x00\\x01" + b"\\x88\\xb5"  # broadcast, a local experimental type
frames, rest = divmod(int(sys.argv[2]), 1500)
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
    raw.bind((sys.argv[1], 0))
    for size in [1500] * frames + ([rest] if rest else []):
        raw.send(frame + b"x" * (size - len(frame)))
"""


@pytest.fixture
def namespace():
    if not shutil.which("ip") or os.geteuid() != 0:
        skip_or_fail("network namespaces need ip (iproute2) and root")
    name = "afmetrics-test-%s" % secrets.token_hex(4)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        space = NetworkNamespace(name)
        space.run("ip", "link", "set", "lo", "up")
        yield space
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


MB = 1000 * 1000
SMALL = 100 * 1000  # what else lo carries between two runs: their attempts to reach the endpoint


def network_of(state):
    """The NETWORK figures of the spooled documents, in the order of the runs."""
    return [document["network"] for document in spool_documents(state / "spool-host.jsonl")
            if document["kind"] == "NETWORK"]


def network_log(done):
    return [line for line in log_lines(done.stderr) if line.startswith(("INFO:host:NETWORK", "WARNING:host"))]


def test_interfaces_gone_between_runs_leave_the_rest_counted(namespace, tmp_path):
    """The total falls when an interface goes (a container's veth): counted per interface, lo's bytes are still
    the interval's, not taken for a reboot."""
    state = tmp_path / "state"
    namespace.make_pair(20 * MB)
    namespace.run_host(state)
    namespace.delete()
    done = namespace.run_host(state, "-v")
    network, = network_of(state)
    assert 0 < network["sent"] == network["received"] < SMALL  # lo's, which receives what it sends
    assert network_log(done) == ["INFO:host:NETWORK: left out of this interval: veth-a (gone), veth-b (gone)"]


@pytest.mark.parametrize("again", [6 * MB, 25 * MB], ids=["fewer bytes", "more bytes"])
def test_interface_made_again_counts_whole(namespace, tmp_path, again):
    """Made again under its name after the baseline (a new index), all its bytes are the interval's, whether
    more or fewer than it had."""
    state = tmp_path / "state"
    namespace.make_pair(20 * MB)
    namespace.run_host(state)
    namespace.delete()
    namespace.make_pair(again)
    done = namespace.run_host(state, "-v")
    network, = network_of(state)
    assert again <= network["received"] < again + SMALL
    # What the pair carried between the baseline and its deletion is lost.
    assert network_log(done) == [
        "INFO:host:NETWORK: left out of this interval: veth-a (made again), veth-b (made again)"]


def test_interface_made_after_the_baseline_counts_whole_and_a_renamed_one_goes_on(namespace, tmp_path):
    state = tmp_path / "state"
    namespace.run_host(state)
    namespace.make_pair(5 * MB)
    namespace.run_host(state)
    namespace.run("ip", "link", "set", "veth-a", "down")
    namespace.run("ip", "link", "set", "veth-a", "name", "veth-c")
    namespace.run("ip", "link", "set", "veth-c", "up")
    namespace.send(3 * MB, "veth-c")
    done = namespace.run_host(state, "-v")
    new, renamed = network_of(state)
    assert 5 * MB <= new["received"] < 5 * MB + SMALL
    assert 3 * MB <= renamed["received"] < 3 * MB + SMALL
    assert network_log(done) == []


def test_another_boot_is_a_new_baseline(namespace, tmp_path):
    """Counted per interface, a reboot need not show (an idle interface counts 0 before and after):
    /proc/sys/kernel/random/boot_id tells it."""
    state = tmp_path / "state"
    namespace.run_host(state)
    baseline = json.loads((state / host.NETWORK_STATE).read_text())
    assert baseline["boot"] == pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    (state / host.NETWORK_STATE).write_text(json.dumps(dict(baseline, boot="an earlier boot")))
    done = namespace.run_host(state, "-v")
    assert network_of(state) == []
    assert network_log(done) == [
        "INFO:host:NETWORK: the node booted since the baseline: new baseline stored, first figures on the next run"]
    assert json.loads((state / host.NETWORK_STATE).read_text())["boot"] == baseline["boot"]


def test_total_baseline_of_an_earlier_version_gives_its_interval(namespace, tmp_path):
    """An upgrade loses no NETWORK interval: the baseline of total counters that earlier versions stored is
    still counted."""
    state = tmp_path / "state"
    state.mkdir()
    namespace.make_pair(5 * MB)
    sent, received = namespace.counters()
    (state / host.NETWORK_STATE).write_text(json.dumps(
        {"time": time.time() - 300, "counters": [sent - MB, received - 2 * MB]}))
    done = namespace.run_host(state, "-v")
    network, = network_of(state)
    assert MB <= network["sent"] < MB + SMALL and 2 * MB <= network["received"] < 2 * MB + SMALL
    assert 300 <= network["interval"] < 360
    assert network_log(done) == []
    assert set(json.loads((state / host.NETWORK_STATE).read_text())) == {"time", "boot", "interfaces"}


def test_shared_config_file_warns_only_about_names_no_collector_takes(run_collector, tmp_path):
    """One config file serves every collector on a node, as the Ansible role writes it."""
    config = tmp_path / "afmetrics.conf"
    config.write_text("[afmetrics]\ncluster = SHARED\ndisks = /\nssh_history = yes\nqueues =\n    all:\n"
                      "services = ml:af-jupyter:owner\nkubeconfig = /etc/afmetrics/kubeconfig\ndiks = /typo\n")
    done = run_collector("host.py", "-d", "--config", config, "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 0
    warnings = [line for line in log_lines(done.stderr) if line.startswith("WARNING")]
    assert warnings == ["WARNING:afmetrics:config file %s: unknown setting 'diks' ignored" % config]
    assert [d["mount"] for d in json_lines(tmp_path / "host.json") if d["kind"] == "DISK"] == ["/"]
    assert {d["cluster"] for d in json_lines(tmp_path / "host.json")} == {"SHARED"}


# psutil.disk_partitions(all=True) of a login node, in /proc/self/mounts order.
Partition = collections.namedtuple("Partition", "device mountpoint fstype opts")
LOGIN_NODE_MOUNTS = [
    Partition("/dev/mapper/rl-root", "/", "xfs", "rw"),
    Partition("/dev/vda1", "/boot", "xfs", "rw"),
    # systemd's automount points are listed before the file systems they mount on the same directory.
    Partition("systemd-1", "/home", "autofs", "rw"),
    Partition("nfs.example.org:/export/home", "/home", "nfs4", "rw"),
    Partition("/dev/sdb1", "/data", "ext4", "rw"),
    Partition("/dev/sdc1", "/data", "ext4", "rw"),  # mounted over /data later: what users see there
    Partition("systemd-1", "/scratch", "autofs", "rw"),
    Partition("/dev/mapper/rl-scratch", "/scratch", "xfs", "rw"),
    Partition("tmpfs", "/scratch/tmp", "tmpfs", "rw"),
]
# /dev/mapper/NAME is a link to ../dm-N, the name /proc/diskstats counts under.
DEVICE_LINKS = {"/dev/mapper/rl-root": "/dev/dm-0", "/dev/mapper/rl-scratch": "/dev/dm-2"}


def test_device_of_is_the_visible_mount_by_its_diskstats_name():
    def device_of(path):
        return host.device_of(path, LOGIN_NODE_MOUNTS, realpath=lambda name: DEVICE_LINKS.get(name, name))
    assert device_of("/home") == device_of("/home/alice") == "nfs.example.org:/export/home"
    assert device_of("/data") == "sdc1"
    assert device_of("/scratch") == device_of("/scratch/alice") == "dm-2"
    assert device_of("/scratch/tmp/x") == "tmpfs"
    assert device_of("/etc") == device_of("/") == device_of("/homes") == "dm-0"
    assert device_of("/boot") == "vda1"
    assert host.device_of("/home", []) == ""


# The old tool's DISK device (maniaclab/afmetrics_collector src/afmetrics_collector/host.py, Xdisk.set_device):
# the mtab line's first field with /dev/ taken out, written out here, not imported.
def old_tool_device(source):
    return source.replace('/dev/', '')


def test_reported_device_is_the_mount_source_as_the_old_tool_sends_it():
    def reported(path):
        return host.reported_device(host.mount_source(path, LOGIN_NODE_MOUNTS))
    assert reported("/scratch") == old_tool_device("/dev/mapper/rl-scratch") == "mapper/rl-scratch"
    assert reported("/home") == old_tool_device("nfs.example.org:/export/home") == "nfs.example.org:/export/home"
    assert reported("/data") == "sdc1"  # the mount on top, not the covered sdb1
    assert reported("/") == "mapper/rl-root"
    assert reported("/scratch/tmp") == "tmpfs"



# Run in a private mount namespace: a 4 MiB tmpfs on $MOUNT and over it a 16 MiB ext2 image on a loop device,
# mounted by a link's name as /dev/mapper/NAME -> ../dm-N is (a private tmpfs on /dev/shm holds the link),
# then host.py twice with 2 MiB written between the runs.
STACKED_MOUNTS = r"""
mount -t tmpfs -o size=4m afmetrics-covered "$MOUNT"
mount -o loop "$IMAGE" "$STAGE"
device=$(awk -v stage="$STAGE" '$2 == stage {print $1}' /proc/self/mounts)
mount -t tmpfs -o size=1m afmetrics-links /dev/shm
mkdir /dev/shm/mapper
ln -s "../../${device#/dev/}" /dev/shm/mapper/afmetrics-top
mount --no-canonicalize /dev/shm/mapper/afmetrics-top "$MOUNT"
umount "$STAGE"
basename "$device" > "$DEVICE_FILE"
awk -v mount="$MOUNT" '$2 == mount {source = $1} END {print source}' /proc/self/mounts > "$SOURCE_FILE"
[ "$#" -eq 0 ] && exit 0
"$PYTHON" "$HOST" "$@"
dd if=/dev/zero of="$MOUNT/written" bs=1M count=2 conv=fsync status=none
"$PYTHON" "$HOST" "$@"
"""


def on_stacked_mounts(tmp_path, *host_args):
    """Run STACKED_MOUNTS as root in a mount namespace of its own, which no mount outlives, with tmp_path
    holding the mount point and the image; without host_args it only sets the mounts up."""
    mount, stage, image = tmp_path / "mount", tmp_path / "stage", tmp_path / "ext2.img"
    for directory in (mount, stage):
        directory.mkdir(exist_ok=True)
    if not image.exists():
        with open(image, "wb") as handle:
            handle.truncate(16 * MIB)
        subprocess.run(["mkfs.ext2", "-q", "-F", str(image)], check=True, capture_output=True)
    env = collector_environment({"AFMETRICS_TOKEN": TOKEN, "MOUNT": str(mount), "STAGE": str(stage),
                                 "IMAGE": str(image), "DEVICE_FILE": str(tmp_path / "device"),
                                 "SOURCE_FILE": str(tmp_path / "source"),
                                 "PYTHON": sys.executable, "HOST": str(COLLECTORS / "host.py")})
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-euc", STACKED_MOUNTS, "sh"]
                          + [str(arg) for arg in host_args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL)


def test_stacked_mounts_report_the_top_mount(receiver, tmp_path):
    if os.geteuid() != 0:
        skip_or_fail("a private mount namespace with loop devices needs root")
    missing = [tool for tool in ("unshare", "mount", "mkfs.ext2", "awk", "dd") if not shutil.which(tool)]
    if missing:
        skip_or_fail("not installed: %s" % " ".join(missing))
    setup = on_stacked_mounts(tmp_path)
    if setup.returncode != 0:
        skip_or_fail("cannot stack a loop-mounted ext2 over a tmpfs here: %s" % setup.stderr.strip())
    state = tmp_path / "state"
    done = on_stacked_mounts(tmp_path, "-c", "UC-AF", "--disk", tmp_path / "mount", "--state-dir", state,
                             *receiver.args())
    assert done.returncode == 0, done.stderr
    device = (tmp_path / "device").read_text().strip()
    assert device.startswith("loop")
    assert receiver.kinds() == ["CPU", "CPU", "DISK", "DISK", "MEM", "MEM", "NETWORK"]
    first, second = receiver.of_kind("DISK")
    # The mount's source as the old tool sends it, of the top mount (not afmetrics-covered, the tmpfs under it);
    # its I/O is counted under the kernel's name for it.
    source = (tmp_path / "source").read_text().strip()
    assert source == "/dev/shm/mapper/afmetrics-top"
    assert first["device"] == second["device"] == old_tool_device(source) == "shm/mapper/afmetrics-top"
    assert 12 * MIB < first["total"] <= 16 * MIB  # the ext2 image's size, not the tmpfs's 4 MiB
    assert "io" not in first  # the first run's baseline
    assert second["io"]["write_bytes"] >= 2 * MIB and second["io"]["writes"] > 0


# tmpfs mounts named as an EL9 installer's LVM home and an NFS export are listed in /proc/self/mounts under
# those sources, as the real ones are; host.py then reports both in a debug run.
NAMED_MOUNTS = r"""
mount --no-canonicalize -t tmpfs -o size=1m /dev/mapper/rl-home "$1"
mount --no-canonicalize -t tmpfs -o size=1m server:/export "$2"
awk -v a="$1" -v b="$2" '$2 == a || $2 == b {print $1}' /proc/self/mounts > sources
"$PYTHON" "$HOST" -d --disk "$1" --disk "$2" --state-dir state
"""


def test_device_of_real_mounts_is_their_source_as_the_old_tool_sends_it(tmp_path):
    if os.geteuid() != 0:
        skip_or_fail("a private mount namespace needs root")
    mounts = [tmp_path / "home", tmp_path / "export"]
    for mount in mounts:
        mount.mkdir()
    env = collector_environment({"PYTHON": sys.executable, "HOST": str(COLLECTORS / "host.py")})
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-euc", NAMED_MOUNTS, "sh"]
                          + [str(mount) for mount in mounts], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    sources = (tmp_path / "sources").read_text().split()
    assert sources == ["/dev/mapper/rl-home", "server:/export"]
    disks = [d for d in json_lines(tmp_path / "host.json") if d["kind"] == "DISK"]
    assert [(d["mount"], d["device"]) for d in disks] == [
        (str(mount), old_tool_device(source)) for mount, source in zip(mounts, sources)]
    assert [d["device"] for d in disks] == ["mapper/rl-home", "server:/export"]


def age_baselines(state, seconds):
    """Make the stored NETWORK and DISK baselines seconds older, as after cron stopped for a while."""
    for name in (host.NETWORK_STATE, host.DISKSTATS_STATE):
        stored = json.loads((state / name).read_text())
        stored["time"] -= seconds
        (state / name).write_text(json.dumps(stored))


TWO_DAYS = 2 * 86400


def test_stale_reason():
    assert host.stale_reason(1000.0, 1000.0 + 3600, 3600) is None
    assert host.stale_reason(1000.0, 1000.0, 3600) is None
    assert host.stale_reason(1000.0, 1000.0 + TWO_DAYS, 3600) == "is 48.0 h old, over baseline_max_age (3600 s)"
    assert host.stale_reason(1000.0, 999.0, 3600) == "is from the future (the clock went back)"


def test_baseline_older_than_baseline_max_age_is_replaced_not_reported(run_collector, receiver, tmp_path):
    state = tmp_path / "state"
    assert run_host(run_collector, receiver, state).returncode == 0
    age_baselines(state, TWO_DAYS)
    stale = run_host(run_collector, receiver, state, "-v")
    assert stale.returncode == 0, stale.stderr
    assert sorted(document["kind"] for document in receiver.documents[3:]) == ["CPU", "DISK", "MEM"]
    assert "io" not in receiver.of_kind("DISK")[1]
    assert [line for line in log_lines(stale.stderr) if "baseline" in line] == [
        "INFO:host:NETWORK: baseline is 48.0 h old, over baseline_max_age (3600 s): new baseline stored, "
        "first figures on the next run",
        "INFO:host:DISK: I/O baseline is 48.0 h old, over baseline_max_age (3600 s): new baseline stored, "
        "first figures on the next run"]
    for name in (host.NETWORK_STATE, host.DISKSTATS_STATE):
        assert time.time() - json.loads((state / name).read_text())["time"] < 60
    fresh = run_host(run_collector, receiver, state)
    assert fresh.returncode == 0, fresh.stderr
    network, = receiver.of_kind("NETWORK")
    assert 0 < network["network"]["interval"] < 60
    disk = receiver.of_kind("DISK")[2]
    if disk["device"] in host.parse_diskstats(open("/proc/diskstats").read()):  # not an overlay root
        assert 0 < disk["io"]["interval"] < 60


def test_baseline_max_age_option_allows_an_older_baseline(run_collector, receiver, tmp_path):
    state = tmp_path / "state"
    assert run_host(run_collector, receiver, state).returncode == 0
    age_baselines(state, TWO_DAYS)
    done = run_host(run_collector, receiver, state, "--baseline-max-age", 3 * 86400)
    assert done.returncode == 0, done.stderr
    network, = receiver.of_kind("NETWORK")
    assert TWO_DAYS < network["network"]["interval"] < TWO_DAYS + 60
    refused = run_host(run_collector, receiver, state, "--baseline-max-age", "-1")
    assert refused.returncode == 2 and "--baseline-max-age: invalid non_negative_number value" in refused.stderr
