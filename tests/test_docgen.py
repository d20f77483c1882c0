"""Man pages and bash completion generated from the parser and the sample config (vfpick.docgen)."""

import os
import re
import shlex
import subprocess

import pytest

import vfpick
from clitools import REPO
from vfpick import cli, config as configmod, docgen
from vfpick.errors import VfpickError

SAMPLE = os.path.join(REPO, "etc", "vfpick.ini")
BASH_COMPLETION = "/usr/share/bash-completion/bash_completion"



def sample():
    with open(SAMPLE) as f:
        return f.read()


def render(roff):
    """The page as a reader sees it; groff warnings fail the test (groff-base: scripts/setup)."""
    # -P-c: overstrike, not SGR escapes (groff 1.23, Debian 13, writes SGR by default)
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-rLL=200n", "-P-c"], input=roff.encode(),
                          capture_output=True, timeout=60, env=dict(os.environ, LC_ALL="C.UTF-8"))
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    text = re.sub(r".\x08", "", proc.stdout.decode())  # overstrike bold/underline
    return text.replace("\u2010", "-").replace("\u2212", "-")


def parser_with_extra_command():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.choices and "status" in a.choices)
    p = sub.add_parser("frobnicate", help="a command added after docgen was written")
    p.add_argument("--widget", metavar="FILE", help="the widget file")
    p.add_argument("--count", type=int, default=3, metavar="N", help="how many")
    p.add_argument("--config", action="store_true", help="a flag named like the global option")
    p.add_argument("where", metavar="DIR")
    return parser


@pytest.mark.parametrize("parser_factory", [cli.build_parser, parser_with_extra_command])
def test_man_page_lists_every_command_and_flag_of_the_parser(parser_factory):
    parser = parser_factory()
    text = render(docgen.man_vfpick(parser))
    assert "vfpick %s" % vfpick.__version__ in text
    commands = docgen._subcommands(parser)
    assert len(commands) >= 12
    for name, help_text, sub in commands:
        assert re.search(r"^\s+vfpick %s\b" % re.escape(name), text, re.M), name
        assert " ".join(help_text.split()) in " ".join(text.split()), name
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert flag in text, (name, flag)
    assert "--version" in text and "VFPICK_CONFIG" in text
    assert "%(" not in text  # argparse's %(default)s expanded as --help does
    if parser_factory is parser_with_extra_command:
        assert "--widget FILE" in text and "(default: 3)" in text


def test_every_flag_has_a_help_text_for_the_man_page():
    parser = cli.build_parser()
    bare = ["%s %s" % (name, "/".join(a.option_strings)) for name, _, sub in docgen._subcommands(parser)
            for a in docgen._options(sub) if not a.help]
    assert not bare, "give these flags help= in vfpick/cli.py: %s" % ", ".join(bare)


def test_ini_page_documents_every_key_of_the_config_tables():
    text = render(docgen.man_ini(sample()))
    flat = " ".join(text.split())
    for kind, _header, keys in docgen.SECTIONS:
        for key in keys:
            assert re.search(r"^\s+%s\b" % re.escape(key), text, re.M), (kind, key)
    for key, default in configmod.MAIN_KEYS.items():
        assert "%s = %s" % (key, default) in flat
    # Text comes from the comment above the key, list items kept apart.
    assert "What one domain's NICs must not share: card | link | pf | none" in flat
    assert re.search(r"^\s+link:\s+physical link", text, re.M)  # groff may justify the gap


def test_a_key_without_a_comment_in_the_sample_is_an_error():
    text = sample().replace("; libvirt URI for define, repick, reconcile and watch "
                            "(--connect overrides it).\n", "")
    assert text != sample()
    with pytest.raises(VfpickError, match=r"\[vfpick\] connect"):
        docgen.man_ini(text)


def test_only_the_comment_right_above_a_key_documents_it():
    docs = docgen.sample_docs("; intro\n\n[pool p]\n; VF settings.\ntrust = on\nspoofchk = off\n\n"
                              "; other\n\nnuma = ignore\n")
    assert docs[("pool", "trust")] == "VF settings."
    assert docs[("pool", "spoofchk")] == docs[("pool", "numa")] == docs[("pool", None)] == ""


def complete(script, words, cwd):
    """COMPREPLY for the command line *words* (the last one being completed).

    Debian's bash-completion (scripts/setup installs it) provides _init_completion/_filedir."""
    line = " ".join(words)
    code = "\n".join([
        "source %s" % BASH_COMPLETION,
        "source %s" % shlex.quote(script),
        "COMP_WORDS=(%s)" % " ".join(shlex.quote(w) for w in words),
        "COMP_CWORD=%d" % (len(words) - 1),
        "COMP_LINE=%s" % shlex.quote(line),
        "COMP_POINT=%d" % len(line),
        "_vfpick vfpick %s %s" % (shlex.quote(words[-1]), shlex.quote(words[-2])),
        'printf "%s\\n" "${COMPREPLY[@]}"',
    ])
    proc = subprocess.run(["bash", "--norc", "-c", code], capture_output=True, text=True, cwd=cwd,
                          timeout=60, env=dict(os.environ, PATH="/usr/bin:/bin"))
    assert proc.returncode == 0, proc.stderr
    return sorted(w for w in proc.stdout.split("\n") if w)


@pytest.mark.parametrize("words, expected", [
    (["vfpick", "met"], ["metrics"]),
    (["vfpick", "--config", "x.ini", "sta"], ["status"]),
    (["vfpick", "--ver"], ["--version"]),
    (["vfpick", "metrics", "--te"], ["--textfile"]),
    (["vfpick", "watch", "--metrics-listen", "127.0.0.1:9731", "--co"], ["--config", "--connect"]),
    (["vfpick", "resolve", "we"], ["web.xml"]),
    (["vfpick", "metrics", "--textfile", "t"], ["textdir"]),     # directories only
    (["vfpick", "frobnicate", "--wi"], ["--widget"]),            # added after docgen was written
    (["vfpick", "frob"], ["frobnicate"]),
    (["vfpick", "frobnicate", "--config", "te"], ["textdir"]),   # its --config takes no FILE
    (["vfpick", "frobnicate", "--widget", "te"], ["textdir", "textfile.txt"]),
    (["vfpick", "--config", "te"], ["textdir", "textfile.txt"]),
    (["vfpick", "frobnicate", "--count", "te"], []),             # free text
])
def test_bash_completion(tmp_path, words, expected):
    script = tmp_path / "vfpick.bash"
    script.write_text(docgen.bash_completion(parser_with_extra_command()))
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "web.xml").write_text("<domain/>")
    (work / "textfile.txt").write_text("")
    (work / "textdir").mkdir()
    assert complete(str(script), words, str(work)) == expected


def test_write_all_writes_the_three_files(tmp_path):
    assert docgen.main(["--sample", SAMPLE, str(tmp_path)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["vfpick.8", "vfpick.bash-completion", "vfpick.ini.5"]


def test_debian_changelog_version_is_the_package_version():
    with open(os.path.join(REPO, "debian", "changelog")) as f:
        first = f.readline()
    assert re.match(r"vfpick \(([^)]+)\)", first).group(1) == vfpick.__version__


def test_debian_package_depends_on_debians_libraries():
    with open(os.path.join(REPO, "debian", "control")) as f:
        control = f.read()
    for package in ("python3-libvirt", "python3-lxml", "python3-pyroute2", "python3-pyudev",
                    "python3-prometheus-client"):
        assert re.search(r"\b%s\b" % package, control), package
