"""condor.py's parsing fed with real HTCondor 23.9.6 and 25.14.1 output, and the script's error paths.

The live pool tests (tests/test_condor_pool.py) check the same collector against a running HTCondor.
"""
import json
import logging

import pytest

import condor
from conftest import CAPTURES, CONDOR_VERSIONS, capture, log_lines

LOG = logging.getLogger("test")
TIMING_ATTRS = ["ClusterId", "ProcId", "JobStatus", "RemoteWallClockTime", "JobCurrentStartDate",
                "EnteredCurrentStatus", "ServerTime"]
HISTORY_CAPTURE_ATTRS = ["Owner", "ClusterId", "ProcId", "RemoteWallClockTime", "CompletionDate"]


def history_ads(version, name):
    ads = condor.parse_autoformat(capture(version, name), HISTORY_CAPTURE_ATTRS, LOG)
    return [dict(ad, EnteredCurrentStatus=None) for ad in ads]


@pytest.mark.parametrize("version", CONDOR_VERSIONS)
def test_parse_autoformat_of_real_condor_q(version):
    rows = condor.parse_autoformat(capture(version, "q_all_af"), ["Owner", "ClusterId", "ProcId",
                                                                   "RemoteWallClockTime", "JobStatus"], LOG)
    truth = json.loads(capture(version, "q_all_json_attributes"))
    assert rows == [{key: float(value) if key != "Owner" else value for key, value in ad.items()} for ad in truth]


def test_undefined_becomes_none_and_empty_output_is_no_jobs():
    rows = condor.parse_autoformat(capture("sid-htcondor-25.14.1", "q_all_af_timing"), TIMING_ATTRS, LOG)
    assert rows[3]["JobCurrentStartDate"] is None  # a held job never started
    assert capture("sid-htcondor-25.14.1", "q_empty_constraint_af") == ""
    assert condor.parse_autoformat("", TIMING_ATTRS, LOG) == []


def test_malformed_lines_are_skipped_and_counted(caplog):
    text = "alice 1 0 0.0 2\ngarbage\nbob x 0 0.0 2\nundefined 2 0 0.0 1\ncarol 3 1 5.0 2\n"
    with caplog.at_level(logging.WARNING):
        rows = condor.parse_autoformat(text, ["Owner", "ClusterId", "ProcId", "RemoteWallClockTime", "JobStatus"],
                                       LOG)
    assert [row["Owner"] for row in rows] == ["alice", "carol"]
    assert "3 line(s) of condor output did not parse" in caplog.text


@pytest.mark.parametrize("version", CONDOR_VERSIONS)
def test_queue_counts_equal_condor_totals(version):
    jobs = json.loads(capture(version, "q_all_json_attributes"))
    provisioned = {(ad["ClusterId"], ad["ProcId"]): ad for ad in json.loads(capture(version,
                                                                                     "q_all_run_af_provisioned_json"))}
    for job in jobs:
        slot = provisioned.get((job["ClusterId"], job["ProcId"]), {})
        job.update(CpusProvisioned=slot.get("CpusProvisioned"), MemoryProvisioned=slot.get("MemoryProvisioned"))
    [totals] = json.loads(capture(version, "q_all_totals_json"))
    document = condor.queue_document("all", jobs)
    assert (document["idle"], document["running"], document["held"]) == (totals["Idle"], totals["Running"],
                                                                          totals["Held"])
    assert document["allocated_cores"] == sum(ad.get("CpusProvisioned", 0) for ad in provisioned.values())
    assert document["allocated_mem"] == sum(ad.get("MemoryProvisioned", 0) for ad in provisioned.values())
    assert set(document) == {"kind", "queue", "idle", "running", "held", "allocated_cores", "allocated_mem"}


def test_runtime_counts_the_current_run_and_states_are_named():
    rows = condor.parse_autoformat(capture("sid-htcondor-25.14.1", "q_all_af_timing"), TIMING_ATTRS, LOG)
    documents = {"%d.%d" % (row["ClusterId"], row["ProcId"]): condor.job_document(row, "alice", 0) for row in rows}
    # ServerTime 1795504715 - JobCurrentStartDate 1795504702: RemoteWallClockTime is still 0.0 there.
    assert documents["3.0"] == {"kind": "condorjob", "users": "alice", "Id": "3.0", "Runtime": 13, "state": "running"}
    assert documents["3.1"]["state"] == "suspended" and documents["3.1"]["Runtime"] == 13
    assert (documents["4.0"]["state"], documents["4.0"]["Runtime"]) == ("held", 0)
    assert documents["5.0"]["state"] == "idle"
    assert (documents["7.0"]["state"], documents["7.0"]["Runtime"]) == ("finished", 1)


def test_runtime_adds_earlier_runs_after_an_eviction():
    job = {"ClusterId": 9, "ProcId": 0, "JobStatus": 2, "RemoteWallClockTime": 600.0,
           "JobCurrentStartDate": 1000.0, "ServerTime": 1100.0}
    assert condor.job_runtime(job, now=0) == 700
    assert condor.job_document(dict(job, JobStatus=6), "bob", 0)["state"] == "transferring_output"


