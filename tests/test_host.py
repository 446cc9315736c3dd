"""host.py: /proc/diskstats parsing, counters across runs, missing mounts and corrupt state."""
import collections
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import psutil
import pytest

import host
from conftest import COLLECTORS, collector_environment, json_lines, log_lines, skip_or_fail

TOKEN = "tok-host-5a1e"


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


def test_network_deltas_count_the_interfaces_of_both_runs():
    before = {"lo": [100, 100], "eth0": [1000, 5000], "veth1": [700, 900], "tun0": [400, 400]}
    now = {"lo": [150, 150], "eth0": [1200, 5600], "tun0": [10, 20], "veth2": [70, 90]}
    # veth1 went with its container, tun0 came back with its VPN, veth2 is new: it counts from this run.
    assert host.network_deltas({"interfaces": before}, now) == (
        [250, 650], {"veth1": "gone", "tun0": "went back"})
    assert host.network_deltas({"interfaces": before}, before) == ([0, 0], {})
    # Nothing kept counting: a reboot, where the kernel gives no boot id.
    assert host.network_deltas({"interfaces": {"eth0": [1000, 5000]}}, {"eth0": [10, 50]}) == (
        None, {"eth0": "went back"})
    assert host.network_deltas({"interfaces": {"eth0": [1000, 5000]}}, {"eth1": [10, 50]}) == (
        None, {"eth0": "gone"})


def test_network_deltas_of_a_total_baseline_as_earlier_versions_stored():
    now = {"lo": [150, 150], "eth0": [1200, 5600]}
    assert host.network_deltas({"counters": [1000, 5000]}, now) == ([350, 750], {})
    assert host.network_deltas({"counters": [9000, 5000]}, now) == (None, {"all interfaces": "went back"})


def run_host(run_collector, receiver, state, *more):
    return run_collector("host.py", "-c", "UC-AF", "--disk", "/", "--state-dir", state, *receiver.args(), *more,
                         env={"AFMETRICS_TOKEN": TOKEN}, cwd=state.parent)


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


@pytest.fixture
def veth_pair():
    """make(traffic_bytes): a real veth pair, made (or made again) with that many bytes sent on its first end and
    so received on the other; .send(traffic_bytes) sends more; deleted at the end. As a container's or a VPN's
    interfaces come and go."""
    names = ["afmv%da" % os.getpid(), "afmv%db" % os.getpid()]
    if not shutil.which("ip") or os.geteuid() != 0:
        skip_or_fail("veth pairs need ip (iproute2) and root")

    def make(traffic_bytes):
        delete()
        subprocess.run(["ip", "link", "add", names[0], "type", "veth", "peer", "name", names[1]], check=True)
        for name in names:
            subprocess.run(["ip", "link", "set", name, "up"], check=True)
        send(traffic_bytes)
        return names

    def send(traffic_bytes):
        received = int(pathlib.Path("/sys/class/net/%s/statistics/rx_bytes" % names[1]).read_text())
        frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5"  # broadcast, local experimental type
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
            raw.bind((names[0], 0))
            for _ in range(traffic_bytes // 1500):
                raw.send(frame + b"x" * (1500 - len(frame)))
        counted = int(pathlib.Path("/sys/class/net/%s/statistics/rx_bytes" % names[1]).read_text()) - received
        assert counted >= traffic_bytes // 1500 * 1500, "the pair did not carry the traffic"

    def delete():
        subprocess.run(["ip", "link", "delete", names[0]], capture_output=True)  # the peer goes with it

    make.send, make.delete = send, delete
    yield make
    delete()


MB = 1000 * 1000


def network_log(done):
    return [line for line in log_lines(done.stderr) if line.startswith("INFO:host:NETWORK")]


def test_interfaces_gone_between_runs_leave_the_rest_counted(run_collector, receiver, tmp_path, veth_pair):
    """The total of all interfaces falls when one goes (a container's veth): counted per interface, the others'
    bytes are still the interval's, not taken for a reboot."""
    state = tmp_path / "state"
    first, second = veth_pair(20 * MB)
    assert run_host(run_collector, receiver, state).returncode == 0
    veth_pair.delete()
    done = run_host(run_collector, receiver, state, "-v")
    assert done.returncode == 0, done.stderr
    network, = receiver.of_kind("NETWORK")
    assert network["network"]["sent"] > 0 and network["network"]["received"] > 0  # the deliveries, on lo
    assert network_log(done) == [
        "INFO:host:NETWORK: left out of this interval: %s (gone), %s (gone)" % (first, second)]


def test_interface_made_again_is_left_out_until_the_next_run(run_collector, receiver, tmp_path, veth_pair):
    state = tmp_path / "state"
    first, second = veth_pair(20 * MB)
    assert run_host(run_collector, receiver, state).returncode == 0
    veth_pair(6 * MB)  # the same names, counting from 0 again: none of their 6 MB is the interval's
    done = run_host(run_collector, receiver, state, "-v")
    assert done.returncode == 0, done.stderr
    assert network_log(done) == [
        "INFO:host:NETWORK: left out of this interval: %s (went back), %s (went back)" % (first, second)]
    # From this run's baseline on, the pair counts again.
    veth_pair.send(5 * MB)
    assert run_host(run_collector, receiver, state).returncode == 0
    assert [network["network"]["received"] >= 5 * MB for network in receiver.of_kind("NETWORK")] == [False, True]


def test_another_boot_is_a_new_baseline(run_collector, receiver, tmp_path):
    """Counted per interface, a reboot need not show: an idle interface counts 0 before and after, and
    /proc/sys/kernel/random/boot_id tells it."""
    state = tmp_path / "state"
    assert run_host(run_collector, receiver, state).returncode == 0
    baseline = json.loads((state / host.NETWORK_STATE).read_text())
    assert baseline["boot"] == pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    (state / host.NETWORK_STATE).write_text(json.dumps(dict(baseline, boot="an earlier boot")))
    done = run_host(run_collector, receiver, state, "-v")
    assert done.returncode == 0, done.stderr
    assert receiver.of_kind("NETWORK") == []
    assert network_log(done) == [
        "INFO:host:NETWORK: the node booted since the baseline: new baseline stored, first figures on the next run"]
    assert json.loads((state / host.NETWORK_STATE).read_text())["boot"] == baseline["boot"]


def test_total_baseline_of_an_older_version_gives_its_interval(run_collector, receiver, tmp_path):
    """An upgrade loses no NETWORK interval: the baseline of total counters that earlier versions stored is still counted."""
    state = tmp_path / "state"
    state.mkdir()
    total = psutil.net_io_counters()
    (state / host.NETWORK_STATE).write_text(json.dumps(
        {"time": time.time() - 300, "counters": [total.bytes_sent - MB, total.bytes_recv - 2 * MB]}))
    done = run_host(run_collector, receiver, state, "-v")
    assert done.returncode == 0, done.stderr
    network, = receiver.of_kind("NETWORK")
    assert network["network"]["sent"] >= MB and network["network"]["received"] >= 2 * MB
    assert 300 <= network["network"]["interval"] < 360
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


MIB = 1024 * 1024

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
    assert first["device"] == second["device"] == device  # not afmetrics-covered, the tmpfs under it
    assert 12 * MIB < first["total"] <= 16 * MIB  # the ext2 image's size, not the tmpfs's 4 MiB
    assert "io" not in first  # the first run's baseline
    assert second["io"]["write_bytes"] >= 2 * MIB and second["io"]["writes"] > 0


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
