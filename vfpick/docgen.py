"""Man pages and bash completion, generated at package build time (debian/rules).

vfpick(8) and the completion come from the argparse parser (``cli.build_parser``), so a new
command or flag shows up in both without being written again. vfpick.ini(5) takes its keys
from config.py's key tables and each key's text from the comment above it in the sample
config (etc/vfpick.ini, which documents every key for the operator anyway); a key without
one is an error, not a gap in the page.

    python3 -m vfpick.docgen --sample etc/vfpick.ini OUTDIR
    -> OUTDIR/vfpick.8, OUTDIR/vfpick.ini.5, OUTDIR/vfpick.bash-completion
"""

import argparse
import os
import re
import sys
import time

import vfpick
from vfpick import cli, config as configmod
from vfpick.errors import VfpickError

DATE = time.strftime("%Y-%m-%d", time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))))


# ------------------------------------------------------------------ parser walking
def _subcommands(parser):
    """[(name, help, subparser)] in definition order."""
    for action in parser._actions:  # argparse has no public walk; every generator reads these
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            return [(name, helps.get(name) or "", sub) for name, sub in action.choices.items()]
    return []


def _options(parser):
    """Optional actions (flags) of *parser*, without -h/--help."""
    return [a for a in parser._actions if a.option_strings
            and not isinstance(a, argparse._HelpAction)]


def _positionals(parser):
    return [a for a in parser._actions if not a.option_strings
            and not isinstance(a, argparse._SubParsersAction)]


def _takes_value(action):
    return action.nargs != 0


def _metavar(action):
    return action.metavar or action.dest.upper()


# ------------------------------------------------------------------ roff
def _roff(text):
    """Escapes text for roff: backslashes, and a leading dot or quote that would be a request."""
    text = (text or "").replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _bold(text):
    return "\\fB%s\\fR" % _roff(text)


def _italic(text):
    return "\\fI%s\\fR" % _roff(text)


def _option_synopsis(action):
    flag = _bold(action.option_strings[-1])
    return "%s %s" % (flag, _italic(_metavar(action))) if _takes_value(action) else flag


def _help(action):
    text = action.help or ""
    if "%" in text:  # argparse's own expansion: %(default)s, %(metavar)s, %%
        text = text % dict(vars(action), prog="vfpick")
    if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text \
            and _takes_value(action):
        text += " (default: %s)" % action.default
    return text


def _command_synopsis(name, sub):
    parts = [_bold("vfpick"), _bold(name)]
    for action in _options(sub):
        if action.dest == "config":
            continue  # a global option, accepted after the command too
        parts.append("[%s]" % _option_synopsis(action))
    parts += [_italic(_metavar(a)) for a in _positionals(sub)]
    return " ".join(parts)


def man_vfpick(parser):
    version = vfpick.__version__
    out = ['.TH VFPICK 8 "%s" "vfpick %s" "System Administration"' % (DATE, version),
           ".SH NAME", "vfpick \\- pick SR\\-IOV VFs for libvirt domains",
           ".SH SYNOPSIS"]
    out.append("%s [%s] %s [%s]" % (_bold("vfpick"), _option_synopsis(_option(parser, "--config")),
                                    _italic("COMMAND"), _italic("ARGS")))
    out += [".br", "%s %s" % (_bold("vfpick"), _bold("--version")),
            ".SH DESCRIPTION", _roff(parser.description),
            ".PP", _roff("Pool interfaces in domain XML (<interface type='network'> whose source "
                         "network is a [pool] of vfpick.ini) are rewritten into concrete hostdev "
                         "interfaces; claims live in a locked state file; the libvirt qemu hook "
                         "keeps them true over the domain's life. Errors are one line on stderr, "
                         "\"vfpick: ...\", exit status 1, and change no claim."),
            ".SH GLOBAL OPTIONS"]
    for action in _options(parser):
        out += [".TP", ", ".join(_option_synopsis_with(action, s) for s in action.option_strings),
                _roff(_help(action))]
    out.append(".SH COMMANDS")
    for name, help_text, sub in _subcommands(parser):
        out += [".SS %s" % _roff(name), _command_synopsis(name, sub), ".PP", _roff(help_text)]
        for action in _positionals(sub):
            if action.help:
                out += [".TP", _italic(_metavar(action)), _roff(_help(action))]
        for action in _options(sub):
            if action.dest == "config":
                continue
            out += [".TP", ", ".join(_option_synopsis_with(action, s) for s in action.option_strings),
                    _roff(_help(action))]
    out += [
        ".SH FILES",
        ".TP", _bold(configmod.DEFAULT_PATH), _roff("configuration, see vfpick.ini(5)"),
        ".TP", _bold(configmod.MAIN_KEYS["state_dir"] + "/claims.json"),
        _roff("the claims (state_dir), guarded by claims.lock"),
        ".TP", _bold("/etc/libvirt/hooks/qemu.d/vfpick"),
        _roff("the qemu hook written by vfpick install-hook"),
        ".SH ENVIRONMENT",
        ".TP", _bold("VFPICK_CONFIG"),
        _roff("config file when --config is not given (default %s). libvirt runs the hook "
              "without it: install-hook bakes the path into the hook" % configmod.DEFAULT_PATH),
        ".SH EXIT STATUS",
        _roff("0 on success; 1 with one line \"vfpick: ...\" on stderr for a user error (unknown "
              "pool, pool exhausted, strict distinctness impossible, bad XML or config, a VF held "
              "by another domain)."),
        ".SH SEE ALSO",
        "%s, %s, %s" % (_bold("vfpick.ini") + "(5)", _bold("virsh") + "(1)", _bold("libvirtd") + "(8)"),
        "",
    ]
    return "\n".join(out)