def test_completedsince_stops_rather_than_filters():
    # 23.9.6: asking from 1795504023 returns 6.2 (…026), 6.1 and 6.0 (…024) and the removed cluster 1 jobs,
    # whose CompletionDate is undefined; asking from 1795504024 stops at 6.1.
    version = "trixie-htcondor-23.9.6"
    assert [(ad["ClusterId"], ad["ProcId"]) for ad in history_ads(version, "history_completedsince_1795504024_af")] \
        == [(6, 2)]
    ads = history_ads(version, "history_completedsince_1795504023_af")
    assert len(ads) == 6 and ads[-1]["CompletionDate"] is None


def test_history_reported_once_across_runs_at_the_same_second():
    version = "trixie-htcondor-23.9.6"
    # Run 1 saw the history up to 6.1/6.0 (completed at …024), before 6.2 existed.
    first, mark = condor.new_history(history_ads(version, "history_completedsince_1795504023_af")[1:],
                                     {"time": 1795504000, "ids": []})
    assert [(ad["ClusterId"], ad["ProcId"]) for ad in first] == [(6, 1), (6, 0)]
    assert mark == {"time": 1795504024, "ids": ["6.0", "6.1"]}
    # Run 2 asks from mark - 1 and gets everything again: only 6.2 is new.
    second, mark = condor.new_history(history_ads(version, "history_completedsince_1795504023_af"), mark)
    assert [(ad["ClusterId"], ad["ProcId"]) for ad in second] == [(6, 2)]
    assert mark == {"time": 1795504026, "ids": ["6.2"]}
    third, same = condor.new_history(history_ads(version, "history_completedsince_1795504025_af"), mark)
    assert third == [] and same == mark


def test_removed_jobs_are_dated_by_entered_current_status():
    ads = [{"Owner": "bob", "ClusterId": 2.0, "ProcId": 0.0, "JobStatus": 3.0, "RemoteWallClockTime": 0.0,
            "CompletionDate": None, "EnteredCurrentStatus": 1795504700.0},
           {"Owner": "bob", "ClusterId": 1.0, "ProcId": 0.0, "JobStatus": 3.0, "RemoteWallClockTime": 0.0,
            "CompletionDate": 0.0, "EnteredCurrentStatus": 1795400000.0}]
    fresh, mark = condor.new_history(ads, {"time": 1795504000, "ids": []})
    assert [condor.job_document(ad, "bob", 0)["state"] for ad in fresh] == ["removed"]
    assert mark["time"] == 1795504700


@pytest.mark.parametrize("spec, expected", [
    ("all:", ("all", "")),
    ('short:queue=="short"', ("short", 'queue=="short"')),
    ('t:regexp("a:b", Cmd)', ("t", 'regexp("a:b", Cmd)')),
])
def test_queue_spec_splits_at_the_first_colon(spec, expected):
    assert condor.parse_queue_spec(spec) == expected


@pytest.mark.parametrize("spec", ["short", ":x", ""])
def test_bad_queue_spec_is_a_usage_error(spec, run_collector, tmp_path):
    done = run_collector("condor.py", "-d", "-q", spec, "--state-dir", tmp_path, cwd=tmp_path)
    assert done.returncode == 2
    assert log_lines(done.stderr) == ["ERROR:afmetrics:bad queue %r: expected NAME:CONSTRAINT, e.g. all: or "
                                      "'short:queue==\"short\"'" % spec]


def replay_tools(directory, version, scenario, names):
    """condor_q/condor_history on PATH that print a real captured reply (error cases of a real pool)."""
    directory.mkdir()
    for tool, name in names.items():
        base = CAPTURES / version / scenario / name
        script = directory / tool
        script.write_text("#!/bin/sh\ncat '%s.stdout'; cat '%s.stderr' >&2; exit $(cat '%s.rc')\n"
                          % (base, base, base))
        script.chmod(0o755)
    return directory


@pytest.mark.parametrize("version, scenario, cause", [
    ("sid-htcondor-25.14.1", "schedd-down", "Can't find address for schedd"),
    ("sid-htcondor-25.14.1", "pool-down", "CEDAR:6001:Failed to connect"),
    ("trixie-htcondor-23.9.6", "pool-down", "Error: (null)"),
])
def test_unreachable_schedd_is_one_line_and_host_still_reported(version, scenario, cause, run_collector, tmp_path):
    tools = replay_tools(tmp_path / "bin", version, scenario,
                         {"condor_q": "q_all_af", "condor_history": "history_completedsince_af"})
    done = run_collector("afmetrics_collector", "-d", "-b", "--host", "--disk", "/", "-q", "all:",
                         "--state-dir", tmp_path / "state", cwd=tmp_path,
                         env={"PATH": "%s:/usr/bin:/bin" % tools})
    assert done.returncode == 1
    errors = [line for line in log_lines(done.stderr) if line.startswith("ERROR")]
    assert len(errors) == 1 and errors[0].startswith("ERROR:condor:condor_q failed (exit 1): ") and cause in errors[0]
    assert not (tmp_path / "condor.json").exists()
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "host.json").read_text().splitlines()]
    assert kinds == ["CPU", "MEM", "DISK"]
    assert not (tmp_path / "state" / condor.WATERMARK_STATE).exists()  # nothing reported, nothing skipped
