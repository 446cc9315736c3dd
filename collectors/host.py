#!/usr/bin/env python3
"""Host metrics of this login node: CPU (1-minute load), MEM (total, available), NETWORK (bytes sent and
received since the previous run) and one DISK document per configured mount (usage, plus I/O since the
previous run from /proc/diskstats).

Each interval's end, the new baseline, is stored before the interval is sent, and an interval whose end cannot be
stored is not sent: the next run measures from the baseline it finds, and a stored end is one no later document
covers again. A run whose documents can be neither delivered nor spooled puts the baseline back.

No mount can hang a run. A mount whose server is gone (NFS) or whose FUSE daemon is wedged blocks statvfs, and any
stat of its root, for as long as it stays so: the run would hold its lock for ever, every later cron run skipped.
So each DISK mount is read by a child process of its own (realpath, then statvfs), all started together and given
the run's timeout in all; one that has not answered by then is killed, its mount is one warning, and the other
documents go. A child, not a thread: a thread in an uninterruptible wait keeps the process from ending (its
parent, cron, waits for it for ever). The child is a new program (exec), not a fork: it holds none of the run's
descriptors, the lock's among them, which a stuck fork would keep locked. SIGKILL frees a child at once from an
NFS hard mount's wait and from a FUSE request its daemon has not read, but not from one the daemon read and never
answers: that child stays until the file system is aborted, never waited for past a short grace, and init takes
it when the run ends. Its pid is kept in the state dir, and later runs do not ask that mount again while it is
there: one stuck child per mount, not one more every run.

Example: python3 collectors/host.py -d -v --disk / --disk /home
"""
import json
import math
import os
import signal
import socket
import sys
import time

import psutil

import afmetrics_common as common
from afmetrics_settings import non_negative_number

NAME = "host"
SETTINGS = common.COLLECTOR_SETTINGS[NAME]
NETWORK_STATE = "network.json"
DISKSTATS_STATE = "diskstats.json"
STUCK_STATE = "stuck-usage-children.json"
FSTAB = "/etc/fstab"
ALL_INTERFACES = "all"  # no interface index: the total the baselines of earlier versions hold
SECTOR_BYTES = 512  # /proc/diskstats counts 512-byte sectors whatever the device's sector size
# The usage child's interpreter: the one running this, as the kernel knows it, also when the run user could not open
# the path that started it (a hand run through setpriv) or an upgrade replaced that path meanwhile.
PYTHON = "/proc/self/exe"
# The usage child of one mount: the path as the kernel resolves it (a stat of each component, the mount's root among
# them) and statvfs's figures, psutil.disk_usage's; an error is its strerror. With -I -S it reads nothing of the
# environment, the working directory or site-packages (which may be on a mount that hangs too).
USAGE_CHILD = """import json, os, sys
try:
    path = os.path.realpath(sys.argv[1])
    usage = os.statvfs(path)
    print(json.dumps({"path": path, "statvfs": [usage.f_frsize, usage.f_blocks, usage.f_bfree, usage.f_bavail]}))
except OSError as error:
    print(json.dumps({"error": error.strerror}))
"""


def add_arguments(parser):
    parser.add_argument("--disk", dest="disks", action="append", metavar="PATH",
                        help="mount to report (repeatable; default /home /data /scratch)")
    parser.add_argument("--baseline-max-age", dest="baseline_max_age", metavar="SECONDS", type=non_negative_number,
                        help="an older NETWORK or DISK I/O baseline is replaced, not reported (default 3600)")


def parse_diskstats(text):
    """{device: [reads, read_bytes, writes, write_bytes]} from /proc/diskstats; malformed lines are skipped."""
    counters = {}
    for line in text.splitlines():
        fields = line.split()
        try:
            reads, sectors_read, writes, sectors_written = (int(fields[i]) for i in (3, 5, 7, 9))
        except (IndexError, ValueError):
            continue
        counters[fields[2]] = [reads, sectors_read * SECTOR_BYTES, writes, sectors_written * SECTOR_BYTES]
    return counters


