#!/usr/bin/env python3
"""Writes the wheel of the old tool's stand-in (seed README: python3 setup.py bdist_wheel, then
pip3 install dist/afmetrics_collector-0.0*.whl): the package in old_tool/afmetrics_collector next to this file
(what its -d writes: old_tool/afmetrics_collector/skeleton.py) with the console script afmetrics_collector.
Only what pip needs.

usage: old_tool_wheel.py DIR    (prints the wheel's path)
"""
import base64
import hashlib
import os
import pathlib
import sys
import zipfile

VERSION = "0.0.1"
DIST_INFO = "afmetrics_collector-%s.dist-info" % VERSION
PACKAGE = pathlib.Path(__file__).resolve().parent / "old_tool"
METADATA = {
    DIST_INFO + "/METADATA": "Metadata-Version: 2.1\nName: afmetrics_collector\nVersion: %s\n" % VERSION,
    DIST_INFO + "/WHEEL": "Wheel-Version: 1.0\nGenerator: molecule\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    DIST_INFO + "/entry_points.txt": "[console_scripts]\nafmetrics_collector = afmetrics_collector.skeleton:run\n",
}


def record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d\n" % (name, digest, len(data))


def main():
    files = {path.relative_to(PACKAGE).as_posix(): path.read_bytes()
             for path in sorted((PACKAGE / "afmetrics_collector").glob("*.py"))}
    files.update((name, text.encode()) for name, text in METADATA.items())
    path = os.path.join(sys.argv[1], "afmetrics_collector-%s-py3-none-any.whl" % VERSION)
    record = "".join(record_line(name, data) for name, data in files.items()) + DIST_INFO + "/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr(DIST_INFO + "/RECORD", record)
    print(path)


if __name__ == "__main__":
    main()
