"""Run on a node by tasks/compare.yml (system Python, 3.9+): one debug run (-d) of the old afmetrics_collector and
one of the role's collectors per collector, each in a directory of its own, and print what each wrote.

stdin, JSON (it holds the salt the old tool needs, so never a command line):
  {"collectors": [...], "old_python": PATH, "old_argv": {collector: [args]}, "old_environment": {...},
   "new_command": [argv up to the collector's flag], "new_flags": {collector: flag}, "new_user": NAME,
   "timeout": SECONDS}
stdout, JSON: {collector: {"old": RUN, "new": RUN}}, RUN = {"rc", "errors": [lines], "documents": [...]}.
The old tool's -d appends json.dumps(document, indent=4) to ssh.json, host.json, condor.json or jupyter-debug.json
with nothing between two documents (maniaclab/afmetrics_collector src/afmetrics_collector/skeleton.py); the role's
collectors write JSON Lines to ssh.json, host.json, condor.json, jupyter.json.
"""
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

OLD_FILES = ["ssh.json", "host.json", "condor.json", "jupyter-debug.json"]
NEW_FILES = ["ssh.json", "host.json", "condor.json", "jupyter.json"]
# The old tool's entry point, its console script's: arguments from stdin.
OLD_MAIN = ("import json, sys\n"
            "from afmetrics_collector.skeleton import main\n"
            "main(json.load(sys.stdin))\n")


def concatenated_json(text):
    """The JSON values written one after another in text, whitespace or nothing between them."""
    decoder, values, index = json.JSONDecoder(), [], 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index == len(text):
            return values
        value, index = decoder.raw_decode(text, index)
        values.append(value)


def documents_in(directory, names):
    documents = []
    for name in names:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                documents += concatenated_json(handle.read())
    return documents


def error_lines(text):
    """The lines of a run's output that say why it failed: ERROR lines and a traceback's last line."""
    lines = text.splitlines()
    errors = [line for line in lines if "ERROR" in line]
    if any(line.startswith("Traceback") for line in lines):
        errors.append("Traceback: " + lines[-1])
    return errors


def run(argv, stdin, environment, owner, names, timeout):
    directory = tempfile.mkdtemp(prefix="afmetrics-compare-")
    try:
        if owner is not None:
            os.chown(directory, owner.pw_uid, owner.pw_gid)
        try:
            done = subprocess.run(argv, input=stdin, cwd=directory, env=environment, capture_output=True,
                                  text=True, timeout=timeout)
            rc, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired:
            rc, output = None, "ERROR: no answer within %d s" % timeout
        try:
            documents = documents_in(directory, names)
        except ValueError as error:
            return {"rc": rc, "errors": error_lines(output) + ["ERROR: unreadable debug file: %s" % error],
                    "documents": []}
        return {"rc": rc, "errors": error_lines(output), "documents": documents}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main():
    request = json.load(sys.stdin)
    owner = pwd.getpwnam(request["new_user"])
    old_environment = dict(os.environ, **request["old_environment"])
    timeout = float(request["timeout"])
    results = {}
    for collector in request["collectors"]:
        old = run([request["old_python"], "-c", OLD_MAIN], json.dumps(request["old_argv"][collector]),
                  old_environment, None, OLD_FILES, timeout)
        new = run(request["new_command"] + [request["new_flags"][collector], "--state-dir", "state"], None,
                  dict(os.environ), owner, NEW_FILES, timeout)
        results[collector] = {"old": old, "new": new}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