def stored_counters(stored, fields, log):
    """{"time": t, FIELD: ...} from a state file, FIELD one of fields, or None (with a warning) when it holds
    something else."""
    if stored is None:
        return None
    if isinstance(stored, dict) and type(stored.get("time")) in (int, float) and math.isfinite(stored["time"]) \
            and any(field in stored for field in fields):
        return stored
    unexpected_shape(log, fields[0])
    return None


def unexpected_shape(log, what):
    log.warning("state file holding %s has an unexpected shape: storing a new baseline", what)


def counter_deltas(previous, current):
    """current - previous per counter, or None when there is no baseline or a counter went backwards."""
    if not isinstance(previous, list) or len(previous) != len(current) \
            or not all(type(counter) is int for counter in previous):
        return None
    deltas = [now - before for before, now in zip(previous, current)]
    return None if any(delta < 0 for delta in deltas) else deltas


def mount_source(path, partitions):
    """The source (the first field of /proc/self/mounts, as psutil.disk_partitions(all=True) gives it, in that
    order) of the mount visible at path, a path without links (as the usage child resolves it), or "" when none is.

    Of equally long mount points the last listed is the one on top: an autofs point is listed before the file
    system it mounts there, and a mount over a mount after the one it covers.
    """
    holders = [p for p in partitions if path == p.mountpoint or path.startswith(p.mountpoint.rstrip("/") + "/")]
    return max(reversed(holders), key=lambda p: len(p.mountpoint)).device if holders else ""


def reported_device(source):
    """A DISK document's device: the mount's source without its leading /dev/, as the old tool sends it from
    /etc/mtab (maniaclab/afmetrics_collector src/afmetrics_collector/host.py, Xdisk.set_device): mapper/rl-home
    for an LVM volume, server:/export for NFS."""
    return source[len("/dev/"):] if source.startswith("/dev/") else source


def device_of(path, partitions, realpath=os.path.realpath):
    """The kernel name (as in /proc/diskstats) of the device whose file system is visible at path (without
    links), or "" when unknown. A device path is resolved through its links (/dev/mapper/NAME -> ../dm-N) with
    realpath; a name such as tmpfs or host:/export is the device as it stands.
    """
    device = mount_source(path, partitions)
    return os.path.basename(realpath(device)) if device.startswith("/dev/") else device


def is_mount_point(path, partitions):
    """Whether a file system is mounted on path (without links) itself, partitions being
    psutil.disk_partitions(all=True): /proc/self/mounts, which also knows a bind mount from the same file system
    (os.path.ismount, comparing devices, does not)."""
    return path in {partition.mountpoint for partition in partitions}


def fstab_mount_points(text):
    """The mount points an fstab(5) text names (its second field, octal escapes such as \\040 decoded), swap's
    "none" left out: where a file system is meant to be mounted."""
    points = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and fields[1].startswith("/"):
            points.add(os.path.normpath(fields[1].encode("latin-1", "backslashreplace").decode("unicode_escape")))
    return points


def read_fstab():
    """The mount points of /etc/fstab; none where it cannot be read (a container has none)."""
    try:
        with open(FSTAB, encoding="utf-8", errors="replace") as fstab:
            return fstab_mount_points(fstab.read())
    except OSError:
        return set()


def running_since(pid):
    """When process pid started, in clock ticks since boot (/proc/PID/stat, proc(5): its 22nd field), or None
    when there is no such process or it has ended (a zombie)."""
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()  # the name before it may hold anything
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def still_stuck(stored):
    """The entries of STUCK_STATE ({mount: {"pid", "start", "boot"}}) whose child is still there: the same
    process (pid, start and boot), not ended."""
    if not isinstance(stored, dict):
        return {}
    boot = common.this_boot()
    return {mount: child for mount, child in stored.items()
            if isinstance(child, dict) and child.get("boot") == boot and type(child.get("pid")) is int
            and child.get("start") is not None and running_since(child["pid"]) == child["start"]}


