"""`vfpick install-hook` / `uninstall-hook`: put the qemu hook where libvirt runs it.

libvirt ≥ 6.5 runs every executable in ``hooks/qemu.d/`` after ``hooks/qemu``, so vfpick
installs ``qemu.d/vfpick`` and never touches someone else's ``hooks/qemu``. libvirt runs
hooks with a scrubbed environment, so the interpreter, the package path and the config path
are baked into the installed copy.
"""

import os
import sys

from vfpick import safeio
from vfpick.errors import VfpickError

MARKER = "# installed by vfpick install-hook"
DEFAULT_HOOKS_DIR = "/etc/libvirt/hooks"


def _sh_quote(text):
    return "'" + text.replace("'", "'\"'\"'") + "'"


# The installed hook is read by sh first, then (through exec) by Python: in sh, line 3 runs
# `true` and the block up to the closing triple quote is shell; in Python that block is a string
# literal. So a VM still starts when the interpreter is gone (venv removed or being rebuilt), and
# the Python part still decides when only the package is gone (pip uninstall): either way a
# domain that is not vfpick's is never stopped, and one with vfpick's metadata is refused in
# one line.
_HOOK = r"""#!/bin/sh
%(marker)s
"true" '''\'
# libvirt qemu hook: qemu NAME OP SUBOP EXTRA, domain XML on stdin. libvirt scrubs the
# variables of hooks, so the interpreter, the package dir and the config path are baked in.
# libvirt runs hooks synchronously (stopped end, then release end, on every destroy): an op
# vfpick does not act on costs no interpreter start, and no `cat` either (a fork and exec per
# op): stdin is left unread, which libvirt takes as the child closing it early (it ignores
# the EPIPE; libvirtd ignores SIGPIPE). The exit is 0 whatever.
case "$2 $3" in
%(wanted_sh)s) ;;
*) exit 0 ;;
esac
if [ -x %(python_sh)s ]; then exec %(python_sh)s -IS "$0" "$@"; fi
case "$2 $3" in
"prepare begin"|"migrate begin"|"restore begin")
    if grep -c %(mark_sh)s >/dev/null; then
        printf "vfpick: refusing domain '%%s', which has vfpick metadata: %%s cannot run %%s (gone); reinstall vfpick and run 'vfpick install-hook'\n" "$1" "$0" %(python_sh)s >&2
        exit 1
    fi
    printf "vfpick: warning: %%s cannot run %%s (gone); domain '%%s' left alone\n" "$0" %(python_sh)s "$1" >&2 ;;
*)
    cat >/dev/null ;;
esac
exit 0
'''
import sys

sys.path.insert(0, %(package_dir)r)
try:
    from vfpick.hook import run
except Exception as exc:  # noqa: BLE001 - the package is gone or broken
    data = sys.stdin.buffer.read()
    if " ".join(sys.argv[2:4]) not in ("prepare begin", "migrate begin", "restore begin"):
        sys.exit(0)
    why = "cannot import vfpick from %(package_dir)s (%%s: %%s)" %% (
        type(exc).__name__, " ".join(str(exc).split()))
    if %(mark)r in data:
        sys.stderr.write("vfpick: refusing domain '%%s', which has vfpick metadata: %%s; reinstall "
                         "vfpick and run 'vfpick install-hook'\n" %% (sys.argv[1], why))
        sys.exit(1)
    sys.stderr.write("vfpick: warning: %%s; domain '%%s' left alone\n" %% (why, sys.argv[1]))
    sys.exit(0)
# What install-hook read in the config: (format, its stamp then, sysfs_root, pool names). While
# the config's stamp is unchanged, a domain that cannot be vfpick's (a GPU VM) is told without
# parsing it. An older vfpick behind this hook (a downgrade) takes none: it parses, as before.
KNOWN = %(known)r
known = ({"known": KNOWN} if KNOWN and KNOWN[0] == getattr(sys.modules["vfpick.hook"],
                                                           "KNOWN_FORMAT", None) else {})
sys.exit(run(sys.argv[1:], config_path=%(config)r, **known))
"""


# A write in the same clock tick as the last one can leave the stamp as it was: read the config
# only once its last change is this long past (a coarse-grained filesystem: a second more).
_SETTLE_NS = 20_000_000


def known_config(config_path):
    """(KNOWN_FORMAT, stamp, sysfs_root, pool names) of the config at *config_path* as read
    now, or None when it cannot be read or changed while it was read."""
    import time

    from vfpick import config as configmod
    from vfpick.errors import ConfigError
    from vfpick.hook import KNOWN_FORMAT, config_stamp as stamp

    config_path = os.path.abspath(config_path)
    try:
        before = os.stat(config_path)
        settle = _SETTLE_NS + (1_000_000_000 if before.st_ctime_ns % 1_000_000_000 == 0 else 0)
        wait = before.st_ctime_ns + settle - time.time_ns()
        if wait > 0:
            time.sleep(wait / 1e9)
        before = os.stat(config_path)
        config = configmod.load(config_path)
        after = os.stat(config_path)
    except (OSError, ConfigError):
        return None
    if stamp(before) != stamp(after):
        return None
    return (KNOWN_FORMAT, stamp(after), config.sysfs_root, tuple(config.pools))


