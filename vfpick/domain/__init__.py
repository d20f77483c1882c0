"""A domain as libvirt holds it: XML splicing, failover pairs, the libvirt adapter (virt).
The hook's expat scan (vfpick.domscan) and the lxml rewriter (vfpick.hostdev) stay at the top."""