def stuck_for(child):
    """How long a stuck child has been there, in words."""
    seconds = time.clock_gettime(time.CLOCK_BOOTTIME) - child["start"] / os.sysconf("SC_CLK_TCK")
    return "%.0f min" % (seconds / 60) if seconds >= 60 else "%.0f s" % seconds


def read_usages(run, mounts):
    """{mount: {"path": without links, "statvfs": [f_frsize, f_blocks, f_bfree, f_bavail]}, or why it has none},
    each mount read by a child of its own (the module docstring says why), all within run.timeout(). A mount
    where an earlier run's child is still stuck is not asked again; a child stuck now is kept in STUCK_STATE."""
    stored = run.state.load(STUCK_STATE)
    stuck = still_stuck(stored)
    timeout, since = run.timeout(), time.monotonic()
    usages, children = {}, {}
    for mount in mounts:
        if mount in stuck:
            usages[mount] = "still hung: the usage child of an earlier run, pid %d, has been stuck there for %s " \
                            "(not asked again until it returns)" % (stuck[mount]["pid"], stuck_for(stuck[mount]))
            continue
        try:
            children[mount] = common.start_command([PYTHON, "-I", "-S", "-c", USAGE_CHILD, mount])
        except common.SourceError as error:
            usages[mount] = str(error)
    for mount, child in children.items():
        try:
            answer = json.loads(common.finish_command(child, timeout, since))
            usages[mount] = answer.get("error", answer)
        except common.SourceError as error:
            if child.returncode not in (None, -signal.SIGKILL):  # it failed by itself, not killed at the bound
                usages[mount] = str(error)
                continue
            usages[mount] = "no answer within %g s, %s" % (
                timeout, "a hung mount" if timeout >= run.opts.timeout else "what was left of the run budget")
            start = running_since(child.pid) if child.returncode is None else None  # None: it ended since the grace
            if start is not None:
                stuck[mount] = {"pid": child.pid, "start": start, "boot": common.this_boot()}
                usages[mount] += ": its usage child, pid %d, is stuck there (not asked again until it returns)" \
                    % child.pid
    if not run.opts.debug and stuck != (stored or {}):
        try:
            run.state.save(STUCK_STATE, stuck)
        except OSError as error:
            run.log.warning("cannot keep the stuck usage children: %s: %s: the next run asks their mounts again",
                            error.strerror, error.filename)
    return {mount: usages[mount] for mount in mounts}


def stale_reason(taken, now, max_age):
    """Why a baseline taken at time taken gives no deltas at time now, or None when it does: counts over more
    than max_age seconds would show days of traffic as one interval (the old tool re-baselined after an hour),
    and a baseline from the future (the clock was set back) a negative interval."""
    age = now - taken
    if age < 0:
        return "is from the future (the clock went back)"
    if age > max_age:
        return "is %.1f h old, over baseline_max_age (%g s)" % (age / 3600, max_age)
    return None


def usable_baseline(run, stored, fields, now, label):
    """The {"time": t, FIELD: ...} baseline a state file stored, FIELD one of fields, when it can give deltas at
    time now; else None, and one info line starting with label says why (none yet, or stale)."""
    stored = stored_counters(stored, fields, run.log)
    if stored is None:
        run.log.info("%s stored, first figures on the next run", label)
        return None
    reason = stale_reason(stored["time"], now, run.opts.baseline_max_age)
    if reason:
        run.log.info("%s %s: new baseline stored, first figures on the next run", label, reason)
        return None
    return stored


def recorded(run, name, baseline, stored, what):
    """Store baseline in state file name before the interval that ends at it leaves, and say whether it was
    stored: an interval whose end is not recorded would be measured again, and sent again, by the next run. Should
    the run's documents be neither delivered nor spooled, the file gets back what it held, stored (None: nothing),
    and the next run's interval covers this one's. A debug run records nothing (and sends nothing); one that
    cannot record is one error line, exit 1."""
    if run.opts.debug:
        return True
    try:
        run.state.save(name, baseline)
    except OSError as error:
        run.source_failed("cannot store the %s baseline: %s: %s: %s figures not sent (the next run would count "
                          "them again)" % (what, error.strerror, error.filename, what))
        return False
    run.not_delivered.append(lambda: put_back(run, name, stored, what))
    return True


