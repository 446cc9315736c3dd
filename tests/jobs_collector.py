"""A collector of condorjob documents read from the JSON file $JOBS_FILE, for tests of what delivery does with
documents the endpoint keeps under one key (tests/test_endpoint.py); the real HTCondor pool's tests show the
same end to end. It is condor.py's spool, lock and record (NAME "condor") with a queue written by the test, and a
cursor as condor.py's history cursor moves: jobs-cursor.json counts the runs whose documents all went or were
kept."""
import json
import os
import sys

import afmetrics_common as common

NAME = "condor"
SETTINGS = common.COLLECTOR_SETTINGS[NAME]
CURSOR = "jobs-cursor.json"


def add_arguments(parser):
    pass


def replaced_by_next_run(document):
    return document["state"] not in ("finished", "removed")


def collect(run):
    runs = (run.state.load(CURSOR) or {"runs": 0})["runs"]
    run.after_delivery.append(lambda: run.state.save(CURSOR, {"runs": runs + 1}))
    with open(os.environ["JOBS_FILE"], encoding="utf-8") as handle:
        yield from json.load(handle)


if __name__ == "__main__":
    sys.exit(common.script_main(sys.modules[__name__]))
