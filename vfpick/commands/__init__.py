"""Every command, one module each: define/repick, release, reconcile, attach/detach (hotplug),
watch, drain/undrain, rebalance (these talk to libvirt), and status/topology, check (with
checkhook and findings), metrics, install-hook.

The libvirt ones return a report; vfpick/cli.py renders it (stdout lines, `vfpick: warning: ...` lines,
the exit status). Nothing here prints: the long-running watcher logs through the callback
the CLI hands it. libvirt is reached through vfpick/domain/virt.py only.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Report:
    """lines: stdout, one line each; warnings: one `vfpick: warning: ...` line each on stderr,
    after the lines; result: what the command made, for its callers (the resolve, the
    reconcile actions, the claims released); status: the exit status."""
    lines: tuple = ()
    warnings: tuple = ()
    result: object = None
    status: int = 0
