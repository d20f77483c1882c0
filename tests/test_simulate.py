"""`vfpick simulate`, the demo's host builder, run as a user runs it: every preset and a JSON spec.

The expectations come from the spec's data (simhost's defaults restated here), and the tree is
read back both through `vfpick topology --json` and straight from the files, as the kernel lays
them out.
"""

import json
import os
import subprocess

import pytest
from lxml import etree

from clitools import VFPICK, assert_user_error, domain, hostdev_vfs
from vfpick.host import simhost

# simhost's documented defaults (vfpick/host/simhost.py docstring)
CARD_DEFAULTS = {"numa": 0, "driver": "i40e"}
PF_DEFAULTS = {"vfs": 8, "speed": 25000, "carrier": True}

CUSTOM_SPEC = {
    "nodes": {"0": "0-3"},
    "cards": [{"bus": "17", "driver": "ice", "pfs": [
        {"netdev": "enp23s0f0", "port": 0, "vfs": 2, "speed": 100000},
        {"netdev": "enp23s0f1", "port": 1, "vfs": 3, "carrier": False},
        {"netdev": "enp23s0f2", "port": 0, "vfs": 1, "numa": -1}]}],
}


def simulate(tmp_path, *args):
    return subprocess.run([VFPICK, "simulate"] + [str(a) for a in args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def run(config, *args, input=None):
    env = dict(os.environ, VFPICK_CONFIG=str(config))
    return subprocess.run([VFPICK] + list(args), input=input, capture_output=True, env=env,
                          timeout=120)


def expected_pfs(spec):
    """{netdev: (vfs, numa, driver, up, speed)} from the spec alone."""
    out = {}
    for card in spec["cards"]:
        c = dict(CARD_DEFAULTS, **card)
        for pf in card["pfs"]:
            p = dict(PF_DEFAULTS, **pf)
            up = bool(p["carrier"])
            out[p["netdev"]] = (p["vfs"], p.get("numa", c["numa"]), c["driver"], up,
                                p["speed"] if up else None)
    return out


def expected_links(spec):
    """The PF netdevs grouped per link, from what the spec says the driver exposes
    (vfpick/host/simhost.py docstring, docs/hardware.md): partitions of one port share a link
    when they share phys_port_id (``port_id``, the default) or the devlink name p<port>
    (``port_name: "port"``); p<function> or nothing leaves each PF its own link."""
    groups = {}
    for card in spec["cards"]:
        style = card.get("port_name", "port" if card.get("switch_id") else None)
        for fn, pf in enumerate(card["pfs"]):
            if pf.get("port_id", True):
                key = (card["bus"], "port id", pf["port"])
            elif style == "port":
                key = (card["bus"], "port name", pf["port"], pf.get("split"))
            else:
                key = (card["bus"], "pf", fn)
            groups.setdefault(key, set()).add(pf["netdev"])
    return sorted(sorted(g) for g in groups.values())


def check_host(tmp_path, spec, args):
    root, ini = tmp_path / "host", tmp_path / "vfpick.ini"
    proc = simulate(tmp_path, root, "--write-config", ini, *args)
    assert proc.returncode == 0, proc.stderr
    sysfs = root / "sys"
    assert proc.stdout.splitlines() == ["simulated host written to %s" % sysfs,
                                        "config written to %s" % ini]

    # The files, read as the kernel lays them out: every PF netdev leads to its PCI function,
    # whose virtfnN links and the VFs' physfn links agree.
    want = expected_pfs(spec)
    for netdev, (vfs, numa, _driver, up, speed) in want.items():
        pf_dir = os.path.realpath(sysfs / "class" / "net" / netdev / "device")
        assert open(os.path.join(pf_dir, "sriov_numvfs")).read().strip() == str(vfs)
        virtfns = sorted(n for n in os.listdir(pf_dir) if n.startswith("virtfn"))
        assert len(virtfns) == vfs, virtfns
        for n in virtfns:
            vf_dir = os.path.realpath(os.path.join(pf_dir, n))
            assert os.path.realpath(os.path.join(vf_dir, "physfn")) == pf_dir
        assert int(open(os.path.join(pf_dir, "numa_node")).read()) == numa
        net = sysfs / "class" / "net" / netdev
        assert open(net / "carrier").read().strip() == ("1" if up else "0")
        assert int(open(net / "speed").read()) == (speed if up else -1)

    # The same through vfpick, with the config simulate wrote.
    proc = run(ini, "topology", "--json")
    assert proc.returncode == 0, proc.stderr
    topo = json.loads(proc.stdout)
    by_netdev = {p["netdev"]: p for p in topo["pfs"]}
    assert set(by_netdev) == set(want)
    for netdev, (vfs, numa, driver, up, speed) in want.items():
        p = by_netdev[netdev]
        assert (p["num_vfs"], len(p["vfs"]), p["numa_node"], p["driver"], p["carrier"],
                p["speed"]) == (vfs, vfs, numa, driver, up, speed), p
    addr_to_netdev = {p["addr"]: p["netdev"] for p in topo["pfs"]}
    assert sorted(sorted(addr_to_netdev[a] for a in link["pfs"]) for link in topo["links"]) \
        == expected_links(spec)
    return ini, topo


@pytest.mark.parametrize("preset", sorted(simhost.PRESETS) + ["bench-64"])
def test_every_preset_builds_a_host_vfpick_can_use(tmp_path, preset):
    ini, topo = check_host(tmp_path, simhost.load_spec(preset), ["--spec", preset])
    # ... and resolve on it: two NICs on two distinct links that are up (one link when the
    # host has only one, as mlx4-cx3's single two-port function).
    proc = run(ini, "resolve", "-", input=domain("demo", nics=2))
    assert proc.returncode == 0, proc.stderr
    vfs = hostdev_vfs(proc.stdout)
    link_of = {pf_addr: link for link in topo["links"] for pf_addr in link["pfs"]}
    vf_pf = {vf["addr"]: vf["pf"] for p in topo["pfs"] for vf in p["vfs"]}
    links = [link_of[vf_pf[vf]] for vf in vfs]
    assert len(vfs) == 2 and len({link["name"] for link in links}) == min(2, len(topo["links"])), links
    assert all(link["up"] for link in links), links
    assert etree.fromstring(proc.stdout).findtext("name") == "demo"


def test_the_default_spec_is_the_demo_host(tmp_path):
    check_host(tmp_path, simhost.PRESETS["two-dual-port"], [])


def test_a_json_spec_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(CUSTOM_SPEC))
    check_host(tmp_path, CUSTOM_SPEC, ["--spec", path])


@pytest.mark.parametrize("content,words", [
    (None, "No such file or directory"),
    ("{bad", "Expecting property name"),
])
def test_a_bad_spec_is_one_line_naming_the_presets(tmp_path, content, words):
    path = tmp_path / "spec.json"
    if content is not None:
        path.write_text(content)
    proc = simulate(tmp_path, tmp_path / "host", "--spec", path)
    proc.stderr = proc.stderr.encode()
    assert_user_error(proc, "cannot load simulated host spec %s" % path, words,
                      "(presets: %s)" % ", ".join(simhost.PRESETS))
    assert not (tmp_path / "host").exists()
