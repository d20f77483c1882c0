"""Issue 22 on real igb VFs: a pool NIC's `<bandwidth><outbound average=...>` becomes the VF's
max_tx_rate at prepare (`ip -d link show PF`: `max_tx_rate 100Mbps`), and the previous value
(none: 0) is back once the claim ends (undefine + `vfpick release`). igb has ndo_set_vf_rate
(max only): vfpick asks min_tx_rate 0, which igb takes."""
import json

from lab.guestwatch import pf_link_show
from lab.labhost import POOL

# 100 Mb/s in libvirt's KiB/s: 12207 * 8192 / 10**6 = 99.99..., rounded up to 100
AVERAGE_KIB = 12207
RATE_MBPS = 100


def vf_rate(host, vf):
    """(max_tx_rate, min_tx_rate) of VF in Mb/s, from `ip -j -d link show PF`'s vfinfo_list."""
    index, text = pf_link_show(host, vf, as_json=True)
    [link] = json.loads(text)
    [entry] = [e for e in link["vfinfo_list"] if e["vf"] == int(index)]
    rate = entry.get("rate", {})
    return rate.get("max_tx", 0), rate.get("min_tx", 0)


def test_outbound_average_is_the_vfs_max_tx_rate(host, evidence):
    xml = host.domain_xml("l2r", pool_nics=1).replace(
        f"<source network='{POOL}'/></interface>",
        f"<source network='{POOL}'/><bandwidth><outbound average='{AVERAGE_KIB}'/></bandwidth>"
        "</interface>")
    assert "<bandwidth>" in xml
    host.put("/root/l2r.xml", xml)
    host.vfpick("define /root/l2r.xml", check=True)
    [claim] = [c for c in host.status()["claims"] if c["domain"] == "l2r"]
    assert claim["rate_mbps"] == RATE_MBPS and claim["min_rate_mbps"] is None, claim
    vf = claim["vf"]
    before = vf_rate(host, vf)
    r = host.start("l2r")
    assert r.rc == 0, r.stderr
    running = vf_rate(host, vf)
    line = host.run(f"ip -d link show $(ls /sys/bus/pci/devices/{claim['pf']}/net) | "
                    "grep -o 'max_tx_rate [0-9]*Mbps' | sort | uniq -c", check=True).stdout
    host.run("virsh destroy l2r; virsh undefine l2r", timeout=120, check=True)
    host.vfpick("release l2r", check=True)
    after = vf_rate(host, vf)
    evidence(f"  {vf}: <outbound average='{AVERAGE_KIB}'/> -> claim rate_mbps "
             f"{claim['rate_mbps']}; (max_tx, min_tx) before {before}, running {running}, "
             f"after release {after}; ip -d link: {line.strip()}\n")
    assert before == (0, 0)
    assert running == (RATE_MBPS, 0)
    assert f"max_tx_rate {RATE_MBPS}Mbps" in line
    assert after == before
