"""One module owns the libvirt binding (vfpick/domain/virt.py): no other vfpick module imports
libvirt, nor reaches into the adapter's private names."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "vfpick"
ADAPTER = PACKAGE / "domain" / "virt.py"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != ADAPTER)


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_the_walk_sees_the_package():
    assert ADAPTER.is_file() and len(MODULES) > 30


def test_the_adapter_imports_libvirt():
    assert "libvirt" in set(_imports(ast.parse(ADAPTER.read_text())))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_adapter_imports_libvirt(path):
    tree = ast.parse(path.read_text(), str(path))
    found = [name for name in _imports(tree) if name == "libvirt" or name.startswith("libvirt.")]
    assert found == [], "%s imports %s: only vfpick/domain/virt.py may" % (path.name, found)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nobody_reaches_into_the_adapter(path):
    tree = ast.parse(path.read_text(), str(path))
    private = sorted({node.attr for node in ast.walk(tree)
                      if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                      and node.value.id == "virt" and node.attr.startswith("_")})
    assert private == [], "%s uses virt.%s" % (path.name, ", virt.".join(private))


# The methods of libvirt's virConnect / virDomain objects vfpick calls: only the adapter may.
BINDING_CALLS = frozenset((
    "open", "openReadOnly", "lookupByName", "lookupByUUIDString", "listAllDomains", "defineXML",
    "networkLookupByName", "registerCloseCallback", "unregisterCloseCallback", "setKeepAlive",
    "domainEventRegisterAny", "XMLDesc", "UUIDString", "isActive", "isPersistent", "create",
    "undefine", "attachDeviceFlags", "detachDeviceFlags", "setMetadata", "getVersion",
    "registerErrorHandler", "virEventRegisterDefaultImpl", "virEventRunDefaultImpl"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nobody_else_calls_the_binding(path):
    tree = ast.parse(path.read_text(), str(path))
    calls = sorted({node.func.attr for node in ast.walk(tree)
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in BINDING_CALLS
                    and not (isinstance(node.func.value, ast.Name) and node.func.value.id in ("os", "io"))})
    assert calls == [], "%s calls libvirt's %s itself: go through vfpick/domain/virt.py" % (path.name, calls)
