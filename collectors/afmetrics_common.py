"""What every afmetrics collector shares: settings, privacy, commands, state, delivery and the run itself.

A collector module provides NAME (its debug file, lock name and key in COLLECTOR_SETTINGS), SETTINGS,
add_arguments(parser) and collect(run) -> list of documents; main() and the umbrella command do the rest.
"""
import argparse
import collections
import configparser
import errno
import fcntl
import grp
import gzip
import hashlib
import itertools
import json
import logging
import math
import os
import pwd
import re
import socket
import subprocess
import sys
import threading
import time

__version__ = "1.0.0"

CONFIG_SECTION = "afmetrics"
DEFAULT_CONFIG = "/etc/afmetrics/afmetrics.conf"
DEFAULT_LOG_FILE = "/var/log/afmetrics/afmetrics.log"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("afmetrics")


class UsageError(Exception):
    """Bad command line or configuration: exit 2 with this one-line message."""


class SourceError(Exception):
    """A data source (command, API, file) failed: the collector reports this one line and exits 1."""


# --- settings ---------------------------------------------------------------------------------------
# One table drives the config file, the environment (AFMETRICS_<NAME>) and the defaults, so the three
# can never disagree about a name or a type. The command line fills the same names through argparse.
Setting = collections.namedtuple("Setting", "name kind default")


def _words(text):
    return [word for word in re.split(r"[\s,]+", text) if word]


def _lines(text):
    return [line.strip() for line in text.splitlines() if line.strip()]


def _boolean(text):
    value = text.strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off", ""):
        return False
    raise ValueError("expected true or false")


