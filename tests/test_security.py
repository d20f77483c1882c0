"""Security properties: state permissions and ownership, a hook that trusts only its baked
config, and no shell anywhere in vfpick. See docs/THREAT-MODEL.md."""

import ast
import os
import stat
import subprocess
import sys

import pytest

from clitools import REPO, assert_user_error, cli_env, domain, vfpick
from vfpick.state import StateStore

PKG = os.path.join(REPO, "vfpick")
SCRUBBED = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "USER": "root",
            "LOGNAME": "root", "LC_ALL": "C"}


# --- state permissions -----------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_state_dir_0700_files_0600_owned_by_the_caller_whatever_the_umask(host, umask):
    host.write_config()
    proc = subprocess.run([sys.executable, "-c", "import os, sys, runpy; os.umask(%d); "
                           "sys.argv = ['vfpick', 'resolve', '-']; "
                           "runpy.run_module('vfpick', run_name='__main__')" % umask],
                          input=domain("perm", nics=1), capture_output=True, timeout=60,
                          env=cli_env(host))
    assert proc.returncode == 0, proc.stderr
    st_dir = os.stat(host.state_dir)
    assert stat.S_IMODE(st_dir.st_mode) == 0o700
    assert st_dir.st_uid == os.getuid()
    for name in ("claims.json", "claims.lock"):
        st_ = os.lstat(os.path.join(host.state_dir, name))
        assert stat.S_ISREG(st_.st_mode)
        assert stat.S_IMODE(st_.st_mode) == 0o600, (name, oct(st_.st_mode))
        assert st_.st_uid == os.getuid()
    if os.getuid() == 0:
        assert st_dir.st_uid == 0  # on a real host: root's, nobody else's