def hook_text(config_path, python=None, package_dir=None, known=None):
    """The installed hook; *known*: known_config()'s, or None (the hook always parses)."""
    python = python or sys.executable
    if package_dir is None:
        import vfpick

        package_dir = os.path.dirname(os.path.dirname(os.path.abspath(vfpick.__file__)))
    from vfpick.hook import NS_MARK, WANTED

    for baked in (python, package_dir):
        # Both sit in sh and Python literals and in sh messages: keep them plain.
        if any(c in baked for c in "'\"\\\n$`%"):
            raise VfpickError("cannot bake %r into the hook: quotes, backslashes, '$', '`' and "
                              "'%%' are not supported in its path" % baked)
    # -I (isolated): no user site, no PYTHON* variables, and not the script's own directory
    # (qemu.d/, where another hook named like a stdlib module would shadow it) on sys.path:
    # the hook trusts only what is baked here.
    # -S skips site (and its .pth files) for start-up speed; the package dir is baked instead.
    return _HOOK % {
        "marker": MARKER, "python_sh": _sh_quote(python),
        "mark_sh": _sh_quote(NS_MARK.decode()), "mark": NS_MARK, "package_dir": package_dir,
        "wanted_sh": "|".join('"%s %s"' % pair for pair in WANTED),
        "config": os.path.abspath(config_path), "known": known}


_BAKED = {  # key: (line prefix, line suffix) around the literal hook_text wrote
    "python": ("if [ -x ", " ]; then exec "),
    "package": ("sys.path.insert(0, ", ")"),
    "config": ("sys.exit(run(sys.argv[1:], config_path=", ", **known))"),
}
# The line as install-hook wrote it before it baked KNOWN.
_OLD_CONFIG_SUFFIX = "))"


def baked(text, key):
    """The value hook_text baked into *text* for *key* (python, package, config), or None.

    Decoded as the literal it was written as (a Python repr, or the sh quoting of the
    interpreter), never pattern-matched: a path with a newline, quote or backslash reads back
    as itself."""
    import ast
    import shlex

    prefix, suffix = _BAKED[key]
    tails = (suffix, _OLD_CONFIG_SUFFIX) if key == "config" else (suffix,)
    for line in text.split("\n"):
        rest = line[len(prefix):]
        if not line.startswith(prefix) or (key == "python" and suffix not in rest):
            continue
        if key == "python":
            literals = [rest[:rest.index(suffix)]]
        else:
            literals = [rest[:-len(tail)] for tail in tails if rest.endswith(tail)]
        for literal in literals:
            try:
                value = shlex.split(literal)[0] if key == "python" else ast.literal_eval(literal)
            except (ValueError, SyntaxError, IndexError):
                continue
            if isinstance(value, str):
                return value
        return None
    return None


def baked_known(text):
    """The KNOWN tuple hook_text baked into *text* (known_config()'s), or None: an old hook,
    or one whose install-hook could not read the config."""
    import ast

    for line in text.split("\n"):
        if line.startswith("KNOWN = "):
            try:
                value = ast.literal_eval(line[len("KNOWN = "):])
            except (ValueError, SyntaxError):
                return None
            return value if isinstance(value, tuple) else None
    return None


def _is_ours(path):
    try:
        return MARKER in safeio.read_text(path, 4096, errors="replace")
    except OSError:
        return False


def install(hooks_dir, config_path):
    """Writes hooks_dir/qemu.d/vfpick; returns its path. Idempotent."""
    if not os.path.isfile(config_path):
        raise VfpickError("config %s does not exist; write it first (sample: etc/vfpick.ini) or "
                          "pass --config FILE" % config_path)
    target_dir = os.path.join(hooks_dir, "qemu.d")
    target = os.path.join(target_dir, "vfpick")
    if os.path.lexists(target) and not _is_ours(target):
        raise VfpickError("%s exists and was not installed by vfpick; move it away first" % target)
    text = hook_text(config_path, known=known_config(config_path))
    try:
        os.makedirs(target_dir, mode=0o755, exist_ok=True)
        tmp = target + ".tmp-%d" % os.getpid()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755)
        try:
            os.write(fd, text.encode())
            os.fchmod(fd, 0o755)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as e:
        raise VfpickError("cannot install the hook in %s: %s" % (target_dir, e.strerror)) from None
    return target


def uninstall(hooks_dir):
    target = os.path.join(hooks_dir, "qemu.d", "vfpick")
    if not os.path.lexists(target):
        return None
    if not _is_ours(target):
        raise VfpickError("%s was not installed by vfpick; leaving it alone" % target)
    try:
        os.unlink(target)
    except OSError as e:
        raise VfpickError("cannot remove %s: %s" % (target, e.strerror)) from None
    return target


def restart_hint(root="/"):
    """What to run after install-hook: the daemon in use (or installed) must restart, because a
    daemon started without hooks ignores hooks added later. root: the host's / (tests: a tree)."""
    from vfpick.host import libvirtdaemon

    return ("restart libvirt so it runs the hook: %s (a daemon started without hooks ignores "
            "hooks added later)" % libvirtdaemon.restart_command(root))
