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
import itertools
import json
import logging
import os
import subprocess
import sys
import time

from afmetrics_delivery import Delivery, network_failure, with_token
from afmetrics_privacy import UserFilter, login_node
from afmetrics_settings import (COLLECTOR_SETTINGS, COMMON_SETTINGS, KUBERNETES_SERVICEACCOUNT_DIR, UsageError,
                                __version__, add_common_arguments, add_exclude_owner_argument, resolve_settings,
                                warn_about_visible_secrets)
from afmetrics_state import Spool, StateDir

__all__ = ["COLLECTOR_SETTINGS", "COMMON_SETTINGS", "KUBERNETES_SERVICEACCOUNT_DIR", "SourceError", "UsageError",
           "__version__", "add_exclude_owner_argument", "main", "network_failure", "script_main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

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


def run_command(argv, timeout):
    """Run a command and return its stdout; any failure becomes a one-line SourceError."""
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SourceError("%s not found on PATH" % argv[0])
    except subprocess.TimeoutExpired:
        raise SourceError("%s did not answer within %g s" % (argv[0], timeout))
    except OSError as error:
        raise SourceError("cannot run %s: %s" % (argv[0], error.strerror))
    if done.returncode != 0:
        message = " ".join(done.stderr.decode("utf-8", "replace").split()) or "no error message"
        raise SourceError("%s failed (exit %d): %s" % (argv[0], done.returncode, message[:300]))
    return done.stdout.decode("utf-8", "replace")


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
    only in a real run, once every document of the run was delivered or spooled.
    """

    def __init__(self, name, opts, users, deadline):
        self.name, self.opts, self.users, self.deadline = name, opts, users, deadline
        self.log = logging.getLogger(name)
        self.state = StateDir(opts.state_dir, self.log)
        self.after_delivery = []
        self.partly_failed = False

    def source_failed(self, error):
        """One of several sources failed: say so, keep the others' documents, and exit 1 in the end."""
        self.log.error("%s", error)
        self.partly_failed = True

    def timeout(self):
        """The limit for one command or API call: --timeout, or what is left of the run budget when less."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise SourceError("run budget of %g s used up" % self.opts.run_budget)
        return min(self.opts.timeout, left)

    def command(self, argv):
        self.log.debug("running %s", " ".join(argv))
        return run_command(argv, self.timeout())

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
        except SourceError as error:
            run.log.error("%s", error)
            self.failed = True
        except Exception as error:  # a bug must not stop the other collectors of an umbrella run
            run.log.error("%s collector failed: %s: %s", self.module.NAME, type(error).__name__, error)
            run.log.debug("traceback", exc_info=True)
            self.failed = True
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
        run.log.warning("previous %s run still going: this run skipped", module.NAME)
        return EXIT_OK
    with lock:
        delivered = deliver_with_spool(run, collection, delivery, replaced_by_next_run(module))
        if collection.complete:
            run.log.info("collected %d document(s)", collection.count)
        if delivered is None:
            return EXIT_FAILED
        status = EXIT_OK if delivered and not collection.failed else EXIT_FAILED
        if collection.complete:
            for commit in run.after_delivery:
                try:
                    commit()
                except OSError as error:
                    run.log.error("cannot save state: %s: %s (the next run may send some documents again)",
                                  error.strerror, error.filename)
                    status = EXIT_FAILED
        return EXIT_FAILED if run.partly_failed else status


def deliver_with_spool(run, collection, delivery, is_snapshot):
    """Send what the spool holds, oldest first, then the new documents; spool what did not go.

    Returns True when everything was delivered, False when documents were kept (or refused), None when
    undelivered documents could not be kept (the state must then stay where it was).
    """
    spool = Spool(run.state, run.name, run.opts, run.log, is_snapshot)
    collected_ms = int(time.time() * 1000)
    collection.start()
    delivery.start_budget()
    waiting = spool.load()
    if waiting:
        run.log.info("re-sending %d spooled document(s) first", len(waiting))
    spooled = delivery.deliver(waiting, run.opts.token, run.log)
    kept = len(spooled.undelivered)
    if waiting or spool.needs_rewrite:
        # At once: whatever becomes of this run's own documents, the spool now holds only what is left of
        # it, without its corrupt and expired lines.
        try:
            kept = spool.save(spooled.undelivered)
        except OSError as error:
            run.log.error("cannot rewrite the spool: %s: %s (its delivered documents will be sent again)",
                          error.strerror, error.filename)
    fresh = delivery.deliver(collection, run.opts.token, run.log)
    refused = spooled.refused + fresh.refused
    if len(refused) > 1 and not delivery.accepted:
        # An endpoint that refuses every one of several documents (a front end answering 400 to all) is a
        # wrong endpoint, not a run of bad documents: they are kept like any other failure's.
        delivery.endpoint_down = delivery.endpoint_down or "%s refused every document (HTTP %s)" % (
            run.opts.url, "/".join(sorted({str(status) for _, status in refused})))
    else:
        for document, status in refused:
            run.log.error("%s refused a %s document with HTTP %d: dropped", run.opts.url, document["kind"], status)
        refused = []
    to_keep = [dict(d, timestamp=d.get("timestamp", collected_ms))
               for d in fresh.undelivered + [document for document, _ in refused]]
    if to_keep:
        undelivered = spooled.undelivered + to_keep
        try:
            kept = spool.save(undelivered)
        except OSError as error:
            run.log.error("cannot keep %d document(s): %s: %s", len(undelivered), error.strerror, error.filename)
            return None
    delivery.log_retries(spooled.retried + fresh.retried, run.log)
    dropped = len(spooled.refused) + len(fresh.refused) - len(refused)
    if kept:
        run.log.error("%d document(s) not delivered (%s): kept for the next run", kept, delivery.why_not)
    else:
        run.log.info("delivered %d document(s)", len(waiting) + collection.count - dropped)
    return not kept and not dropped


def run_collectors(modules, opts, started):
    """Run each collector in turn; one failing never stops the others. Returns the exit status."""
    if not opts.debug and not opts.token:
        raise UsageError("no token: set token in the config file, AFMETRICS_TOKEN or -t (or use -d)")
    users = UserFilter(opts, log)  # first: a bad user_hash is a usage error before anything is written
    if not opts.debug:
        StateDir(opts.state_dir, log).prepare()
    deadline = started + opts.run_budget
    delivery = None if opts.debug else Delivery(opts, deadline)
    return max(collect_and_deliver(module, opts, users, delivery, deadline) for module in modules)


def main(modules, parser, settings, argv=None):
    """Entry point shared by every script: parse, collect, deliver; exit 0, 1 or 2 as SPEC.md says."""
    started = time.monotonic()
    argv = sys.argv[1:] if argv is None else argv
    setup_logging(0)
    try:
        opts = resolve_settings(parser, settings, argv)
        setup_logging(opts.verbose, opts.log_file)
        warn_about_visible_secrets(opts)
        selected = modules(opts) if callable(modules) else modules
        for module in selected:
            if hasattr(module, "validate"):
                module.validate(opts)
        return run_collectors(selected, opts, started)
    except UsageError as error:
        log.error("%s", error)
        return EXIT_USAGE


def script_main(module, argv=None):
    """main() for a single-collector script such as host.py."""
    # No prog: argparse names the script as it was started (ssh.py, or afmetrics_ssh when installed).
    parser = argparse.ArgumentParser(description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    module.add_arguments(parser)
    return main([module], parser, COMMON_SETTINGS + module.SETTINGS, argv)
