"""The state dir: small JSON files carried between runs (written atomically), per-collector locks, and the
spool of documents that could not be delivered. write_atomically() serves any file a run replaces whole."""
import calendar
import collections
import errno
import fcntl
import json
import logging
import math
import os
import re
import time

from afmetrics_delivery import endpoint_key
from afmetrics_settings import UsageError

FILE_MODE = 0o644
# Readable by all: --status runs as a monitoring agent's user. Writable by the run user alone.
DIR_MODE = 0o755
# The locks: the run user's alone (StateDir.lock_directory says why).
LOCK_DIR, LOCK_DIR_MODE, LOCK_MODE = "locks", 0o700, 0o600
LOCK_POLL_SECONDS = 0.1
# write_atomically's temporary files: TARGET.PID.tmp
TEMPORARY_FILE = re.compile(r"^.+\.(\d+)\.tmp$")


def write_atomically(target, text):
    """Replace target by text: a crash leaves either the old or the new file, never a torn one. Mode 0644
    whatever the umask: a hand run as root must leave files the run user's cron runs can still read (the
    directory guards them). Raises OSError naming target; no temporary file is left behind."""
    temporary = "%s.%d.tmp" % (target, os.getpid())
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with open(descriptor, "w", encoding="utf-8") as handle:
            os.fchmod(descriptor, FILE_MODE)
            handle.write(text)
            handle.flush()
            os.fsync(descriptor)
        os.replace(temporary, target)
    except OSError as error:
        try:
            os.unlink(temporary)
        except OSError:
            pass  # never created, or its directory is gone: nothing left behind either way
        raise OSError(error.errno, error.strerror, target)


