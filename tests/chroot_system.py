"""What the tests' real systems in a chroot share (tests/condor_pool.py, tests/slurm_cluster.py): commands run
inside the chroot as root or as one of its users, wrappers of its tools to put first on PATH, gated jobs, its
processes, and waiting for a condition."""
import os
import pathlib
import shlex
import subprocess
import time

# A job script inside the chroot that ends once its gate file exists: the tests decide when a job ends.
GATE = "/usr/local/bin/afmetrics-gated-job"


class ChrootSystem:
    def __init__(self, directory):
        self.dir = directory
        self.root = directory / "root"
        self.bin = directory / "bin"

    def run(self, *argv, user=None, timeout=60, check=True):
        """A command inside the chroot, as root or as one of its users."""
        command = ["chroot", str(self.root)]
        command += ["su", user, "-c", " ".join(shlex.quote(arg) for arg in argv)] if user else list(argv)
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError("%s failed (rc %d): %s" % (" ".join(argv), done.returncode, done.stderr.strip()))
        return done

    def environment(self):
        """Environment in which the batch system's client tools are this system's (bin/ holds wrappers)."""
        return {"PATH": "%s:%s" % (self.bin, os.environ["PATH"])}

    def environment_counting(self, directory, tool):
        """An environment whose TOOL (condor_q, squeue) writes each command line it runs as a line of
        DIRECTORY/calls, then runs this system's; a test reads how often a collector called it."""
        directory.mkdir()
        script = directory / tool
        script.write_text('#!/bin/sh\nprintf "%%s\\n" "$*" >> "%s"\nexec "%s/%s" "$@"\n'
                          % (directory / "calls", self.bin, tool))
        script.chmod(0o755)
        return {"PATH": "%s:%s" % (directory, self.environment()["PATH"])}

    def prepare_gate(self):
        script = self.root / GATE.lstrip("/")
        script.write_text('#!/bin/sh\n# Ends once the gate file named by $1 exists.\n'
                          'until [ -e "$1" ]; do sleep 0.5; done\n')
        script.chmod(0o755)

    def open_gate(self, name):
        (self.root / "tmp" / name).touch()

    def pids(self, name):
        """Pids of the process NAME (condor_schedd, slurmctld, ...) rooted in this chroot, and no other."""
        pids = []
        for entry in pathlib.Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "root") == str(self.root) and (entry / "comm").read_text().strip() == name:
                    pids.append(int(entry.name))
            except OSError:  # the process ended while we looked
                continue
        return pids

    @staticmethod
    def wait_until(what, condition, timeout=60):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("waited %d s until %s" % (timeout, what))
            time.sleep(0.3)
