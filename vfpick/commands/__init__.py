"""The commands that talk to libvirt, one module each: define/repick, release, reconcile,
attach/detach (hotplug), watch, drain/undrain, rebalance.

Each returns a report; vfpick/cli.py renders it (stdout lines, `vfpick: warning: ...` lines,
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
