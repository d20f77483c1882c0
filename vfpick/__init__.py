"""vfpick: a host-side SR-IOV VF picker for libvirt/KVM hosts.

Kept empty on purpose: the qemu hook imports this package on every VM start.
"""

__version__ = "0.1.0"