def non_negative_number(text):
    """A finite number >= 0: a NaN budget would switch the budget off, a negative one makes no sense."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError("expected a finite number >= 0")
    return value


def _default_state_dir():
    if os.geteuid() == 0:
        return "/var/lib/afmetrics"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "afmetrics")


PARSERS = {"str": str, "int": int, "number": non_negative_number, "bool": _boolean, "words": _words,
           "lines": _lines}

COMMON_SETTINGS = [
    Setting("token", "str", ""),
    Setting("cluster", "str", ""),
    Setting("url", "str", "https://af.atlas-ml.org/"),
    Setting("ca_bundle", "str", ""),
    Setting("state_dir", "str", None),
    Setting("timeout", "number", 60.0),
    Setting("send_budget", "number", 120.0),
    Setting("spool_max_documents", "int", 100000),
    Setting("spool_max_age_hours", "number", 168.0),
    Setting("batch_size", "int", 1),
    Setting("gzip", "bool", False),
    Setting("connections", "int", 10),
    Setting("obfuscate_users", "bool", False),
    Setting("salt", "str", ""),
    Setting("obfuscate_hosts", "str", ""),
    Setting("group", "str", ""),
    Setting("verbose", "int", 0),
    Setting("log_file", "str", DEFAULT_LOG_FILE),
    Setting("debug", "bool", False),
]

KUBERNETES_SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

# One config file serves every collector on a node, so each script must know the names the others take, to
# warn only about real typos: that is why every collector's own settings are listed here, not in its script.
COLLECTOR_SETTINGS = {
    "ssh": [
        Setting("ssh_history", "bool", False),
        Setting("utmp", "str", ""),
        Setting("wtmp", "str", ""),
    ],
    "condor": [
        Setting("queues", "lines", []),
        Setting("exclude_owners", "words", []),
    ],
    "jupyter": [
        Setting("services", "lines", []),
        Setting("namespace", "str", ""),
        Setting("label", "str", ""),
        Setting("kubeconfig", "str", ""),
        Setting("serviceaccount_dir", "str", KUBERNETES_SERVICEACCOUNT_DIR),
    ],
    "host": [Setting("disks", "words", ["/home", "/data", "/scratch"])],
}
CONFIG_FILE_NAMES = {setting.name for settings in [COMMON_SETTINGS, *COLLECTOR_SETTINGS.values()]
                     for setting in settings}


def add_common_arguments(parser):
    # Defaults stay None so that "not given on the command line" can fall through to env, file, default.
    add = parser.add_argument
    add("-t", "--token", help="endpoint token (prefer the config file or AFMETRICS_TOKEN: visible in ps)")
    add("-c", "--cluster", help="cluster name put in every document, e.g. UC-AF")
    add("-u", "--url", help="endpoint URL (default https://af.atlas-ml.org/)")
    add("-d", "--debug", action="store_true", default=None,
        help="write documents as JSON Lines to NAME.json in the current directory instead of sending")
    add("-v", "--verbose", action="count", default=None, help="-v info, -vv debug logging")
    add("-o", "--obfuscate-users", action="store_true", default=None,
        help="replace user names by the last 8 hex digits of MD5(salt + name)")
    add("-z", "--salt", help="salt for user obfuscation (prefer the config file or AFMETRICS_SALT)")
    add("-O", "--obfuscate-hosts", metavar="DOMAIN",
        help="report host names as 'atlas' + their digits + '.DOMAIN'")
    add("-g", "--group", help="keep only users whose primary or supplementary groups include GROUP")
    add("--config", metavar="PATH",
        help="INI config file (default $AFMETRICS_CONFIG, else %s when present)" % DEFAULT_CONFIG)
    add("--log-file", metavar="PATH",
        help="append logs here (default %s when its directory exists; '' = stderr only)" % DEFAULT_LOG_FILE)
    add("--state-dir", metavar="DIR",
        help="counters, watermark, locks and spool (default /var/lib/afmetrics as root)")
    add("--ca-bundle", metavar="PEM", help="CA bundle to verify the endpoint with")
    add("--timeout", metavar="SECONDS", type=non_negative_number,
        help="limit for one command or API call (default 60)")
    add("--send-budget", metavar="SECONDS", type=non_negative_number,
        help="time allowed for delivery before the rest is spooled (default 120)")
    add("--version", action="version", version="afmetrics " + __version__)


def read_config_file(path, explicit):
    """Return {key: raw text} of the [afmetrics] section; {} when no file is configured."""
    if not os.path.exists(path):
        if explicit:
            raise UsageError("config file %s does not exist" % path)
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as error:
        raise UsageError("cannot read config file %s: %s" % (path, error.strerror))
    except UnicodeDecodeError:
        raise UsageError("cannot read config file %s: not UTF-8 text" % path)
    except configparser.Error as error:
        # configparser quotes the offending line, which may be the token's: name only where it is.
        lines = [str(number) for number, _ in getattr(error, "errors", [])] or [str(getattr(error, "lineno", "?"))]
        raise UsageError("cannot read config file %s: %s at line %s"
                         % (path, type(error).__name__, ", ".join(lines)))
    if not parser.has_section(CONFIG_SECTION):
        raise UsageError("config file %s has no [%s] section" % (path, CONFIG_SECTION))
    values = dict(parser.items(CONFIG_SECTION))
    if values.get("token") and os.stat(path).st_mode & 0o004:
        log.warning("config file %s holds the token and every user can read it: chmod o-r %s", path, path)
    return values


def resolve_settings(parser, settings, argv=None):
    """Parse argv and merge it with environment, config file and defaults (in that order of precedence)."""
    args = parser.parse_args(argv)
    # An empty AFMETRICS_CONFIG means "no config file", even where the default one exists.
    config_path = args.config or os.environ.get("AFMETRICS_CONFIG", DEFAULT_CONFIG)
    explicit = bool(args.config or os.environ.get("AFMETRICS_CONFIG"))
    file_values = read_config_file(config_path, explicit) if config_path else {}
    for key in sorted(set(file_values) - CONFIG_FILE_NAMES):
        log.warning("config file %s: unknown setting %r ignored", config_path, key)
    for setting in settings:
        given = getattr(args, setting.name, None)
        if given is not None:
            continue
        env_name = "AFMETRICS_" + setting.name.upper()
        for origin, raw in (("$" + env_name, os.environ.get(env_name)), (config_path, file_values.get(setting.name))):
            if raw is None:
                continue
            try:
                given = PARSERS[setting.kind](raw)
            except ValueError as error:
                raise UsageError("%s: bad value for %s: %r (%s)" % (origin, setting.name, raw, error))
            break
        setattr(args, setting.name, setting.default if given is None else given)
    args.state_dir = args.state_dir or _default_state_dir()
    return args


def warn_about_visible_secrets(argv):
    """The seed documents -t and -z, but a command line is readable by every user through ps."""
    for flags, what in ((("-t", "--token"), "token"), (("-z", "--salt"), "salt")):
        if any(arg in flags or arg.startswith(tuple(flag + "=" for flag in flags)) for arg in argv):
            log.warning("the %s was given on the command line, which every user sees in ps: "
                        "put it in the config file or AFMETRICS_%s instead", what, what.upper())


# --- logging ----------------------------------------------------------------------------------------
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


# --- privacy ----------------------------------------------------------------------------------------
def obfuscate_user(name, salt=""):
    return hashlib.md5((salt + name).encode("utf-8")).hexdigest()[-8:]


def obfuscate_host(hostname, domain):
    digits = "".join(char for char in hostname.split(".")[0] if char.isdigit())
    return "atlas%s.%s" % (digits, domain)


def fully_qualified_hostname():
    # getfqdn() answers "localhost" where the host name resolves to a loopback address; keep the
    # host's own name unless the lookup really extends it.
    name = socket.gethostname()
    fqdn = socket.getfqdn(name)
    return fqdn if fqdn.startswith(name + ".") else name


def login_node(opts):
    name = fully_qualified_hostname()
    return obfuscate_host(name, opts.obfuscate_hosts) if opts.obfuscate_hosts else name


class UserFilter:
    """Applies the group filter and user obfuscation, looking each user up once per run."""

    def __init__(self, opts, logger):
        self.log = logger
        self.salt = opts.salt
        self.obfuscate = opts.obfuscate_users
        self.group = opts.group
        self.members, self.gid = set(), None
        self.verdicts, self.primary_gids = {}, None
        if self.group:
            try:
                entry = grp.getgrnam(self.group)
                self.gid, self.members = entry.gr_gid, set(entry.gr_mem)
            except KeyError:
                logger.warning("group %s does not exist on this host: every user is left out", self.group)

    def _primary_gid(self, user):
        # With the files backend every getpwnam() reads /etc/passwd from the top, which makes thousands of
        # users quadratic; one pass over what the user database lists keeps it linear. Directory users it
        # does not list (sssd without enumeration) are still looked up one by one.
        if self.primary_gids is None:
            self.primary_gids = {entry.pw_name: entry.pw_gid for entry in pwd.getpwall()}
        if user in self.primary_gids:
            return self.primary_gids[user]
        try:
            return pwd.getpwnam(user).pw_gid
        except KeyError:
            return None

    def _in_group(self, user):
        if user in self.members:
            return True
        gid = self._primary_gid(user)
        if gid is None:
            self.log.debug("user %s is not known on this host: left out by the group filter", user)
        return gid is not None and gid == self.gid

    def report_name(self, user):
        """The name to report for user, or None when the group filter leaves the user out."""
        if user not in self.verdicts:
            keep = not self.group or self._in_group(user)
            self.verdicts[user] = (obfuscate_user(user, self.salt) if self.obfuscate else user) if keep else None
        return self.verdicts[user]

    def report_names(self, users):
        """Sorted, unique report names of the users the filter keeps."""
        return sorted({name for name in map(self.report_name, users) if name is not None})


# --- commands and state -----------------------------------------------------------------------------
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


class StateDir:
    """Small JSON files that carry counters between runs, written atomically."""

    def __init__(self, path, logger):
        self.path = path
        self.log = logger

    def file(self, name):
        return os.path.join(self.path, name)

    def prepare(self):
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
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
        # A crash leaves either the old or the new file, never a torn one.
        target = self.file(name)
        temporary = "%s.%d.tmp" % (target, os.getpid())
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except OSError as error:
            raise OSError(error.errno, error.strerror, target)

    def try_lock(self, name):
        """An open, flock-ed file kept for the run, or None when a previous run still holds it."""
        handle = open(self.file(name + ".lock"), "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            if error.errno in (errno.EAGAIN, errno.EACCES):
                return None
            raise
        return handle


# --- delivery ---------------------------------------------------------------------------------------
def with_token(document, token):
    return dict(document, token=token)


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


class Spool:
    """Documents that could not be delivered, kept as JSON Lines in the state dir for the next run."""

    def __init__(self, state, name, opts, logger):
        self.state, self.name, self.log = state, "spool-%s.jsonl" % name, logger
        self.max_documents = opts.spool_max_documents
        self.max_age_ms = opts.spool_max_age_hours * 3600 * 1000

    def load(self):
        cutoff = time.time() * 1000 - self.max_age_ms
        documents, corrupt, expired = [], 0, 0
        try:
            with open(self.state.file(self.name), encoding="utf-8") as handle:
                for line in handle:
                    try:
                        document = json.loads(line)
                    except ValueError:
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
            self.log.warning("spool %s is unreadable (%s): starting afresh", self.state.file(self.name), error)
        if corrupt:
            self.log.warning("spool %s: %d corrupt line(s) dropped", self.state.file(self.name), corrupt)
        if expired:
            self.log.warning("spool %s: %d document(s) older than %g hours dropped", self.state.file(self.name),
                             expired, self.max_age_ms / 3600000)
        return documents

    def save(self, documents):
        cutoff = time.time() * 1000 - self.max_age_ms
        kept = [document for document in documents if document["timestamp"] >= cutoff]
        kept = kept[-self.max_documents:] if self.max_documents > 0 else []
        if len(kept) < len(documents):
            self.log.warning("spool full or too old: %d undelivered document(s) dropped", len(documents) - len(kept))
        self.state.write_text(self.name, "".join(json.dumps(document) + "\n" for document in kept))
        return len(kept)


def network_failure(error):
    """A short reason for a urllib3 failure: its type, with the OS's or the inner error's words."""
    cause = getattr(error, "reason", None) or error  # MaxRetryError wraps the last attempt's failure
    text = str(cause)
    os_words = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    inner = [arg for arg in getattr(cause, "args", ()) if isinstance(arg, BaseException)]
    if os_words:
        detail = os_words.group(1).strip()
    elif "timed out" in text:
        detail = "timed out"
    else:  # e.g. ProtocolError('Connection aborted.', RemoteDisconnected('Remote end closed ...'))
        detail = str(inner[0]) if inner else ""
    return "%s (%s)" % (type(cause).__name__, detail) if detail else type(cause).__name__


Outcome = collections.namedtuple("Outcome", "undelivered refused retried")


class Delivery:
    """POSTs documents over one pool of keep-alive connections, with retries inside a time budget."""

    RETRY_STATUSES = (429, 500, 502, 503, 504)
    RETRIES = 3
    CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 30.0

    def __init__(self, opts):
        # urllib3 itself rather than requests on top of it: a quarter of the CPU per POST, which matters
        # at tens of thousands of condorjob documents a run. Imported here: debug runs stay light.
        import urllib3
        from urllib3.util.retry import Retry

        deadline = time.monotonic() + opts.send_budget

        class BudgetRetry(Retry):
            # Backoff and Retry-After are honoured, but no wait may run past the run's time budget.
            def _left(self):
                return max(0.0, deadline - time.monotonic())

            def get_backoff_time(self):
                return min(super().get_backoff_time(), self._left())

            def get_retry_after(self, response):
                after = super().get_retry_after(response)
                return None if after is None else min(after, self.backoff_max, self._left())

            def is_exhausted(self):
                return super().is_exhausted() or self._left() <= 0

        self.urllib3, self.opts, self.deadline = urllib3, opts, deadline
        self.endpoint_down = None
        retry = BudgetRetry(total=self.RETRIES, backoff_factor=0.5, backoff_jitter=0.5, backoff_max=10,
                            status_forcelist=self.RETRY_STATUSES, allowed_methods=None,
                            respect_retry_after_header=True, raise_on_status=False)
        # TLS is always verified: against ca_bundle when given, else the system's CAs.
        self.pool = urllib3.PoolManager(maxsize=max(1, opts.connections), block=True, retries=retry,
                                        cert_reqs="CERT_REQUIRED", ca_certs=opts.ca_bundle or None)
        self.headers = {"Content-Type": "application/json"}
        if opts.gzip:
            self.headers["Content-Encoding"] = "gzip"

    def _post(self, payload):
        """(outcome, failures retried past): outcome True when delivered, False when the payload should be
        kept, else the HTTP status refusing it for good."""
        remaining = self.deadline - time.monotonic()
        if self.endpoint_down or remaining <= 0:
            self.endpoint_down = self.endpoint_down or "time budget of %g s used up" % self.opts.send_budget
            return False, []
        body = json.dumps(payload).encode("utf-8")
        if self.opts.gzip:
            body = gzip.compress(body)
        # Every attempt, retries included, must fit in what is left of the budget.
        per_attempt = remaining / (self.RETRIES + 1)
        timeout = self.urllib3.Timeout(connect=min(self.CONNECT_TIMEOUT, per_attempt),
                                       read=min(self.READ_TIMEOUT, per_attempt))
        try:
            reply = self.pool.request("POST", self.opts.url, body=body, headers=self.headers, timeout=timeout)
        except self.urllib3.exceptions.HTTPError as error:
            if isinstance(getattr(error, "reason", error), self.urllib3.exceptions.SSLError):
                self.endpoint_down = "TLS verification of %s failed" % self.opts.url
            else:
                self.endpoint_down = "cannot reach %s: %s" % (self.opts.url, network_failure(error))
            return False, []
        retried = ["HTTP %d" % attempt.status if attempt.status else network_failure(attempt.error)
                   for attempt in (reply.retries.history if reply.retries else ())]
        if reply.status < 300:
            return True, retried
        if reply.status in self.RETRY_STATUSES or reply.status in (401, 403):
            # Busy, broken or refusing our token: every other document would meet the same answer.
            self.endpoint_down = "%s answered HTTP %d" % (self.opts.url, reply.status)
            return False, []
        return reply.status, retried

    def deliver(self, documents, token, logger):
        """Send documents (any iterable), oldest first, and return an Outcome: what to keep, how many were
        refused for good (each logged and dropped), and the failures that retries got past."""
        size, workers = max(1, self.opts.batch_size), max(1, self.opts.connections)
        # A few requests in flight hide the endpoint's round trip; more would only load the receiver. Each
        # sender pulls its next chunk from the collector itself, so documents are made, sent and forgotten as
        # the collector yields them. Not a thread pool: a future and a hand-over per document cost about 8% more
        # CPU (bench/send_documents.py, 10,000 documents).
        documents = iter(documents)
        chunks = enumerate(iter(lambda: list(itertools.islice(documents, size)), []))
        lock = threading.Lock()
        undelivered, retried, refused, failure = [], [], [], []

        def send_chunks():
            try:
                while True:
                    with lock:
                        number, chunk = next(chunks, (None, None)) if not failure else (None, None)
                    if chunk is None:
                        return
                    payload = [with_token(d, token) for d in chunk] if size > 1 else with_token(chunk[0], token)
                    delivered, retried_past = self._post(payload)
                    with lock:
                        retried.extend(retried_past)
                        if delivered is False:
                            undelivered.append((number, chunk))
                        elif delivered is not True:
                            refused.append(len(chunk))
                            what = ("a batch of %d documents" % len(chunk) if size > 1
                                    else "a %s document" % chunk[0]["kind"])
                            logger.error("%s refused %s with HTTP %d: dropped", self.opts.url, what, delivered)
            except BaseException as error:  # the collector's own failure, raised again in the caller's thread
                with lock:
                    failure.append(error)

        senders = [threading.Thread(target=send_chunks, daemon=True) for _ in range(workers)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        if failure:
            raise failure[0]
        undelivered.sort(key=lambda numbered: numbered[0])
        return Outcome([d for _, chunk in undelivered for d in chunk], sum(refused), retried)


# --- the run ----------------------------------------------------------------------------------------
class Run:
    """What a collector's collect() gets: its settings, logger, state dir, user filter and host name."""

    def __init__(self, name, opts, users):
        self.name, self.opts, self.users = name, opts, users
        self.log = logging.getLogger(name)
        self.state = StateDir(opts.state_dir, self.log)
        self.after_delivery = []
        self.partly_failed = False

    def source_failed(self, error):
        """One of several sources failed: say so, keep the others' documents, and exit 1 in the end."""
        self.log.error("%s", error)
        self.partly_failed = True

    def command(self, argv):
        self.log.debug("running %s", " ".join(argv))
        return run_command(argv, self.opts.timeout)

    def login_node(self):
        return login_node(self.opts)


