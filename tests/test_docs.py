"""Every command, option and config key is documented, and the docs' shell blocks name files
that exist (in the style of sqlite-utils' tests/test_docs.py).

The docs are README.md and every docs/*.md, so a page another change adds (docs/self-healing.md
for the `heal` keys, say) counts as soon as it exists. What counts as documented:

- a subcommand: ``vfpick NAME`` somewhere in the docs;
- a subcommand's option: on one line together with ``vfpick NAME`` (a synopsis line of the
  operator guide's command list or the reference's command table), so that an option is
  documented for the command that takes it;
- a global option (``--config``, ``--version``): anywhere;
- a config key: in backquotes (`` `key` `` or `` `key = ...` ``): prose or a key list, not an
  accidental word. etc/vfpick.ini's comments document each key for vfpick.ini(5) already
  (docgen fails the build otherwise); this test keeps the docs from drifting behind the code.

A ```sh block in README.md or docs/ that names ``scripts/NAME`` or a path in one of the
repository's directories (``etc/systemd/...``, ``bench/...``) fails when that file does not
exist. Runs without libvirt.
"""

import argparse
import glob
import os
import re

import pytest

from clitools import REPO
from vfpick import cli, config as configmod

DOC_FILES = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


DOCS = {os.path.relpath(path, REPO): _read(path) for path in DOC_FILES}
TEXT = "\n".join(DOCS.values())


# --------------------------------------------------------------------- what the code has
def _subparsers(parser):
    """{name: subparser} of *parser*, in definition order. argparse has no public walk: docgen
    reads the same attributes to write vfpick(8)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _long_options(parser, skip_common=True):
    """The option strings of *parser* users type (the longest spelling of each), without
    -h/--help and, for a subcommand, without the --config every command inherits."""
    out = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        if skip_common and action.dest == "config" and action.default is argparse.SUPPRESS:
            continue
        out.append(max(action.option_strings, key=len))
    return out


PARSER = cli.build_parser()
COMMANDS = _subparsers(PARSER)
OPTIONS = [(name, option) for name, sub in COMMANDS.items() for option in _long_options(sub)]
GLOBAL_OPTIONS = _long_options(PARSER, skip_common=False)
KEYS = ([("vfpick", key) for key in configmod.MAIN_KEYS]
        + [("pool", key) for key in sorted(configmod.POOL_KEYS)]
        + [("link", key) for key in sorted(configmod.LINK_KEYS)])


# --------------------------------------------------------------------- the checks
def command_documented(text, name):
    return re.search(r"(?<![\w-])vfpick %s(?![\w-])" % re.escape(name), text) is not None


def _mentions(line, option):
    return re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(option), line) is not None


def option_documented(text, name, option):
    return any(command_documented(line, name) and _mentions(line, option)
               for line in text.splitlines())


def key_documented(text, key):
    return re.search(r"`%s(`| =)" % re.escape(key), text) is not None


# The repository's own directories: a shell block's path under one of them must exist.
REPO_DIRS = ("scripts", "etc", "docs", "bench", "lab", "tests", "vfpick", "hooks", "examples",
             "debian", ".ci")
_PATH = re.compile(r"(?<![\w./-])(?:\./)?((?:%s)/[\w./-]*[\w])" % "|".join(re.escape(d) for d in REPO_DIRS))


def sh_blocks(text):
    return re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)


def missing_paths(text, repo=REPO):
    """Paths of the repository that ```sh blocks of *text* name but that do not exist (a glob
    counts when it matches something)."""
    out = []
    for block in sh_blocks(text):
        for line in block.splitlines():
            command = line.split("#", 1)[0]  # comments explain; what runs must exist
            for path in _PATH.findall(command):
                if not glob.glob(os.path.join(repo, path)):
                    out.append(path)
    return out


# --------------------------------------------------------------------- the tests
def test_there_is_something_to_check():
    assert len(COMMANDS) >= 15 and len(OPTIONS) >= 15 and len(KEYS) >= 15
    assert {"README.md", "docs/reference.md", "docs/operator-guide.md"} <= set(DOCS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_is_documented(name):
    assert command_documented(TEXT, name), \
        "vfpick %s is in cli.build_parser() but not in README.md or docs/*.md" % name


@pytest.mark.parametrize("name,option", OPTIONS)
def test_option_is_documented(name, option):
    assert option_documented(TEXT, name, option), \
        "no line of README.md or docs/*.md names both 'vfpick %s' and %s" % (name, option)


@pytest.mark.parametrize("option", GLOBAL_OPTIONS)
def test_global_option_is_documented(option):
    assert _mentions(TEXT, option), option


@pytest.mark.parametrize("section,key", KEYS)
def test_config_key_is_documented(section, key):
    assert key_documented(TEXT, key), \
        "[%s] key %s (config.py) is not in README.md or docs/*.md as `%s`" % (section, key, key)


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_shell_blocks_name_existing_files(doc):
    assert missing_paths(DOCS[doc]) == [], "%s: a ```sh block names files that do not exist" % doc


def test_the_readme_runs_the_two_commands_and_the_benchmarks():
    blocks = "\n".join(sh_blocks(DOCS["README.md"]))
    for command in ("scripts/demo", "scripts/test", "python -m bench"):
        assert command in blocks, command


# The checks themselves must be able to fail: an undocumented command, option or key, and a
# shell block naming a script that is not there.
def test_the_checks_catch_what_is_missing(tmp_path):
    text = "vfpick status [--json]\nvfpick uninstall-hook\n`pfs` and `state_dir = DIR`\n"
    assert command_documented(text, "status") and command_documented(text, "uninstall-hook")
    assert not command_documented(text, "install-hook") and not command_documented(text, "stat")
    assert option_documented(text, "status", "--json")
    assert not option_documented(text, "status", "--js") and not option_documented(text, "check", "--json")
    assert key_documented(text, "pfs") and key_documented(text, "state_dir")
    assert not key_documented(text, "heal") and not key_documented(text, "state")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "demo").write_text("")
    doc = "```sh\nscripts/demo   # not scripts/nothere\nscripts/gone --x && cat etc/vfpick.ini\n```\n"
    assert missing_paths(doc, str(tmp_path)) == ["scripts/gone", "etc/vfpick.ini"]
