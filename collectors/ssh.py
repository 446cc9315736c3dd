#!/usr/bin/env python3
"""ssh users of this login node: who is logged in now (`who`), and with -S also who logged in during
the last 5 minutes (`last -s -5min`), as one document of kind ssh.

Example: python3 collectors/ssh.py -d -v -S
"""
import sys

import afmetrics_common as common

NAME = "ssh"
SETTINGS = common.COLLECTOR_SETTINGS[NAME]
# Lines of `last` that are not logins: the boot and shutdown pseudo-users and the trailer line.
NOT_USERS = {"reboot", "shutdown", "runlevel"}


def add_arguments(parser):
    parser.add_argument("-S", "--ssh-history", action="store_true", default=None,
                        help="also count users who logged in during the last 5 minutes (needs last -s)")
    parser.add_argument("--utmp", metavar="FILE", help="utmp file for who (default the system's)")
    parser.add_argument("--wtmp", metavar="FILE", help="wtmp file for last (default the system's)")


def parse_who(text):
    """User names from `who` output: the first column of each line."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def parse_last(text):
    """User names from `last` output, without pseudo-users and the closing 'wtmp begins' line."""
    users = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0] in NOT_USERS or line.startswith(("wtmp begins", "btmp begins")):
            continue
        users.append(fields[0])
    return users


def replaced_by_next_run(document):
    return True  # user lists: the next run's replaces this one


def collect(run):
    opts = run.opts
    users = parse_who(run.command(["who"] + ([opts.utmp] if opts.utmp else [])))
    if opts.ssh_history:
        # -w: without it last cuts names to 8 characters.
        users += parse_last(run.command(["last", "-w", "-s", "-5min"] + (["-f", opts.wtmp] if opts.wtmp else [])))
    names = run.users.report_names(users)
    return [{"kind": "ssh", "login_node": run.login_node(), "ssh_user_count": len(names), "users": names}]


if __name__ == "__main__":
    sys.exit(common.script_main(sys.modules[__name__]))
