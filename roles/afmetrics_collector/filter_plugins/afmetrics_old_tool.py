"""Filters that find and disable the cron lines of the tool sites ran before this role: the pip-installed
afmetrics_collector (seed README: /etc/cron.d/afmetrics.cron, a root crontab line), whose lines carry the
token and the salt as -t and -z.

afmetrics_old_tool_lines(text, install_dir): the active cron lines of text that call an afmetrics_collector
    outside install_dir (the role's own), with every secret replaced by ***, for the role's report.
afmetrics_disable_old_tool(text, install_dir): text with each of those lines commented out and its secrets
    replaced by ***, and the secrets of commented-out lines that call it replaced too: cron never runs them
    again and the token is no longer in any cron file. Everything else, environment lines and the other jobs,
    is kept byte for byte; a second pass changes nothing.
afmetrics_old_tool_files(slurped, install_dir): of ansible.builtin.slurp results, those whose file
    afmetrics_disable_old_tool changes, as {path, report}: one "PATH: LINE" per line afmetrics_old_tool_lines
    gives, or one saying that only commented-out lines lose their secrets.
afmetrics_old_tool_settings(slurped, install_dir, config_text): what the old tool's lines did on this node, as the
    role's settings (see old_tool_settings).
afmetrics_old_tool_report(old, effective): the lines the role prints about what it carried over.
afmetrics_old_tool_disagreements(per_node): the settings on which the nodes' old lines disagree, naming the nodes.
afmetrics_old_tool_argv(collector, old): the old tool's arguments for a debug run of one collector.
"""
import argparse
import base64
import configparser
import hashlib
import re
import shlex

MARK = "# disabled by the afmetrics_collector role (old tool; token and salt removed): "

# NAME=value: a cron environment line, not a job.
ENVIRONMENT = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*=")

# An option that takes the token or the salt, at the start of a word of the command line (the old tool's flags
# without a value, s S j b d v o, may be bundled before -t or -z), then its value: quoted, or up to the next
# space or shell operator. Long options may be abbreviated, as argparse allows; AFMETRICS_TOKEN=... too.
SECRET = re.compile(
    r"""(?P<option>(?:(?<=[\s(;&|])|^)(?:-[sSjbdvo]*[tz](?:\s+|=|(?=\S))"""
    r"""|--(?:token|toke|tok|to|salt|sal|sa)(?:=|\s+)"""
    r"""|AFMETRICS_(?:TOKEN|SALT)=))"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'[^']*'|[^\s;&|)]+)""")


def _calls_old_tool(line, install_dir):
    """A job line or a commented-out one that runs an afmetrics_collector other than the role's."""
    stripped = line.strip().lstrip("#").strip()
    if not stripped or ENVIRONMENT.match(stripped) or "afmetrics_collector" not in stripped:
        return False
    return install_dir.rstrip("/") + "/" not in stripped


def _is_active(line):
    return not line.lstrip().startswith("#")


def _redacted(line):
    return SECRET.sub(lambda match: match.group("option") + "***", line)


def afmetrics_old_tool_lines(text, install_dir):
    return [_redacted(line.strip()) for line in text.splitlines()
            if _is_active(line) and _calls_old_tool(line, install_dir)]


def afmetrics_disable_old_tool(text, install_dir):
    lines = text.splitlines(True)
    for index, line in enumerate(lines):
        if not _calls_old_tool(line, install_dir):
            continue
        body = line.rstrip("\r\n")
        ending = line[len(body):]
        lines[index] = (MARK + _redacted(body.strip()) if _is_active(line) else _redacted(body)) + ending
    return "".join(lines)


def afmetrics_old_tool_files(slurped, install_dir):
    found = []
    for result in slurped:
        text = base64.b64decode(result["content"]).decode("utf-8", "surrogateescape")
        if afmetrics_disable_old_tool(text, install_dir) != text:
            path = result["source"]
            report = ["%s: %s" % (path, line) for line in afmetrics_old_tool_lines(text, install_dir)]
            found.append({"path": path, "report": report or ["%s: token and salt of commented-out lines" % path]})
    return found