def put_back(run, name, stored, what):
    """State file name as it was before the run: stored, or none when stored is None."""
    try:
        if stored is None:
            os.unlink(run.state.file(name))
        else:
            run.state.save(name, stored)
    except FileNotFoundError:
        pass
    except OSError as error:
        run.source_failed("cannot put the %s baseline back: %s: %s: the %s figures of this run are lost"
                          % (what, error.strerror, error.filename, what))


def interface_counters():
    """{index: {"name", "sent", "received"}} of this network namespace's interfaces, by the kernel's interface
    index: a name made again (a container's veth, a VPN's tun) gets a new index, a renamed interface keeps its
    own. One made or gone between the two reads is left to the next run."""
    indexes = {name: index for index, name in socket.if_nameindex()}
    return {str(indexes[name]): {"name": name, "sent": counters.bytes_sent, "received": counters.bytes_recv}
            for name, counters in psutil.net_io_counters(pernic=True).items() if name in indexes}


def baseline_interfaces(baseline):
    """A NETWORK baseline's interfaces as interface_counters gives them, or None when it holds something else.
    The baseline of earlier versions, the total of all interfaces ({"counters": [sent, received]}), is one
    interface, ALL_INTERFACES."""
    if "interfaces" in baseline:
        interfaces = baseline["interfaces"]
        well_formed = isinstance(interfaces, dict) and all(
            isinstance(entry, dict) and isinstance(entry.get("name"), str)
            and type(entry.get("sent")) is int and type(entry.get("received")) is int
            for entry in interfaces.values())
        return interfaces if well_formed else None
    counters = baseline["counters"]
    if isinstance(counters, list) and len(counters) == 2 and all(type(counter) is int for counter in counters):
        return {ALL_INTERFACES: {"name": "all interfaces", "sent": counters[0], "received": counters[1]}}
    return None


def all_interfaces(interfaces):
    """The interfaces as one, ALL_INTERFACES, their total: what earlier versions counted."""
    return {ALL_INTERFACES: {"name": "all interfaces", "sent": sum(entry["sent"] for entry in interfaces.values()),
                             "received": sum(entry["received"] for entry in interfaces.values())}}


def network_deltas(before, now):
    """(bytes [sent, received] between two interface_counters, {name: why it is left out}); the bytes are None
    when every interface of both went back (a reboot where the kernel gives no boot id).

    Counted per interface because the total falls whenever one goes, and would be taken for a reboot, losing the
    interval. An interface made since (a new index) counts whole: all its bytes are the interval's. One gone since
    (or made again: its bytes before it went), or whose counters went back under the same index (a driver that
    resets them), is left out.
    """
    counted, left_out, kept = [], {}, False
    for index, entry in now.items():
        previous = before.get(index, {"sent": 0, "received": 0})
        deltas = [entry["sent"] - previous["sent"], entry["received"] - previous["received"]]
        if min(deltas) < 0:
            left_out[entry["name"]] = "went back"
        else:
            counted.append(deltas)
            kept = kept or index in before
    names = {entry["name"] for entry in now.values()}
    left_out.update((entry["name"], "made again" if entry["name"] in names else "gone")
                    for index, entry in before.items() if index not in now)
    if not kept and "went back" in left_out.values():
        return None, left_out
    return [sum(deltas[0] for deltas in counted), sum(deltas[1] for deltas in counted)], left_out


