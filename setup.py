from setuptools import find_packages, setup

setup(
    name="vfpick",
    version="0.1.0",
    description="Host-side SR-IOV VF picker for libvirt/KVM: spread a domain's NICs over distinct links",
    packages=find_packages(include=["vfpick", "vfpick.*"]),
    python_requires=">=3.9",
    install_requires=["lxml", "pyroute2", "pyudev", "libvirt-python"],
    extras_require={"test": ["pytest", "hypothesis"], "bench": ["matplotlib"]},
    entry_points={"console_scripts": ["vfpick = vfpick.cli:main"]},
)