def _option(parser, flag):
    return next(a for a in parser._actions if flag in a.option_strings)


def _option_synopsis_with(action, flag):
    return "%s %s" % (_bold(flag), _italic(_metavar(action))) if _takes_value(action) else _bold(flag)


# ------------------------------------------------------------------ vfpick.ini(5)
def _commented_key(text):
    """'failover' for a commented-out 'failover = bridge:br0', else None."""
    match = re.match(r"([a-z_]+) = \S", text)
    return match.group(1) if match else None


def sample_docs(text):
    """{(section kind, key): comment text} from a commented sample config, plus
    {(section kind, None): text} for the comment above each section header.

    A key's text is the block of comment lines directly above it; section kind is "vfpick",
    "pool" or "link".
    """
    docs, block, kind = {}, [], None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith((";", "#")):
            text = line.lstrip(";#")[1:] if line[1:2] == " " else line.lstrip(";#")
            key = _commented_key(text)
            if key and kind:
                # An optional key shown commented out ("; failover = bridge:br0"): the sample
                # must not switch it on, and the block above still documents it.
                docs.setdefault((kind, key), "\n".join(block).strip())
                block = []
                continue
            block.append(text)
            continue
        if line.startswith("["):
            kind = line[1:-1].split()[0]
            docs.setdefault((kind, None), " ".join(block).strip())
        elif "=" in line and kind:
            docs.setdefault((kind, line.split("=", 1)[0].strip()), "\n".join(block).strip())
        block = []
    return docs


SECTIONS = (
    ("vfpick", "[vfpick]", configmod.MAIN_KEYS),
    ("pool", "[pool NAME]", configmod.POOL_KEYS),
    ("link", "[link NAME]", configmod.LINK_KEYS),
)


def man_ini(sample_text):
    docs = sample_docs(sample_text)
    out = ['.TH VFPICK.INI 5 "%s" "vfpick %s" "File Formats"' % (DATE, vfpick.__version__),
           ".SH NAME", "vfpick.ini \\- vfpick configuration",
           ".SH DESCRIPTION",
           _roff("An INI file, %s by default (vfpick --config FILE or VFPICK_CONFIG choose another; "
                 "vfpick install-hook bakes the path into the hook). Comments start with ; or #, "
                 "also after a value when a space precedes them. Unknown sections and keys and bad "
                 "values are refused with an error naming the file, the section and the key."
                 % configmod.DEFAULT_PATH)]
    missing = []
    for kind, header, keys in SECTIONS:
        out += [".SH %s" % _roff(header.upper() if kind == "vfpick" else header)]
        if docs.get((kind, None)):
            out += [_roff(docs[(kind, None)])]
        ordered = [k for (sec, k) in docs if sec == kind and k in keys]
        ordered += sorted(k for k in keys if k not in ordered)
        for key in ordered:
            text = docs.get((kind, key))
            if not text:
                missing.append("[%s] %s" % (kind, key))
                continue
            default = keys.get(key) if isinstance(keys, dict) else None
            out += [".TP", _bold(key) + (" = " + _italic(default) if default else "")]
            items = []  # flowing text; an indented "word:" line starts a list item of its own
            for line in text.split("\n"):
                if items and re.match(r" {1,4}[\w-]+:", line):
                    items.append(line.strip())
                elif items:
                    items[-1] += " " + line.strip()
                else:
                    items.append(line.strip())
            out.append(_roff(items[0]))
            for item in items[1:]:
                out += [".br", _roff(item)]
    if missing:
        raise VfpickError("the sample config documents no %s: add a comment above the key in "
                          "etc/vfpick.ini" % ", ".join(missing))
    out += [".SH EXAMPLE", ".nf", _roff(sample_text.strip()).replace("\n.", "\n\\&."), ".fi",
            ".SH SEE ALSO", _bold("vfpick") + "(8)", ""]
    return "\n".join(out)


