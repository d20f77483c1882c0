"""trust/spoofchk: set at prepare, recorded with the claim, put back when the claim ends.

The netlink side is tests/fakenetlink.py (same methods, errnos and messages as the real one;
docs/netlink.md says what runs against a real kernel). Everything else is real: the hook's
dispatcher, the state file, the resolver, and libvirt's test driver for reconcile.
"""

import io
import os

import pytest

from clitools import domain, hostdev_vfs
from fakenetlink import FakeNetlink
from vfpick import hook, resolver
from vfpick.host import vfsettings
from vfpick.commands import define, reconcile, release
from vfpick.records import VfSettings

FAST = "pfs = ens1f0 ens2f0\n"
TRUSTED = FAST + "trust = on\nspoofchk = off\n"
ORIGINAL = (False, True)          # FakeNetlink's new VFs: the usual driver defaults


@pytest.fixture
def nl(host):
    fake = FakeNetlink()
    for netdev in host.netdevs():
        fake.add_link(netdev, num_vfs=64)
    return fake


def vf_key(host, vf):
    """(PF netdev, VF index) of *vf*."""
    topo = host.topology()
    return topo.pfs[topo.vfs[vf].pf].netdev, topo.vfs[vf].index


def settings_of(nl, host, vf):
    state = nl.get_vf(*vf_key(host, vf))
    return (state.trust, state.spoofchk)


def run(host, nl, name, op, xml, subop="begin"):
    err = io.StringIO()
    code = hook.run([name, op, subop, "-"], stdin=io.BytesIO(xml), stdout=io.BytesIO(), stderr=err,
                    config_path=host.config_path, netlink_factory=lambda: nl)
    return code, err.getvalue()


def resolve(cfg, name, nics=1, uuid=None):
    return resolver.resolve(cfg, domain(name, nics=nics, uuid=uuid)).xml


def persist(host, name, xml):
    with open(os.path.join(host.config_dir, name + ".xml"), "wb") as f:
        f.write(xml)


def started(host, nl, name):
    """A pool with trust on / spoofchk off, domain *name* resolved, defined and started."""
    cfg = host.write_config(pools={"fast": TRUSTED})
    xml = resolve(cfg, name)
    (vf,) = hostdev_vfs(xml)
    persist(host, name, xml)
    assert run(host, nl, name, "prepare", xml)[0] == 0
    return cfg, xml, vf


def claims(cfg):
    return {c.vf: c for c in resolver.store_for(cfg).snapshot().all()}


def test_prepare_records_what_it_set_and_what_was_there(host, nl):
    cfg = host.write_config(pools={"fast": TRUSTED})
    xml = resolve(cfg, "vm1")
    (vf,) = hostdev_vfs(xml)
    key = vf_key(host, vf)
    nl.vfs[key] = nl.vfs[key]._replace(trust=True)    # the operator had trusted it by hand
    assert run(host, nl, "vm1", "prepare", xml) == (0, "")
    claim = claims(cfg)[vf]
    assert claim.applied == VfSettings(True, False)
    assert claim.restore == VfSettings(True, True)
    assert settings_of(nl, host, vf) == (True, False)


def test_transient_release_puts_back_and_the_next_tenant_gets_a_clean_vf(host, nl):
    cfg = host.write_config(pools={"fast": TRUSTED, "plain": "pfs = ens1f1 ens2f1\n"})
    xml = resolve(cfg, "tenant1")
    (vf,) = hostdev_vfs(xml)
    assert run(host, nl, "tenant1", "prepare", xml)[0] == 0
    # a second start of the same claim does not take our own values for the original ones
    assert run(host, nl, "tenant1", "prepare", xml)[0] == 0
    assert claims(cfg)[vf].restore == VfSettings(*ORIGINAL)
    assert settings_of(nl, host, vf) == (True, False)
    # transient (no persistent definition): release ends the claim and puts back
    assert run(host, nl, "tenant1", "release", xml, subop="end") == (0, "")
    assert vf not in claims(cfg) and settings_of(nl, host, vf) == ORIGINAL


def test_persistent_stop_keeps_the_settings_and_vfpick_release_puts_them_back(host, nl):
    cfg, xml, vf = started(host, nl, "vm1")
    assert run(host, nl, "vm1", "release", xml, subop="end") == (0, "")
    assert settings_of(nl, host, vf) == (True, False)          # defined: the claim stays
    report = release.release(cfg, "vm1", "test:///default", netlink_factory=lambda: nl)
    dropped, warnings = report.result, list(report.warnings)
    assert [c.vf for c in dropped] == [vf]
    assert warnings == [] and settings_of(nl, host, vf) == ORIGINAL


