import os
import re

from setuptools import find_packages, setup

# One version, in vfpick/__init__.py (`vfpick --version`); debian/changelog must agree (a test checks).
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "vfpick", "__init__.py")) as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

setup(
    name="vfpick",
    version=VERSION,
    description="Host-side SR-IOV VF picker for libvirt/KVM: spread a domain's NICs over distinct links",
    packages=find_packages(include=["vfpick", "vfpick.*"]),
    python_requires=">=3.9",
    # Lower bounds admit Debian 12's packages (the .deb runs on them).
    install_requires=["lxml>=4.9", "pyroute2>=0.7.2", "pyudev>=0.24", "libvirt-python>=9.0",
                      "prometheus_client>=0.16"],
    extras_require={"test": ["pytest", "pytest-rerunfailures", "hypothesis", "pyyaml"], "bench": ["matplotlib"]},
    entry_points={"console_scripts": ["vfpick = vfpick.cli:main"]},
)
