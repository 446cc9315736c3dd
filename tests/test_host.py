"""host.py: /proc/diskstats parsing, counters across runs, missing mounts and corrupt state."""
import json

import host
from conftest import log_lines

TOKEN = "tok-host-5a1e"


def documents(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


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
    cpu, memory, network, disk = receiver.documents[3:]
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
    assert [d["mount"] for d in documents(tmp_path / "host.json") if d["kind"] == "DISK"] == ["/"]


def test_corrupt_state_is_a_fresh_start(run_collector, receiver, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / host.NETWORK_STATE).write_text("{not json")
    (state / host.DISKSTATS_STATE).write_text('["wrong shape"]')
    done = run_host(run_collector, receiver, state)
    assert done.returncode == 0
    assert any(line.startswith("WARNING:host:state file %s is unreadable" % (state / host.NETWORK_STATE))
               for line in log_lines(done.stderr))
    assert json.loads((state / host.NETWORK_STATE).read_text())["counters"]  # a new baseline was stored


def test_shared_config_file_warns_only_about_names_no_collector_takes(run_collector, tmp_path):
    """One config file serves every collector on a node, as the Ansible role writes it."""
    config = tmp_path / "afmetrics.conf"
    config.write_text("[afmetrics]\ncluster = SHARED\ndisks = /\nssh_history = yes\nqueues =\n    all:\n"
                      "services = ml:af-jupyter:owner\nkubeconfig = /etc/afmetrics/kubeconfig\ndiks = /typo\n")
    done = run_collector("host.py", "-d", "--config", config, "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 0
    warnings = [line for line in log_lines(done.stderr) if line.startswith("WARNING")]
    assert warnings == ["WARNING:afmetrics:config file %s: unknown setting 'diks' ignored" % config]
    assert [d["mount"] for d in documents(tmp_path / "host.json") if d["kind"] == "DISK"] == ["/"]
    assert {d["cluster"] for d in documents(tmp_path / "host.json")} == {"SHARED"}
