"""The run every afmetrics collector shares: lock, collect, deliver or spool, then move the state.

A collector module provides NAME (its debug file, lock, spool and key in COLLECTOR_SETTINGS), SETTINGS,
add_arguments(parser) and collect(run) -> documents (a list or a generator), and may provide validate(opts)
and replaced_by_next_run(document) (True for a snapshot the next run sends again, which a full spool drops
first). main() and the umbrella command do the rest. The concerns live beside this module, one each:
afmetrics_settings (options, environment, config file), afmetrics_privacy (obfuscation, group filter),
afmetrics_state (state files, locks, spool) and afmetrics_delivery (the endpoint); collectors import this
module alone and find what they need here.
"""
import argparse
import collections
import hashlib
import itertools
import json
import logging
import os
import subprocess
import sys
import time

from afmetrics_delivery import TOO_LARGE, Delivery, endpoint_key, network_failure, with_token
from afmetrics_privacy import UnresolvedName, UserFilter, host_name, login_node
from afmetrics_settings import (COLLECTOR_SETTINGS, COMMON_SETTINGS, KUBERNETES_SERVICEACCOUNT_DIR, UsageError,
                                __version__, add_common_arguments, add_exclude_owner_argument,
                                add_jupyter_pending_argument, resolve_settings, settings_despite_error,
                                warn_about_visible_secrets)
from afmetrics_record import EXIT_USAGE, LastError, save_record, save_usage_error
from afmetrics_state import Spool, StateDir, iso_timestamp, this_boot
from afmetrics_status import UNKNOWN as STATUS_UNKNOWN, Limits, node_collectors, range_of_seconds, status_report, \
    update_textfile

__all__ = ["COLLECTOR_SETTINGS", "COMMON_SETTINGS", "IN_UTC", "KUBERNETES_SERVICEACCOUNT_DIR", "SourceError",
           "UsageError", "__version__", "add_exclude_owner_argument", "add_jupyter_pending_argument",
           "finish_command", "jupyter_document", "main", "network_failure", "script_main", "start_command",
           "this_boot"]

EXIT_OK, EXIT_FAILED = 0, 1

log = logging.getLogger("afmetrics")


class SourceError(Exception):
    """A data source (command, API, file) failed: the collector reports this one line and exits 1."""


def setup_logging(verbosity, log_file=""):
    """Log to log_file as the seed did (and to a person's terminal); to stderr when there is no such file."""
    handlers, trouble = [], None
    if log_file and os.path.isdir(os.path.dirname(log_file) or "."):
        try:
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as error:
            trouble = "cannot write log file %s (%s): logging to stderr" % (log_file, error.strerror)
    if not handlers or sys.stderr.isatty():
        handlers.append(logging.StreamHandler(sys.stderr))
    formatter = logging.Formatter("[%(asctime)s] %(levelname)s:%(name)s:%(message)s", "%Y-%m-%d %H:%M:%S")
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))
    if trouble:
        log.warning("%s", trouble)
    # urllib3 logs every retry and, at debug, every request; the collectors say once what went wrong.
    logging.getLogger("urllib3").setLevel(logging.ERROR)


# The environment of a command given times as UTC wall-clock time: local time repeats an hour when daylight
# saving ends, and a tool reading such a time (sacct, last) may take the other of the two; UTC repeats none.
IN_UTC = {"TZ": "UTC0"}


# SIGKILL takes effect when a process leaves the kernel: at once from a killable wait (a command's own, an NFS
# hard mount's RPC, a FUSE request its server has not read yet), never from the wait for a FUSE request the server
# read and does not answer (request_wait_answer in torvalds/linux fs/fuse/dev.c). A killed child gets this long to
# end; one that does not is left behind, never waited for: the wait would be as long as the file system's.
KILL_GRACE_SECONDS = 1.0


def start_command(argv, env=None):
    """Start a command, with the variables of env added to this process's environment, stdout and stderr piped,
    no stdin and none of this process's other descriptors (a collector's lock among them: a child that outlives
    the run must not hold it); a one-line SourceError when it cannot start."""
    try:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, **env) if env else None, close_fds=True)
    except FileNotFoundError:
        raise SourceError("%s not found on PATH" % argv[0])
    except OSError as error:
        raise SourceError("cannot run %s: %s" % (argv[0], error.strerror))


