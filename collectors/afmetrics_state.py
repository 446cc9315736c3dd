"""The state dir: small JSON files carried between runs (written atomically), per-collector locks, and the
spool of documents that could not be delivered. write_atomically() serves any file a run replaces whole."""
import collections
import errno
import fcntl
import json
import logging
import os
import re
import time

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


class Spool:
    """Documents that could not be delivered, kept oldest first as JSON Lines in the state dir for the next run.

    load() skips corrupt lines and documents older than spool_max_age_hours, and then needs_rewrite is set so
    that the caller's save() removes them. save() keeps at most spool_max_documents: when there are more,
    the oldest snapshots go first (is_snapshot(document) is True for what a later run sends again anyway:
    queue totals, users, load), events (finished jobs, NETWORK deltas) only when nothing else is left.
    dropped() counts what load() and save() threw away.
    """

    def __init__(self, state, name, opts, logger, is_snapshot):
        self.state, self.name, self.log, self.is_snapshot = state, "spool-%s.jsonl" % name, logger, is_snapshot
        self.max_documents = max(0, opts.spool_max_documents)
        self.max_age_ms = opts.spool_max_age_hours * 3600 * 1000
        self.needs_rewrite = False
        self.unreadable = None  # the OSError that kept load() from reading the file: save() must not replace it
        self._dropped_lines = 0
        # A run saves twice, the second time with what the first kept plus its own: a document dropped the
        # first time comes again and must count once (the caller holds every one of them meanwhile).
        self._dropped_documents = set()

    def path(self):
        return self.state.file(self.name)

    def load(self):
        cutoff = time.time() * 1000 - self.max_age_ms
        documents, corrupt, expired = [], 0, 0
        try:
            with open(self.path(), "rb") as handle:  # bytes: one bad byte spoils its line, not the file
                for line in handle:
                    try:
                        document = json.loads(line.decode("utf-8"))
                    except ValueError:  # UnicodeDecodeError is one
                        document = None
                    if not (isinstance(document, dict) and isinstance(document.get("kind"), str)
                            and isinstance(document.get("timestamp"), (int, float))):
                        corrupt += 1
                    elif document["timestamp"] < cutoff:
                        expired += 1
                    else:
                        documents.append(document)
        except FileNotFoundError:
            pass
        except OSError as error:
            # Left as it is: what it holds is not ours to overwrite, so save() refuses and the state stays put.
            self.log.warning("spool %s is unreadable (%s): starting afresh", self.path(), error)
            self.unreadable = OSError(error.errno, error.strerror, self.path())
        if corrupt:
            self.log.warning("spool %s: %d corrupt line(s) dropped", self.path(), corrupt)
        if expired:
            self.log.warning("spool %s: %d document(s) older than %g hours dropped", self.path(), expired,
                             self.max_age_ms / 3600000)
        self.needs_rewrite = bool(corrupt or expired)
        self._dropped_lines += corrupt + expired
        return documents

    def save(self, documents):
        """Replace the spool by documents (each with its timestamp), within the bounds, and return the documents
        it kept; raises OSError, also when load() could not read the spool."""
        if self.unreadable:
            raise self.unreadable
        cutoff = time.time() * 1000 - self.max_age_ms
        kept = [document for document in documents if document["timestamp"] >= cutoff]
        if len(kept) < len(documents):
            self.log.warning("spool %s: %d undelivered document(s) older than %g hours dropped", self.path(),
                             len(documents) - len(kept), self.max_age_ms / 3600000)
        excess = len(kept) - self.max_documents
        if excess > 0:
            kept = self._drop_oldest(kept, excess)
        self.state.write_text(self.name, "".join(json.dumps(document) + "\n" for document in kept))
        self.needs_rewrite = False
        kept_ids = {id(document) for document in kept}
        self._dropped_documents.update(id(document) for document in documents if id(document) not in kept_ids)
        return kept

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
