"""`vfpick check`: a preflight of the host, run before and after install.

Each finding is ``ok``, ``warn`` or ``fail``, one line with its fix. Every outside path is a
field of ``Paths`` (defaults: the real ones), so tests point them at a temporary tree. The
hook, daemon and libvirt version findings are vfpick/commands/checkhook.py; the host's (config, IOMMU,
vfio-pci, PFs, watcher, state) are here.
Nothing here changes the host: it reads sysfs, /proc, the hooks dir and the state dir, and
asks ``libvirtd --version``.
"""

import os
import shlex
import stat

from vfpick import numbers, pci
from vfpick.commands.findings import (  # noqa: F401  (check's public names)
    FAIL, OK, QEMU_D_MIN, WARN, Finding, Paths, iso_time, list_dir, read_text)


# ---------------------------------------------------------------- config

def check_config(config_path):
    from vfpick import config as configmod
    from vfpick.errors import VfpickError

    try:
        config = configmod.load(config_path)
    except VfpickError as e:
        return None, Finding("config", FAIL, str(e), "fix the config (sample: etc/vfpick.ini)")
    pfs = {a for pool in config.pools.values() for a in pool.pfs}
    return config, Finding("config", OK, "%s: %d pool(s), %d PF(s), %d [link] section(s)"
                           % (config_path, len(config.pools), len(pfs), len(config.links)), "")


# ---------------------------------------------------------------- IOMMU and vfio-pci

def check_iommu(sysfs_root, vfs):
    groups_dir = os.path.join(sysfs_root, "kernel", "iommu_groups")
    groups = list_dir(groups_dir)
    if not groups:
        return [Finding("iommu", FAIL, "IOMMU off: no groups in %s; VFs cannot be passed to guests"
                        % groups_dir, "enable VT-d/AMD-Vi in the firmware and boot with "
                        "intel_iommu=on (or amd_iommu=on) iommu=pt")]
    out = [Finding("iommu", OK, "IOMMU on: %d groups" % len(groups), "")]
    shared, missing = [], []
    for vf in vfs:
        link = os.path.join(sysfs_root, "bus", "pci", "devices", vf, "iommu_group")
        try:
            group = os.path.basename(os.readlink(link))
        except OSError:
            missing.append(vf)
            continue
        others = [d for d in list_dir(os.path.join(groups_dir, group, "devices")) if d != vf]
        if others:
            shared.append((vf, group, others))
    if missing:
        out.append(Finding("iommu-groups", FAIL, "%d pool VF(s) in no IOMMU group (%s)"
                           % (len(missing), ", ".join(missing[:4])),
                           "check dmesg for DMAR/IOMMU errors on these devices"))
    if shared:
        vf, group, others = shared[0]
        out.append(Finding("iommu-groups", WARN, "%d pool VF(s) share their IOMMU group (VF %s in "
                           "group %s with %s): VFIO passes a whole group, so these VFs cannot go "
                           "to different guests" % (len(shared), vf, group, ", ".join(others[:3])),
                           "put the card in a slot whose upstream ports have ACS (check lspci -vv "
                           "for ACSCtl), or a platform that isolates it"))
    elif vfs and not missing:
        out.append(Finding("iommu-groups", OK, "every pool VF (%d) is in an IOMMU group of its own "
                           "(ACS)" % len(vfs), ""))
    return out


def _modules_dir(paths):
    return paths.modules_dir or os.path.join("/lib/modules", os.uname().release)


# A stock Debian 12 modules.dep is ~526 KiB with vfio-pci at byte ~312,000: the kernel's module
# lists are read whole (bounded, far above any real one).
MODULES_LIST_MAX = 16 << 20


def _module_name(path):
    """kmod's name of a module file: basename before .ko, '-' as '_' (vfio-pci.ko.xz -> vfio_pci)."""
    base = path.strip().rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_") if ".ko" in base else None


def vfio_pci_module(modules_dir):
    """Where vfio-pci comes from in *modules_dir*: "builtin", "module", or None. Pure over the
    tree: modules.builtin (built into the kernel) and modules.dep (a loadable module), read whole,
    each line's module matched by name (mlx5-vfio-pci and vfio-pci-core are not vfio-pci)."""
    for fname, where in (("modules.builtin", "builtin"), ("modules.dep", "module")):
        text = read_text(os.path.join(modules_dir, fname), MODULES_LIST_MAX) or ""
        for line in text.splitlines():
            if _module_name(line.split(":", 1)[0]) == "vfio_pci":
                return where
    return None


