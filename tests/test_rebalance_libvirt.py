"""`vfpick rebalance` against the real system libvirtd, with vfpick's hook installed.

Domains are defined with `vfpick define`; most are undefined and released to leave holes;
`vfpick rebalance` redefines the stopped ones left through libvirt. Then libvirt's definitions
and vfpick's claims agree, and `virsh start` of a moved domain gets past vfpick's prepare hook
(it fails only at libvirt's passthrough check: this host has no IOMMU) with exactly the new VFs
activated. The env fixture (hook installed, state recorder) is test_e2e_libvirt's.
"""

from clitools import hostdev_vfs
from test_e2e_libvirt import PASSTHROUGH_ERROR, start_error


def vfs_of(env, name):
    return hostdev_vfs(env.daemon.dumpxml(name, inactive=True))


def links_of(env, topo, name):
    return [topo.link_of[topo.vfs[vf].pf] for vf in vfs_of(env, name)]


def state(env):
    with open(env.state_path, "rb") as f:
        return f.read()


def test_rebalance_redefines_stopped_domains_into_the_holes(env):
    topo = env.host.topology()
    pair = env.define(nics=2)
    names = [env.define(nics=1) for _ in range(12)]
    first = {n: links_of(env, topo, n)[0] for n in names}
    crowded = first[names[0]]
    kept = [n for n in names if first[n] == crowded]
    for name in names:
        if name not in kept:
            env.daemon.virsh("undefine", name)
            env.cli("release", name)
    assert len(kept) == 3
    before = {n: vfs_of(env, n) for n in kept + [pair]}

    saved = state(env)
    dry = env.cli("rebalance", "--dry-run").stdout.decode()
    assert "dry run: would move" in dry and "over the optimum" in dry
    assert state(env) == saved and {n: vfs_of(env, n) for n in before} == before

    out = env.cli("rebalance").stdout.decode()
    moved = [line.split()[1] for line in out.splitlines() if line.startswith("moved ") and " -> " in line]
    assert moved and set(moved) <= set(kept) | {pair}
    assert "+0.0 % over the optimum" in out.splitlines()[-2], out
    # Every domain's NICs still on distinct links; 5 NICs on 4 links: 2 at most on any.
    assert len(set(links_of(env, topo, pair))) == 2
    on = [link for n in kept + [pair] for link in links_of(env, topo, n)]
    assert max(on.count(link) for link in on) == 2 and on.count(crowded) < 4
    # The claims are exactly what libvirt has, MACs unchanged, none active.
    for name in kept + [pair]:
        claims = env.claims(name)
        assert sorted(c["vf"] for c in claims) == sorted(vfs_of(env, name))
        xml = env.daemon.dumpxml(name, inactive=True)
        assert all(c["mac"] in xml and not c["active"] for c in claims)
    # The prepare hook accepts a moved domain's new definition and activates the new VFs.
    name = moved[0]
    err = start_error(env, name)
    assert PASSTHROUGH_ERROR in err and "vfpick" not in err
    assert env.state_at(name, "prepare begin")[-1] == sorted((vf, True) for vf in vfs_of(env, name))
