"""`vfpick install-hook` / `uninstall-hook`: put the qemu hook where libvirt runs it.

libvirt ≥ 6.5 runs every executable in ``hooks/qemu.d/`` after ``hooks/qemu``, so vfpick
installs ``qemu.d/vfpick`` and never touches someone else's ``hooks/qemu``. libvirt runs
hooks with a scrubbed environment, so the interpreter, the package path and the config path
are baked into the installed copy.
"""

import os
import sys

from vfpick.errors import VfpickError

MARKER = "# installed by vfpick install-hook"
DEFAULT_HOOKS_DIR = "/etc/libvirt/hooks"


def hook_text(config_path, python=None, package_dir=None):
    python = python or sys.executable
    if package_dir is None:
        import vfpick

        package_dir = os.path.dirname(os.path.dirname(os.path.abspath(vfpick.__file__)))
    # -s -E: no user site, no PYTHON* variables: the hook trusts only what is baked here.
    # -S skips site (and its .pth files) for start-up speed; the package dir is baked instead.
    return "\n".join([
        "#!%s -sES" % python,
        MARKER,
        "# libvirt qemu hook: qemu NAME OP SUBOP EXTRA, domain XML on stdin.",
        "import sys",
        "sys.path.insert(0, %r)" % package_dir,
        "from vfpick.hook import run",
        "sys.exit(run(sys.argv[1:], config_path=%r))" % os.path.abspath(config_path),
        "",
    ])


def _is_ours(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return MARKER in f.read(4096)
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
    try:
        os.makedirs(target_dir, mode=0o755, exist_ok=True)
        tmp = target + ".tmp-%d" % os.getpid()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755)
        try:
            os.write(fd, hook_text(config_path).encode())
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


RESTART_HINT = ("restart libvirt so it runs the hook: systemctl restart libvirtd "
                "(or virtqemud on a modular-daemon host); a daemon started without hooks "
                "ignores hooks added later")
