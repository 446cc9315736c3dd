#!/usr/bin/env python3
"""Writes a stand-in for the old tool's wheel (seed README: python3 setup.py bdist_wheel, then
pip3 install dist/afmetrics_collector-0.0*.whl): package afmetrics_collector with the console script
afmetrics_collector, which appends one line to stdout per run, as its cron line logs. Only what pip needs.

usage: old_tool_wheel.py DIR    (prints the wheel's path)
"""
import base64
import hashlib
import os
import sys
import zipfile

VERSION = "0.0.1"
DIST_INFO = "afmetrics_collector-%s.dist-info" % VERSION
FILES = {
    "afmetrics_collector/__init__.py": "",
    "afmetrics_collector/skeleton.py": (
        "import time\n\n\n"
        "def run():\n"
        "    print('[%s] INFO:afmetrics_collector.skeleton:the old afmetrics_collector " + VERSION + " ran'\n"
        "          % time.strftime('%Y-%m-%d %H:%M:%S'))\n"
    ),
    DIST_INFO + "/METADATA": "Metadata-Version: 2.1\nName: afmetrics_collector\nVersion: %s\n" % VERSION,
    DIST_INFO + "/WHEEL": "Wheel-Version: 1.0\nGenerator: molecule\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    DIST_INFO + "/entry_points.txt": "[console_scripts]\nafmetrics_collector = afmetrics_collector.skeleton:run\n",
}


def record_line(name, text):
    digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d\n" % (name, digest, len(text.encode()))


def main():
    path = os.path.join(sys.argv[1], "afmetrics_collector-%s-py3-none-any.whl" % VERSION)
    record = "".join(record_line(name, text) for name, text in FILES.items()) + DIST_INFO + "/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in FILES.items():
            wheel.writestr(name, text)
        wheel.writestr(DIST_INFO + "/RECORD", record)
    print(path)


if __name__ == "__main__":
    main()
