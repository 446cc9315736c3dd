"""Settings: one table of names, kinds and defaults behind the command line, AFMETRICS_* and the INI file.

resolve_settings() merges them in the order SPEC.md gives (command line > environment > file > default) and
raises UsageError with one line for anything it cannot use; nothing here runs a collector.
"""
import argparse
import collections
import configparser
import logging
import math
import os
import re
import urllib.parse

__version__ = "1.1.0"

CONFIG_SECTION = "afmetrics"
DEFAULT_CONFIG = "/etc/afmetrics/afmetrics.conf"
DEFAULT_LOG_FILE = "/var/log/afmetrics/afmetrics.log"

log = logging.getLogger("afmetrics")


class UsageError(Exception):
    """Bad command line or configuration: exit 2 with this one-line message."""


# One table drives the config file, the environment (AFMETRICS_<NAME>) and the defaults, so the three
# can never disagree about a name or a type. The command line fills the same names through argparse.
# An empty AFMETRICS_<NAME> is unset (VAR= left by a template or a unit file must not wipe the file's token),
# except where empty_is_choice: there '' is a value of its own (log_file '' logs to stderr only).
Setting = collections.namedtuple("Setting", "name kind default empty_is_choice", defaults=(False,))


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


SYSTEM_STATE_DIR = "/var/lib/afmetrics"


def _default_state_dir(status):
    # --status by a monitoring agent's user (nagios) reads the node's collectors, not its own.
    if os.geteuid() == 0 or (status and os.path.isdir(SYSTEM_STATE_DIR)):
        return SYSTEM_STATE_DIR
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "afmetrics")


# "secret": a string that must never show in a log line or in ps.
PARSERS = {"str": str, "secret": str, "int": int, "number": non_negative_number, "bool": _boolean, "words": _words,
           "lines": _lines}

COMMON_SETTINGS = [
    Setting("token", "secret", ""),
    Setting("cluster", "str", ""),
    Setting("url", "str", "https://af.atlas-ml.org/"),
    Setting("proxy", "str", ""),
    Setting("ca_bundle", "str", ""),
    Setting("state_dir", "str", None),
    Setting("timeout", "number", 60.0),
    Setting("send_budget", "number", 120.0),
    Setting("run_budget", "number", 240.0),
    Setting("splay", "number", 0.0),
    Setting("stale_after", "number", 900.0),
    # The collectors this node runs (the names their records carry: ssh, condor, slurm, jupyter, host), so that
    # one that never ran is missed rather than unknown.
    Setting("collectors", "words", []),
    # Documents kept this long for an endpoint that does not take them make --status CRITICAL, not WARNING.
    Setting("spool_critical_after", "number", 21600.0),
    Setting("textfile_dir", "str", ""),
    Setting("spool_max_documents", "int", 100000),
    Setting("spool_max_age_hours", "number", 168.0),
    Setting("batch_size", "int", 300),
    Setting("batch_bytes", "int", 1000000),
    Setting("gzip", "bool", False),
    Setting("connections", "int", 10),
    Setting("obfuscate_users", "bool", False),
    Setting("salt", "secret", ""),
    # What the old tool's code sends with -o, so the user ids the dashboards hold stay the same at cutover
    # (maniaclab/afmetrics_collector src/afmetrics_collector/skeleton.py); md5 is what its README describes.
    Setting("user_hash", "str", "sha256"),
    Setting("obfuscate_hosts", "str", ""),
    Setting("login_node", "str", ""),
    Setting("group", "str", ""),
    Setting("verbose", "int", 0),
    Setting("log_file", "str", DEFAULT_LOG_FILE, empty_is_choice=True),
    Setting("debug", "bool", False),
]

KUBERNETES_SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

