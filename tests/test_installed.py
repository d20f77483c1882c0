"""The suite tests the installed package, as users get it, not the checkout (tests/README.md)."""

import ast
import os
import site
import subprocess
import sys
import sysconfig

import vfpick
from clitools import HOOK, REPO, VFPICK, vfpick as run_vfpick

# pip installs into purelib; Debian's .deb into /usr/lib/python3/dist-packages, one of the
# interpreter's site dirs (scripts/test-deb-clean runs this suite against the installed .deb).
SITES = tuple(sorted({os.path.realpath(p) for p in
                      [sysconfig.get_paths()["purelib"]] + site.getsitepackages()}))
SOURCE = os.path.realpath(os.path.join(REPO, "vfpick"))  # .venv may sit inside the checkout


def _under(path, root):
    return os.path.realpath(path).startswith(root + os.sep)


def _in_site(path):
    return any(_under(path, site_dir) for site_dir in SITES)


def test_in_process_imports_come_from_site_packages():
    assert _in_site(vfpick.__file__), (vfpick.__file__, SITES)
    assert not _under(vfpick.__file__, SOURCE), vfpick.__file__


def test_a_python_started_in_the_checkout_imports_the_installed_package():
    out = subprocess.run([sys.executable, "-c", "import vfpick; print(vfpick.__file__)"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert _in_site(out), (out, SITES)


def test_the_console_script_is_the_installed_entry_point():
    with open(VFPICK) as f:
        shebang = f.readline()
    assert shebang.startswith("#!") and os.path.samefile(shebang[2:].split()[0], sys.executable)
    proc = subprocess.run([VFPICK, "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "install-hook" in proc.stdout, proc.stderr


def test_the_hook_under_test_is_not_in_the_checkout():
    assert not _under(HOOK, os.path.realpath(REPO)), HOOK
    # run in place, hooks/qemu would put its checkout first on sys.path
    assert not os.path.isfile(os.path.join(os.path.dirname(os.path.dirname(HOOK)), "vfpick",
                                           "hook.py"))


def test_install_hook_bakes_the_installed_package(host, tmp_path):
    host.write_config()
    hooks_dir = str(tmp_path / "hooks")
    run_vfpick(host, "install-hook", "--hooks-dir", hooks_dir, check=0)
    text = open(os.path.join(hooks_dir, "qemu.d", "vfpick")).read()
    baked = [line for line in text.splitlines() if line.startswith("sys.path.insert(0, ")]
    assert len(baked) == 1, text
    assert os.path.realpath(ast.literal_eval(baked[0][len("sys.path.insert(0, "):-1])) in SITES, baked