def collect_and_deliver(module, opts, users, delivery):
    """Run one collector: lock, collect, deliver (or write the debug file), keep what was not delivered."""
    run = Run(module.NAME, opts, users)
    lock = run.state.try_lock(module.NAME)
    if lock is None:
        run.log.warning("previous %s run still going: this run skipped", module.NAME)
        return EXIT_OK
    with lock:
        collected_ms = int(time.time() * 1000)
        collected = [0]

        def documents():
            # Collectors may yield: documents then flow to the endpoint without piling up in memory.
            for document in module.collect(run):
                collected[0] += 1
                yield dict(document, cluster=opts.cluster)

        status = EXIT_OK
        try:
            if opts.debug:
                write_debug_file(module.NAME, documents(), opts.token)
            else:
                status = deliver_with_spool(run, documents(), collected, collected_ms, delivery)
        except SourceError as error:
            run.log.error("%s", error)
            return EXIT_FAILED
        except OSError as error:
            # Neither delivered nor kept: leave the state (e.g. the history watermark) where it was.
            run.log.error("cannot keep %d document(s): %s: %s", collected[0], error.strerror, error.filename)
            return EXIT_FAILED
        except Exception as error:  # a bug must not stop the other collectors of an umbrella run
            run.log.error("%s collector failed: %s: %s", module.NAME, type(error).__name__, error)
            run.log.debug("traceback", exc_info=True)
            return EXIT_FAILED
        run.log.info("collected %d document(s)", collected[0])
        for commit in run.after_delivery:
            commit()
        return EXIT_FAILED if run.partly_failed else status


