"""What the labplus scenarios read beyond lab.labhost: the L2's PCI reports over time, a VF's
trust/spoofchk as the PF shows them, libvirt over TCP between two L1s, the hook on and off.

The L2 init (lab/guest/l2-init) prints `L2-PCI-NOW uptime=... ADDR=VVVV:DDDD ...` at boot and
whenever the guest's PCI device list changes (checked every 2 s): hotplug and the failover
unplug show up there, as the guest saw them.
"""
import re
import time

from lab.host import LabError
from lab.labhost import wait_until

IGBVF = "8086:10ca"
HOOK = "/etc/libvirt/hooks/qemu.d/vfpick"


def serial_log(name):
    return f"/var/lib/libvirt/qemu/{name}-serial.log"


def pci_reports(host, name):
    """[(uptime, [ADDR=VVVV:DDDD, ...])] of NAME's L2-PCI-NOW lines, oldest first."""
    out = host.run(f"grep -a '^L2-PCI-NOW' {serial_log(name)} 2>/dev/null", quiet=True).stdout
    reports = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1].startswith("uptime="):
            reports.append((float(fields[1][7:]), fields[2:]))
    return reports


def guest_vfs(report):
    """Guest PCI addresses of the igb VFs in one report's device list."""
    return sorted(dev.split("=")[0] for dev in report if dev.endswith("=" + IGBVF))


def netdevs(report):
    """{guest PCI address: ifindex of its netdev} in one report's device list (if:ADDR=N)."""
    return dict(tok[3:].split("=", 1) for tok in report if tok.startswith("if:") and "=" in tok)


def wait_guest_vfs(host, name, count, timeout=180):
    """The first report (after any earlier ones) in which NAME's guest sees COUNT igb VFs."""
    def seen():
        reports = pci_reports(host, name)
        return reports and len(guest_vfs(reports[-1][1])) == count and reports[-1]
    report = wait_until(seen, timeout, interval=2)
    if not report:
        last = pci_reports(host, name)[-1:] or "no L2-PCI-NOW line"
        raise LabError(f"{name}: the guest did not report {count} igb VF(s) in {timeout} s; last: {last}")
    if host.vm.evidence:
        host.vm.evidence(f"  [{host.vm.name}] guest {name} at uptime {report[0]:.0f} s sees {count} "
                         f"VF(s): {guest_vfs(report[1])}\n")
    return report


_VF_LINE = re.compile(r"^\s+vf (\d+)\b.*spoof checking (on|off).*trust (on|off)", re.M)


def pf_link_show(host, vf, as_json=False):
    """(VF's index on its PF, `ip -d link show PF` of its PF: text, or ip's JSON with as_json)."""
    r = host.run(f"pf=$(basename $(readlink -f /sys/bus/pci/devices/{vf}/physfn)); "
                 f"for v in /sys/bus/pci/devices/$pf/virtfn*; do "
                 f"[ $(basename $(readlink -f $v)) = {vf} ] && echo ${{v##*virtfn}}; done; "
                 f"ip {'-j ' if as_json else ''}-d link show $(ls /sys/bus/pci/devices/$pf/net)",
                 check=True)
    index, _, text = r.stdout.partition("\n")
    return index, text


def vf_settings(host, vf):
    """(trust, spoofchk) of VF (a PCI address) as `ip -d link show PF` reports them."""
    index, text = pf_link_show(host, vf)
    for m in _VF_LINE.finditer(text):
        if m.group(1) == index.strip():
            return m.group(3) == "on", m.group(2) == "on"
    raise LabError(f"no 'vf {index.strip()}' line for {vf} in: {text}")


def set_vf(host, vf, trust, spoofchk):
    """`ip link set PF vf N trust .. spoofchk ..` by hand, as an operator would."""
    host.run(f"pf=$(basename $(readlink -f /sys/bus/pci/devices/{vf}/physfn)); "
             f"for v in /sys/bus/pci/devices/$pf/virtfn*; do "
             f"[ $(basename $(readlink -f $v)) = {vf} ] && n=${{v##*virtfn}}; done; "
             f"ip link set $(ls /sys/bus/pci/devices/$pf/net) vf $n trust {_w(trust)} spoofchk {_w(spoofchk)}",
             check=True)


def _w(flag):
    return "on" if flag else "off"


def hook_installed(host, on):
    """Install or remove vfpick's hook (the daemon restarted, as install-hook tells users)."""
    if on:
        host.vfpick("install-hook", check=True)
        time.sleep(2)   # as lab.labhost.setup: check compares daemon and hook times by the second
    else:
        host.run(f"rm -f {HOOK}", check=True)
    host.restart_daemon()


def listen_tcp(host):
    """libvirt over plain TCP on the private link (lab only: no auth on an isolated segment).
    The monolithic daemon takes libvirtd-tcp.socket; modular hosts go through virtproxyd."""
    daemon = "libvirtd" if host.daemon == "libvirtd" else "virtproxyd"
    host.run(f"grep -q '^auth_tcp' /etc/libvirt/{daemon}.conf || echo 'auth_tcp = \"none\"' >> /etc/libvirt/{daemon}.conf; "
             f"systemctl stop {daemon}.service; systemctl start {daemon}-tcp.socket; "
             f"systemctl start {daemon}.service; systemctl is-active {daemon}-tcp.socket {daemon}.service",
             timeout=120, check=True)
    return f"qemu+tcp://{host.vm.link_ip}/system"
