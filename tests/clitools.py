"""Running vfpick as a user does: the installed console script, config from VFPICK_CONFIG.

What runs is the installed package (tests/README.md): VFPICK is the `vfpick` script pip put
beside the interpreter running the tests, and HOOK is hooks/qemu copied out of the checkout,
so it imports vfpick the way an installed hook does.
"""

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")
VFPICK = os.path.join(os.path.dirname(sys.executable), "vfpick")


def _hook_outside_the_checkout():
    # hooks/qemu run in place puts its checkout on sys.path; a copy elsewhere cannot.
    where = tempfile.mkdtemp(prefix="vfpick-test-hook-")
    atexit.register(shutil.rmtree, where, True)
    path = os.path.join(where, "qemu")
    shutil.copy2(os.path.join(REPO, "hooks", "qemu"), path)
    return path


HOOK = _hook_outside_the_checkout()


def cli_env(host, **extra):
    """The caller's environment with the host's config; no PYTHONPATH games."""
    return dict(os.environ, VFPICK_CONFIG=host.config_path, **extra)


def vfpick(host, *args, input=None, check=None, env=None):
    full_env = cli_env(host)
    full_env.update(env or {})
    proc = subprocess.run([VFPICK] + list(args), input=input,
                          capture_output=True, env=full_env, cwd=host.base, timeout=120)
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stdout[-2000:], proc.stderr)
    return proc


def example(name):
    with open(os.path.join(EXAMPLES, name + ".xml"), "rb") as f:
        return f.read()


def hostdev_vfs(xml):
    """VFs of the domain's <interface type='hostdev'>, read with lxml (not the code under test)."""
    from lxml import etree

    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml)
    out = []
    for iface in root.findall("devices/interface[@type='hostdev']"):
        a = iface.find("source/address")
        out.append("%04x:%02x:%02x.%d" % tuple(int(a.get(k), 16)
                                              for k in ("domain", "bus", "slot", "function")))
    return out


def status_json(host):
    return json.loads(vfpick(host, "status", "--json", check=0).stdout)


def claims_file(host):
    path = os.path.join(host.state_dir, "claims.json")
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return f.read()


def assert_user_error(proc, *words):
    """One `vfpick:` line on stderr, exit 1, no traceback."""
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, err)
    assert err.startswith("vfpick: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    return err


def domain(name="guest", nics=1, pool="fast", uuid=None, extra_devices="", head="", iface_extra=""):
    ifaces = "".join("<interface type='network'><source network='%s'/>%s</interface>\n"
                     % (pool, iface_extra) for _ in range(nics))
    return ("<domain type='qemu'>\n<name>%s</name>\n%s%s<memory unit='MiB'>64</memory>\n"
            "<os><type arch='x86_64'>hvm</type></os>\n<devices>\n%s%s</devices>\n</domain>\n"
            % (name, "<uuid>%s</uuid>\n" % uuid if uuid else "", head, ifaces,
               extra_devices)).encode()


def free_port():
    """A loopback TCP port nobody listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