# The old tool's -j sends both, whatever -n and -l say of the first (maniaclab/afmetrics_collector
# src/afmetrics_collector/skeleton.py: get_jupyter_users(args.ns, args.label), then ("coffea-casa", "jhub_user")).
DEFAULT_JUPYTER_SERVICES = ["ml:af-jupyter:owner", "coffea:coffea-casa:jhub_user"]
# coffea-casa's HTCondor workers: the old tool's condor_q and condor_history constraints leave them out of the
# condorjob documents (Owner =!= "atlas-coffea", maniaclab/afmetrics_collector src/afmetrics_collector/condor.py),
# while its queue totals count them. One list for condor.py and slurm.py, which the umbrella resolves once.
DEFAULT_EXCLUDE_OWNERS = ["atlas-coffea"]

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
        Setting("exclude_owners", "words", DEFAULT_EXCLUDE_OWNERS),
        Setting("history_scan_limit", "int", 100000),
        Setting("condor_jupyter", "lines", []),
        Setting("jupyter_pending", "bool", False),
    ],
    "slurm": [
        Setting("slurm_queues", "lines", []),
        Setting("exclude_owners", "words", DEFAULT_EXCLUDE_OWNERS),  # condor's too: one list of owners for both batch systems
        Setting("slurm_jupyter", "lines", []),
        Setting("jupyter_pending", "bool", False),  # condor's too
    ],
    "jupyter": [
        Setting("services", "lines", DEFAULT_JUPYTER_SERVICES),
        Setting("namespace", "str", ""),
        Setting("label", "str", ""),
        Setting("kubeconfig", "str", ""),
        Setting("serviceaccount_dir", "str", KUBERNETES_SERVICEACCOUNT_DIR),
    ],
    "host": [
        Setting("disks", "words", ["/home", "/data", "/scratch"]),
        Setting("baseline_max_age", "number", 3600.0),
    ],
}
# Other names the collectors key takes: the role's afmetrics_collectors and the umbrella's -b say batch for the
# HTCondor collector, whose records say condor.
COLLECTOR_ALIASES = {"batch": "condor"}
CONFIG_FILE_NAMES = {setting.name for settings in [COMMON_SETTINGS, *COLLECTOR_SETTINGS.values()]
                     for setting in settings}


