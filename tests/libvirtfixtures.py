"""The libvirt fixtures several test modules share, registered for every test module by
conftest.py (``pytest_plugins``) so that none imports a fixture by name:

- ``conn`` and ``cfg``: libvirt's in-process test driver (test:///default) and a simulated
  host's config, for the commands that talk to libvirt (test_virt.py and its neighbours);
- ``env``: the real system libvirtd (tests/libvirtd.py) with vfpick's hook installed and a
  state recorder hook behind it (test_e2e_libvirt.py and the other *_libvirt.py modules).
"""

import json
import os
import sys

import libvirt
import pytest

import libvirtd as lv
from clitools import status_json, vfpick

URI = "test:///default"


@pytest.fixture
def conn():
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    c = libvirt.open(URI)
    before = {d.UUIDString() for d in c.listAllDomains(0)}
    yield c
    for d in c.listAllDomains(0):
        if d.UUIDString() in before:
            continue
        if d.isActive():
            d.destroy()
        if d.isPersistent():
            d.undefine()
    c.close()


@pytest.fixture
def cfg(host):
    return host.write_config()


HOOKS_DIR = "/etc/libvirt/hooks"

_STATE_HOOK = r'''#!%(python)s -IS
# %(mark)s: records each call with vfpick's state file as vfpick's hook left it
import json, sys
data = sys.stdin.read()
try:
    with open(%(state)r) as f:
        state = json.load(f)
except (OSError, ValueError):
    state = None
with open(%(log)r, "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "stdin": data, "state": state}) + "\n")
'''


class Env:
    """One test's simulated host, installed hook, state recorder and domains."""

    def __init__(self, daemon, host, tmp_path):
        self.daemon, self.host = daemon, host
        self.tmp = tmp_path
        self.log = str(tmp_path / "state-hook.jsonl")
        self.state_path = os.path.join(host.state_dir, "claims.json")

    def cli(self, *args, check=0):
        return vfpick(self.host, *args, check=check)

    def define(self, nics=2, name=None, devices="", iface_extra=""):
        """`vfpick define` of a domain with *nics* pool interfaces (each with *iface_extra*
        inside); returns its name."""
        name = name or self.daemon.unique_name("vf")
        ifaces = "".join("\n    <interface type='network'><source network='fast'/>%s</interface>"
                         % iface_extra for _ in range(nics))
        path = self.tmp / (name + ".xml")
        path.write_text(lv.domain_xml(name, devices=ifaces + devices))
        self.daemon.track(name)  # removed at teardown even if a later step fails
        proc = self.cli("define", str(path))
        assert ("defined domain '%s'" % name).encode() in proc.stdout, proc.stdout
        return name

    def virsh_define(self, xml):
        return self.daemon.define(xml if isinstance(xml, str) else xml.decode())

    def claims(self, name=None):
        return [c for c in status_json(self.host)["claims"] if name is None or c["domain"] == name]

    def uuid(self, name):
        return self.daemon.virsh("domuuid", name).stdout.strip()

    def hook_calls(self, name):
        try:
            with open(self.log) as f:
                calls = [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []
        return [c for c in calls if c["argv"][0] == name]

    def state_at(self, name, op):
        """vfpick's claims of *name* right after vfpick's hook ran for *op* ("prepare begin")."""
        out = []
        for call in self.hook_calls(name):
            if " ".join(call["argv"][1:3]) == op:
                claims = (call["state"] or {}).get("claims", [])
                out.append(sorted((c["vf"], c["active"]) for c in claims if c["domain"] == name))
        return out


@pytest.fixture
def env(libvirtd, hook_recorder, make_host, tmp_path):
    if not libvirtd.hooks_live:
        lv.skip_or_fail("the libvirtd in use found no hook at its start: hooks installed now "
                        "are not called (see docs/libvirt-testing.md)")
    host = make_host()
    host.run_dir = str(lv.RUN_DIR)          # the hook reads running domains here
    host.config_dir = str(lv.CONFIG_DIR)    # and checks the persistent definition here
    host.write_config()
    e = Env(libvirtd, host, tmp_path)
    libvirtd.install_hook("zz-vfpt-state", _STATE_HOOK % {
        "python": sys.executable, "mark": lv.HOOK_MARK, "state": e.state_path, "log": e.log})
    proc = vfpick(host, "install-hook", "--hooks-dir", HOOKS_DIR, "--config", host.config_path,
                  check=0)
    assert b"qemu.d/vfpick" in proc.stdout
    try:
        yield e
    finally:
        try:
            libvirtd.cleanup_domains()  # while vfpick's hook still sees their release
        finally:
            vfpick(host, "uninstall-hook", "--hooks-dir", HOOKS_DIR, check=0)
            libvirtd.remove_hook("zz-vfpt-state")
    assert not os.path.exists(os.path.join(HOOKS_DIR, "qemu.d", "vfpick"))
