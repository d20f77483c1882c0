"""Core scenarios on real igb VFs: check before any VM, topology, define + start + destroy.

Order matters for the first one only: `vfpick check` must pass before any VM has loaded
vfio-pci, so it runs first in the session (pytest keeps file order).
"""
import json

from prometheus_client.parser import text_string_to_metric_families

from lab.labhost import POOL, VFS_PER_PF


def findings(host):
    host.vfpick("check")   # the text form, for the evidence
    return json.loads(host.run("vfpick check --json", quiet=True).stdout)["findings"]


def by_check(found, name):
    return [f for f in found if f["check"] == name]


def test_check_passes_before_any_vm(host):
    """Scenario 1 (all but vfio-pci, which has its own test below)."""
    r = host.run("lsmod | grep -E '^vfio' || echo 'no vfio module loaded'; virsh list --all --name")
    assert "vfio_pci" not in r.stdout, "vfio-pci is already loaded: this scenario needs a fresh L1"
    found = findings(host)
    for name in ("config", "iommu", "iommu-groups", "pf", "hook", "daemon", "state"):
        got = by_check(found, name)
        assert got and all(f["status"] == "ok" for f in got), (name, got)
    # a group per VF, read from sysfs directly as well
    groups = host.run("for pf in /sys/bus/pci/drivers/igb/0000:*; do for v in $pf/virtfn*; do "
                      "echo $(basename $(readlink -f $v)) $(basename $(readlink $v/iommu_group)); done; done").stdout.split("\n")
    pairs = [g.split() for g in groups if g.strip()]
    assert len(pairs) == 3 * VFS_PER_PF
    assert len({group for _, group in pairs}) == len(pairs), "VFs share IOMMU groups"


def test_check_vfio_pci_available_before_any_vm(host):
    """Scenario 1: vfio-pci is not loaded yet, but the module is there; check must say so."""
    r = host.run("lsmod | grep -c '^vfio_pci'; modprobe -n -v vfio-pci")
    assert r.stdout.split()[0] == "0", "vfio-pci is already loaded: this scenario needs a fresh L1"
    found = findings(host)
    assert [f["status"] for f in by_check(found, "vfio-pci")] == ["ok"], by_check(found, "vfio-pci")
    assert host.vfpick("check").rc == 0


def test_topology_reads_real_igb_sysfs(host, evidence):
    """Scenario 2: no phys_port_id, no devlink, link = PF; NUMA -1/-1/1; pools over the PFs."""
    dev = host.pfs[0][1]
    r = host.run(f"cat /sys/class/net/{dev}/phys_port_id /sys/class/net/{dev}/phys_port_name; "
                 f"devlink dev show; devlink port show; echo devlink-done")
    assert "Operation not supported" in r.stderr
    assert "pci/" not in r.stdout, "igb has no devlink: expected an empty devlink listing"
    host.vfpick("topology")
    topo = host.json("topology --json")
    host.vfpick("status")
    pfs = {p["addr"]: p for p in topo["pfs"]}
    assert sorted(pfs) == [addr for addr, _, _ in host.pfs]
    links = {link["name"]: link for link in topo["links"]}
    for addr, netdev, numa in host.pfs:
        pf = pfs[addr]
        assert pf["netdev"] == netdev and pf["driver"] == "igb"
        assert pf["numa_node"] == numa
        assert pf["num_vfs"] == VFS_PER_PF and len(pf["vfs"]) == VFS_PER_PF
        assert pf["phys_port_id"] is None
        link = links[pf["link"]]
        assert link["basis"] == "pf" and link["pfs"] == [addr], link
    assert sorted(numa for _, _, numa in host.pfs) == [-1, -1, 1]
    assert sorted(topo["numa_nodes"]) == ["0", "1"]
    pool = next(p for p in host.status()["pools"] if p["name"] == POOL)
    assert sorted(pf["pf"] for link in pool["links"] for pf in link["pfs"]) == sorted(pfs)
    assert pool["total"] == pool["free"] == 3 * VFS_PER_PF and not pool["missing"]
    evidence(f"  PFs: {host.pfs}; links: {[(n, l['basis'], l['pfs']) for n, l in links.items()]}\n")


def metric_vfs(host):
    """{(pool, pf, state): value} of vfpick_vfs, parsed with prometheus_client's parser."""
    text = host.run("vfpick metrics", check=True, quiet=True).stdout
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "vfpick_vfs":
                out[(s.labels["pool"], s.labels["pf"], s.labels["state"])] = s.value
    if host.vm.evidence:
        host.vm.evidence("  [l1] $ vfpick metrics  (vfpick_vfs of pool %s, parsed, non-zero)\n" % POOL + "".join(
            f"    pf {pf} {state} {v:g}\n" for (pool, pf, state), v in sorted(out.items()) if pool == POOL and v))
    return out


def claims_per_pf(claims, active):
    out = {}
    for c in claims:
        if c["active"] is active:
            out[c["pf"]] = out.get(c["pf"], 0) + 1
    return out


def assert_metrics_agree(host, status):
    metrics = metric_vfs(host)
    for active, state in ((True, "active"), (False, "reserved")):
        want = claims_per_pf([c for c in status["claims"] if c["pool"] == POOL], active)
        got = {pf: v for (pool, pf, st), v in metrics.items() if pool == POOL and st == state and v}
        assert got == want, (state, got, want)
    return metrics


def test_define_start_passthrough_destroy(host, evidence):
    """Scenario 3: vfpick define a 2-NIC domain, virsh start, the guest sees two VFs on
    distinct PFs bound to vfio-pci; destroy + release end leave the claims right."""
    host.put("/root/l2a.xml", host.domain_xml("l2a", pool_nics=2))
    host.vfpick("define /root/l2a.xml", check=True)
    claims = host.status()["claims"]
    assert len(claims) == 2 and not any(c["active"] for c in claims)
    assert len({c["pf"] for c in claims}) == 2 and len({c["link"] for c in claims}) == 2
    vfs = sorted(c["vf"] for c in claims)
    assert host.hostdev_vfs("l2a", live=False) == vfs

    r = host.start("l2a")
    assert r.rc == 0, r.stderr
    evidence(f"  L2 domain type: {host.domain_type}\n")
    assert host.hostdev_vfs("l2a") == vfs
    assert [host.driver(vf) for vf in vfs] == ["vfio-pci", "vfio-pci"]
    status = host.status()
    assert sorted(c["vf"] for c in status["claims"] if c["active"]) == vfs
    host.vfpick("status")
    assert_metrics_agree(host, status)
    report = host.l2_report("l2a")
    assert report.count(" 8086:10ca ") == 2, report

    host.run("virsh destroy l2a", timeout=120, check=True)
    status = host.status()
    assert sorted(c["vf"] for c in status["claims"]) == vfs, "destroy must keep a defined domain's claims"
    assert not any(c["active"] for c in status["claims"])
    assert [host.driver(vf) for vf in vfs] == ["igbvf", "igbvf"]
    assert_metrics_agree(host, status)
    host.vfpick("status")