# --- what the old lines did --------------------------------------------------------------------------------------
# The old tool's options and defaults, as its argparse declares them (maniaclab/afmetrics_collector at 6778f64,
# src/afmetrics_collector/skeleton.py, parse_args); written out here, not imported. Abbreviations work as there.
OLD_DEFAULTS = {"cluster": "UC-AF", "url": "https://af.atlas-ml.org/", "namespace": "af-jupyter", "label": "owner"}
# Its collector flags -> the role's names for the collectors (afmetrics_collectors), in the role's order.
OLD_COLLECTOR_FLAGS = [("ssh", "ssh", "-s"), ("batch", "batch", "-b"), ("jupyter", "jupyter", "-j"),
                       ("host", "host", "--host")]
# The settings carried over, in the order they are reported; secrets are never shown.
CARRIED = ["collectors", "ssh_history", "cluster", "url", "queues", "group", "obfuscate_users", "user_hash", "salt",
           "obfuscate_hosts", "jupyter_services", "token"]
SECRETS = {"token", "salt"}
# A shell word made of these ends the command's arguments (with punctuation_chars shlex splits them off).
OPERATOR = re.compile(r"[();<>|&]+\Z")


class _OldArgumentError(Exception):
    pass


class _OldParser(argparse.ArgumentParser):
    def error(self, message):
        raise _OldArgumentError(message)


def _old_parser():
    parser = _OldParser(add_help=False, prog="afmetrics_collector")
    for flags, dest in [(["--host"], "host"), (["-s", "--ssh"], "ssh"), (["-S", "--ssh-history"], "ssh_history"),
                        (["-j", "--jupyter"], "jupyter"), (["-b", "--batch"], "batch"),
                        (["-o", "--obfuscate-users"], "obf_users"), (["-d", "--debug"], "debug"),
                        (["--version"], "version")]:
        parser.add_argument(*flags, dest=dest, action="store_true")
    parser.add_argument("-v", "--verbose", dest="loglevel", action="store_const", const=1)
    parser.add_argument("-vv", "--very-verbose", dest="loglevel", action="store_const", const=2)
    for flags, dest, default in [(["-n", "--namespace"], "ns", OLD_DEFAULTS["namespace"]),
                                 (["-l", "--label"], "label", OLD_DEFAULTS["label"]),
                                 (["-t", "--token"], "token", None),
                                 (["-c", "--cluster"], "cluster", OLD_DEFAULTS["cluster"]),
                                 (["-u", "--url"], "url", OLD_DEFAULTS["url"]),
                                 (["-O", "--obfuscate-hosts"], "obf_hosts", ""),
                                 (["-z", "--salt"], "salt", ""), (["-g", "--group"], "group", "")]:
        parser.add_argument(*flags, dest=dest, default=default)
    parser.add_argument("-q", "--queue", dest="queue", action="append", default=[])
    return parser


def _uncommented(line):
    """The line as cron ran it: without this role's mark or a plain comment's #."""
    stripped = line.strip()
    if stripped.startswith(MARK):
        return stripped[len(MARK):]
    return stripped.lstrip("#").strip()


