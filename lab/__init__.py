"""vfpick's SR-IOV lab: QEMU's emulated igb (82576, SR-IOV) behind an emulated Intel IOMMU, in a
TCG lab VM (L1) with libvirt and this checkout's .deb; nested guests (L2) get real VFs.

scripts/test-lab is the entry point; lab/tests/ holds the scenarios (not collected by
scripts/test). See docs/lab.md.
"""
