"""The group filter against a large user and group database, in a private mount namespace.

bench/run.py starts this under `unshare --mount`; it bind-mounts generated /etc/passwd and /etc/group
(5,000 users, 50,000 groups) over the real ones, which stay untouched outside the namespace, then times
UserFilter on growing numbers of users and prints one JSON object.
"""
import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "collectors"))
import afmetrics_privacy  # noqa: E402

GROUP, GROUP_ID = "atlas", 50000


def write_databases(directory, users, groups):
    """A quarter of the users have the group as primary, half as supplementary, a quarter not at all."""
    names = ["user%05d" % i for i in range(users)]
    with open(os.path.join(directory, "passwd"), "w") as passwd:
        passwd.write("root:x:0:0:root:/root:/bin/bash\n")
        for i, name in enumerate(names):
            gid = GROUP_ID if i % 4 == 0 else 60000
            passwd.write("%s:x:%d:%d::/home/%s:/bin/bash\n" % (name, 10000 + i, gid, name))
    supplementary = [name for i, name in enumerate(names) if i % 4 in (1, 2)]
    with open(os.path.join(directory, "group"), "w") as group:
        group.write("root:x:0:\n")
        for i in range(groups - 1):
            # Other groups hold members too, as a site's LDAP export would.
            group.write("grp%05d:x:%d:%s\n" % (i, 100000 + i, ",".join(names[i % users:i % users + 3])))
        group.write("%s:x:%d:%s\n" % (GROUP, GROUP_ID, ",".join(supplementary)))
    return names


def time_filter(names):
    opts = argparse.Namespace(group=GROUP, obfuscate_users=True, salt="bench")
    started = time.perf_counter()
    kept = afmetrics_privacy.UserFilter(opts, logging.getLogger("bench")).report_names(names)
    return time.perf_counter() - started, len(kept)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--groups", type=int, default=50000)
    parser.add_argument("--inside", action="store_true", help="already in a private mount namespace")
    args = parser.parse_args()
    if not args.inside:
        os.execvp("unshare", ["unshare", "--mount", "--propagation", "private", sys.executable, __file__,
                              "--inside", "--users", str(args.users), "--groups", str(args.groups)])
    directory = tempfile.mkdtemp(prefix="afmetrics-groups-")
    names = write_databases(directory, args.users, args.groups)
    for database in ("passwd", "group"):
        subprocess.run(["mount", "--bind", os.path.join(directory, database), "/etc/" + database], check=True)
    results = {}
    for count in (args.users // 4, args.users // 2, args.users):
        seconds, kept = time_filter(names[:count])
        results[count] = {"seconds": seconds, "kept": kept}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