def parse_old_line(line):
    """(environment, arguments) of the afmetrics_collector command on a cron line: the NAME=value words right
    before it (KUBECONFIG=... in the old README's line) and its parsed options; a ValueError saying why not."""
    lexer = shlex.shlex(_uncommented(line), posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    words = list(lexer)
    starts = [i for i, word in enumerate(words) if word.rsplit("/", 1)[-1] == "afmetrics_collector"]
    if not starts:
        raise ValueError("no afmetrics_collector command in it")
    start = starts[0]
    environment = {}
    for word in reversed(words[:start]):
        if not ENVIRONMENT.match(word):
            break
        name, _, value = word.partition("=")
        environment.setdefault(name.strip(), value)
    arguments = []
    for index, word in enumerate(words[start + 1:], start + 1):
        if OPERATOR.match(word):
            break
        # 2>&1: the descriptor's number before a redirection is the shell's, not an argument.
        if word.isdigit() and index + 1 < len(words) and words[index + 1].startswith((">", "<")):
            break
        arguments.append(word)
    try:
        return environment, _old_parser().parse_args(arguments)
    except _OldArgumentError as error:
        raise ValueError(str(error))


def line_settings(args):
    """The role's settings that one old line's arguments amount to."""
    services = ["ml:%s:%s" % (args.ns, args.label), "coffea:coffea-casa:jhub_user"]
    return {
        "collectors": [name for name, dest, _ in OLD_COLLECTOR_FLAGS if getattr(args, dest)],
        # None: the line has no say (-S without -s, a salt without -o).
        "ssh_history": bool(args.ssh_history) if args.ssh else None,
        "cluster": args.cluster, "url": args.url, "queues": list(args.queue), "group": args.group,
        "obfuscate_users": bool(args.obf_users), "obfuscate_hosts": args.obf_hosts,
        # What its code sends with -o (its README's MD5 was never what it did).
        "user_hash": "sha256",
        "salt": args.salt if args.obf_users else None, "token": args.token or "",
        # Its -j: the ml service as -n and -l say, then coffea-casa's, always.
        "jupyter_services": [] if services[0] == "ml:af-jupyter:owner" else services,
    }


def _distinct(values):
    """The different values of several lines' values for a setting, leaving out the lines that have no say."""
    distinct = []
    for value in values:
        if value is not None and value not in distinct:
            distinct.append(value)
    return distinct


def old_tool_settings(texts, install_dir, config_text=""):
    """What the old tool's lines in texts did, as {"lines", "settings", "conflicts", "unparsed", "environment"}.

    The active lines count; where none is left (a previous run of the role disabled them) the disabled ones do,
    and as those lost their token and salt, these come from the config file that run wrote (config_text).
    settings: every setting the lines agree on (collectors and queues: every line's, each once);
    conflicts: {name: number of different values} of those they disagree on; unparsed: lines that could not be
    read, secrets replaced by ***. Nothing found: every part empty.
    """
    calls = [line for text in texts for line in text.splitlines() if _calls_old_tool(line, install_dir)]
    active = [line for line in calls if _is_active(line)]
    chosen = active or [line for line in calls if line.strip().startswith(MARK)]
    parsed, unparsed = [], []
    for line in chosen:
        try:
            parsed.append(parse_old_line(line))
        except ValueError as error:
            unparsed.append("%s (%s)" % (_redacted(_uncommented(line)), error))
    each = [line_settings(args) for _, args in parsed]
    settings, conflicts = {}, {}
    if each:
        settings["collectors"] = [name for name, _, _ in OLD_COLLECTOR_FLAGS if any(name in s["collectors"] for s in each)]
        settings["queues"] = []
        for line in each:
            settings["queues"] += [queue for queue in line["queues"] if queue not in settings["queues"]]
        for name in CARRIED:
            if name in settings:
                continue
            values = _distinct(line[name] for line in each)
            if name in SECRETS and not active and values:
                values = [_config_value(config_text, name)]
            if len(values) > 1:
                conflicts[name] = len(values)
            elif values:
                settings[name] = values[0]
    environment = {}
    for line_environment, _ in parsed:
        environment.update(line_environment)
    return {"lines": len(parsed), "active": bool(active), "settings": settings, "conflicts": conflicts,
            "unparsed": unparsed, "environment": environment}


def _config_value(text, name):
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text or "")
    except configparser.Error:
        return ""
    value = parser.get("afmetrics", name, fallback="")
    return "" if value == "***" else value


def afmetrics_old_tool_settings(slurped, install_dir, config_slurp=None):
    texts = [base64.b64decode(result["content"]).decode("utf-8", "surrogateescape") for result in slurped
             if "content" in result]
    config_text = ""
    if config_slurp and "content" in config_slurp:
        config_text = base64.b64decode(config_slurp["content"]).decode("utf-8", "surrogateescape")
    return old_tool_settings(texts, install_dir, config_text)


