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
"""
import base64
import re

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


class FilterModule:
    def filters(self):
        return {
            "afmetrics_old_tool_lines": afmetrics_old_tool_lines,
            "afmetrics_disable_old_tool": afmetrics_disable_old_tool,
            "afmetrics_old_tool_files": afmetrics_old_tool_files,
        }
