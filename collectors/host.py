#!/usr/bin/env python3
"""Host metrics of this login node: CPU (1-minute load), MEM (total, available), NETWORK (bytes sent and
received since the previous run) and one DISK document per configured mount (usage, plus I/O since the
previous run from /proc/diskstats).

Example: python3 collectors/host.py -d -v --disk / --disk /home
"""
import math
import os
import sys
import time

import psutil

import afmetrics_common as common

NAME = "host"
SETTINGS = common.COLLECTOR_SETTINGS[NAME]
NETWORK_STATE = "network.json"
DISKSTATS_STATE = "diskstats.json"
SECTOR_BYTES = 512  # /proc/diskstats counts 512-byte sectors whatever the device's sector size


def add_arguments(parser):
    parser.add_argument("--disk", dest="disks", action="append", metavar="PATH",
                        help="mount to report (repeatable; default /home /data /scratch)")


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


def stored_counters(stored, name, log):
    """{"time": t, name: ...} from a state file, or None (with a warning) when it holds something else."""
    if stored is None:
        return None
    if isinstance(stored, dict) and type(stored.get("time")) in (int, float) and math.isfinite(stored["time"]) \
            and name in stored:
        return stored
    log.warning("state file holding %s has an unexpected shape: storing a new baseline", name)
    return None


def counter_deltas(previous, current):
    """current - previous per counter, or None when there is no baseline or a counter went backwards."""
    if not isinstance(previous, list) or len(previous) != len(current) \
            or not all(type(counter) is int for counter in previous):
        return None
    deltas = [now - before for before, now in zip(previous, current)]
    return None if any(delta < 0 for delta in deltas) else deltas


def device_of(path, partitions):
    """The kernel name (as in /proc/diskstats) of the device holding path, or "" when unknown."""
    path = os.path.realpath(path)
    holders = [p for p in partitions if path == p.mountpoint or path.startswith(p.mountpoint.rstrip("/") + "/")]
    if not holders:
        return ""
    device = max(holders, key=lambda p: len(p.mountpoint)).device
    return os.path.basename(os.path.realpath(device)) if device.startswith("/dev/") else device


def network_document(run, node, now):
    counters = psutil.net_io_counters()
    current = [counters.bytes_sent, counters.bytes_recv]
    previous = stored_counters(run.state.load(NETWORK_STATE), "counters", run.log)
    run.after_delivery.append(lambda: run.state.save(NETWORK_STATE, {"time": now, "counters": current}))
    deltas = counter_deltas(previous["counters"], current) if previous else None
    if deltas is None:
        run.log.info("NETWORK: baseline stored, first figures on the next run")
        return []
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
    io_before = stored_counters(run.state.load(DISKSTATS_STATE), "devices", run.log)
    if not io_before or not isinstance(io_before["devices"], dict):
        io_before = {"time": now, "devices": {}}
    run.after_delivery.append(lambda: run.state.save(DISKSTATS_STATE, {"time": now, "devices": io_now}))
    partitions = psutil.disk_partitions(all=True)
    documents = []
    for mount in run.opts.disks:
        try:
            usage = psutil.disk_usage(mount)
        except OSError as error:
            run.log.warning("DISK %s not reported: %s", mount, error.strerror)
            continue
        device = device_of(mount, partitions)
        document = {"kind": "DISK", "login_node": node, "mount": mount, "total": usage.total,
                    "used": usage.used, "free": usage.free,
                    "utilization": usage.used / usage.total if usage.total else 0.0, "device": device}
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
