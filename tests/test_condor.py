"""condor.py's parsing fed with real HTCondor 23.9.6 and 25.14.1 output, and the script's error paths.

The live pool tests (tests/test_condor_pool.py) check the same collector against a running HTCondor.
"""
import json
import logging
import time

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


NOW = 1795600000  # after every capture's dates


def ad(cluster, status=4, completed=None, entered=None):
    return {"Owner": "bob", "ClusterId": float(cluster), "ProcId": 0.0, "JobStatus": float(status),
            "RemoteWallClockTime": 2.0, "CompletionDate": completed, "EnteredCurrentStatus": entered or completed}


def ids(ads):
    return [condor.job_id(ad) for ad in ads]


def test_a_cursor_reports_every_ad_written_after_it_whatever_its_date():
    # 23.9.6: `condor_history -since 6.0` prints 6.2 and 6.1 and stops before 6.0 itself.
    since = condor.parse_autoformat(capture("trixie-htcondor-23.9.6", "history_since_cluster_af"),
                                    ["Owner", "ClusterId", "ProcId", "JobStatus"], LOG)
    assert ids(since) == ["6.2", "6.1"]
    # An ad written late (leave_in_queue, condor_rm -forcex) keeps its old CompletionDate: it is new all the same.
    state = {"cursor": "6.0", "queued": {}}
    written = [ad(8, completed=1795504100), ad(7, status=3, completed=1795500000, entered=1795504090)]
    assert ids(condor.unseen_history(written, state)) == ["8.0", "7.0"]
    # Should a condor_history print the cursor's own ad, it and what follows were seen.
    assert ids(condor.unseen_history(written + [ad(6, completed=1795504024), ad(5)], state)) == ["8.0", "7.0"]
    assert condor.next_state(state, written, set(), NOW) == {"cursor": "8.0", "queued": {}}
    assert condor.next_state(state, [], set(), NOW) == state


def test_history_command_follows_the_cursor_within_the_scan_limit():
    assert condor.history_command({"cursor": "12.3"}, 500) == ["condor_history", "-since", "12.3", "-limit", "500",
                                                              "-af"] + condor.HISTORY_ATTRS
    first, _ = condor.read_state(None, NOW)
    assert condor.history_command(first, 500)[:3] == ["condor_history", "-limit", "500"]
    assert first == {"cursor": None, "time": NOW - condor.FIRST_LOOK_BACK, "ids": [], "queued": {}}


def test_an_old_watermark_migrates_without_doubling_a_job():
    # The previous version saw 6.1 and 6.0 (completed at …024) and saved this; 6.2 came after.
    version = "trixie-htcondor-23.9.6"
    state, problem = condor.read_state({"time": 1795504024, "ids": ["6.0", "6.1"]}, NOW)
    assert problem == "old" and state["cursor"] is None
    whole = history_ads(version, "history_completedsince_1795504023_af")  # the whole history, newest first
    assert ids(condor.unseen_history(whole, state)) == ["6.2"]
    assert condor.next_state(state, whole, set(), NOW) == {"cursor": "6.2", "queued": {}}


def test_without_a_cursor_removed_jobs_are_dated_by_entered_current_status():
    state, _ = condor.read_state(None, 1795504360)
    fresh = condor.unseen_history([ad(2, status=3, entered=1795504300), ad(1, status=3, completed=0.0,
                                                                          entered=1795400000)], state)
    assert [condor.job_document(ad, "bob", 0)["state"] for ad in fresh] == ["removed"] and ids(fresh) == ["2.0"]


@pytest.mark.parametrize("stored", [
    [], "x", {"cursor": "6", "queued": {}}, {"cursor": "6.0; rm -rf", "queued": {}}, {"cursor": 6.0, "queued": {}},
    {"cursor": "6.0", "queued": {"1.0": "x"}}, {"cursor": "6.0", "queued": []}, {"cursor": "6.0"},
    {"cursor": None, "time": 1, "queued": {}}, {"time": NOW + 60, "ids": []}, {"time": float("nan"), "ids": []},
    {"time": True, "ids": []}, {"time": 1, "ids": [1]}, {"time": 1, "ids": [], "extra": 1},
])
def test_a_state_that_holds_no_history_position_is_a_fresh_start(stored):
    assert condor.read_state(stored, NOW) == (condor.read_state(None, NOW)[0], "corrupt")


def test_ids_reported_from_the_queue_are_kept_until_their_history_ad_or_a_week():
    queued = {"1.0": NOW - 60, "2.0": NOW - 60, "3.0": NOW - condor.QUEUE_MEMORY - 1, "4.0": NOW - 60}
    state, problem = condor.read_state({"cursor": "9.0", "queued": queued}, NOW)
    assert problem is None
    # 1.0 is still queued (removed), 2.0's history ad came, 3.0 left the queue over a week ago, 4.0 may come.
    after = condor.next_state(state, [ad(2)], {"1.0", "5.0"}, NOW)
    assert after == {"cursor": "2.0", "queued": {"1.0": NOW, "4.0": NOW - 60, "5.0": NOW}}
    assert condor.read_state(after, NOW) == (after, None)


def test_the_scan_limit_is_reported_only_when_it_cut_the_scan_short():
    cursor = {"cursor": "1.0", "queued": {}}
    dated, _ = condor.read_state(None, 1795504360)
    text = "line\n" * 3
    assert not condor.scan_cut_short(text, [], cursor, 4)
    assert condor.scan_cut_short(text, [], cursor, 3)
    # Without a cursor the limit only matters while the oldest ad read is still inside the look-back.
    assert condor.scan_cut_short(text, [ad(2, completed=1795504300)], dated, 3)
    assert not condor.scan_cut_short(text, [ad(2, completed=1795504300), ad(1, completed=1795400000)], dated, 3)


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


