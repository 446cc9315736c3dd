"""The real promtool, Prometheus' own checker of the text exposition format, from Debian's prometheus package.

Only the promtool program is taken out of the package (apt-get download, dpkg-deb): installing prometheus would
bring a server and its service. It is kept in /var/cache/afmetrics-promtool/ (AFMETRICS_PROMTOOL_CACHE), so the
download happens once per machine; a promtool already on PATH is used as it is.
"""
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest

from conftest import apt_get, skip_or_fail

PACKAGE = "prometheus"
CACHE = pathlib.Path(os.environ.get("AFMETRICS_PROMTOOL_CACHE", "/var/cache/afmetrics-promtool"))


def _download(directory):
    done = apt_get("download", PACKAGE, cwd=directory)
    if done.returncode != 0 and os.geteuid() == 0:  # package lists missing or stale
        apt_get("update")
        done = apt_get("download", PACKAGE, cwd=directory)
    debs = list(pathlib.Path(directory).glob(PACKAGE + "_*.deb"))
    if done.returncode != 0 or not debs:
        skip_or_fail("apt-get download %s failed: %s" % (PACKAGE, (done.stderr.strip().splitlines() or ["?"])[-1]))
    return debs[0]


@pytest.fixture(scope="session")
def promtool():
    """The path of a promtool executable."""
    found = shutil.which("promtool")
    if found:
        return found
    cached = CACHE / "promtool"
    if cached.exists():
        return str(cached)
    if not shutil.which("apt-get"):
        skip_or_fail("promtool is not installed and there is no apt-get to fetch it")
    with tempfile.TemporaryDirectory() as directory:
        deb = _download(directory)
        subprocess.run(["dpkg-deb", "-x", str(deb), directory], check=True)
        try:
            CACHE.mkdir(parents=True, exist_ok=True)
            temporary = CACHE / ("promtool.%d.tmp" % os.getpid())
            shutil.copy2(os.path.join(directory, "usr", "bin", "promtool"), temporary)
            os.replace(temporary, cached)
        except OSError as error:
            skip_or_fail("cannot keep promtool in %s: %s" % (CACHE, error.strerror))
    return str(cached)