class StateDir:
    """Small JSON files that carry counters between runs, written atomically."""

    def __init__(self, path, logger):
        self.path = path
        self.log = logger

    def file(self, name):
        return os.path.join(self.path, name)

    def prepare(self):
        try:
            if not os.path.isdir(self.path):
                os.makedirs(self.path, exist_ok=True)
                os.chmod(self.path, DIR_MODE)  # whatever the umask: --status reads it as another user
        except OSError as error:
            raise UsageError("cannot create state dir %s: %s (set --state-dir)" % (self.path, error.strerror))
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise UsageError("state dir %s is not writable (set --state-dir)" % self.path)

    def load(self, name):
        """The stored value, or None when absent; a corrupt file is a warning and a fresh start."""
        try:
            with open(self.file(name), encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            self.log.warning("state file %s is unreadable (%s): starting afresh", self.file(name), error)
            return None

    def save(self, name, value):
        self.write_text(name, json.dumps(value))

    def write_text(self, name, text):
        write_atomically(self.file(name), text)

    def lock_directory(self):
        """An open descriptor of the state dir's locks directory, made when missing (OSError naming it when it
        cannot be): the run user's alone. flock needs no more than an open descriptor, so whoever can open a
        lock file can hold it and stop the collector; here no other user can, not even through a lock file an
        older version left readable by all in the state dir, nor one that a descriptor opened back then keeps."""
        path = self.file(LOCK_DIR)
        try:
            try:
                os.mkdir(path, LOCK_DIR_MODE)
                created = True
            except FileExistsError:
                created = False
            descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as error:
            raise OSError(error.errno, error.strerror, path)
        if created:
            self._give_to_owner(descriptor)
        return descriptor

    def try_lock(self, name, until=None):
        """An open, flock-ed file kept for the run, or None when another run holds it: at once, or with until (a
        time.monotonic() deadline) when it held it until then; OSError naming the lock file when it cannot be
        opened (a directory in the way). Opened for writing: flock on NFS is a POSIX lock on the server, and an
        exclusive one needs a descriptor open for writing (EBADF otherwise: flock(2), NOTES)."""
        directory = self.lock_directory()
        path = os.path.join(self.file(LOCK_DIR), name + ".lock")
        try:
            handle = open(self._open_lock_file(directory, name + ".lock"), "rb")
        except OSError as error:
            raise OSError(error.errno, error.strerror, path)
        finally:
            os.close(directory)
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._note_holder(handle)
                return handle
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    handle.close()
                    raise OSError(error.errno, error.strerror, path)
            left = -1 if until is None else until - time.monotonic()
            if left <= 0:
                handle.close()
                return None
            time.sleep(min(LOCK_POLL_SECONDS, left))

    @staticmethod
    def _note_holder(handle):
        """Note this process's pid and start in the lock file it now holds, for a run that finds the lock taken
        to name its holder (lock_holder). The lock holds without the note."""
        note = json.dumps({"pid": os.getpid(), "since": time.time()}).encode("ascii")
        try:
            os.ftruncate(handle.fileno(), 0)
            os.pwrite(handle.fileno(), note, 0)
        except OSError:
            pass

    def lock_holder(self, name):
        """Who holds lock name, as the holder noted it: "pid N, started TIME", or "" when that cannot be told."""
        try:
            directory = self.lock_directory()
            try:
                descriptor = os.open(name + ".lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
            finally:
                os.close(directory)
            with open(descriptor, encoding="ascii") as handle:
                note = json.load(handle)
            if not os.path.exists("/proc/%d" % note["pid"]):  # a note a holder that writes none left in place
                return ""
            return "pid %d, started %s" % (note["pid"], iso_timestamp(note["since"]))
        except (OSError, ValueError, TypeError, KeyError):
            return ""

    def _open_lock_file(self, directory, name):
        """A descriptor of the lock file name in directory, open for reading and writing; made when missing,
        owner only. Never through a symbolic link, and a root run gives only a file it made itself to the state
        dir's owner: a link the owner put there must not make root hand it a file of root's."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            try:
                return os.open(name, flags, dir_fd=directory)
            except FileNotFoundError:
                pass
            try:
                descriptor = os.open(name, flags | os.O_CREAT | os.O_EXCL, LOCK_MODE, dir_fd=directory)
            except FileExistsError:
                continue  # another run made it meanwhile: open that one
            self._give_to_owner(descriptor)
            return descriptor

    def _give_to_owner(self, descriptor):
        """What a root run (by hand) makes for the locks goes to the state dir's owner, whose cron runs must open
        it for writing."""
        owner = os.stat(self.path)
        if os.geteuid() == 0 and owner.st_uid != 0:
            os.fchown(descriptor, owner.st_uid, owner.st_gid)

    def sweep_temporaries(self):
        """Remove what runs killed while they replaced a file (write_atomically's NAME.PID.tmp) left in the state
        dir: the files of processes that are gone (up to a whole spool each; nothing else would ever remove them).
        Called holding the collector's lock: no run of it can be writing meanwhile, whatever became of pids."""
        try:
            names = os.listdir(self.path)
        except OSError as error:
            self.log.warning("cannot list state dir %s: %s", self.path, error.strerror)
            return
        swept = []
        for name in names:
            match = TEMPORARY_FILE.match(name)
            if not match or process_alive(int(match.group(1))):
                continue
            try:
                os.unlink(self.file(name))
                swept.append(name)
            except FileNotFoundError:
                pass  # another collector's run swept it meanwhile
            except OSError as error:
                self.log.warning("cannot remove %s, left by a killed run: %s", self.file(name), error.strerror)
        if swept:
            self.log.info("removed %d temporary file(s) that killed runs left: %s", len(swept),
                          ", ".join(sorted(swept)))


def process_alive(pid):
    """True when a process pid is running, another user's too (and pid 0, our process group: never swept)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no process has such a pid
        return False
    except PermissionError:
        return True
    return True


BOOT_ID = "/proc/sys/kernel/random/boot_id"


def this_boot():
    """This boot's id, which the Linux kernel draws anew at every boot; "" where it has none."""
    try:
        with open(BOOT_ID, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


ISO_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


def iso_timestamp(seconds):
    """Unix seconds as the endpoint's date filter reads them: ISO8601 in UTC with milliseconds
    (2026-12-07T04:30:00.123Z). Logstash's date filter with match ISO8601 refuses any value that is not a
    string (logstash-plugins/logstash-filter-date, TextParserExecutor.java)."""
    milliseconds = int(seconds * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(milliseconds // 1000)) + ".%03dZ" % (milliseconds % 1000)


def spooled_timestamp(value):
    """A spooled document's timestamp as iso_timestamp() writes it: kept when it is one, converted when it is
    the integer of milliseconds that versions before 1.1 wrote; ValueError for anything else."""
    if isinstance(value, str) and ISO_TIMESTAMP.match(value):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e14:
        return iso_timestamp(value / 1000.0)
    raise ValueError("not a timestamp")


def newest_per_key(documents):
    """documents (oldest first) without those that a later one replaces at the endpoint (the same
    endpoint_key): sent in any order, an older snapshot of a job could land last and stay in the index."""
    keys = [endpoint_key(document) for document in documents]
    last = {key: number for number, key in enumerate(keys) if key is not None}
    return [document for number, (document, key) in enumerate(zip(documents, keys))
            if key is None or last[key] == number]


class Spool:
    """Documents that could not be delivered, kept oldest first as JSON Lines in the state dir for the next run.

    Each line is {"kept": seconds, "document": {...}}, after a first line {"clock": {"boot": ID, "uptime": S}}
    saying when the file was written. A document's age is the time it has been kept as the kernel's boot
    clock counts it, never the wall clock, which may have been far off when it was spooled (a reset RTC, no
    NTP yet); across a reboot it counts from the boot, the time the node was down being unknown. Lines of
    earlier versions (the document itself, its timestamp in milliseconds) are read too, aged by their timestamps.

    load() skips corrupt lines and documents older than spool_max_age_hours, and then needs_rewrite is set so
    that the caller's save() removes them. save() keeps, of documents the endpoint keeps under one key (a
    condor job), the newest alone, and at most spool_max_documents: when there are more, the oldest
    snapshots go first (is_snapshot(document) is True for what a later run sends again anyway: queue totals,
    users, load), events (finished jobs, NETWORK deltas) only when nothing else is left. dropped() counts what
    load() and save() threw away; oldest() is when the oldest document kept was spooled (Unix seconds).
    """

    def __init__(self, state, name, opts, logger, is_snapshot):
        self.state, self.name, self.log, self.is_snapshot = state, "spool-%s.jsonl" % name, logger, is_snapshot
        self.max_documents = max(0, opts.spool_max_documents)
        self.max_age = opts.spool_max_age_hours * 3600
        self.needs_rewrite = False
        self.unreadable = None  # the OSError that kept load() from reading the file: save() must not replace it
        self._dropped_lines = 0
        # A run saves twice, the second time with what the first kept plus its own: a document dropped the
        # first time comes again and must count once (the caller holds every one of them meanwhile).
        self._dropped_documents = set()
        # id(document) -> (document, seconds it had been kept when loaded), of the documents load() returned; the
        # document held so that its id stays its own
        self._kept = {}
        self._loaded_at = self._clock()

    @staticmethod
    def _clock():
        return {"boot": this_boot(), "uptime": time.clock_gettime(time.CLOCK_BOOTTIME)}

    def path(self):
        return self.state.file(self.name)

    def load(self):
        aged, corrupt = [], 0  # (document, seconds kept, or None for a line of an earlier version)
        since_saved = self._loaded_at["uptime"]  # a file of an earlier boot: kept at least since this boot began
        try:
            with open(self.path(), "rb") as handle:  # bytes: one bad byte spoils its line, not the file
                for line in handle:
                    try:
                        entry = json.loads(line.decode("utf-8"))
                    except ValueError:  # UnicodeDecodeError is one
                        entry = None
                    if isinstance(entry, dict) and isinstance(entry.get("clock"), dict):
                        clock = entry["clock"]
                        if clock.get("boot") == self._loaded_at["boot"] and isinstance(clock.get("uptime"), (int, float)):
                            since_saved = max(0.0, self._loaded_at["uptime"] - clock["uptime"])
                        continue
                    document, kept = self._entry(entry)
                    if document is None:
                        corrupt += 1
                    else:
                        aged.append((document, None if kept is None else kept + since_saved))
        except FileNotFoundError:
            pass
        except OSError as error:
            # Left as it is: what it holds is not ours to overwrite, so save() refuses and the state stays put.
            self.log.warning("spool %s is unreadable (%s): starting afresh", self.path(), error)
            self.unreadable = OSError(error.errno, error.strerror, self.path())
        aged = self._age_earlier_versions(aged)
        young = [(document, kept) for document, kept in aged if kept <= self.max_age]
        expired = len(aged) - len(young)
        documents = [document for document, _ in young]
        newest = newest_per_key(documents)
        ages = {id(document): kept for document, kept in young}
        self._kept = {id(document): (document, ages[id(document)]) for document in newest}
        if corrupt:
            self.log.warning("spool %s: %d corrupt line(s) dropped", self.path(), corrupt)
        if expired:
            self.log.warning("spool %s: %d document(s) older than %g hours dropped", self.path(), expired,
                             self.max_age / 3600)
        self.needs_rewrite = bool(corrupt or expired or len(newest) < len(documents))
        self._dropped_lines += corrupt + expired
        return newest

    @staticmethod
    def _entry(entry):
        """(document, seconds kept) of a spool line; kept None for a line of an earlier version (aged later by
        its timestamp); (None, None) for a corrupt one."""
        if isinstance(entry, dict) and "document" in entry:
            document, kept = entry["document"], entry.get("kept")
            if not isinstance(kept, (int, float)) or isinstance(kept, bool) or not 0 <= kept < math.inf:
                return None, None
        else:
            document, kept = entry, None
        if not (isinstance(document, dict) and isinstance(document.get("kind"), str)):
            return None, None
        try:
            return dict(document, timestamp=spooled_timestamp(document.get("timestamp"))), kept
        except ValueError:
            return None, None

    @staticmethod
    def _age_earlier_versions(aged):
        """(document, seconds kept) pairs, the documents of earlier versions' lines aged by their timestamps (the
        only clock they have)."""
        now = time.time()
        return [(document, kept if kept is not None else max(0.0, now - calendar.timegm(
            time.strptime(document["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")))) for document, kept in aged]

    def _age(self, document):
        """Seconds document had been kept when loaded; 0 for one this run made."""
        loaded = self._kept.get(id(document))
        return loaded[1] if loaded and loaded[0] is document else 0.0

    def save(self, documents):
        """Replace the spool by documents (each with its timestamp; those not loaded are new), within the bounds,
        and return the documents it kept; raises OSError, also when load() could not read the spool."""
        if self.unreadable:
            raise self.unreadable
        newest = newest_per_key(documents)
        kept = self._drop_oldest(newest, len(newest) - self.max_documents) if len(newest) > self.max_documents \
            else newest
        clock = self._clock()
        elapsed = max(0.0, clock["uptime"] - self._loaded_at["uptime"])
        lines = [json.dumps({"clock": clock})] + [
            json.dumps({"kept": round(self._age(document) + elapsed, 3), "document": document})
            for document in kept]
        self.state.write_text(self.name, "\n".join(lines) + "\n" if kept else "")
        self.needs_rewrite = False
        # A snapshot a newer one replaced is not lost: the newer one stands for it.
        over_bound = {id(document) for document in newest} - {id(document) for document in kept}
        self._dropped_documents.update(over_bound)
        return kept

    def oldest(self, documents):
        """When the oldest of documents (loaded or new) was spooled, in Unix seconds; None for none."""
        if not documents:
            return None
        return time.time() - max(self._age(document) for document in documents)

    def dropped(self):
        """Documents and lines load() and save() threw away (corrupt, expired, over the bound)."""
        return self._dropped_lines + len(self._dropped_documents)

    def _drop_oldest(self, documents, excess):
        snapshot = [bool(self.is_snapshot(document)) for document in documents]
        by_age = [i for i, is_snapshot in enumerate(snapshot) if is_snapshot]
        by_age += [i for i, is_snapshot in enumerate(snapshot) if not is_snapshot]
        dropped = set(by_age[:excess])
        for kind_of, level, what in ((True, logging.WARNING, "snapshot(s) a later run sends again"),
                                     (False, logging.ERROR, "event(s) for good")):
            kinds = collections.Counter(documents[i]["kind"] for i in sorted(dropped) if snapshot[i] is kind_of)
            if kinds:
                self.log.log(level, "spool %s full (%d documents): dropped the oldest %d %s: %s", self.path(),
                             self.max_documents, sum(kinds.values()), what,
                             ", ".join("%s x%d" % item for item in sorted(kinds.items())))
        return [document for i, document in enumerate(documents) if i not in dropped]