def shell_tools(directory, **scripts):
    """directory, made, holding an sh script per keyword (condor_q="echo ..."): stand-ins to put first on PATH."""
    directory.mkdir()
    for tool, body in scripts.items():
        (directory / tool).write_text("#!/bin/sh\n" + body)
        (directory / tool).chmod(0o755)
    return directory


# The old tool's condor.py (maniaclab/afmetrics_collector src/afmetrics_collector/condor.py) asks condor_q and
# condor_history with the constraint Owner =!= "atlas-coffea" for its condorjob documents, and condor_q -totals
# without it for its queue totals. Written out here, not imported.
def old_tool_reports_job_of(owner):
    return owner != "atlas-coffea"


@pytest.mark.parametrize("options, excluded", [([], {"atlas-coffea"}), (["--exclude-owner", ""], set())])
def test_jobs_of_atlas_coffea_are_left_out_by_default_and_counted_in_the_queue(options, excluded, run_collector,
                                                                              tmp_path):
    now = int(time.time())
    owners = {"1.0": "alice", "2.0": "atlas-coffea", "3.0": "alice", "4.0": "atlas-coffea"}
    # condor_q -af JOB_ATTRS: two running jobs; condor_history -af HISTORY_ATTRS: two finished a minute ago.
    tools = shell_tools(tmp_path / "bin", condor_q="".join(
        "echo '%s %s 0 0 %d %d 2 1 100'\n" % (owners[job], job[0], now - 30, now) for job in ("1.0", "2.0")),
        condor_history="".join("echo '%s %s 0 4 60 %d %d'\n" % (owners[job], job[0], now - 60, now - 60)
                               for job in ("3.0", "4.0")))
    done = run_collector("condor.py", "-d", "-q", "all:", "--state-dir", tmp_path / "state", *options,
                         cwd=tmp_path, env={"PATH": "%s:/usr/bin:/bin" % tools})
    assert done.returncode == 0, done.stderr
    documents = [json.loads(line) for line in (tmp_path / "condor.json").read_text().splitlines()]
    [queue] = [d for d in documents if d["kind"] == "condorqueue"]
    assert (queue["running"], queue["allocated_cores"]) == (2, 2)  # the old tool's -totals count every owner
    reported = {d["Id"]: d["users"] for d in documents if d["kind"] == "condorjob"}
    assert reported == {job: owner for job, owner in owners.items() if owner not in excluded}
    if not options:
        assert reported == {job: owner for job, owner in owners.items() if old_tool_reports_job_of(owner)}


def test_a_scan_cut_short_by_the_limit_is_one_warning(run_collector, tmp_path):
    # condor_history here prints the two newest ads whatever it is asked, and records what it was asked.
    tools, state = shell_tools(tmp_path / "bin", condor_q="", condor_history=(
        "echo \"$@\" > '%s'\necho 'bob 9 0 4 2.0 %d %d'\necho 'bob 8 0 3 0.0 undefined %d'\n"
        % (tmp_path / "asked", NOW, NOW, NOW))), tmp_path / "state"
    state.mkdir()
    (state / condor.WATERMARK_STATE).write_text(json.dumps({"cursor": "5.0", "queued": {}}))
    env = {"PATH": "%s:/usr/bin:/bin" % tools}
    done = run_collector("condor.py", "-d", "--history-scan-limit", "2", "--state-dir", state, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "asked").read_text().split()[:4] == ["-since", "5.0", "-limit", "2"]
    assert log_lines(done.stderr) == ["WARNING:condor:condor_history: the newest 2 ads (history_scan_limit) do not "
                                      "reach job 5.0, the newest the previous run saw: older ones are not reported"]
    assert [json.loads(line)["Id"] for line in (tmp_path / "condor.json").read_text().splitlines()] == ["9.0", "8.0"]

    done = run_collector("condor.py", "-d", "--history-scan-limit", "0", "--state-dir", state, cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert log_lines(done.stderr) == ["ERROR:afmetrics:history_scan_limit must be at least 1, not 0"]


@pytest.mark.parametrize("spec", ["htc", "htc:", " :true", "h t:true"])
def test_a_bad_jupyter_session_is_a_usage_error(spec, run_collector, tmp_path):
    done = run_collector("condor.py", "-d", "--condor-jupyter", spec, "--state-dir", tmp_path / "state", cwd=tmp_path)
    assert done.returncode == 2
    [line] = log_lines(done.stderr)
    assert line.startswith("ERROR:afmetrics:bad condor_jupyter %r: expected NAME:CONSTRAINT" % spec)


def test_session_owners_and_the_first_expression_condor_q_could_not_parse():
    """condor_q prints true/false for each session expression after the job's attributes, and nothing for one it
    cannot parse nor for those after it (seen on HTCondor 23.9.6)."""
    attrs = condor.JOB_ATTRS
    text = "alice 1 0 0 1 1 2 1 256 true false\nbob 2 0 0 1 1 1 1 256 true false\ncarol 3 0 0 1 1 2 1 256 false\n"
    rows = list(condor.autoformat_rows(text, attrs, LOG, sessions=2))
    sessions = [("htc", "x"), ("bad", "y(")]
    assert condor.session_owners(rows, sessions, {2}, set()) == ({"htc": {"alice"}}, [("bad", "y(")])
    assert condor.session_owners(rows[:2], sessions, {1, 2}, {"alice"}) == ({"htc": {"bob"}, "bad": set()}, [])


def test_jupyter_documents_are_snapshots_the_next_run_replaces():
    assert condor.replaced_by_next_run({"kind": "jupyter-htc", "jupyter_user_count": 0, "users": []})
    assert not condor.replaced_by_next_run({"kind": "condorjob", "state": "removed"})
