"""The commands `pip install .` puts on PATH (pyproject.toml's [project.scripts]): afmetrics_collector, the
umbrella, and one afmetrics_NAME per collector script NAME.py, each running exactly what the script in
collectors/ runs.

pip installs collectors/ as the package `afmetrics` (not as top-level modules: ssh, host, condor, slurm and
jupyter are names other distributions use; jupyter_core installs a top-level jupyter.py). The collectors
import one another by their flat names (`import afmetrics_common`), as they do beside each other in
collectors/ or /opt/afmetrics/collectors, so each command first puts the package's directory at the head of
sys.path: in its own process only.
"""
import importlib
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
UMBRELLA = os.path.join(HERE, "afmetrics_collector")


def _beside_the_collectors():
    if not sys.path or sys.path[0] != HERE:
        sys.path.insert(0, HERE)


def collector():
    """afmetrics_collector: the umbrella file's own code (its `if __name__ == "__main__":` part)."""
    _beside_the_collectors()
    runpy.run_path(UMBRELLA, run_name="__main__")  # ends with sys.exit(status)


def run_script(name):
    """afmetrics_NAME: what `python3 collectors/NAME.py` runs."""
    _beside_the_collectors()
    common = importlib.import_module("afmetrics_common")
    return common.script_main(importlib.import_module(name))


def ssh():
    return run_script("ssh")


def condor():
    return run_script("condor")


def slurm():
    return run_script("slurm")


def jupyter():
    return run_script("jupyter")


def host():
    return run_script("host")
