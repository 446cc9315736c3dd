"""Run a collector script in this interpreter and write its own peak RSS in KiB to REPORT at exit.

GNU time's figure for a process includes the children it waited for (condor_q holds 137 MB for 50,000
jobs); this one is the collector alone. Usage: own_rss.py REPORT SCRIPT [ARGS...]
"""
import os
import resource
import runpy
import sys

report, script = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[2:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
try:
    runpy.run_path(script, run_name="__main__")
finally:
    with open(report, "w") as handle:
        handle.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
