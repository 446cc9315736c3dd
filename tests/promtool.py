"""The real promtool, Prometheus' own checker of the text exposition format, from Debian's prometheus package.

The package is unpacked, not installed (conftest.debian_package): installing prometheus would bring a server and
its service. It is kept in /var/cache/afmetrics-promtool/package (AFMETRICS_PROMTOOL_CACHE), so the download
happens once per machine; a promtool already on PATH is used as it is.
"""
import os
import pathlib
import shutil

import pytest

from conftest import debian_package

PACKAGE = "prometheus"
CACHE = pathlib.Path(os.environ.get("AFMETRICS_PROMTOOL_CACHE", "/var/cache/afmetrics-promtool"))


@pytest.fixture(scope="session")
def promtool():
    """The path of a promtool executable."""
    return shutil.which("promtool") or str(debian_package(PACKAGE, CACHE / "package") / "usr" / "bin" / "promtool")