def test_vfpick_release_of_a_running_domain_leaves_its_vf_alone_and_says_how(host, nl):
    cfg, xml, vf = started(host, nl, "vm1")
    report = release.release(cfg, "vm1", "test:///default", netlink_factory=lambda: nl)
    dropped, warnings = report.result, list(report.warnings)
    assert [c.vf for c in dropped] == [vf] and settings_of(nl, host, vf) == (True, False)
    (warning,) = warnings
    assert warning.startswith("domain 'vm1' still runs on VF %s" % vf)
    assert warning.endswith("ip link set %s vf %d trust off spoofchk on" % vf_key(host, vf))


def test_repick_moving_a_nic_puts_back_the_vf_it_left(host, nl):
    cfg = host.write_config(pools={"fast": TRUSTED})
    xml = resolve(cfg, "vm1", nics=1)
    (old,) = hostdev_vfs(xml)
    persist(host, "vm1", xml)
    assert run(host, nl, "vm1", "prepare", xml)[0] == 0
    assert run(host, nl, "vm1", "release", xml, subop="end")[0] == 0
    # the VF's PF leaves the pool: the NIC moves, the old VF gets its values back
    other = "ens2f0" if vf_key(host, old)[0] == "ens1f0" else "ens1f0"
    cfg = host.write_config(pools={"fast": "pfs = %s\ntrust = on\nspoofchk = off\n" % other})
    result = resolver.resolve(cfg, xml, netlink_factory=lambda: nl)
    assert hostdev_vfs(result.xml) != [old] and result.warnings == []
    assert settings_of(nl, host, old) == ORIGINAL


def test_a_pool_that_stops_setting_them_gets_them_back_at_the_next_prepare(host, nl):
    cfg, xml, vf = started(host, nl, "vm1")
    assert run(host, nl, "vm1", "release", xml, subop="end")[0] == 0
    cfg = host.write_config(pools={"fast": FAST + "spoofchk = off\n"})  # trust now unset
    assert run(host, nl, "vm1", "prepare", xml)[0] == 0
    assert settings_of(nl, host, vf) == (False, False)
    claim = claims(cfg)[vf]
    assert claim.applied == VfSettings(None, False) and claim.restore == VfSettings(None, True)


def test_unreported_settings_are_put_back_to_the_driver_defaults(host, nl):
    cfg = host.write_config(pools={"fast": TRUSTED})
    xml = resolve(cfg, "vm1")
    (vf,) = hostdev_vfs(xml)
    key = vf_key(host, vf)
    nl.vfs[key] = nl.vfs[key]._replace(trust=None, spoofchk=None)  # the driver says nothing
    assert run(host, nl, "vm1", "prepare", xml)[0] == 0
    assert claims(cfg)[vf].restore == vfsettings.DRIVER_DEFAULT
    assert run(host, nl, "vm1", "release", xml, subop="end")[0] == 0
    assert nl.get_vf(*key) == vfsettings.DRIVER_DEFAULT


def test_a_failed_put_back_is_a_warning_and_the_claim_still_ends(host, nl):
    cfg = host.write_config(pools={"fast": TRUSTED})
    xml = resolve(cfg, "vm1")
    (vf,) = hostdev_vfs(xml)
    assert run(host, nl, "vm1", "prepare", xml)[0] == 0
    nl.fail(*vf_key(host, vf))
    code, err = run(host, nl, "vm1", "release", xml, subop="end")
    assert code == 0 and vf not in claims(cfg)
    assert err.startswith("vfpick: warning: cannot put back trust off, spoofchk on on VF %s" % vf)
    assert err.count("\n") == 1


libvirt = pytest.importorskip("libvirt")


def test_reconcile_dropping_an_undefined_domain_puts_back(host, nl):
    cfg = host.write_config(pools={"fast": TRUSTED})
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open("test:///default")  # keeps the test driver's domains while open
    try:
        result = define.define_resolved(cfg, conn, domain("gone", nics=1))
        (vf,) = result.picks.values()
        persist(host, "gone", result.xml)  # as libvirt keeps it: the stop keeps the claim
        assert run(host, nl, "gone", "prepare", result.xml)[0] == 0
        assert run(host, nl, "gone", "release", result.xml, subop="end")[0] == 0
        assert settings_of(nl, host, vf.vf) == (True, False)
        conn.lookupByName("gone").undefine()
        actions = reconcile.cmd_reconcile(cfg, "test:///default",
                                          netlink_factory=lambda: nl).result
        assert [(a.verb, a.claim.vf) for a in actions] == [("drop", vf.vf)]
        assert settings_of(nl, host, vf.vf) == ORIGINAL
    finally:
        conn.close()