def status_range(text):
    from afmetrics_status import parse_range  # here: afmetrics_status needs this module, through afmetrics_state

    try:
        return parse_range(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a Nagios range (10, 10:, ~:10, 10:20, @10:20)" % text)


def add_common_arguments(parser):
    # Defaults stay None so that "not given on the command line" can fall through to env, file, default.
    add = parser.add_argument
    add("-t", "--token", help="endpoint token (prefer the config file or AFMETRICS_TOKEN: visible in ps)")
    add("-c", "--cluster", help="cluster name put in every document, e.g. UC-AF")
    add("-u", "--url", help="endpoint URL (default https://af.atlas-ml.org/)")
    add("--proxy", metavar="URL",
        help="HTTP proxy for the endpoint, e.g. http://proxy.example.org:3128 (user:password@ allowed, never "
             "logged); it wins over the environment. Unset or '' (the default): $https_proxy/$HTTPS_PROXY, else "
             "$ALL_PROXY, unless $NO_PROXY names the endpoint's host, as requests reads them")
    add("-d", "--debug", action="store_true", default=None,
        help="write documents as JSON Lines to NAME.json in the current directory instead of sending")
    add("-v", "--verbose", action="count", default=None, help="-v info, -vv debug logging")
    add("-o", "--obfuscate-users", action="store_true", default=None,
        help="replace user names by 8 hex digits of a hash of salt + name (which hash: --user-hash)")
    add("-z", "--salt", help="salt for user obfuscation (prefer the config file or AFMETRICS_SALT)")
    add("--user-hash", choices=("md5", "sha256"),
        help="hash of -o: sha256 (first 8 hex digits of SHA-256(salt + name): what the old afmetrics_collector "
             "sends; default) or md5 (last 8 of MD5(salt + name), as the old README says)")
    add("-O", "--obfuscate-hosts", metavar="DOMAIN",
        help="report the node name as 'atlas' + every digit of it + '.DOMAIN', as the old tool does "
             "(login1.t2.example.edu gives atlas12.DOMAIN); applies to --login-node too")
    add("--login-node", metavar="NAME",
        help="node name to report instead of the host name (default: socket.gethostname(), as the old tool "
             "sends it, not extended to the FQDN)")
    add("-g", "--group", help="keep only users whose primary or supplementary groups include GROUP")
    add("--config", metavar="PATH",
        help="INI config file (default $AFMETRICS_CONFIG, else %s when present); '' = no config file, "
             "as AFMETRICS_CONFIG='' is" % DEFAULT_CONFIG)
    add("--log-file", metavar="PATH",
        help="append logs here (default %s when its directory exists; '' = stderr only)" % DEFAULT_LOG_FILE)
    add("--state-dir", metavar="DIR",
        help="counters, history cursor, locks, spool and run records (default /var/lib/afmetrics as root, and "
             "for --status when it exists)")
    add("--ca-bundle", metavar="PEM", help="CA bundle to verify the endpoint with")
    add("--timeout", metavar="SECONDS", type=non_negative_number,
        help="limit for one command or API call (default 60)")
    add("--send-budget", metavar="SECONDS", type=non_negative_number,
        help="time each collector's delivery may take, from its first document, before the rest is spooled "
             "(default 120)")
    add("--run-budget", metavar="SECONDS", type=non_negative_number,
        help="time the whole run may take, every collector's commands and delivery, so that it ends before the "
             "next cron run (default 240)")
    add("--splay", metavar="SECONDS", type=non_negative_number,
        help="spread a fleet's runs: wait a share of SECONDS fixed by this host's name before collecting (part "
             "of the run budget, so less than it; not with -d, --status or from a terminal; default 0)")
    add("--textfile-dir", metavar="DIR",
        help="after each run, rewrite DIR/afmetrics.prom with every collector's last run for node_exporter's "
             "textfile collector (default: none)")
    add("--status", action="store_true",
        help="collect nothing: print each collector's last run from the state dir (the umbrella without a "
             "collector chosen: every collector that ran) and exit as a Nagios plugin: 0 OK, 1 WARNING (documents "
             "kept for later), 2 CRITICAL (a source failing, or no success within --stale-after), 3 UNKNOWN (no run "
             "yet, or the check cannot run)")
    add("--json", action="store_true", help="with --status: the same as one JSON object")
    add("--stale-after", metavar="SECONDS", type=non_negative_number,
        help="--status is CRITICAL when no run succeeded for this long (default 900; 0: never)")
    add("-w", "--warning", metavar="RANGE", type=status_range,
        help="with --status: WARNING when the age of a collector's last success in seconds is outside this "
             "Nagios range (600: above 600; default none)")
    add("--critical", metavar="RANGE", type=status_range,
        help="with --status (also as -c there): CRITICAL when that age is outside this range (default: "
             "--stale-after)")
    add("--spool-critical-after", metavar="SECONDS", type=non_negative_number,
        help="--status is CRITICAL, not WARNING, once documents kept for an endpoint that does not take them "
             "are this old (default 21600; 0: never)")
    add("--gzip", action="store_true", default=None,
        help="send request bodies gzip-compressed (the endpoint must take Content-Encoding: gzip)")
    add("--version", action="version", version="afmetrics " + __version__)


def add_shared_argument(parser, flag, **options):
    """An option condor.py and slurm.py both take: added once to a parser they share (the umbrella's)."""
    if flag not in parser._option_string_actions:
        parser.add_argument(flag, **options)


def add_exclude_owner_argument(parser):
    add_shared_argument(parser, "--exclude-owner", dest="exclude_owners", action="append", metavar="OWNER",
                        help="never report jobs of this owner (repeatable; condor.py and slurm.py)")


def add_jupyter_pending_argument(parser):
    add_shared_argument(parser, "--jupyter-pending", dest="jupyter_pending", action="store_true", default=None,
                        help="jupyter sessions that are batch jobs: also count the users whose session waits to "
                             "start (HTCondor idle, Slurm PENDING and not held), not only those whose session runs")


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


def add_negations(parser, settings):
    """Give the flag of each boolean setting a --no- form (-d, --debug: also --no-debug), so that the command
    line can turn off what the environment or the config file turns on. Collectors declare their flags as
    plain store_true; a flag that already has its --no- form is left alone, so calling this twice is harmless.
    """
    booleans = {setting.name for setting in settings if setting.kind == "bool"}
    # argparse has no public way to list a parser's options. A group's list is also its --help order: the
    # --no- form goes right after its flag.
    for group in parser._action_groups:
        for action in list(group._group_actions):
            long_flags = [flag for flag in action.option_strings if flag.startswith("--")]
            if action.dest not in booleans or action.nargs != 0 or not long_flags:
                continue
            negation = "--no-" + long_flags[0][2:]
            if negation not in parser._option_string_actions:
                added = group.add_argument(negation, dest=action.dest, action="store_false", default=None,
                                           help="turn %s off" % ", ".join(action.option_strings))
                group._group_actions.remove(added)
                group._group_actions.insert(group._group_actions.index(action) + 1, added)


def config_file(given):
    """(path, explicit) of the config file from --config (None when not given), else $AFMETRICS_CONFIG, else
    the default. An empty path from either means no config file: the one way to keep the default file out.
    explicit: a missing file is an error rather than "no file"."""
    path = os.environ.get("AFMETRICS_CONFIG") if given is None else given
    if path is None:
        return DEFAULT_CONFIG, False
    return path, bool(path)


def parse_value(setting, origin, raw):
    """The setting's value from its text in origin (a variable or the config file), or a UsageError."""
    try:
        return PARSERS[setting.kind](raw)
    except ValueError as error:
        raise UsageError("%s: bad value for %s: %r (%s)" % (origin, setting.name, raw, error))


def configured_value(setting, config_path, file_values):
    """The setting from the environment, else the config file, else its default; an empty variable is unset
    unless setting.empty_is_choice."""
    env_name = "AFMETRICS_" + setting.name.upper()
    from_env = os.environ.get(env_name)
    if from_env is not None and (from_env or setting.empty_is_choice):
        return parse_value(setting, "$" + env_name, from_env)
    if setting.name in file_values:
        return parse_value(setting, config_path, file_values[setting.name])
    return setting.default


def command_line_value(setting, given):
    """What argparse parsed for a setting, read as the config file reads it: each --disk a,b or
    --exclude-owner a,b is a list of words. A "lines" setting's option (-q, --service) is one line each:
    a queue constraint may hold commas."""
    if setting.kind == "words":
        return [word for value in given for word in _words(value)]
    return given


def split_url(url):
    """urllib3's parts of url (what delivery sends to), once every library delivery hands it to can split it
    (urllib3 sends, urllib.parse and requests choose the proxy) and its port, when given, is 1-65535; else a
    ValueError saying why."""
    from urllib3.util import parse_url  # here: debug runs never load urllib3

    if urllib.parse.urlsplit(url).port == 0:  # a port urlsplit cannot read raises its own ValueError here
        raise ValueError("Port out of range 1-65535")
    return parse_url(url)  # LocationParseError is a ValueError


def check_url(url):
    """An endpoint URL delivery can use: https:// (http:// with a warning: the token would travel in clear)
    with a host and a port it can split; anything else, af.atlas-ml.org without its scheme above all, is a
    UsageError."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in ("https", "http"):
        raise UsageError("url %s: give the endpoint as https://HOST/..." % url)
    try:
        host = split_url(url).host
    except ValueError as error:
        raise UsageError("url %s: %s" % (url, error))
    if not host:
        raise UsageError("url %s: no host in it: give the endpoint as https://HOST/..." % url)
    if scheme == "http":
        log.warning("url %s is plain http: the token and the documents travel unencrypted", url)


def check_ca_bundle(path):
    """A CA bundle that cannot be loaded would fail every delivery: a UsageError naming it instead."""
    import ssl  # here: 12 ms of every run's start, a debug run's too, where no bundle is checked
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError:  # before OSError, of which it is one
        raise UsageError("ca_bundle %s: no PEM certificate in it" % path)
    except OSError as error:
        raise UsageError("ca_bundle %s: %s" % (path, error.strerror))
    except ValueError:  # a NUL byte: no file can have such a name
        raise UsageError("ca_bundle %r: not a file name" % path)


def merge(args, settings, config_path, file_values, lenient=False):
    """Give args (what argparse parsed) every setting: the command line's, else the environment's, else the file's,
    else its default; lenient: a value that cannot be used is its default instead of a UsageError, and the list of
    their messages is returned."""
    problems = []
    for setting in settings:
        given = getattr(args, setting.name, None)
        if given is not None:
            setattr(args, setting.name, command_line_value(setting, given))
            continue
        try:
            setattr(args, setting.name, configured_value(setting, config_path, file_values))
        except UsageError as error:
            if not lenient:
                raise
            problems.append(str(error))
            setattr(args, setting.name, setting.default)
    args.config_path = config_path
    args.state_dir = args.state_dir or _default_state_dir(args.status)
    return problems


def known_collectors(names):
    """(names with their aliases resolved, the names no collector has)."""
    names = [COLLECTOR_ALIASES.get(name, name) for name in names]
    return names, sorted(set(names) - set(COLLECTOR_SETTINGS))


def settings_despite_error(parser, settings, argv):
    """After resolve_settings() raised a UsageError: the settings as far as they can be used (a bad value, an
    unreadable config file: the defaults), to record that error with; None when the command line itself is bad."""
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        return None
    config_path, explicit = config_file(args.config)
    try:
        file_values = read_config_file(config_path, explicit) if config_path else {}
    except UsageError:
        file_values = {}
    merge(args, settings, config_path, file_values, lenient=True)
    names, unknown = known_collectors(args.collectors)
    args.collectors = [name for name in names if name not in unknown]
    return args


def resolve_settings(parser, settings, argv=None):
    """Parse argv and merge it with environment, config file and defaults (in that order of precedence).

    Every setting of settings is an attribute of the result; a value nothing can use (a bad number, a config
    file that is missing or broken, a CA bundle a real run could not load) is a UsageError.
    """
    add_negations(parser, settings)
    args = parser.parse_args(argv)
    config_path, explicit = config_file(args.config)
    try:
        file_values = read_config_file(config_path, explicit) if config_path else {}
    except UsageError as error:
        # The config file is the run user's (it holds the token): a monitoring agent's --status reads the
        # records without it, from the default state dir or --state-dir.
        if not (args.status and os.path.exists(config_path) and not os.access(config_path, os.R_OK)):
            raise
        # Expected there, and said with -v only (logging is not set up yet): Icinga shows a check's stderr with
        # its output.
        if args.verbose:
            log.warning("%s: reading the run records without it", error)
        file_values = {}
    for key in sorted(set(file_values) - CONFIG_FILE_NAMES):
        log.warning("config file %s: unknown setting %r ignored", config_path, key)
    # What argparse itself took from the command line, bundles (-dtTOKEN) and abbreviations (--tok=) included.
    args.command_line_secrets = [setting.name for setting in settings
                                 if setting.kind == "secret" and getattr(args, setting.name, None) is not None]
    if has_password(getattr(args, "proxy", None) or ""):
        args.command_line_secrets.append("proxy")
    # --status writes the textfile only when told on its command line (the role's deploy step): a monitoring
    # agent's check must not write where the runs do.
    status_textfile_dir = args.textfile_dir or ""
    # --status reports the records whatever else the configuration says: a bad value there is what the runs
    # recorded as their configuration error, and is said in one line each.
    problems = merge(args, settings, config_path, file_values, lenient=args.status)
    args.collectors, unknown = known_collectors(args.collectors)
    if unknown:
        problems.append("collectors: unknown %s (known: %s)" % (", ".join(unknown), ", ".join(COLLECTOR_SETTINGS)))
        args.collectors = [name for name in args.collectors if name not in unknown]
    if args.splay and args.splay >= args.run_budget:
        problems.append("splay %g s must be less than run_budget %g s: the wait is part of the run"
                        % (args.splay, args.run_budget))
    if args.status:
        args.textfile_dir = status_textfile_dir
        for problem in problems:
            log.error("%s", problem)
    elif problems:
        raise UsageError(problems[0])
    if args.json and not args.status:
        raise UsageError("--json goes with --status")
    if not (args.debug or args.status):
        check_url(args.url)
        if args.ca_bundle:
            check_ca_bundle(args.ca_bundle)
    return args


def has_password(url):
    """True when url's userinfo holds a password (user:password@, as a proxy URL may): the authority ends at the
    first / ? or #, its userinfo at the last @ (RFC 3986 3.2); with or without a scheme, valid or not."""
    authority = re.split(r"[/?#]", url.split("://", 1)[-1], maxsplit=1)[0]
    return ":" in authority.rpartition("@")[0]


# What of a setting given on the command line is the secret, when not the whole of it.
SECRET_PART = {"proxy": "proxy password"}


def warn_about_visible_secrets(opts):
    """The seed documents -t and -z, and --help allows a proxy's user:password@, but a command line is readable
    by every user through ps: warn, naming the setting and never its value."""
    for name in opts.command_line_secrets:
        log.warning("the %s was given on the command line, which every user sees in ps: "
                    "put it in the config file or AFMETRICS_%s instead", SECRET_PART.get(name, name), name.upper())
