"""Named exceptions. Each carries a one-line, user-facing message.

They are turned into ``vfpick: <message>`` and exit status 1 at the CLI and hook
edges only; library code raises them and never prints.
"""


class VfpickError(Exception):
    """A user error: bad input, bad config, a request that cannot be met."""

    def __str__(self):
        # One line, always: multi-line messages break the hook's stderr in virsh.
        return " ".join(str(self.args[0] if self.args else "").split())


class ConfigError(VfpickError):
    """The INI file is missing, malformed or holds a bad value."""


class XmlError(VfpickError):
    """Domain XML is malformed, hostile or not a domain."""


class PoolError(VfpickError):
    """A pool request cannot be met (unknown pool, exhausted, strict rule)."""


class UnknownPool(PoolError):
    pass


class PoolExhausted(PoolError):
    pass


class DistinctImpossible(PoolError):
    pass


class GuaranteeImpossible(PoolError):
    """guarantee=yes: no link has room left for the NIC's guaranteed rate."""


class PcieAffinityImpossible(PoolError):
    """pcie_affinity=required: no free VF shares a PCIe bridge with the domain's devices."""


class ClaimConflict(VfpickError):
    """A VF is held by another domain or used by another running domain."""


class StateError(VfpickError):
    """The state file cannot be read or written."""


class LockTimeout(StateError):
    """The claims lock was not free within lock_timeout; the message names the lock and holder."""


class StateCorrupt(StateError):
    """The state file exists but does not parse; it is kept untouched."""


class TopologyError(VfpickError):
    """sysfs could not be read; the message names the PCI address."""


class DomainNotFound(VfpickError):
    pass


class LibvirtFailure(VfpickError):
    """libvirt refused a request (define, lookup, connect)."""


class DomainRunning(VfpickError):
    """A move was asked of a running domain (or one that started meanwhile)."""


class DomainChanged(VfpickError):
    """The domain was redefined by someone else while vfpick was moving it."""


class StartedDuringMove(DomainRunning):
    """The domain started after its new definition was in: both VF sets stay claimed."""


class LiveMoveFailed(VfpickError):
    """A live NIC move stopped at one step; the message says what the domain runs on now."""
