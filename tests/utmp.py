"""Real utmp/wtmp records (glibc x86_64 layout, 384 bytes) so who and last read genuine files."""
import struct
import time

RECORD = struct.Struct("hi32s4s32s256shhiii4i20s")
BOOT_TIME, USER_PROCESS, DEAD_PROCESS = 2, 7, 8


def record(kind, user, line, host, seconds_ago, pid):
    when = int(time.time() - seconds_ago)
    return RECORD.pack(kind, pid, line.encode(), line[-4:].encode(), user.encode(), host.encode(),
                       0, 0, 0, when, 0, 0, 0, 0, 0, b"")


def login(user, line, seconds_ago, pid, host="10.0.0.1"):
    return record(USER_PROCESS, user, line, host, seconds_ago, pid)


def logout(line, seconds_ago, pid):
    return record(DEAD_PROCESS, "", line, "", seconds_ago, pid)


def reboot(seconds_ago):
    return record(BOOT_TIME, "reboot", "~", "6.1.0-amd64", seconds_ago, 0)


def write(path, *records):
    path.write_bytes(b"".join(records))
    return path
