"""Whether node_exporter reads afmetrics_textfile_dir, where the node can tell.

afmetrics_node_exporter_warning(directory, processes, args_file="", args_variable="", binary="") -> str: the
    warning the role gives when node_exporter does not read DIRECTORY, "" when it does or nothing can be told.
    PROCESSES: the command lines of the running node_exporter processes as the role reads them from /proc, each
    argument on a line of its own and a blank line after each process. With none running, ARGS_FILE (the text of
    the package's file of arguments, "" when there is none) is read instead: its shell variable ARGS_VARIABLE
    holds the arguments the package's unit gives BINARY.

Where each package points the textfile collector:
- Debian's prometheus-node-exporter (bookworm 1.5.0): /usr/bin/prometheus-node-exporter $ARGS, ARGS from
  /etc/default/prometheus-node-exporter (empty); Debian builds it with /var/lib/prometheus/node-exporter as the
  flag's default (the package's /usr/share/doc/prometheus-node-exporter/README.textfile).
- EPEL's and Fedora's golang-github-prometheus-node-exporter: /usr/sbin/node_exporter $OPTIONS, OPTIONS from
  /etc/sysconfig/node_exporter, upstream's example with --collector.textfile.directory
  /var/lib/node_exporter/textfile_collector (Fedora's golang-github-prometheus-node-exporter.spec, as in
  jcajka/fedora-rpm-golang-github-prometheus-node-exporter; prometheus/node_exporter
  examples/systemd/sysconfig.node_exporter and node_exporter.service).
- The prometheus-community.prometheus collection's node_exporter role: its unit's ExecStart gives
  --collector.textfile.directory={{ node_exporter_textfile_dir }}, /var/lib/node_exporter by default
  (prometheus-community/ansible, roles/node_exporter/defaults/main.yml and templates/node_exporter.service.j2).
Upstream's own flag default reads no directory; the flag is repeatable and takes glob patterns since
node_exporter 1.7, and old releases spelled flags with one dash.
"""
import fnmatch
import os
import shlex

FLAG = "collector.textfile.directory"
# The directory a binary reads without the flag: Debian's build has one, upstream's none.
BUILT_IN = {"prometheus-node-exporter": "/var/lib/prometheus/node-exporter"}


def _option(argument):
    """(name, value or None) of -name, --name or --name=value; None for an argument that is no option."""
    if not argument.startswith("-"):
        return None
    name, equals, value = argument.lstrip("-").partition("=")
    return name, value if equals else None


def textfile_directories(argv):
    """The directories (or glob patterns) node_exporter run with ARGV reads .prom files from; [] when its textfile
    collector is off."""
    options = [_option(argument) for argument in argv[1:]]
    names = {option[0] for option in options if option}
    if "no-collector.textfile" in names or ("collector.disable-defaults" in names
                                           and "collector.textfile" not in names):
        return []
    directories = []
    for position, option in enumerate(options):
        if option and option[0] == FLAG:
            value = option[1]
            if value is None and position + 2 < len(argv):
                value = argv[position + 2]
            if value:
                directories.append(value)
    if directories:
        return directories
    built_in = BUILT_IN.get(os.path.basename(argv[0])) if argv else None
    return [built_in] if built_in else []


def _reads(directories, directory):
    directory = os.path.normpath(directory)
    return any(fnmatch.fnmatchcase(directory, os.path.normpath(pattern)) for pattern in directories)


def process_argvs(text):
    """The command lines of PROCESSES (see the module's docstring)."""
    argvs, argv = [], []
    for line in text.split("\n"):
        if line:
            argv.append(line)
        elif argv:
            argvs.append(argv)
            argv = []
    return argvs + ([argv] if argv else [])


def args_file_argv(text, variable, binary):
    """[BINARY] and the words of VARIABLE's last assignment in a shell file of variables (as systemd's
    EnvironmentFile and sh read the package's); None when the file does not set it."""
    words = None
    for line in text.splitlines():
        name, equals, value = line.strip().partition("=")
        if equals and name.strip() == variable:
            try:
                words = shlex.split(value)
            except ValueError:  # unbalanced quotes: whatever sh makes of them, it cannot be told here
                return None
    if words is None:
        return None
    # The file assigns one string; the unit splits $VARIABLE at white space.
    return [binary] + [word for joined in words for word in joined.split()]


def afmetrics_node_exporter_warning(directory, processes, args_file="", args_variable="", binary=""):
    directory = str(directory)
    if not directory:
        return ""
    running = process_argvs(str(processes or ""))
    if running:
        readers = [(argv, "the running %s" % os.path.basename(argv[0])) for argv in running]
    else:
        argv = args_file_argv(str(args_file or ""), str(args_variable), str(binary)) if args_file else None
        readers = [(argv, "%s as its package's %s sets it" % (binary, args_variable))] if argv else []
    for argv, which in readers:
        directories = textfile_directories(argv)
        if not _reads(directories, directory):
            reads = ("reads %s" % ", ".join(directories)) if directories else "reads no textfile directory"
            return ("%s %s, not afmetrics_textfile_dir %s: afmetrics.prom there is never scraped. Set "
                    "afmetrics_textfile_dir to the directory it reads, or give it --%s=%s"
                    % (which, reads, directory, FLAG, directory))
    return ""


class FilterModule:
    def filters(self):
        return {"afmetrics_node_exporter_warning": afmetrics_node_exporter_warning}