def deliver_with_spool(run, documents, collected, collected_ms, delivery):
    """Send what the spool holds, oldest first, then the new documents; spool what did not go."""
    spool = Spool(run.state, run.name, run.opts, run.log)
    waiting = spool.load()
    if waiting:
        run.log.info("re-sending %d spooled document(s) first", len(waiting))
    # The spool as a phase of its own: all of it goes before this run's documents.
    spooled, fresh = delivery.deliver(waiting, run.opts.token, run.log), delivery.deliver(documents, run.opts.token,
                                                                                          run.log)
    undelivered, refused = spooled.undelivered + fresh.undelivered, spooled.refused + fresh.refused
    retried = collections.Counter(spooled.retried + fresh.retried)
    if retried:
        run.log.warning("%s failed %s before accepting: retried", run.opts.url,
                        ", ".join("%s x%d" % item for item in sorted(retried.items())))
    if undelivered or waiting:
        spool.save([dict(d, timestamp=d.get("timestamp", collected_ms)) for d in undelivered])
    if undelivered:
        run.log.error("%d document(s) not delivered (%s): kept for the next run",
                      len(undelivered), delivery.endpoint_down)
    else:
        run.log.info("delivered %d document(s)", len(waiting) + collected[0] - refused)
    return EXIT_FAILED if undelivered or refused else EXIT_OK