def test_rewrite_keeps_0600_even_if_someone_loosened_the_file(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    from vfpick.records import Claim

    claim = Claim("0000:3c:00.0", "0000:3b:00.0", "l", "fast", "d", "u", "52:54:00:00:00:01", False)
    with store.transaction() as claims:
        claims.put(claim)
    os.chmod(store.path, 0o644)  # readable by others: not forgeable, so still used
    with store.transaction() as claims:
        claims.put(claim._replace(active=True))
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600  # a fresh temp file, renamed


def test_existing_world_writable_state_dir_of_ours_is_refused_not_adopted(host):
    """A group/world-writable /var/lib/vfpick would let any local user rename a forged
    claims.json into place (rename needs only write access to the dir), i.e. take or free any
    VF. Tightening it would adopt what is already in it: refused, left as it is."""
    host.write_config()
    os.makedirs(host.state_dir)
    os.chmod(host.state_dir, 0o777)
    proc = vfpick(host, "resolve", "-", input=domain("loose", nics=1))
    assert_user_error(proc, host.state_dir, "writable by everyone", "chmod 0700")
    assert stat.S_IMODE(os.stat(host.state_dir).st_mode) == 0o777
    assert os.listdir(host.state_dir) == []


def test_a_state_dir_owned_by_someone_else_is_refused(host):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the state dir away")
    host.write_config()
    os.makedirs(host.state_dir, mode=0o700)
    os.chown(host.state_dir, 4321, -1)
    proc = vfpick(host, "resolve", "-", input=domain("theirs", nics=1))
    assert_user_error(proc, "state directory %s is owned by uid 4321, not 0" % host.state_dir,
                      "chown")
    assert os.listdir(host.state_dir) == []


# --- the installed hook trusts nothing from its environment ---------------------------------------

def _evil_tree(tmp_path):
    """A PYTHONPATH with a fake vfpick package and a sitecustomize, each leaving a marker."""
    evil = tmp_path / "evil"
    marker = tmp_path / "pwned"
    (evil / "vfpick").mkdir(parents=True)
    code = "open(%r, 'a').write(__name__ + '\\n')\n" % str(marker)
    (evil / "vfpick" / "__init__.py").write_text(code)
    (evil / "vfpick" / "hook.py").write_text(code + "def run(*a, **k):\n    return 0\n")
    (evil / "sitecustomize.py").write_text(code)
    (evil / "usercustomize.py").write_text(code)
    return str(evil), marker


def test_installed_hook_ignores_vfpick_config_and_pythonpath(make_host, tmp_path):
    real = make_host()
    real.write_config()
    decoy = make_host()
    decoy.write_config()  # another config, another state dir
    hooks_dir = str(tmp_path / "hooks")
    vfpick(real, "install-hook", "--hooks-dir", hooks_dir, "--config", real.config_path, check=0)
    installed = os.path.join(hooks_dir, "qemu.d", "vfpick")
    xml = vfpick(real, "resolve", "-", input=domain("vm", nics=1), check=0).stdout
    real_before = open(os.path.join(real.state_dir, "claims.json"), "rb").read()
    evil, marker = _evil_tree(tmp_path)
    env = dict(SCRUBBED, VFPICK_CONFIG=decoy.config_path, PYTHONPATH=evil, PYTHONHOME=evil,
               PYTHONSTARTUP=os.path.join(evil, "sitecustomize.py"), PYTHONINSPECT="1",
               PYTHONUSERBASE=evil, PYTHONWARNINGS="error")
    # cwd too: a vfpick/ in the current directory must not shadow the baked package.
    proc = subprocess.run([installed, "vm", "prepare", "begin", "-"], input=xml, env=env,
                          cwd=evil, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), marker.read_text()
    # The baked config decided: the real state has the claim activated, the decoy saw nothing.
    after = open(os.path.join(real.state_dir, "claims.json"), "rb").read()
    assert after != real_before and b'"active": true' in after
    assert not os.path.exists(os.path.join(decoy.state_dir, "claims.json"))
    # And an unresolved domain is judged by the baked config's pools, not the decoy's.
    proc = subprocess.run([installed, "raw", "prepare", "begin", "-"],
                          input=domain("raw", uuid="6c8d5e4f-0000-4000-8000-000000000004"),
                          env=env, cwd=evil, capture_output=True, timeout=60)
    assert proc.returncode == 1 and b"vfpick repick raw" in proc.stderr, proc.stderr
    assert not marker.exists()


def test_installed_hook_ignores_modules_beside_it_in_qemu_d(host, tmp_path):
    """libvirt runs every executable in qemu.d/; a file there named like a module the hook
    imports (json.py, fcntl.py) must not shadow it: the hook runs isolated (-I)."""
    host.write_config()
    hooks_dir = str(tmp_path / "hooks")
    vfpick(host, "install-hook", "--hooks-dir", hooks_dir, "--config", host.config_path, check=0)
    installed = os.path.join(hooks_dir, "qemu.d", "vfpick")
    xml = vfpick(host, "resolve", "-", input=domain("vm", nics=1), check=0).stdout
    marker = tmp_path / "shadowed"
    for name in ("json", "fcntl", "collections"):
        with open(os.path.join(hooks_dir, "qemu.d", name + ".py"), "w") as f:
            f.write("open(%r, 'a').write(%r)\nraise SystemExit(3)\n" % (str(marker), name))
    proc = subprocess.run([installed, "vm", "prepare", "begin", "-"], input=xml, env=SCRUBBED,
                          capture_output=True, timeout=60)
    assert not marker.exists(), marker.read_text()
    assert proc.returncode == 0, proc.stderr
    assert b'"active": true' in open(os.path.join(host.state_dir, "claims.json"), "rb").read()


def test_installed_hook_text_bakes_absolute_paths(host, tmp_path):
    host.write_config()
    hooks_dir = str(tmp_path / "hooks")
    rel = os.path.relpath(host.config_path, host.base)  # clitools.vfpick runs in host.base
    vfpick(host, "install-hook", "--hooks-dir", hooks_dir, "--config", rel, check=0)
    text = open(os.path.join(hooks_dir, "qemu.d", "vfpick")).read()
    # sh first (a VM still starts when the interpreter is gone), then the baked interpreter
    assert text.splitlines()[0] == "#!/bin/sh"
    assert "exec '%s' -IS \"$0\" \"$@\"" % sys.executable in text, text
    assert repr(os.path.abspath(host.config_path)) in text
    assert "VFPICK_CONFIG" not in text and "environ" not in text
    mode = os.stat(os.path.join(hooks_dir, "qemu.d", "vfpick")).st_mode
    assert not mode & (stat.S_IWGRP | stat.S_IWOTH)


# --- no shell anywhere --------------------------------------------------------------------------

def _sources():
    for root, _dirs, files in os.walk(PKG):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(root, name)
    yield os.path.join(REPO, "hooks", "qemu")


FORBIDDEN_CALLS = {("os", "system"), ("os", "popen"), ("os", "spawnl"), ("os", "spawnlp"),
                   ("os", "spawnv"), ("os", "spawnvp"), ("os", "execlp"), ("os", "execvp"),
                   ("os", "execvpe"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"),
                   ("pty", "spawn"), ("asyncio", "create_subprocess_shell"), ("pickle", "loads"),
                   ("pickle", "load"), ("marshal", "loads"), ("yaml", "load")}


def _scan(source, path):
    problems = []
    if True:
        for needle in ("shell=True", "os.system", "os.popen", "getoutput(", "create_subprocess_shell"):
            if needle in source:
                problems.append("%s: %s" % (path, needle))
        tree = ast.parse(source, path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("eval", "exec", "compile", "__import__"):
                problems.append("%s:%d: %s()" % (path, node.lineno, func.id))
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                    and (func.value.id, func.attr) in FORBIDDEN_CALLS:
                problems.append("%s:%d: %s.%s()" % (path, node.lineno, func.value.id, func.attr))
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    problems.append("%s:%d: shell=..." % (path, node.lineno))
            # A command given as one string goes through a shell or gets split: argv lists only.
            if isinstance(func, ast.Attribute) and func.attr in ("run", "Popen", "call", "check_call",
                                                                 "check_output") \
                    and isinstance(func.value, ast.Name) and func.value.id == "subprocess" \
                    and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
                problems.append("%s:%d: subprocess with a string command" % (path, node.lineno))
    return problems


def test_no_shell_no_eval_anywhere_in_vfpick():
    problems = []
    for path in _sources():
        with open(path, encoding="utf-8") as f:
            problems += _scan(f.read(), path)
    assert problems == []


@pytest.mark.parametrize("sin", [
    "os.system('x')", "os.popen('x')", "subprocess.run('ls -l')", "subprocess.run(['ls'], shell=True)",
    "subprocess.Popen(['ls'], shell=flag)", "eval(text)", "exec(code)", "pickle.loads(raw)",
    "subprocess.getoutput('id')", "asyncio.create_subprocess_shell('id')"])
def test_the_scan_catches_what_it_claims_to(sin):
    assert _scan("import os, subprocess, pickle, asyncio\n" + sin + "\n", "<sin>")
    assert not _scan("import subprocess\nsubprocess.run(['ls', name], shell=False)\n", "<ok>")
