"""slurm.py's parsing fed with real Slurm 22.05 output (tests/slurm-captures), its sacct cursor through every
order in which accounting records can arrive, any text at all, and the script's error paths.

The live tests (tests/test_slurm_cluster.py) check the same collector against a running Slurm.
"""
import argparse
import calendar
import logging
import math
import pwd
import shutil
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import afmetrics_common as common
import afmetrics_privacy
import slurm
from conftest import REPO, log_lines
from slurm_cluster import queued_records

LOG = logging.getLogger("test")
CAPTURES = REPO / "tests" / "slurm-captures"
EXAMPLES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def capture(name):
    return (CAPTURES / name).read_text()


def test_queue_specs():
    assert slurm.parse_queue_spec("all:") == ("all", frozenset())
    assert slurm.parse_queue_spec(" gpu : gpu, gpu-long ,") == ("gpu", frozenset({"gpu", "gpu-long"}))
    for bad in ("all", ":short", " :x", "a:b c"):
        with pytest.raises(common.UsageError, match="bad slurm queue"):
            slurm.parse_queue_spec(bad)


@pytest.mark.parametrize("text, value", [("0:00", 0), ("12:34", 754), ("1:02:03", 3723), ("2-03:04:05", 183845),
                                         ("10-00:00:00", 864000)])
def test_durations(text, value):
    assert slurm.duration(text) == value