def run_collectors(modules, opts):
    """Run each collector in turn; one failing never stops the others. Returns the exit status."""
    if not opts.debug and not opts.token:
        raise UsageError("no token: set token in the config file, AFMETRICS_TOKEN or -t (or use -d)")
    StateDir(opts.state_dir, log).prepare()
    users = UserFilter(opts, log)
    delivery = None if opts.debug else Delivery(opts)
    return max(collect_and_deliver(module, opts, users, delivery) for module in modules)


def main(modules, parser, settings, argv=None):
    """Entry point shared by every script: parse, collect, deliver; exit 0, 1 or 2 as SPEC.md says."""
    argv = sys.argv[1:] if argv is None else argv
    setup_logging(0)
    try:
        opts = resolve_settings(parser, settings, argv)
        setup_logging(opts.verbose, opts.log_file)
        warn_about_visible_secrets(argv)
        selected = modules(opts) if callable(modules) else modules
        for module in selected:
            if hasattr(module, "validate"):
                module.validate(opts)
        return run_collectors(selected, opts)
    except UsageError as error:
        log.error("%s", error)
        return EXIT_USAGE


def script_main(module, argv=None):
    """main() for a single-collector script such as host.py."""
    parser = argparse.ArgumentParser(prog=module.NAME + ".py", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    module.add_arguments(parser)
    return main([module], parser, COMMON_SETTINGS + module.SETTINGS, argv)
