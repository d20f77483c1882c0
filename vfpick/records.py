"""Small immutable records shared by every module.

collections.namedtuple rather than dataclasses or typing.NamedTuple: the qemu
hook imports these on every VM start, and ``dataclasses`` (via ``inspect``) or
``typing`` would cost it more than the rest of its work (the rule: docs/DESIGN.md, "Records").
"""

from collections import namedtuple

PF = namedtuple(
    "PF",
    "addr netdev driver vendor device numa_node total_vfs num_vfs vfs "
    "carrier operstate speed phys_port_id phys_switch_id phys_port_name ports representors pcie",
    defaults=(1, 0, ()),
)
PF.__doc__ = """A physical function.

addr: canonical PCI address. netdev: interface name or None (no ``net/``).
numa_node: int, -1 when the kernel does not know. vfs: VF addresses ordered by
VF index. carrier: True/False, None when unreadable. speed: Mb/s, None when -1
or unreadable. phys_*: strings, None when absent or unreadable.
netdev is the uplink: never a switchdev representor that shares the PF's ``net/``.
ports: uplink netdevs of the function (2 on mlx4-style multi-port functions, where
vfpick cannot tell which port a VF uses). representors: netdevs in ``net/`` that are
VF/SF representors (switchdev mode). pcie: the PF's PCIe path, the components of its sysfs
device path below ``devices/`` (``("pci0000:00", "0000:00:01.0", ..., addr)``), () unknown.
"""

VF = namedtuple("VF", "addr pf index numa_node driver netdev")
VF.__doc__ = """A virtual function. index: N of the PF's ``virtfnN``.
driver: bound driver name or None. netdev: None when bound to vfio-pci."""

Link = namedtuple("Link", "name pfs up speed basis evidence", defaults=(None, None))
Link.__doc__ = """One physical link (cable). pfs: PF addresses sharing it (NPAR
partitions, or a ``[link]`` section). speed: Mb/s or None when unknown.
basis: how its identity was derived: phys_port_id | phys_port_name | link_section | pf.
evidence: the value that decided it (the port id, ``CARD port NAME``, the section, the PF)."""

Topology = namedtuple("Topology", "pfs vfs links link_of card_of node_cpus")
Topology.__doc__ = """What sysfs says about the host's SR-IOV devices.

pfs: {addr: PF}; vfs: {addr: VF}; links: {name: Link}; link_of: {pf addr: link
name}; card_of: {pf addr: card id}; node_cpus: {numa node: frozenset of cpus}.
The mappings are read-only views.
"""

Claim = namedtuple("Claim", "vf pf link pool domain uuid mac active pending applied restore "
                   "rate_mbps peak_mbps min_rate_mbps heal", defaults=(None,) * 7)
Claim.__doc__ = """One VF held by one domain. Keyed by vf; the domain by uuid
(names change, UUIDs do not). active: the domain is running on it.

pending: the Writer of a define/repick that wrote the claim and has not yet heard libvirt's
answer, else None (see docs/DESIGN.md, "Reconcile"). applied: VfSettings vfpick set on the VF
at prepare, else None. restore: VfSettings to put back on the VF when the claim ends (a setting
None: nothing to put back), else None. rate_mbps, peak_mbps, min_rate_mbps: the NIC's
<bandwidth> in Mb/s (outbound average, outbound peak, inbound floor), None when unset. heal:
the NIC's self-healing history, a tuple of HealEvent (oldest first, at most HEAL_HISTORY), or
None; a live move carries it to the NIC's new claim. The
claim's write generation is the store's business
(ClaimSet.gen), not part of the record: two claims that say the same are equal.
"""

HealEvent = namedtuple("HealEvent", "at outcome from_vf to_vf from_link to_link why")
HealEvent.__doc__ = """One self-healing decision that acted (or tried to) on a NIC: at (Unix
time, whole seconds), outcome (moved | rolled_back | refused), from_vf/from_link (where the NIC
was), to_vf/to_link (where it went or was to go; None for a refusal), why (one phrase, or
None). Only heal = live records them: report changes nothing."""
HEAL_HISTORY = 5  # events kept per NIC: enough to see a flapping cable, bounded in the state file
HEAL_OUTCOMES = ("moved", "rolled_back", "refused")

VfSettings = namedtuple("VfSettings", "trust spoofchk max_tx_rate min_tx_rate",
                        defaults=(None, None))
VfSettings.__doc__ = """VF trust and spoofchk: True, False, or None (not set / not known);
max_tx_rate, min_tx_rate: Mb/s (0: no limit), or None (not set / not known)."""

Writer = namedtuple("Writer", "boot pid start")
Writer.__doc__ = """A process on this host: boot id (/proc/sys/kernel/random/boot_id), pid, and
its start time in clock ticks after boot (/proc/PID/stat field 22), so a reused pid or a
reboot never passes for the writer."""

Nic = namedtuple("Nic", "mac keep_vf rate min_rate", defaults=(None, None))
Nic.__doc__ = """One NIC to place. keep_vf: the VF it already holds when that VF
is still valid, else None. rate: its outbound average in Mb/s (its weight on a link), None
when unset (the pool's nic_rate). min_rate: its guaranteed rate (floor) in Mb/s, or None."""

Request = namedtuple("Request", "uuid pool nics distinct strict numa policy numa_nodes held "
                     "nic_rate guarantee pcie_affinity near",
                     defaults=(1000, False, "preferred", ()))
Request.__doc__ = """What one domain asks of one pool.

nics: tuple of Nic. distinct: card|link|pf|none. strict: bool.
numa: required|preferred|ignore. policy: spread|pack. numa_nodes: frozenset of
the domain's nodes, or None when the domain is not placed. held: VF addresses
the domain keeps from other pools (they count for distinctness and load).
nic_rate: Mb/s a NIC or claim without a rate weighs. guarantee: the pool's guarantee=yes
(the guaranteed rates on a link never exceed its speed). pcie_affinity: required|preferred|
ignore. near: PCIe paths (tuples, as PF.pcie) of the domain's other PCI hostdevs.
"""

Pick = namedtuple("Pick", "mac vf pf link card")
Pick.__doc__ = """The VF chosen for one NIC."""

Rule = namedtuple("Rule", "distinct strict numa")
Rule.__doc__ = """A domain's effective distinct/strict/numa for one pool: its overrides
(``<vfpick:policy>``) where set, else the pool's (resolver.effective)."""

Assignment = namedtuple("Assignment", "mac pool vf pf link bandwidth", defaults=(None,))
Assignment.__doc__ = """One ``<vfpick:nic>`` entry of a domain's metadata: the VF chosen for the
interface with that MAC, and what vfpick recorded with it. As read back by hostdev the values
are the attributes as written (vf/pf not normalized). bandwidth: the NIC's bandwidth.Bandwidth
(``average``/``peak``/``floor``), or None."""