def network_document(run, node, now):
    current = {"time": now, "boot": common.this_boot(), "interfaces": interface_counters()}
    stored = run.state.load(NETWORK_STATE)
    previous = usable_baseline(run, stored, ("interfaces", "counters"), now, "NETWORK: baseline")
    if not recorded(run, NETWORK_STATE, current, stored, "NETWORK") or previous is None:
        return []
    before = baseline_interfaces(previous)
    if before is None:
        unexpected_shape(run.log, "interfaces")
        return []
    if previous.get("boot", current["boot"]) != current["boot"]:
        run.log.info("NETWORK: the node booted since the baseline: new baseline stored, first figures on the next run")
        return []
    interfaces = all_interfaces(current["interfaces"]) if ALL_INTERFACES in before else current["interfaces"]
    deltas, left_out = network_deltas(before, interfaces)
    if deltas is None:
        run.log.info("NETWORK: counters went back (a reboot): new baseline stored, first figures on the next run")
        return []
    if left_out:
        run.log.info("NETWORK: left out of this interval: %s",
                     ", ".join("%s (%s)" % (name, why) for name, why in sorted(left_out.items())))
    interval = round(now - previous["time"], 3)
    return [{"kind": "NETWORK", "login_node": node,
             "network": {"interval": interval, "sent": deltas[0], "received": deltas[1]}}]


def disk_documents(run, node, now):
    try:
        with open("/proc/diskstats", encoding="ascii") as handle:
            io_now = parse_diskstats(handle.read())
    except OSError as error:
        run.log.warning("DISK: no I/O figures: %s", error)
        io_now = {}
    try:
        usages = read_usages(run, run.opts.disks)
    except common.SourceError as error:  # the run budget used up: the other documents still go
        # Before the baseline is recorded: no DISK document goes, so the next run's interval covers this one.
        run.source_failed("DISK not reported: %s" % error)
        return []
    stored = run.state.load(DISKSTATS_STATE)
    io_before = usable_baseline(run, stored, ("devices",), now, "DISK: I/O baseline")
    if not recorded(run, DISKSTATS_STATE, {"time": now, "devices": io_now}, stored, "DISK I/O") or not io_before \
            or not isinstance(io_before["devices"], dict):
        io_before = {"time": now, "devices": {}}  # no deltas: the usage goes alone
    partitions = psutil.disk_partitions(all=True)
    meant_to_be_mounted = read_fstab()
    documents = []
    for mount, usage in usages.items():
        if isinstance(usage, str):
            run.log.warning("DISK %s not reported: %s", mount, usage)
            continue
        if not is_mount_point(usage["path"], partitions) and meant_to_be_mounted & {mount, usage["path"]}:
            # Its mount failed (at boot): what statvfs saw there is the file system underneath, / say. A directory
            # fstab does not name is reported with the file system holding it, as the old tool does (/home on /).
            run.log.warning("DISK %s not reported: nothing is mounted there (%s names it)", mount, FSTAB)
            continue
        frsize, blocks, free_blocks, available_blocks = usage["statvfs"]
        total, used = blocks * frsize, (blocks - free_blocks) * frsize  # as psutil.disk_usage counts them
        device = device_of(usage["path"], partitions)
        document = {"kind": "DISK", "login_node": node, "mount": mount, "total": total, "used": used,
                    "free": available_blocks * frsize, "utilization": used / total if total else 0.0,
                    "device": reported_device(mount_source(usage["path"], partitions))}
        deltas = counter_deltas(io_before["devices"].get(device), io_now.get(device, []))
        if deltas is not None:
            document["io"] = dict(zip(("reads", "read_bytes", "writes", "write_bytes"), deltas),
                                  interval=round(now - io_before["time"], 3))
        documents.append(document)
    return documents


def replaced_by_next_run(document):
    """Load, memory and disk usage come again next run; NETWORK and DISK I/O deltas cover time no later
    document covers."""
    return document["kind"] in ("CPU", "MEM") or (document["kind"] == "DISK" and "io" not in document)


def collect(run):
    node, now = run.login_node(), time.time()
    memory = psutil.virtual_memory()
    return ([{"kind": "CPU", "login_node": node, "load": os.getloadavg()[0]},
             {"kind": "MEM", "login_node": node, "total": memory.total, "available": memory.available}]
            + network_document(run, node, now) + disk_documents(run, node, now))


if __name__ == "__main__":
    sys.exit(common.script_main(sys.modules[__name__]))
