"""Scenario 4: a trust/spoofchk pool on real igb VFs. `ip -d link show PF` before the start,
while the domain runs (the pool's values), after the claim ends (the previous values again):
for a transient domain at its stop, for a defined one at undefine + `vfpick release`; and a VF
whose previous values were set by hand (not the driver's defaults) gets those back."""
from lab.guestwatch import set_vf, vf_settings
from lab.labhost import CONFIG_TEXT, POOL

TRUSTED = POOL + "-trusted"    # lab.labhost's pool with trust = on, spoofchk = off
LOCKED = POOL + "-locked"      # this file's pool with the opposite values
DRIVER_DEFAULT = (False, True)  # igb VFs start with trust off, spoof checking on


def claimed(host, name):
    return sorted(c["vf"] for c in host.status()["claims"] if c["domain"] == name)


def test_transient_domain_stop_puts_settings_back(host, evidence):
    host.put("/root/l2t.xml", host.domain_xml("l2t", pool_nics=2, pool=TRUSTED))
    # a transient domain: resolved by vfpick, created by libvirt without a persistent definition
    host.run("vfpick resolve /root/l2t.xml > /root/l2t-resolved.xml", check=True)
    vfs = sorted(c["vf"] for c in host.status()["claims"])
    assert len(vfs) == 2
    before = {vf: vf_settings(host, vf) for vf in vfs}
    assert set(before.values()) == {DRIVER_DEFAULT}, before
    r = host.run("virsh create /root/l2t-resolved.xml", timeout=180)
    assert r.rc == 0, r.stderr
    assert {vf: vf_settings(host, vf) for vf in vfs} == {vf: (True, False) for vf in vfs}
    assert all(c["active"] for c in host.status()["claims"])
    host.run("virsh destroy l2t", timeout=120, check=True)
    # release end of a transient domain drops its claims and puts the recorded values back
    assert host.status()["claims"] == []
    after = {vf: vf_settings(host, vf) for vf in vfs}
    evidence(f"  trust/spoofchk before {before}, after the transient domain stopped {after}\n")
    assert after == before


def test_defined_domain_keeps_settings_until_release(host, evidence):
    host.put("/root/l2d.xml", host.domain_xml("l2d", pool_nics=1, pool=TRUSTED))
    host.vfpick("define /root/l2d.xml", check=True)
    [vf] = claimed(host, "l2d")
    assert vf_settings(host, vf) == DRIVER_DEFAULT
    assert host.start("l2d").rc == 0
    assert vf_settings(host, vf) == (True, False)
    host.run("virsh destroy l2d", timeout=120, check=True)
    # still defined: the claim is reserved, and the VF keeps the pool's values for the next start
    assert claimed(host, "l2d") == [vf]
    assert vf_settings(host, vf) == (True, False)
    host.run("virsh undefine l2d", check=True)
    host.vfpick("release l2d", check=True)
    assert host.status()["claims"] == []
    evidence(f"  {vf} after undefine + release: trust/spoofchk {vf_settings(host, vf)}\n")
    assert vf_settings(host, vf) == DRIVER_DEFAULT


def test_hand_set_values_come_back(host, evidence):
    """trust on / spoofchk off set by hand before the start; the pool wants the opposite."""
    pfs = " ".join(dev for _, dev, _ in host.pfs)
    host.write_config(CONFIG_TEXT.format(pool=POOL, pfs=pfs)
                      + f"\n[pool {LOCKED}]\npfs = {pfs}\ntrust = off\nspoofchk = on\n")
    host.put("/root/l2h.xml", host.domain_xml("l2h", pool_nics=1, pool=LOCKED))
    host.vfpick("define /root/l2h.xml", check=True)
    [vf] = claimed(host, "l2h")
    try:
        set_vf(host, vf, trust=True, spoofchk=False)
        assert vf_settings(host, vf) == (True, False)
        assert host.start("l2h").rc == 0
        assert vf_settings(host, vf) == (False, True), "the pool's values while the domain runs"
        host.run("virsh destroy l2h; virsh undefine l2h", timeout=120, check=True)
        host.vfpick("release l2h", check=True)
        after = vf_settings(host, vf)
        evidence(f"  {vf}: set by hand trust on/spoofchk off, pool {LOCKED} ran it trust off/"
                 f"spoofchk on, after release: trust {after[0]}, spoofchk {after[1]}\n")
        assert after == (True, False), "the hand-set values must come back, not the driver's"
    finally:
        set_vf(host, vf, *DRIVER_DEFAULT)   # the next scenarios expect driver defaults