def finish_command(process, timeout, since):
    """The stdout of a command start_command started, once it ended within timeout seconds of since (a
    time.monotonic() value); any failure becomes a one-line SourceError. One still running then is killed and
    given KILL_GRACE_SECONDS to end; if it has not, process.returncode stays None: it is stuck in the kernel."""
    name = process.args[0]
    try:
        stdout, stderr = process.communicate(timeout=max(0.0, since + timeout - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        for pipe in (process.stdout, process.stderr):
            pipe.close()
        try:
            process.wait(KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        raise SourceError("%s did not answer within %g s" % (name, timeout))
    if process.returncode != 0:
        message = " ".join(stderr.decode("utf-8", "replace").split()) or "no error message"
        raise SourceError("%s failed (exit %d): %s" % (name, process.returncode, message[:300]))
    return stdout.decode("utf-8", "replace")


def run_command(argv, timeout, env=None):
    """Run a command, with the variables of env added to this process's environment, and return its stdout; any
    failure, and not ending within timeout seconds, becomes a one-line SourceError."""
    since = time.monotonic()
    return finish_command(start_command(argv, env), timeout, since)


def jupyter_document(name, users):
    """The jupyter-NAME document of USERS, the report names (sorted, unique) of a service's users: jupyter.py's
    from pods, condor.py's and slurm.py's from jobs that are Jupyter sessions."""
    return {"kind": "jupyter-" + name, "jupyter_user_count": len(users), "users": users}


def write_debug_file(name, documents, token):
    """-d: append JSON Lines to NAME.json in the current directory, the token masked; no documents, no file."""
    masked = "***" if token else ""
    handle = None
    try:
        for document in documents:
            handle = handle or open(name + ".json", "a", encoding="utf-8")
            handle.write(json.dumps(with_token(document, masked)) + "\n")
    finally:
        if handle:
            handle.close()


class Run:
    """What a collector's collect() gets: its settings, logger, state dir, user filter and host name.

    State a collector wants to keep (a history cursor, a baseline) goes in after_delivery as a function: it runs
    only in a real run, once every document of the run was delivered or spooled. State a collector must record
    before its documents leave (where a sent interval ends) it writes itself, and puts in not_delivered a
    function that puts it back: it runs when the run's documents were not all collected and delivered or spooled.
    """

    def __init__(self, name, opts, users, deadline):
        self.name, self.opts, self.users, self.deadline = name, opts, users, deadline
        self.log = logging.getLogger(name)
        self.state = StateDir(opts.state_dir, self.log)
        self.after_delivery, self.not_delivered = [], []
        self.partly_failed = False
        self.source_error = ""  # the first source failure's line, for the run record

    def source_failed(self, error):
        """One of several sources failed: say so, keep the others' documents, and exit 1 in the end."""
        self.log.error("%s", error)
        self.partly_failed = True
        self.source_error = self.source_error or str(error)

    def timeout(self):
        """The limit for one command or API call: --timeout, or what is left of the run budget when less."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise SourceError("run budget of %g s used up" % self.opts.run_budget)
        return min(self.opts.timeout, left)

    def command(self, argv, env=None):
        self.log.debug("running %s", " ".join(argv))
        return run_command(argv, self.timeout(), env)

    def login_node(self):
        return login_node(self.opts)


class Collection:
    """A collector's documents as one stream: each with the cluster, counted, and a failure of the source
    (or a bug) ending the stream with one log line instead of taking the documents already made with it."""

    def __init__(self, module, run):
        self.module, self.run = module, run
        self.count, self.failed, self.complete = 0, False, False
        self.documents = self._documents()
        self.first = None

    def _documents(self):
        opts, run = self.run.opts, self.run
        try:
            for document in self.module.collect(run):
                self.count += 1
                yield dict(document, cluster=opts.cluster)
        except (SourceError, UnresolvedName) as error:
            run.log.error("%s", error)
            self.failed = True
            run.source_error = run.source_error or str(error)
        except Exception as error:  # a bug must not stop the other collectors of an umbrella run
            run.log.error("%s collector failed: %s: %s", self.module.NAME, type(error).__name__, error)
            run.log.debug("traceback", exc_info=True)
            self.failed = True
            run.source_error = run.source_error or "%s collector failed: %s: %s" % (
                self.module.NAME, type(error).__name__, error)
        else:
            self.complete = True

    def start(self):
        """Collect up to the first document: every collector runs its commands before it yields one, so
        what follows is the time of delivery alone."""
        self.first = list(itertools.islice(self.documents, 1))

    def __iter__(self):
        yield from self.first or ()
        yield from self.documents


def replaced_by_next_run(module):
    # Without a rule of its own a collector's documents are all treated as events no later run repeats.
    return getattr(module, "replaced_by_next_run", lambda document: False)


def collect_and_deliver(module, opts, users, delivery, deadline):
    """Run one collector: lock, collect, deliver (or write the debug file), keep what was not delivered.
    A debug run never touches the state dir: the next real run sends what it would have sent anyway."""
    run = Run(module.NAME, opts, users, deadline)
    collection = Collection(module, run)
    if opts.debug:
        try:
            write_debug_file(module.NAME, collection, opts.token)
        except OSError as error:
            run.log.error("cannot write the debug file: %s: %s", error.strerror, error.filename)
            return EXIT_FAILED
        run.log.info("collected %d document(s)", collection.count)
        return EXIT_FAILED if collection.failed or run.partly_failed else EXIT_OK
    try:
        lock = run.state.try_lock(module.NAME)
    except OSError as error:
        run.log.error("cannot lock: %s: %s", error.strerror, error.filename)
        return EXIT_FAILED
    if lock is None:
        holder = run.state.lock_holder(module.NAME)
        run.log.warning("previous %s run still going%s: this run skipped", module.NAME,
                        " (%s)" % holder if holder else "")
        return EXIT_OK
    with lock:
        run.state.sweep_temporaries()
        started = time.time(), time.monotonic()
        with LastError() as last_error:
            delivered = deliver_with_spool(run, collection, delivery, replaced_by_next_run(module))
            if collection.complete:
                run.log.info("collected %d document(s)", collection.count)
            everything_delivered = delivered.kept_all and not (delivered.spool_documents or delivered.refused)
            status = EXIT_OK if everything_delivered and not collection.failed else EXIT_FAILED
            # Documents neither delivered nor kept: what the run moved before sending goes back. Else the state
            # moves on once the collector ran to its end.
            commits = run.not_delivered if not delivered.kept_all else run.after_delivery if collection.complete else []
            for commit in commits:
                try:
                    commit()
                except OSError as error:
                    run.log.error("cannot save state: %s: %s (the next run may send some documents again)",
                                  error.strerror, error.filename)
                    status = EXIT_FAILED
            if run.partly_failed:
                status = EXIT_FAILED
        return keep_record(run, started, status, collection, delivered, last_error.message)


def keep_record(run, started, status, collection, delivered, last_error):
    """Write the run's record (started: its time.time() and time.monotonic()), and the textfile from every
    collector's record; return the exit status, 1 when the record cannot be written: --status would go on
    showing an older run as the last."""
    counts = dict(collected=collection.count, delivered=delivered.delivered, spooled=delivered.spooled,
                  refused=delivered.refused, dropped=delivered.dropped, spool_documents=delivered.spool_documents)
    try:
        save_record(run.state, run.name, started, status, counts, delivered.spool_oldest, run.source_error,
                    last_error)
    except OSError as error:
        run.log.error("cannot write the run record: %s: %s", error.strerror, error.filename)
        return EXIT_FAILED
    update_textfile(run.opts, run.state, run.log, run.deadline)
    return status


def record_usage_error(modules, opts, started, message):
    """A real run that ended in a usage or configuration error (message) leaves it in the record of each collector
    it was to run, and in the textfile, so that --status and node_exporter show it at once. opts: the settings as
    far as they go (settings_despite_error)."""
    if opts is None or opts.status or opts.debug:
        return
    try:
        chosen = modules(opts) if callable(modules) else modules
    except UsageError:  # the umbrella with no collector chosen: none to record it for
        return
    state = StateDir(opts.state_dir, log)
    # A state dir that cannot be made or written is the error itself.
    if not chosen or not os.path.isdir(state.path) or not os.access(state.path, os.W_OK | os.X_OK):
        return
    for module in chosen:
        try:
            save_usage_error(state, module.NAME, started, message)
        except OSError as error:
            log.error("cannot write the run record: %s: %s", error.strerror, error.filename)
    update_textfile(opts, state, log, started[1] + opts.run_budget)


# What became of a run's documents: delivered, spooled (this run's, kept for the next), refused (by the endpoint,
# dropped), dropped (by the spool: corrupt, expired, over its bound); the spool file after the run; and kept_all:
# False when undelivered documents could not be kept, so that the state must stay where it was.
Delivered = collections.namedtuple("Delivered", "delivered spooled refused dropped spool_documents spool_oldest "
                                                "kept_all")


def noting_keys(documents, keys):
    """documents, adding the endpoint_key of each that has one to the set keys as they go by."""
    for document in documents:
        key = endpoint_key(document)
        if key is not None:
            keys.add(key)
        yield document


def deliver_with_spool(run, collection, delivery, is_snapshot):
    """Send what the spool holds, oldest first, then the new documents; spool what did not go. Returns Delivered.

    Spooled documents that the endpoint keeps under a key (a condor job's) go last, and only those whose key
    this run did not send anew: an older snapshot of a job must never land after a newer one, which it would
    replace in the index.
    """
    spool = Spool(run.state, run.name, run.opts, run.log, is_snapshot)
    collected_at = iso_timestamp(time.time())
    collection.start()
    delivery.start_budget()
    waiting = spool.load()
    if waiting:
        run.log.info("re-sending %d spooled document(s) first", len(waiting))
    keyed = [document for document in waiting if endpoint_key(document) is not None]
    spooled = delivery.deliver([document for document in waiting if endpoint_key(document) is None], run.opts.token)
    # What the spool file holds, as far as this run knows; the refused are decided on once the run's own went.
    in_spool = spooled.undelivered + [document for document, _ in spooled.refused] + keyed
    if waiting or spool.needs_rewrite:
        # At once: whatever becomes of this run's own documents, the spool now holds only what is left of
        # it, without its corrupt and expired lines.
        try:
            in_spool = spool.save(in_spool)
        except OSError as error:
            run.log.error("cannot rewrite the spool: %s: %s (its delivered documents will be sent again)",
                          error.strerror, error.filename)
    sent_anew = set()
    fresh = delivery.deliver(noting_keys(collection, sent_anew), run.opts.token)
    older = delivery.deliver([document for document in keyed if endpoint_key(document) not in sent_anew],
                             run.opts.token)
    refused = spooled.refused + older.refused + fresh.refused
    # An endpoint that took none of the documents it refused with 400 or 422 (a front end answering 400 to
    # all) is a wrong endpoint, not a run of bad documents: they are kept like any other failure's, also when
    # there is only one. A body too large (413) is a document's own fault, whatever the endpoint took.
    kept_refused = [document for document, status in refused if status != TOO_LARGE] if not delivery.accepted else []
    if kept_refused:
        delivery.endpoint_down = delivery.endpoint_down or "%s refused every document (HTTP %s)" % (
            run.opts.url, "/".join(sorted({str(status) for _, status in refused})))
    kept_ids = {id(document) for document in kept_refused}
    dropped_by_endpoint = [(document, status) for document, status in refused if id(document) not in kept_ids]
    for document, status in dropped_by_endpoint:
        run.log.error("%s refused a %s document with HTTP %d: dropped", run.opts.url, document["kind"], status)
    fresh_refused = {id(document) for document, _ in fresh.refused}
    new_in_spool = [dict(document, timestamp=collected_at) for document in fresh.undelivered
                    + [document for document in kept_refused if id(document) in fresh_refused]]
    kept_all = True
    if new_in_spool or keyed or spooled.refused:  # what the spool must hold changed since it was rewritten
        undelivered = spooled.undelivered + older.undelivered + [
            document for document in kept_refused if id(document) not in fresh_refused] + new_in_spool
        try:
            in_spool = spool.save(undelivered)
        except OSError as error:
            # The spool file still holds what it held: this run's own documents can be lost, and snapshots of
            # jobs this run sent anew would follow them next run. Either way the state must stay where it was.
            kept_all = not (new_in_spool or any(endpoint_key(document) in sent_anew for document in keyed))
            run.log.error("cannot keep %d document(s): %s: %s", len(undelivered), error.strerror, error.filename)
    if delivery.accepted:  # else the failures are the run's one error line
        delivery.log_retries(spooled.retried + fresh.retried + older.retried, run.log)
    kept = len(in_spool) if kept_all else 0
    if kept:
        run.log.error("%d document(s) not delivered (%s): kept for the next run", kept, delivery.why_not)
    elif kept_all:
        run.log.info("delivered %d document(s)", delivery.accepted)
    saved = {id(document) for document in in_spool}
    return Delivered(delivery.accepted, sum(id(document) in saved for document in new_in_spool) if kept_all else 0,
                     len(dropped_by_endpoint), spool.dropped(), kept, spool.oldest(in_spool) if kept_all else None,
                     kept_all)


def splay_delay(name, splay):
    """Seconds the host called name waits before it collects: a share of splay fixed by the name, so that a
    fleet's nodes spread over [0, splay) and each keeps its place from run to run."""
    share = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
    return splay * share


def run_collectors(modules, opts, started):
    """Run each collector in turn; one failing never stops the others. Returns the exit status."""
    if not opts.debug and not opts.token:
        raise UsageError("no token: set token in the config file, AFMETRICS_TOKEN or -t (or use -d)")
    deadline = started + opts.run_budget
    users = UserFilter(opts, log)  # first: a bad user_hash is a usage error before anything is written
    delivery = None if opts.debug else Delivery(opts, deadline)  # an unusable proxy URL is one too
    if not opts.debug:
        StateDir(opts.state_dir, log).prepare()
    # The wait counts against the run budget (splay < run_budget), so that it never pushes a run into the next
    # one. A person at a terminal does not wait, nor does a debug run.
    if opts.splay and not opts.debug and not (sys.stdin and sys.stdin.isatty()):
        delay = splay_delay(host_name(), opts.splay)
        log.info("splay: starting in %.1f s", delay)
        time.sleep(delay)
    return max(collect_and_deliver(module, opts, users, delivery, deadline) for module in modules)


def show_status(names, opts):
    """--status: one line (or JSON) per collector named (None: the configured ones and every other with a
    record) from its record; returns the Nagios exit status. With --textfile-dir on its command line it rewrites
    the textfile too, as a run would: the role's deploy step, so that node_exporter has every configured
    collector's series before cron ran any."""
    state = StateDir(opts.state_dir, log)
    if not os.path.isdir(state.path):
        print("UNKNOWN: no collector has run yet (no state dir %s)" % state.path)
        return STATUS_UNKNOWN
    try:
        collectors = node_collectors(opts, state, names)
    except OSError as error:
        print("UNKNOWN: cannot read state dir %s: %s" % (state.path, error.strerror))
        return STATUS_UNKNOWN
    limits = Limits(opts.warning, opts.critical or range_of_seconds(opts.stale_after), opts.spool_critical_after)
    text, status = status_report(collectors, time.time(), limits, opts.json)
    print(text)
    update_textfile(opts, state, log, time.monotonic() + opts.run_budget)
    return status


def as_check_arguments(argv):
    """argv of --status with -c meaning --critical, as in every Nagios plugin (the cluster means nothing there)."""
    return ["--critical" if arg == "-c" else "--critical=" + arg[2:] if arg.startswith("-c") and len(arg) > 2
            else arg for arg in argv]


def main(modules, parser, settings, argv=None):
    """Entry point shared by every script: parse, collect, deliver; exit 0, 1 or 2 as SPEC.md says. With
    --status, a check that cannot run (bad options, a config file missing or broken) exits 3 UNKNOWN, as plugins
    do; a bad value in a config it can read is said and the records shown.
    modules: a list, or a function of the options giving one (None for --status: every collector that ran)."""
    started = time.monotonic()
    began = time.time(), started
    argv = sys.argv[1:] if argv is None else argv
    usage_error = STATUS_UNKNOWN if "--status" in argv else EXIT_USAGE
    if "--status" in argv:
        argv = as_check_arguments(argv)
    setup_logging(0)
    opts = None
    try:
        opts = resolve_settings(parser, settings, argv)
        # --status runs as a monitoring agent's user, who may not write the collectors' log: stderr then.
        setup_logging(opts.verbose, "" if opts.status else opts.log_file)
        warn_about_visible_secrets(opts)
        selected = modules(opts) if callable(modules) else modules
        if opts.status:
            return show_status(None if selected is None else [module.NAME for module in selected], opts)
        for module in selected:
            if hasattr(module, "validate"):
                module.validate(opts)
        return run_collectors(selected, opts, started)
    except UsageError as error:
        log.error("%s", error)
        if usage_error == EXIT_USAGE:
            record_usage_error(modules, opts or settings_despite_error(parser, settings, argv), began, str(error))
        return usage_error
    except SystemExit as error:  # argparse's own usage errors; --help and --version exit 0
        return usage_error if error.code == EXIT_USAGE else error.code


def script_main(module, argv=None):
    """main() for a single-collector script such as host.py."""
    # No prog: argparse names the script as it was started (ssh.py, or afmetrics_ssh when installed).
    parser = argparse.ArgumentParser(description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    module.add_arguments(parser)
    return main([module], parser, COMMON_SETTINGS + module.SETTINGS, argv)
