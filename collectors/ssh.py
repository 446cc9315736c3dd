#!/usr/bin/env python3
"""ssh users of this login node: who is logged in now (`who`), and with -S also who logged in during
the last 5 minutes (`last`: util-linux's, or wtmpdb's on Debian 13), as one document of kind ssh.

Example: python3 collectors/ssh.py -d -v -S
"""
import os
import sys
import time

import afmetrics_common as common

NAME = "ssh"
SETTINGS = common.COLLECTOR_SETTINGS[NAME]
# who's utmp file when none is given (glibc's _PATH_UTMP).
DEFAULT_UTMP = "/var/run/utmp"
HISTORY_SECONDS = 5 * 60
# glibc's UT_NAMESIZE: util-linux's last -w cuts an open session's name of this length by one character.
NAME_SIZE = 32
# Lines of `last` that are not logins: the boot and shutdown pseudo-users (wtmpdb writes soft-reboot too).
NOT_USERS = {"reboot", "soft-reboot", "shutdown", "runlevel"}


def add_arguments(parser):
    parser.add_argument("-S", "--ssh-history", action="store_true", default=None,
                        help="also count users who logged in during the last 5 minutes (needs last -s)")
    parser.add_argument("--utmp", metavar="FILE", help="utmp file for who (default the system's)")
    parser.add_argument("--wtmp", metavar="FILE",
                        help="wtmp file for last, or wtmpdb's database where last is wtmpdb's (default the system's)")


def parse_who(text):
    """User names from `who` output: the first column of each line."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def parse_last(text):
    """User names from `last` output, without pseudo-users and the closing 'FILE begins DATE' line."""
    users = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0] in NOT_USERS or fields[1:2] == ["begins"]:
            continue
        users.append(fields[0])
    return users


def last_argv(now, wtmp):
    """`last` for the logins since 5 minutes before NOW (seconds since the epoch), from WTMP when set; to be run
    with common.IN_UTC.

    An absolute time: wtmpdb's last takes no relative one such as -5min, and util-linux's takes both. In UTC:
    either last reads it as local time, and a local time of the hour repeated when daylight saving ends may be
    read as the earlier one, an hour more of logins. -w: without it either last cuts names to 8 characters.
    """
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now - HISTORY_SECONDS))
    return ["last", "-w", "-s", since] + (["-f", wtmp] if wtmp else [])


def without_cut_names(last_users, who_users):
    """LAST_USERS without the names that are a 32-character WHO_USERS name cut to 31 (the same session)."""
    cut = {name[:NAME_SIZE - 1] for name in who_users if len(name) == NAME_SIZE}
    return [name for name in last_users if name not in cut]


def recent_users(run, who_users):
    """Users of the last 5 minutes from `last`; without a working last (Debian 13 may have none) the users
    logged in now still go."""
    try:
        output = run.command(last_argv(time.time(), run.opts.wtmp), common.IN_UTC)
    except common.SourceError as error:
        run.log.warning("%s: only users logged in now are counted", error)
        return []
    return without_cut_names(parse_last(output), who_users)


def replaced_by_next_run(document):
    return True  # user lists: the next run's replaces this one


def collect(run):
    opts = run.opts
    users = parse_who(run.command(["who"] + ([opts.utmp] if opts.utmp else [])))
    utmp = opts.utmp or DEFAULT_UTMP
    # who prints nothing, and succeeds, without a utmp file; a who that reads systemd-logind instead
    # (coreutils 9.4+ for the default file) has users to show when anyone is logged in.
    if not users and not os.path.exists(utmp):
        run.log.warning("who found no sessions and there is no %s: a host that keeps no utmp (logind only) "
                        "reports 0 users", utmp)
    if opts.ssh_history:
        users += recent_users(run, users)
    names = run.users.report_names(users)
    return [{"kind": "ssh", "login_node": run.login_node(), "ssh_user_count": len(names), "users": names}]


if __name__ == "__main__":
    sys.exit(common.script_main(sys.modules[__name__]))
