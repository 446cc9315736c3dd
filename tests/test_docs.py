"""The documentation against the code: every option of every --help and every key of the example config is in the
reference, and every relative link of README.md and docs/ resolves, its #anchor included.

Markdown is parsed with markdown-it-py (the CommonMark parser), so that a link or an option in a code block is
read as a code forge renders it. Anchors are the heading slugs GitHub and GitLab give: lower case, punctuation
other than - and _ removed, each space a hyphen (github-slugger's rules), -1, -2, ... for a repeated heading.
"""
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
REFERENCE = REPO / "docs" / "reference.md"
SCRIPTS = ["ssh.py", "condor.py", "slurm.py", "jupyter.py", "host.py", "afmetrics_collector"]
OPTION = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*")


def tokens(page):
    """Every inline token of a Markdown page, headings' included, flattened."""
    for block in MarkdownIt("commonmark").enable("table").parse(page.read_text()):
        yield block
        yield from block.children or []


def slug(heading):
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page):
    """The anchors a code forge gives the page's headings."""
    seen = Counter()
    found = set()
    blocks = list(MarkdownIt("commonmark").enable("table").parse(page.read_text()))
    for opening, inline in zip(blocks, blocks[1:]):
        if opening.type == "heading_open":
            base = slug("".join(child.content for child in inline.children))
            found.add(base if not seen[base] else "%s-%d" % (base, seen[base]))
            seen[base] += 1
    return found


def relative_links(page):
    for token in tokens(page):
        href = token.attrGet("href") if token.type == "link_open" else None
        if href and not re.match(r"[a-z][a-z0-9+.-]*:", href):
            yield href


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for href in relative_links(page):
        path, _, anchor = href.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(href + " (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(href + " (no such heading)")
    assert broken == []


def test_the_link_check_finds_a_broken_file_and_a_broken_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n## It's `--status`\n\n[a](page.md#its---status) [b](gone.md) [c](#nowhere) "
                    "`[d](gone.md)` [e](https://example.org/x)\n")
    assert list(relative_links(page)) == ["page.md#its---status", "gone.md", "#nowhere"]
    assert anchors(page) == {"top", "its---status"}


def documented_code():
    """What the reference shows as code: option names and config keys are written so."""
    return {token.content for token in tokens(REFERENCE) if token.type in ("code_inline", "fence")}


def help_options(script):
    done = subprocess.run([sys.executable, str(REPO / "collectors" / script), "--help"], capture_output=True,
                          text=True, check=True)
    options = set()
    for line in done.stdout.splitlines():
        if re.match(r"\s{1,4}-", line):
            options.update(OPTION.findall(re.split(r"\s{2,}", line.strip())[0]))
    return options


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_option_of_every_help_is_in_the_reference(script):
    documented = {option for code in documented_code() for option in OPTION.findall(code)}
    options = help_options(script)
    assert {"--help", "--config"} <= options
    assert sorted(options - documented) == []


def config_keys():
    lines = (REPO / "collectors" / "afmetrics.conf.example").read_text().splitlines()
    return {match.group(1) for match in map(re.compile(r"#?([a-z_]+) =").match, lines) if match}


def test_every_key_of_the_example_config_is_in_the_reference():
    keys = config_keys()
    assert {"token", "batch_bytes", "spool_max_age_hours"} <= keys
    documented = {word for code in documented_code() for word in re.findall(r"[a-z_]+", code)}
    assert sorted(keys - documented) == []