# ------------------------------------------------------------------ bash completion
def _arg_completion(action):
    """A bash snippet completing the value of *action*, or "" for free text."""
    metavar = _metavar(action)
    if metavar == "DIR":
        return "_filedir -d"
    if metavar.startswith("FILE"):
        return "_filedir"
    if "NAME" in metavar or metavar == "DOMAIN":
        return ('COMPREPLY=($(compgen -W "$(timeout 3 virsh -q list --all --name 2>/dev/null)" '
                '-- "$cur"))')
    return ""


def _value_cases(parser, indent):
    """`case $prev in` lines completing the values of *parser*'s options."""
    by_snippet = {}
    for action in _options(parser):
        if _takes_value(action):
            by_snippet.setdefault(_arg_completion(action), []).extend(action.option_strings)
    if not by_snippet:
        return []
    lines = [indent + "case $prev in"]
    for snippet, flags in sorted(by_snippet.items()):
        lines.append(indent + "    %s) %sreturn ;;" % ("|".join(flags), snippet + "; " if snippet else ""))
    return lines + [indent + "esac"]


def bash_completion(parser):
    commands = _subcommands(parser)
    global_flags = [s for a in parser._actions if a.option_strings for s in a.option_strings]
    global_values = [s for a in _options(parser) if _takes_value(a) for s in a.option_strings]
    lines = [
        "# bash completion for vfpick %s" % vfpick.__version__,
        "# Generated from vfpick's argparse parser by vfpick.docgen: do not edit.",
        "_vfpick()",
        "{",
        "    local cur prev words cword",
        "    _init_completion || return",
        "    local i cmd=",
        "    for ((i = 1; i < cword; i++)); do",
        "        case ${words[i]} in",
    ]
    if global_values:
        lines.append("            %s) ((i++)) ;;" % "|".join(global_values))
    lines += [
        "            -*) ;;",
        "            *) cmd=${words[i]}; break ;;",
        "        esac",
        "    done",
        "    if [[ -z $cmd ]]; then",
    ]
    lines += _value_cases(parser, "        ")
    lines += [
        '        COMPREPLY=($(compgen -W "%s %s" -- "$cur"))' % (
            " ".join(name for name, _, _ in commands), " ".join(global_flags)),
        "        return",
        "    fi",
        "    case $cmd in",
    ]
    # Each command on its own: one flag name can take a value in one command and not in another.
    for name, _, sub in commands:
        flags = [s for a in sub._actions if a.option_strings for s in a.option_strings]
        snippets = [s for s in (_arg_completion(a) for a in _positionals(sub)) if s]
        lines.append("        %s)" % name)
        lines += _value_cases(sub, "            ")
        lines += ["            if [[ $cur == -* ]]; then",
                  '                COMPREPLY=($(compgen -W "%s" -- "$cur"))' % " ".join(flags),
                  "                return",
                  "            fi"]
        if snippets:
            # Which positional the cursor is on matters little here: the first one that
            # completes to something is offered.
            lines.append("            %s" % snippets[0])
        lines.append("            ;;")
    lines += [
        "    esac",
        "} &&",
        "    complete -F _vfpick vfpick",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ entry point
def write_all(outdir, sample_path):
    with open(sample_path, encoding="utf-8") as f:
        sample = f.read()
    parser = cli.build_parser()
    outputs = {"vfpick.8": man_vfpick(parser), "vfpick.ini.5": man_ini(sample),
               "vfpick.bash-completion": bash_completion(parser)}
    os.makedirs(outdir, exist_ok=True)
    for name, text in outputs.items():
        with open(os.path.join(outdir, name), "w", encoding="utf-8") as f:
            f.write(text)
    return sorted(outputs)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m vfpick.docgen",
                                 description="write vfpick.8, vfpick.ini.5 and the bash completion")
    ap.add_argument("--sample", default="etc/vfpick.ini", help="the commented sample config")
    ap.add_argument("outdir")
    args = ap.parse_args(argv)
    try:
        for name in write_all(args.outdir, args.sample):
            print(os.path.join(args.outdir, name))
    except (VfpickError, OSError) as e:
        sys.stderr.write("docgen: %s\n" % e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
