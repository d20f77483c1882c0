"""No vfpick module reaches into another's private names (issue 21 item 3).

A name with a leading underscore is its module's own business: what two modules share is
public and documented there, or it lives in one place. The walk is over the source tree, by
the AST, so a comment or a string that mentions ``mod._name`` does not count.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "vfpick")

# The accesses that stay, each with why. Not module names, so never counted: a record's
# namedtuple API (``claim._replace``, ``_asdict``, ``_fields``) and argparse's
# ``parser._actions`` in docgen.py, which have no public equivalent.
ALLOWED = set()


def _modules():
    out = set()
    for top, _dirs, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(top, name), REPO)[:-3].replace(os.sep, ".")
                out.add(rel[:-len(".__init__")] if rel.endswith(".__init__") else rel)
    return out


def _sources():
    for top, _dirs, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(top, name)
                yield os.path.relpath(path, REPO).replace(os.sep, "/"), path


def _module_names(tree, rel, modules):
    """{local name: vfpick module} bound by the file's imports (any scope)."""
    package = rel.rsplit("/", 1)[0].replace("/", ".")
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    # `import vfpick.x` binds `vfpick`; `import vfpick.x as y` binds y.
                    names[alias.asname or alias.name.split(".")[0]] = alias.asname and alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                if base + "." + alias.name in modules:
                    names[alias.asname or alias.name] = base + "." + alias.name
    return names


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id] + parts[::-1])
    return None


def _accesses(tree, rel, modules):
    """("module._name", line) of every attribute access in *tree* whose value is a vfpick
    module (a name an import bound to one, or a dotted ``vfpick.x``) and whose name is private."""
    names = _module_names(tree, rel, modules)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") \
                or node.attr.startswith("__"):
            continue
        value = _dotted(node.value)
        if value is not None and (value in names or value in modules):
            found.append((value + "." + node.attr, node.lineno))
    return found


def private_accesses():
    """(file, "module._name", line) over the package's source tree."""
    modules = _modules()
    found = []
    for rel, path in _sources():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        found.extend((rel, what, line) for what, line in _accesses(tree, rel, modules))
    return found


def test_no_module_uses_another_modules_private_names():
    bad = ["%s:%d: %s" % (rel, line, what) for rel, what, line in private_accesses()
           if (rel, what) not in ALLOWED]
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, expected", [
    ("from vfpick.plan import policy\npolicy._speeds(1, 2)\n", ["policy._speeds"]),
    ("from vfpick.plan import optimum as o\nx = o._INF\n", ["o._INF"]),
    ("import vfpick.plan.rebalance\nvfpick.plan.rebalance._pool_of_pf({})\n", ["vfpick.plan.rebalance._pool_of_pf"]),
    ("def f():\n    from vfpick.plan import rebalance\n    return rebalance._Population\n",
     ["rebalance._Population"]),
    # Not a module: a record's namedtuple API, argparse's parser, a dunder.
    ("from vfpick.records import Claim\nClaim(*'a' * 8)._replace(vf=1)\n", []),
    ("import argparse\nparser = argparse.ArgumentParser()\nparser._actions\n", []),
    ("from vfpick.plan import policy\npolicy.__name__\n", []),
])
def test_the_walk_finds_module_private_names(source, expected):
    got = [what for what, _line in _accesses(ast.parse(source), "vfpick/example.py", _modules())]
    assert got == expected
