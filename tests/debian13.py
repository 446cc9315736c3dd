"""A real Debian 13 (trixie) tree for ssh.py: coreutils 9.7's who, wtmpdb's last, python3 3.13.

scripts/condor-pool builds the tree once and caches it as a tarball (its package list includes wtmpdb, whose
`last` replaces util-linux's on Debian 13); Debian13 extracts its own copy, so the pool's chroot under
/run/afmetrics-condor stays untouched, and runs the real collector inside it with chroot (needs root).
"""
import contextlib
import os
import pathlib
import shutil
import subprocess

import utmp

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "condor-pool"
CACHE = pathlib.Path(os.environ.get("AFMETRICS_CONDOR_CACHE", "/var/cache/afmetrics-condor"))
# Where the collectors are copied to inside the tree.
COLLECTORS = "/opt/afmetrics/collectors"


class Unavailable(Exception):
    """No Debian 13 tree on this machine: the reason in one line."""


def cached_tarball():
    """Build the tree (a no-op when cached) and return its tarball; Unavailable when that cannot be done."""
    if os.geteuid() != 0:
        raise Unavailable("needs root (chroot)")
    done = subprocess.run([str(SCRIPT), "build", "trixie"], capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise Unavailable("scripts/condor-pool build trixie failed: %s"
                          % (done.stderr.strip().splitlines() or ["rc %d" % done.returncode])[-1])
    # The script names its tarball after its package list and removes older ones when it builds.
    tarballs = sorted(CACHE.glob("trixie-*.tar"), key=lambda path: path.stat().st_mtime)
    if not tarballs:
        raise Unavailable("no trixie-*.tar in %s after scripts/condor-pool build trixie" % CACHE)
    return tarballs[-1]


class Debian13:
    """An extracted Debian 13 tree with the collectors in it."""

    def __init__(self, root):
        self.root = root

    @classmethod
    def extract(cls, tarball, root):
        root.mkdir()
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(root)], check=True)
        shutil.copytree(str(REPO / "collectors"), str(root / COLLECTORS.lstrip("/")))
        return cls(root)

    def host_path(self, inside):
        """The host's path of a path inside the tree."""
        return self.root / str(inside).lstrip("/")

    def directory(self, name):
        """A fresh directory inside the tree, as its path there."""
        inside = "/tmp/" + name
        path = self.host_path(inside)
        shutil.rmtree(str(path), ignore_errors=True)
        path.mkdir(parents=True)
        return inside

    def run(self, *argv, cwd="/", env=None, check=True):
        """ARGV inside the tree, in directory CWD there, with only ENV and a Debian PATH as its environment
        (nothing of the developer's, such as AFMETRICS_* settings, leaks in)."""
        environment = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
        environment.update(env or {})
        # chroot starts in the tree's /; env -C (coreutils) moves to CWD there.
        command = ["chroot", str(self.root), "/usr/bin/env", "-C", cwd] + [str(arg) for arg in argv]
        done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=60,
                              stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError("%s failed (rc %d): %s" % (" ".join(map(str, argv)), done.returncode,
                                                            done.stderr.strip()))
        return done

    def collector(self, script, *args, cwd, env=None):
        """The real collector SCRIPT run by the tree's python3 in CWD, as cron runs it (no config, logs on stderr)."""
        environment = {"AFMETRICS_CONFIG": "", "AFMETRICS_LOG_FILE": ""}
        environment.update(env or {})
        return self.run("python3", COLLECTORS + "/" + script, *args, cwd=cwd, env=environment, check=False)

    def wtmpdb(self, database, *records):
        """A wtmpdb database at DATABASE (a path in the tree) written by the tree's own wtmpdb: RECORDS
        (tests/utmp.py's) imported from a legacy wtmp file, then a boot entry as wtmpdb-update-boot writes."""
        legacy = database + ".wtmp"
        utmp.write(self.host_path(legacy), *records)
        self.run("wtmpdb", "import", "-f", database, legacy)
        self.run("wtmpdb", "boot", "-f", database)
        return database

    @contextlib.contextmanager
    def without(self, tool):
        """TOOL taken out of /usr/bin (and so of /bin: /usr is merged) for the with block."""
        path = self.host_path("/usr/bin/" + tool)
        aside = path.with_name(tool + ".afmetrics-removed")
        os.rename(str(path), str(aside))
        try:
            yield
        finally:
            os.rename(str(aside), str(path))