@pytest.mark.parametrize("text", ["INVALID", "", "1:2:3:4", "-1:00", "1-", "12"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        slurm.duration(text)


@pytest.mark.parametrize("text, value", [("cpu=2,mem=256M,node=1,billing=2", (2, 256)), ("cpu=1,mem=1.50G", (1, 1536)),
                                         ("cpu=4,mem=2T,node=1", (4, 2 * 1024 * 1024)), ("", (0, 0)),
                                         ("cpu=1,mem=512K", (1, 0.5)), ("cpu=3,mem=300", (3, 300))])
def test_tres(text, value):
    assert slurm.tres(text) == value


@pytest.mark.parametrize("job, ids", [("123", ["123"]), ("123_4", ["123_4"]), ("123+0", ["123+0"]),
                                      ("123_[0-3]", ["123_0", "123_1", "123_2", "123_3"]),
                                      ("9_[1,4-5%2]", ["9_1", "9_4", "9_5"])])
def test_array_ids(job, ids):
    assert slurm.array_ids(job) == ids


def test_squeue_rows_of_real_squeue_equal_scontrol():
    rows = {row["id"]: row for row in slurm.squeue_rows(capture("squeue.stdout"), LOG)}
    records = queued_records(capture("scontrol_show_job.stdout"))
    assert set(rows) == set(records)
    for job, row in rows.items():
        record = records[job]
        assert (row["user"], row["state"], row["partitions"]) == (record["UserId"].split("(")[0], record["JobState"],
                                                                 set(record["Partition"].split(","))), job
        held = record["JobState"] == "PENDING" and (record["Priority"] == "0" or record["Reason"].startswith("JobHeld"))
        assert row["held"] is held, job
        cpus, memory = slurm.tres(record["TRES"])
        assert (row["cpus"], row["memory"]) == (cpus, memory), job
    # The capture holds what the queue counts must tell apart.
    assert {row["state"] for row in rows.values()} == {"RUNNING", "PENDING", "SUSPENDED", "COMPLETING"}
    assert {row["held"] for row in rows.values() if row["state"] == "PENDING"} == {True, False}


def test_queue_documents_of_real_squeue():
    queues = [slurm.parse_queue_spec(spec) for spec in ("all:", "short:short", "long:long")]
    documents = {doc["queue"]: doc for doc in slurm.queue_documents(queues, slurm.squeue_rows(
        capture("squeue.stdout")))}
    # 4_0 and 4_1 run with a CPU and 100 MiB each; 1 is suspended, 12 completing: neither counts as running.
    assert documents["all"] == {"kind": "slurmqueue", "queue": "all", "idle": 6, "running": 2, "held": 2,
                                "allocated_cores": 2, "allocated_mem": 200}
    assert documents["short"] == dict(documents["short"], idle=1, running=0, held=2)
    assert documents["long"] == dict(documents["long"], idle=5, running=2, held=1)


def test_sacct_window_is_utc_whatever_the_local_time(monkeypatch):
    """07:30 UTC on 2026-11-01 is the second 01:30 of that night in Chicago, which sacct, given local time, reads
    as the first: an hour of finished jobs again."""
    monkeypatch.setenv("TZ", "America/Chicago")
    time.tzset()
    try:
        argv = slurm.sacct_command(calendar.timegm((2026, 11, 1, 7, 30, 0)), calendar.timegm((2026, 11, 2, 7, 30, 0)))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert argv[-2:] == ["--starttime=2026-11-01T07:30:00", "--endtime=2026-11-02T07:30:00"]
    assert slurm.SACCT_ENVIRONMENT["TZ"] == "UTC0"


def test_sacct_rows_of_real_sacct():
    rows = list(slurm.sacct_rows(capture("sacct.stdout"), LOG))
    assert [(row["id"], row["user"], row["state"], row["runtime"]) for row in rows] == [
        ("2", "bob", "cancelled", 0), ("5_0", "bob", "cancelled", 0), ("5_1", "bob", "cancelled", 0),
        ("5_2", "bob", "cancelled", 0), ("5_3", "bob", "cancelled", 0), ("9", "alice", "completed", 0),
        ("10", "bob", "failed", 0), ("11", "alice", "cancelled", 3), ("12", "alice", "completed", 5)]
    assert rows[0]["end"] == 1796128798


def test_sdiag_agent_queue():
    assert slurm.agent_queue(capture("sdiag.stdout"), LOG) == 0
    assert slurm.agent_queue(capture("sdiag_slurmdbd_down.stdout"), LOG) == 1


def test_sdiag_without_an_agent_queue_is_one_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert slurm.agent_queue("sdiag output at Tue Dec 01 12:39:22 2026 (1796128762)\n", LOG) == 0
    assert caplog.text.count("sdiag printed no DBD Agent queue size") == 1


def test_malformed_lines_are_skipped_and_counted(caplog):
    good = capture("squeue.stdout").splitlines()[0]
    text = "\n".join([good, "garbage", good.replace("|0:05|", "|INVALID|"), good.replace("COMPLETING", "running"),
                      good + "extra|", good.replace("mem=100M", "mem=lots"), ""])
    with caplog.at_level(logging.WARNING):
        assert [row["id"] for row in slurm.squeue_rows(text, LOG)] == ["12"]
        assert list(slurm.sacct_rows("1|alice|COMPLETED|5|Unknown\n2|bob|RUNNING|1|1796128798\n"
                                     "3|carol|COMPLETED|-1|1796128798\n4||FAILED|1|1796128798\nx\n", LOG)) == []
    assert "5 line(s) of squeue output did not parse and were skipped" in caplog.text
    assert "5 line(s) of sacct output did not parse and were skipped" in caplog.text


class FakeSlurm:
    """The answers of squeue, sdiag and sacct at one moment, for runs of slurm.collect() in this process: a
    stand-in, because only here can a test choose when an accounting record reaches slurmdbd (the real
    cluster's runs are in test_slurm_cluster.py). Its sdiag and failing sacct are the real ones captured; its
    sacct selects as the real one does: the records whose end time lies in --starttime..--endtime."""

    def __init__(self):
        self.queue = ""
        self.waiting = 0
        self.records = []  # (JobID, User, State, ElapsedRaw, End) in slurmdbd
        self.slurmdbd_up = True

    def answer(self, argv, env):
        if argv[0] == "squeue":
            return self.queue
        if argv[0] in ("scontrol", "sacctmgr"):
            return ""  # a run as another user than root reads the daemons' PrivateData: none said
        if argv[0] == "sdiag":
            return capture("sdiag_slurmdbd_down.stdout" if self.waiting else "sdiag.stdout")
        assert argv[0] == "sacct" and env == {"TZ": "UTC0", "SLURM_TIME_FORMAT": "%s"}
        if not self.slurmdbd_up:
            raise common.SourceError("sacct failed (exit 1): " + " ".join(capture("sacct_slurmdbd_down.stderr")
                                                                           .split()))
        window = [calendar.timegm(time.strptime(arg.split("=")[1], "%Y-%m-%dT%H:%M:%S")) for arg in argv
                  if arg.startswith(("--starttime=", "--endtime="))]
        return "".join("|".join(map(str, record)) + "\n" for record in self.records
                       if window[0] <= record[4] <= window[1])


class FakeRun(common.Run):
    def __init__(self, cluster, state_dir):
        opts = argparse.Namespace(slurm_queues=["all:"], exclude_owners=[], slurm_jupyter=[], jupyter_pending=False,
                                  obfuscate_users=False, salt="", group="", obfuscate_hosts="", timeout=60,
                                  state_dir=state_dir)
        super().__init__(slurm.NAME, opts, afmetrics_privacy.UserFilter(opts, LOG), math.inf)
        self.cluster = cluster

    def command(self, argv, env=None):
        return self.cluster.answer(argv, env)


def collect(cluster, state_dir, deliver=True):
    """One run: its job documents {Id: state}; the state moves only when deliver (as after delivery)."""
    run = FakeRun(cluster, state_dir)
    documents = list(slurm.collect(run))
    if deliver:
        for commit in run.after_delivery:
            commit()
    return {doc["Id"]: doc["state"] for doc in documents if doc["kind"] == "slurmjob"}


def test_a_record_that_reaches_slurmdbd_late_is_reported_once(tmp_path, monkeypatch):
    # The cursor stops at now, not MARGIN before it: two seconds of waiting make a record late.
    monkeypatch.setattr(slurm, "MARGIN", 0)
    cluster = FakeSlurm()
    cluster.records.append(("1", "alice", "COMPLETED", 5, int(time.time()) - 10))
    assert collect(cluster, tmp_path) == {"1": "completed"}
    # slurmdbd goes down and job 2 ends: a run cannot read accounting and keeps its cursor.
    ended = int(time.time())
    cluster.slurmdbd_up, cluster.waiting = False, 1
    assert collect(cluster, tmp_path) == {}
    time.sleep(ended + 2 - time.time())
    # slurmdbd is back, but slurmctld has not sent job 2's record yet: the cursor must not pass its end.
    cluster.slurmdbd_up = True
    assert collect(cluster, tmp_path) == {}
    # The record arrives, with the end time it had, and is reported once.
    cluster.records.append(("2", "bob", "CANCELLED by 0", 7, ended))
    cluster.waiting = 0
    assert collect(cluster, tmp_path) == {"2": "cancelled"}
    assert collect(cluster, tmp_path) == {}


def test_undelivered_and_debug_runs_leave_the_cursor(tmp_path):
    now = int(time.time())
    cluster = FakeSlurm()
    cluster.records.append(("5_[0-1]", "bob", "CANCELLED by 1001", 0, now - 100))
    assert collect(cluster, tmp_path, deliver=False) == {"5_0": "cancelled", "5_1": "cancelled"}
    assert not (tmp_path / slurm.CURSOR_STATE).exists()
    assert collect(cluster, tmp_path) == {"5_0": "cancelled", "5_1": "cancelled"}
    assert collect(cluster, tmp_path) == {}


def test_a_completing_job_already_in_sacct_is_reported_once_as_completed(tmp_path):
    # 12 is COMPLETING in the captured squeue and COMPLETED in the captured sacct (its epilog was held).
    cluster = FakeSlurm()
    cluster.queue = capture("squeue.stdout")
    cluster.records.append(("12", "alice", "COMPLETED", 5, int(time.time()) - 2))
    first = collect(cluster, tmp_path)
    assert first["12"] == "completed" and len(first) == 12
    assert "12" not in collect(cluster, tmp_path)


def test_a_requeued_job_is_queued_not_finished_until_it_ends(tmp_path):
    """A job requeued after its node failed (or it was preempted) is back in squeue, PENDING and then RUNNING,
    while sacct asked for final states still answers its earlier run's NODE_FAIL (so the real Slurm 22.05 does,
    test_slurm_cluster.py): it is a queued job until it ends, and then reported once, as what it ended in."""
    now = int(time.time())
    cluster = FakeSlurm()
    cluster.records.append(("2", "bob", "NODE_FAIL", 4, now - 30))
    for state in ("PENDING", "RUNNING"):
        cluster.queue = "2|bob|%s|long|BeginTime|1|0:00|cpu=1,mem=100M,node=1,billing=1|\n" % state
        assert collect(cluster, tmp_path) == {"2": state.lower()}
    cluster.queue, cluster.records = "", [("2", "bob", "CANCELLED by 1001", 21, now - 1)]
    assert collect(cluster, tmp_path) == {"2": "cancelled"}
    assert collect(cluster, tmp_path) == {}


def test_a_job_that_ends_while_the_run_looks_is_finished_on_the_next_run(tmp_path):
    """squeue, read first, lists it RUNNING; sacct, read next, has its end: this run reports it running, the next
    one finished (it cannot be told from a requeued job, above, in one run)."""
    cluster = FakeSlurm()
    cluster.queue = "3|alice|RUNNING|short|None|1|0:09|cpu=1,mem=100M,node=1,billing=1|\n"
    cluster.records.append(("3", "alice", "COMPLETED", 10, int(time.time())))
    assert collect(cluster, tmp_path) == {"3": "running"}
    cluster.queue = ""
    assert collect(cluster, tmp_path) == {"3": "completed"}
    assert collect(cluster, tmp_path) == {}


def test_first_run_looks_back_and_a_corrupt_state_starts_afresh(tmp_path, caplog):
    now = int(time.time())
    cluster = FakeSlurm()
    cluster.records += [("3", "alice", "FAILED", 1, now - slurm.FIRST_LOOK_BACK - 60),
                        ("4", "alice", "TIMEOUT", 60, now - slurm.FIRST_LOOK_BACK + 60)]
    (tmp_path / slurm.CURSOR_STATE).write_text('{"since": "yesterday", "seen": {}}')
    with caplog.at_level(logging.WARNING):
        assert collect(cluster, tmp_path) == {"4": "timeout"}
    assert "holds no sacct cursor: looking back 360 s afresh" in caplog.text


@pytest.mark.parametrize("stored", [[], "x", {"since": 1}, {"since": 1.5, "seen": {}}, {"since": True, "seen": {}},
                                    {"since": 1, "seen": []}, {"since": 1, "seen": {"1": "x"}},
                                    {"since": 2 ** 40, "seen": {}}, {"since": 1, "seen": {}, "x": 1}])
def test_a_corrupt_cursor_is_a_fresh_start(stored):
    state, problem = slurm.read_state(stored, 1795600000)
    assert problem == "corrupt" and state == {"since": 1795600000 - slurm.FIRST_LOOK_BACK, "seen": {}}


field_text = st.sampled_from(["alice", "bob", "RUNNING", "PENDING", "COMPLETED", "CANCELLED by 0", "short",
                              "long,short", "JobHeldUser", "None", "0", "1", "4294901759", "0:00", "1-02:03:04",
                              "cpu=2,mem=256M,node=1", "mem=1.5G", "12_[0-3]", "12_4", "7", "-1", "x", ""]) \
    | st.text(max_size=6)


def lines(width):
    return st.lists(st.lists(field_text, min_size=width, max_size=width).map("|".join)
                    | st.text(max_size=30), max_size=8).map("\n".join)


@EXAMPLES
@given(queue=lines(len(slurm.SQUEUE_FIELDS) + 1), finished=lines(len(slurm.SACCT_FIELDS)),
       agent=st.text(max_size=40))
def test_any_text_gives_documents_of_the_right_types(queue, finished, agent, tmp_path):
    cluster = FakeSlurm()
    cluster.queue = queue
    cluster.answer = lambda argv, answer=cluster.answer: {"squeue": queue, "sdiag": agent,
                                                          "sacct": finished}.get(argv[0], "")
    run = FakeRun(cluster, tmp_path)
    for document in slurm.collect(run):
        if document["kind"] == "slurmqueue":
            assert all(type(document[field]) is int and document[field] >= 0 for field in
                       ("idle", "running", "held", "allocated_cores", "allocated_mem"))
        else:
            assert isinstance(document["users"], str) and document["users"]
            assert isinstance(document["Id"], str) and document["Id"]
            assert type(document["Runtime"]) is int and document["Runtime"] >= 0
            assert document["state"].islower()
    for commit in run.after_delivery:
        commit()
    assert slurm.read_state(run.state.load(slurm.CURSOR_STATE), time.time())[1] is None


# Captured from the real cluster with PrivateData=jobs in slurm.conf and slurmdbd.conf (slurm-captures/README.md).
RUN_UID, SLURM_UID = 4471, 64030


def test_private_data_of_the_real_daemons_hides_jobs_from_all_but_root_and_slurm_user():
    slurmctld = slurm.config_values(capture("scontrol_show_config.stdout"))
    slurmdbd = slurm.dbd_config_values(capture("sacctmgr_show_config.stdout"))
    assert slurmctld["PrivateData"] == slurmdbd["PrivateData"] == "jobs"
    assert slurmctld["SlurmUser"] == slurmdbd["SlurmUser"] == "slurm(%d)" % SLURM_UID
    for config in (slurmctld, slurmdbd):
        assert slurm.hides_jobs(config, RUN_UID)
        assert not slurm.hides_jobs(config, 0) and not slurm.hides_jobs(config, SLURM_UID)
    # With slurmdbd down sacctmgr prints only the local slurm.conf's values, PrivateData among them: they are
    # not slurmdbd's.
    down = capture("sacctmgr_show_config_slurmdbd_down.stdout")
    assert "PrivateData" in down and slurm.dbd_config_values(down) == {}


@pytest.mark.parametrize("flags, hidden", [("none", False), ("jobs", True), ("usage", False),
                                           ("accounts,events,jobs,nodes,partitions,reservations,usage,users", True),
                                           ("jobsx", False), ("", False)])
def test_only_the_jobs_flag_hides_jobs(flags, hidden):
    assert slurm.hides_jobs({"PrivateData": flags, "SlurmUser": "slurm(%d)" % SLURM_UID}, RUN_UID) is hidden
    assert slurm.hides_jobs({"PrivateData": flags}, RUN_UID) is hidden


@pytest.mark.parametrize("hidden_by, level, warned", [([], "None", False), (["slurm.conf"], "Operator", False),
                                                      (["slurmdbd.conf"], "Administrator", False),
                                                      (["slurm.conf"], "None", True), (["slurmdbd.conf"], "", True)])
def test_the_warning_names_what_to_do_unless_the_user_sees_every_job(hidden_by, level, warned):
    warning = slurm.private_data_warning(hidden_by, "afmetrics", level)
    assert (warning is not None) is warned
    if warned:
        assert warning.startswith("PrivateData=jobs in %s hides other users' jobs from afmetrics" % hidden_by[0])
        assert "sacctmgr modify user afmetrics set adminlevel=operator" in warning and "\n" not in warning


def test_a_daemon_that_cannot_tell_its_private_data_is_one_info_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(slurm.os, "getuid", lambda: RUN_UID)
    cluster = FakeSlurm()

    def answer(argv, env, real=cluster.answer):
        if argv[0] == "scontrol":
            raise common.SourceError("scontrol failed (exit 1): slurm_load_ctl_conf error: Unable to contact "
                                     "slurm controller (connect failure)")
        return real(argv, env)
    cluster.answer = answer
    with caplog.at_level(logging.INFO):
        collect(cluster, tmp_path)
    assert [record.getMessage() for record in caplog.records if "PrivateData" in record.getMessage()] == [
        "cannot tell whether PrivateData in slurm.conf hides jobs from this user: scontrol failed (exit 1): "
        "slurm_load_ctl_conf error: Unable to contact slurm controller (connect failure)"]


NOBODY = pwd.getpwnam("nobody")
# sacctmgr with slurmdbd stopped: its show config answers from slurm.conf alone (captured), its user lookup fails.
SACCTMGR_SLURMDBD_DOWN = """#!/bin/sh
if [ "$2" = config ]; then exec %s %s; fi
echo "sacctmgr: error: Problem talking to the database: Connection refused" >&2
exit 1
""" % (shutil.which("cat"), CAPTURES / "sacctmgr_show_config_slurmdbd_down.stdout")


@pytest.mark.parametrize("sacctmgr, unknown, infos", [
    (None, "sacctmgr not found on PATH",
     ["cannot tell whether PrivateData in slurmdbd.conf hides jobs from this user: sacctmgr not found on PATH"]),
    (SACCTMGR_SLURMDBD_DOWN, "sacctmgr failed (exit 1): sacctmgr: error: Problem talking to the database: "
                             "Connection refused", [])], ids=["no sacctmgr", "slurmdbd down"])
def test_private_jobs_in_slurm_conf_are_warned_of_when_the_admin_level_cannot_be_read(sacctmgr, unknown, infos,
                                                                                      tmp_path, monkeypatch, caplog):
    """slurmctld's PrivateData=jobs hides jobs from a run user that is neither root nor the SlurmUser: without
    sacctmgr, or with slurmdbd down, its AdminLevel is unknown, and the warning still comes, saying so."""
    tools = tmp_path / "bin"
    tools.mkdir()
    scontrol = "#!/bin/sh\nexec %s %s\n" % (shutil.which("cat"), CAPTURES / "scontrol_show_config.stdout")
    scripts = {"scontrol": scontrol, "sacctmgr": sacctmgr}
    for name, script in scripts.items():
        if script:
            (tools / name).write_text(script)
            (tools / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.setattr(slurm.os, "getuid", lambda: NOBODY.pw_uid)
    run = common.Run(slurm.NAME, argparse.Namespace(timeout=60, state_dir=tmp_path), None, math.inf)
    with caplog.at_level(logging.INFO):
        slurm.check_private_data(run)
    assert [record.getMessage() for record in caplog.records] == infos + [
        slurm.private_data_warning(["slurm.conf"], NOBODY.pw_name, "") + " (its AdminLevel is unknown: %s; an "
        "operator would see every job)" % unknown]


def test_without_slurm_on_path_one_error_line(run_collector, tmp_path):
    done = run_collector("slurm.py", "-d", "--slurm-queue", "all:", "--state-dir", tmp_path / "state",
                         env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert done.returncode == 1
    assert log_lines(done.stderr) == ["ERROR:slurm:squeue not found on PATH"]
    assert not (tmp_path / "slurm.json").exists()


@pytest.mark.parametrize("spec", ["no-colon", ":short", "a:b c"])
def test_a_bad_queue_is_a_usage_error_before_anything_runs(spec, run_collector, tmp_path):
    done = run_collector("slurm.py", "-d", "--slurm-queue", spec, "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 2
    assert log_lines(done.stderr) == ["ERROR:afmetrics:bad slurm queue %r: expected NAME:PARTITIONS, e.g. all: or "
                                      "short:short,debug" % spec]
    assert not (tmp_path / "slurm.json").exists() and not (tmp_path / "state").exists()


@pytest.mark.parametrize("spec", ["ood:name", "ood:title:x", "o d:name:x", ":name:x", "ood:name:(", "ood:name:"])
def test_a_bad_jupyter_session_is_a_usage_error_before_anything_runs(spec, run_collector, tmp_path):
    done = run_collector("slurm.py", "-d", "--slurm-jupyter", spec, "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 2
    [line] = log_lines(done.stderr)
    assert line.startswith("ERROR:afmetrics:bad slurm_jupyter %r: " % spec)
    assert not (tmp_path / "slurm.json").exists() and not (tmp_path / "state").exists()


def test_text_fields_end_with_the_unit_separator_and_may_hold_bars():
    """What squeue 22.05 wrote for --Format=...,Name:0\\x1f,Comment:0\\x1f (seen on the real cluster): a name
    with "|" and spaces, no comment written (null)."""
    command = slurm.squeue_command(["name", "comment"])
    assert command[-1].endswith(",Name:0\x1f,Comment:0\x1f")
    line = "7|alice|RUNNING|short|None|1|0:05|cpu=1,mem=100M,node=1|we|ird  name \x1f(null)\x1f"
    [row] = slurm.squeue_rows(line, LOG, ["name", "comment"])
    assert (row["id"], row["name"], row["comment"]) == ("7", "we|ird  name ", "")
    assert list(slurm.squeue_rows(line, None, ["name"])) == []  # one text field too many: not this format


def test_session_users_count_running_jobs_and_pending_ones_when_asked():
    sessions = slurm.sessions_of(argparse.Namespace(slurm_jupyter=["ood:name:sys/dashboard/sys/[^/]*jupyter",
                                                                   "short:partition:^short$", "c:comment:x"]))
    rows = [{"user": "alice", "state": "RUNNING", "held": False, "name": "sys/dashboard/sys/jupyter",
             "partitions": {"long"}, "comment": ""},
            {"user": "bob", "state": "PENDING", "held": False, "name": "sys/dashboard/sys/slac-ood-jupyter",
             "partitions": {"long", "short"}, "comment": "x"},
            {"user": "carol", "state": "PENDING", "held": True, "name": "sys/dashboard/sys/jupyter",
             "partitions": {"short"}, "comment": "x"},
            {"user": "dave", "state": "RUNNING", "held": False, "name": "sys/dashboard/sys/bc_desktop/jupyter",
             "partitions": {"short"}, "comment": "x"}]
    assert slurm.session_users(rows, sessions, {"RUNNING"}, set()) == {"ood": {"alice"}, "short": {"dave"},
                                                                       "c": {"dave"}}
    assert slurm.session_users(rows, sessions, {"RUNNING", "waiting"}, {"dave"}) == {
        "ood": {"alice", "bob"}, "short": {"bob"}, "c": {"bob"}}


def test_jupyter_documents_are_snapshots_the_next_run_replaces():
    assert slurm.replaced_by_next_run({"kind": "jupyter-ood", "jupyter_user_count": 0, "users": []})
    assert not slurm.replaced_by_next_run({"kind": "slurmjob", "state": "completed"})
