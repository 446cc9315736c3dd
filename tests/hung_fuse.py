"""A FUSE file system that never answers, the hung mount of test_host.py:

    python3 hung_fuse.py FD MODE LOG

FD is an open /dev/fuse that a mount(2) of type fuse (fd=FD) uses; this process is to be its only holder.

- silent: reads nothing, not even the kernel's INIT: every request (a stat of the root, statfs) waits for the
  connection to start, a wait SIGKILL ends, as an NFS hard mount's whose server is gone.
- holding: answers INIT, then reads each request and never answers it: whoever made one waits uninterruptibly,
  SIGKILL or not, until the connection is aborted (request_wait_answer in torvalds/linux fs/fuse/dev.c), as on a
  wedged FUSE daemon. LOG gets each request's opcode, one a line, as it is read.

Ending this process, the last holder of FD, aborts the connection: every request waiting fails (ENOTCONN), as
when a FUSE daemon dies. The structures are those of include/uapi/linux/fuse.h (torvalds/linux).
"""
import errno
import os
import signal
import struct
import sys
import time

FUSE_INIT = 26
IN_HEADER = struct.Struct("<IIQ")  # struct fuse_in_header: len, opcode, unique (then nodeid, uid, gid, pid, ...)
OUT_HEADER = struct.Struct("<IiQ")  # struct fuse_out_header: len, error, unique
# struct fuse_init_out (64 bytes): protocol 7.31, max_write 4096, everything else 0 (no feature asked for).
INIT_OUT = struct.pack("<IIIIHHIIHHII", 7, 31, 0, 0, 0, 0, 4096, 0, 0, 0, 0, 0).ljust(64, b"\0")
READ_SIZE = 1 << 17  # at least FUSE_MIN_READ_BUFFER (8192) and a request of max_write


def hold(fd, log):
    while True:
        try:
            request = os.read(fd, READ_SIZE)
        except OSError as error:
            if error.errno == errno.EPERM:  # not mounted yet
                time.sleep(0.05)
                continue
            raise
        _, opcode, unique = IN_HEADER.unpack_from(request)
        if opcode == FUSE_INIT:
            os.write(fd, OUT_HEADER.pack(OUT_HEADER.size + len(INIT_OUT), 0, unique) + INIT_OUT)
        else:
            log.write("%d\n" % opcode)


def main(fd, mode, log_path):
    with open(log_path, "a", buffering=1, encoding="ascii") as log:
        if mode == "holding":
            hold(fd, log)
        while True:
            signal.pause()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