def check_vfio(sysfs_root, paths):
    if os.path.isdir(os.path.join(sysfs_root, "bus", "pci", "drivers", "vfio-pci")):
        return Finding("vfio-pci", OK, "vfio-pci driver loaded", "")
    mods = _modules_dir(paths)
    where = vfio_pci_module(mods)
    if where == "builtin":
        return Finding("vfio-pci", OK, "vfio-pci built into the kernel", "")
    alias = read_text(os.path.join(mods, "modules.alias"), MODULES_LIST_MAX) or ""
    if where == "module" or " vfio_pci\n" in alias:
        return Finding("vfio-pci", OK, "vfio-pci module available in %s (libvirt loads it for "
                       "managed hostdevs)" % mods, "")
    return Finding("vfio-pci", FAIL, "no vfio-pci: not loaded (%s) and not in %s"
                   % (os.path.join(sysfs_root, "bus/pci/drivers/vfio-pci"), mods),
                   "install the kernel's modules package (vfio-pci.ko) or build CONFIG_VFIO_PCI")


# ---------------------------------------------------------------- pool PFs and port identity

def _speed(mbps):
    if not mbps:
        return "speed unknown"
    return "%dG" % (mbps // 1000) if mbps % 1000 == 0 else "%dM" % mbps


def check_pfs(config, topo):
    from vfpick.host import topology

    out = []
    for pool in config.pools.values():
        for name in pool.missing:
            out.append(Finding("pf", FAIL, "PF %s of [pool %s] is not on this host (netdev renamed "
                               "by a kernel upgrade? card removed?); the pool works with %d PF%s"
                               % (name, pool.name, len(pool.pfs), "" if len(pool.pfs) == 1 else "s"),
                               "fix [pool %s] pfs in %s (ip -br link lists the netdevs)"
                               % (pool.name, config.path)))
    for addr in sorted({a for pool in config.pools.values() for a in pool.pfs}, key=pci.sort_key):
        pf = topo.pfs.get(addr)
        if pf is None:
            out.append(Finding("pf", FAIL, "PF %s of the config is gone" % addr,
                               "check the card and its driver (lspci -s %s -k)" % addr))
            continue
        name = "PF %s (%s)" % (pf.netdev or "no netdev", addr)
        if not pf.num_vfs:
            out.append(Finding("pf", FAIL, "%s: SR-IOV off (sriov_numvfs = 0 of %s)"
                               % (name, pf.total_vfs), "echo N > /sys/bus/pci/devices/%s/"
                               "sriov_numvfs, and make it persistent (udev rule or systemd unit)"
                               % addr))
        elif pf.netdev is None:
            out.append(Finding("pf", WARN, "%s: no uplink netdev (driver unbound?): link state "
                               "and speed unknown" % name, "bind the PF to its driver"))
        elif not topology.link_up(pf):
            out.append(Finding("pf", WARN, "%s: link down, %d VFs; new picks avoid it" % (name, pf.num_vfs),
                               "check the cable and the switch port (ip link show %s)" % pf.netdev))
        elif not pf.speed:
            out.append(Finding("pf", WARN, "%s: link up, speed unknown: it counts as the pool's "
                               "slowest link" % name, "ethtool %s" % pf.netdev))
        else:
            out.append(Finding("pf", OK, "%s: %d/%s VFs, link up, %s, link %s"
                               % (name, pf.num_vfs, pf.total_vfs, _speed(pf.speed),
                                  topo.link_of[addr]), ""))
    return out


def check_port_identity(config, topo):
    """Multi-PF cards whose PFs say nothing about their port, and multi-port functions."""
    pool_pfs = {a for pool in config.pools.values() for a in pool.pfs}
    cards = {}
    for addr in topo.pfs:
        cards.setdefault(topo.card_of[addr], []).append(addr)
    out = []
    for card, members in sorted(cards.items()):
        if not pool_pfs & set(members) or len(members) < 2:
            continue
        blind = [a for a in members if topo.links[topo.link_of[a]].basis == "pf"]
        if blind:
            names = ", ".join(topo.pfs[a].netdev or a for a in blind)
            out.append(Finding("port-identity", WARN, "card %s: %d PFs (%s) tell no port (no "
                               "phys_port_id, no devlink port name): vfpick counts each as its own "
                               "link" % (card, len(blind), names),
                               "if some are partitions of one port (NPAR), list them in a "
                               "[link NAME] section"))
        else:
            bases = sorted({topo.links[topo.link_of[a]].basis for a in members})
            out.append(Finding("port-identity", OK, "card %s: %d PFs on %d link(s), by %s"
                               % (card, len(members), len({topo.link_of[a] for a in members}),
                                  ", ".join(bases)), ""))
    for addr in sorted(pool_pfs & set(topo.pfs), key=pci.sort_key):
        pf = topo.pfs[addr]
        if pf.ports > 1:
            out.append(Finding("multi-port", WARN, "PF %s (%s) drives %d ports from one PCI function "
                               "(mlx4-style): vfpick cannot tell which port a VF uses, so distinct="
                               "link cannot be kept on it" % (pf.netdev, addr, pf.ports),
                               "keep this PF out of pools that need distinct=link, or use distinct=card"))
        if pf.representors:
            out.append(Finding("switchdev", OK, "PF %s (%s) is in switchdev mode: uplink %s, %d "
                               "representors ignored" % (pf.netdev, addr, pf.netdev,
                                                         pf.representors), ""))
    return out


# ---------------------------------------------------------------- watcher and state

def check_watcher(paths):
    for entry in list_dir(paths.proc_root):
        if numbers.whole(entry, 1) in (None, os.getpid()):
            continue
        argv = (read_text(os.path.join(paths.proc_root, entry, "cmdline")) or "").split("\0")
        for i, arg in enumerate(argv):
            if os.path.basename(arg) == "vfpick" and "watch" in argv[i + 1:]:
                return Finding("watcher", OK, "vfpick watch running (pid %s)" % entry, "")
    return Finding("watcher", WARN, "vfpick watch is not running: domains defined with plain "
                   "virsh define keep unresolved pool interfaces (their start is refused)",
                   "systemctl enable --now vfpick-watch (etc/systemd/vfpick-watch.service), or "
                   "define with vfpick define")


def check_state(config):
    from vfpick.errors import VfpickError
    from vfpick.state import StateStore

    path, uid = config.state_dir, os.geteuid()
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Finding("state", OK, "state dir %s does not exist yet: created 0700 at first use" % path, "")
    except OSError as e:
        return Finding("state", FAIL, "cannot stat state dir %s: %s" % (path, e.strerror),
                       "check the path and its parents")
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return Finding("state", FAIL, "state dir %s is not a plain directory" % path,
                       "replace it with a directory (mkdir -m 700 %s)" % shlex.quote(path))
    if st.st_uid != uid:
        return Finding("state", FAIL, "state dir %s is owned by uid %d; vfpick runs as uid %d and "
                       "refuses it" % (path, st.st_uid, uid), "chown %d %s" % (uid, shlex.quote(path)))
    if stat.S_IMODE(st.st_mode) & 0o022:
        return Finding("state", FAIL, "state dir %s has mode %04o: others could have planted its "
                       "files, so vfpick refuses it" % (path, stat.S_IMODE(st.st_mode)),
                       "check its files, then chmod 700 %s" % shlex.quote(path))
    if stat.S_IMODE(st.st_mode) & 0o077:
        return Finding("state", WARN, "state dir %s has mode %04o: others can read or plant files"
                       % (path, stat.S_IMODE(st.st_mode)), "chmod 700 %s" % shlex.quote(path))
    claims = os.path.join(path, "claims.json")
    try:
        cst = os.lstat(claims)
    except OSError:
        cst = None
    if cst is not None and (cst.st_uid != uid or stat.S_IMODE(cst.st_mode) & 0o077):
        return Finding("state", WARN, "%s: owner %d, mode %04o" % (claims, cst.st_uid,
                                                                  stat.S_IMODE(cst.st_mode)),
                       "chown %d %s && chmod 600 %s" % (uid, shlex.quote(claims), shlex.quote(claims)))
    try:
        count = len(StateStore(path).snapshot().all())
    except VfpickError as e:
        return Finding("state", FAIL, str(e), "vfpick reconcile --rebuild (the bad file is kept)")
    return Finding("state", OK, "state dir %s: owner %d, mode %04o, %d claim(s)"
                   % (path, uid, stat.S_IMODE(st.st_mode), count), "")


def check_lost(config):
    """Active claims whose VF the running domain no longer has (stale.lost_vfs)."""
    from vfpick import stale
    from vfpick.errors import VfpickError
    from vfpick.state import StateStore

    try:
        claims = StateStore(config.state_dir).snapshot().all()
    except VfpickError:
        claims = []  # check_state reports the state itself
    lost = stale.lost_vfs(claims, stale.domain_index(config))
    if not lost:
        return Finding("claims", OK, "every active claim's VF is in its running domain", "")
    mine = [c for c in claims if c.vf in lost]
    first = mine[0]
    return Finding("claims", WARN, "%d active claim(s) on VFs their running domain no longer has "
                   "(VF %s of '%s', MAC %s): QEMU unplugged it (sriov_numvfs changed under the "
                   "guest?); the guest runs without that NIC"
                   % (len(mine), first.vf, first.domain, first.mac),
                   "vfpick detach %s %s --live (the claim stays reserved for the definition), or "
                   "restart the domain to plug the VF back" % (first.domain, first.mac))


def check_heal(config, topo):
    """heal = live on a pool that cannot heal: no spare distinct link (healplan.cannot_heal)."""
    from vfpick.plan import healplan
    from vfpick.errors import VfpickError
    from vfpick.state import StateStore

    live = [p for p in config.pools.values() if p.heal == "live"]
    if not live:
        return []
    try:
        snapshot = StateStore(config.state_dir).snapshot()
        claims, drained = snapshot.mapping(), snapshot.drained()
    except VfpickError:
        claims, drained = {}, frozenset()  # check_state reports the state itself
    out = []
    for pool in live:
        why = healplan.cannot_heal(topo, pool, claims, drained)
        if why:
            out.append(Finding("heal", WARN, "[pool %s] heal = live cannot heal: %s" % (pool.name, why),
                               "add PFs on another link to the pool, or set heal = report"))
        else:
            out.append(Finding("heal", OK, "[pool %s] heal = live: a spare distinct link for every "
                               "domain's NICs (hold-down %gs, at most %d moves a minute)"
                               % (pool.name, pool.heal_holddown, pool.heal_moves_per_minute), ""))
    return out


# ---------------------------------------------------------------- all of it

def run(config_path, paths=None):
    """Every finding for the host, in report order."""
    from vfpick.commands import checkhook
    from vfpick.host import topology

    paths = paths or Paths()
    config, finding = check_config(config_path)
    findings = [finding]
    sysfs_root = config.sysfs_root if config else "/sys"
    topo = topology.for_config(config) if config else None
    vfs = sorted({vf for pf in topo.pfs.values() for vf in pf.vfs}) if topo else []
    findings += check_iommu(sysfs_root, vfs)
    findings.append(check_vfio(sysfs_root, paths))
    if config:
        findings += check_pfs(config, topo)
        findings += check_port_identity(config, topology.discover(sysfs_root, None, config.links,
                                                                  vf_details=False))
    hook_findings, hook_mtime = checkhook.check_hook(paths, config_path)
    findings += hook_findings
    findings.append(checkhook.check_daemon(paths, hook_mtime))
    findings.append(checkhook.check_libvirt_version(paths))
    findings.append(check_watcher(paths))
    if config:
        findings.append(check_state(config))
        findings.append(check_lost(config))
        findings += check_heal(config, topo)
    return findings


def exit_code(findings):
    return 1 if any(f.status == FAIL for f in findings) else 0


def render(findings):
    width = max(len(f.check) for f in findings)
    lines = []
    for f in findings:
        line = "%-4s  %-*s  %s" % (f.status, width, f.check, f.message)
        lines.append(line + ("  -> %s" % f.fix if f.fix else ""))
    fails = sum(f.status == FAIL for f in findings)
    warns = sum(f.status == WARN for f in findings)
    lines.append("%d fail, %d warn, %d ok" % (fails, warns, len(findings) - fails - warns))
    return "\n".join(lines)


def to_json(findings):
    import json

    return json.dumps({"ok": exit_code(findings) == 0,
                       "findings": [f._asdict() for f in findings]}, indent=2)