def _shown(name, value):
    if name in SECRETS:
        return "set (not shown)" if value else "none"
    if isinstance(value, list):
        return ", ".join(value) if value else "none"
    return str(value).lower() if isinstance(value, bool) else (value or '""')


def afmetrics_old_tool_report(old, effective):
    """Lines saying, per setting of the old lines, whether the node keeps it (the inventory leaves it unset or
    says the same) or the inventory's value wins; then the settings the lines disagree on and unreadable lines.
    effective: {name: the role's value of afmetrics_NAME}."""
    report = []
    for name in CARRIED:
        if name not in old["settings"]:
            continue
        value, now = old["settings"][name], effective.get(name)
        if isinstance(value, bool):  # the inventory's yes, "true" or 1
            now = str(now).lower() in ("true", "yes", "on", "1")
        if value in ("", [], False) and now == value:
            continue  # nothing set there, nothing set here (jupyter_services: the default is the old -j's)
        if now == value:
            report.append("afmetrics_%s: %s (carried over from the old line)" % (name, _shown(name, value)))
        else:
            report.append("afmetrics_%s: %s from the inventory, not the old line's %s"
                          % (name, _shown(name, now), _shown(name, value)))
    for name, count in sorted(old["conflicts"].items()):
        report.append("afmetrics_%s: not carried over, the old lines have %d different values: set it in the "
                      "inventory" % (name, count))
    report += ["unreadable old line, nothing taken from it: %s" % line for line in old["unparsed"]]
    return report


def afmetrics_old_tool_disagreements(per_node):
    """Lines naming, for each setting the nodes' old lines carried differently, which nodes have which value
    (secrets by a short fingerprint, never their value). per_node: {node: afmetrics_old_tool_settings result}."""
    report = []
    for name in CARRIED:
        groups = {}
        for node in sorted(per_node):
            settings = per_node[node]["settings"]
            if name not in settings:
                continue
            value = settings[name]
            key = ("fingerprint " + hashlib.sha256(value.encode("utf-8")).hexdigest()[:6] if value else "none") \
                if name in SECRETS else _shown(name, value)
            groups.setdefault(key, []).append(node)
        if len(groups) > 1:
            report.append("afmetrics_%s differs between the nodes' old lines: %s" % (name, "; ".join(
                "%s: %s" % (", ".join(nodes), key) for key, nodes in sorted(groups.items()))))
    return report


def afmetrics_old_tool_argv(collector, old):
    """The old tool's arguments (without -t, which a debug run does not need) for a debug run of one collector
    with the settings its lines carried: given on stdin, never on a command line, as they hold the salt."""
    settings = old["settings"]
    flag = {name: option for name, _, option in OLD_COLLECTOR_FLAGS}[collector]
    argv = ["-d", flag, "-c", settings.get("cluster", OLD_DEFAULTS["cluster"])]
    if collector == "ssh" and settings.get("ssh_history"):
        argv.append("-S")
    if settings.get("obfuscate_users"):
        argv += ["-o", "-z", settings.get("salt", "")]
    for name, option in [("obfuscate_hosts", "-O"), ("group", "-g")]:
        if settings.get(name):
            argv += [option, settings[name]]
    if collector == "batch":
        for queue in settings.get("queues", []):
            argv += ["-q", queue]
    services = settings.get("jupyter_services") or []
    if collector == "jupyter" and services:
        _, namespace, label = services[0].split(":")
        argv += ["-n", namespace, "-l", label]
    return argv


class FilterModule:
    def filters(self):
        return {
            "afmetrics_old_tool_lines": afmetrics_old_tool_lines,
            "afmetrics_disable_old_tool": afmetrics_disable_old_tool,
            "afmetrics_old_tool_files": afmetrics_old_tool_files,
            "afmetrics_old_tool_settings": afmetrics_old_tool_settings,
            "afmetrics_old_tool_report": afmetrics_old_tool_report,
            "afmetrics_old_tool_disagreements": afmetrics_old_tool_disagreements,
            "afmetrics_old_tool_argv": afmetrics_old_tool_argv,
        }
