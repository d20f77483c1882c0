"""The host: sysfs topology, PCI VFs, rtnetlink, VF settings, simulated hosts, host events,
which libvirt daemon runs."""
