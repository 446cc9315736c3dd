"""The state dir: small JSON files carried between runs (written atomically), per-collector locks, and the
spool of documents that could not be delivered. write_atomically() serves any file a run replaces whole."""
import collections
import errno
import fcntl
import json
import logging
import os
import time

from afmetrics_settings import UsageError

FILE_MODE = 0o644
# Readable by all: --status runs as a monitoring agent's user. Writable by the run user alone.
DIR_MODE = 0o755


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
            os.makedirs(self.path, mode=DIR_MODE, exist_ok=True)
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

    def try_lock(self, name, wait=False):
        """An open, flock-ed file kept for the run, or None when a previous run still holds it (with wait:
        once it lets go); OSError when the lock file cannot be opened (a directory in the way). Read-only:
        flock needs no more, and a lock file another user made (a hand run as root) is still readable."""
        path = self.file(name + ".lock")
        try:
            handle = open(os.open(path, os.O_RDONLY | os.O_CREAT, FILE_MODE))
        except OSError as error:
            raise OSError(error.errno, error.strerror, path)
        if os.fstat(handle.fileno()).st_uid == os.geteuid():
            os.fchmod(handle.fileno(), FILE_MODE)  # the umask must not make it another user's to open
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            if error.errno in (errno.EAGAIN, errno.EACCES):
                return None
            raise
        return handle


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
        """Replace the spool by documents (each with its timestamp), within the bounds, and return (how many it
        kept, the oldest one's timestamp or None); raises OSError, also when load() could not read the spool."""
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
        return len(kept), min((document["timestamp"] for document in kept), default=None)

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
