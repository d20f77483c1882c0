"""The package layout (docs/DESIGN.md's module map): no import cycles, counting the imports
inside functions too (a lazy import is still a dependency), and vfpick/plan/ pure.

Source scans of the checkout (REPO is for data, never imported from)."""

import ast
import os

from clitools import REPO

PACKAGE = os.path.join(REPO, "vfpick")

# What no planner may import: the ways to reach files, processes, sockets, the kernel or
# libvirt; and vfpick's modules that do I/O.
IO_MODULES = {"os", "io", "subprocess", "socket", "select", "selectors", "fcntl", "shutil",
              "pathlib", "tempfile", "glob", "ctypes", "mmap", "signal", "threading", "time",
              "libvirt", "lxml", "pyroute2", "pyudev", "prometheus_client", "urllib", "http"}
# vfpick modules a planner may import: other planners and the pure helpers. config and domscan
# are read for their pure names only (PLAN_USES pins which).
PURE_VFPICK = {"vfpick.records", "vfpick.errors", "vfpick.pci", "vfpick.names", "vfpick.numbers",
               "vfpick.bandwidth", "vfpick.config", "vfpick.domscan"}
PLAN_USES = {"configmod": {"pool_of_pf"}, "domscan": {"DomainFacts", "MetaNic", "normalize_mac"},
             "bandwidth": {"of_meta"}}


def _modules():
    """{dotted name: path} of every module of the package."""
    found = {}
    for root, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, name), REPO)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                found[".".join(rel)] = os.path.join(root, name)
    return found


def _tree(path):
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def _imports(tree, modules):
    """The modules an AST imports (at any depth), each as named: 'os', 'vfpick.plan.policy'."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import at line %d" % node.lineno
            for alias in node.names:
                child = "%s.%s" % (node.module, alias.name)
                out.add(child if child in modules else node.module)
    return out


def _graph():
    modules = _modules()
    return {name: {m for m in _imports(_tree(path), modules) if m in modules and m != name}
            for name, path in modules.items()}


def _cycles(graph):
    """Each strongly connected component of more than one module (Tarjan), sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_the_walk_sees_function_level_imports():
    graph = _graph()
    assert "vfpick.commands.checkhook" in graph["vfpick.commands.check"]  # inside run()
    assert "vfpick.plan.rateplan" in graph["vfpick.plan.rebalance"]


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_every_module_is_in_the_module_map():
    with open(os.path.join(REPO, "docs", "DESIGN.md"), encoding="utf-8") as f:
        design = f.read()
    missing = [rel for rel in sorted(os.path.relpath(p, REPO) for p in _modules().values())
               if "`%s`" % rel not in design]
    assert missing == [], "docs/DESIGN.md's module map lacks %s" % missing


def test_the_planners_do_no_io():
    modules = _modules()
    planners = {n: p for n, p in modules.items() if n.startswith("vfpick.plan.")}
    assert {"vfpick.plan.policy", "vfpick.plan.rebalance", "vfpick.plan.reconcile"} <= set(planners)
    for name, path in sorted(planners.items()):
        tree = _tree(path)
        for imported in _imports(tree, modules):
            top = imported.split(".")[0]
            assert top not in IO_MODULES, "%s imports %s" % (name, imported)
            if top == "vfpick":
                assert imported.startswith("vfpick.plan") or imported in PURE_VFPICK, (
                    "%s imports %s, which is not a planner nor a pure helper" % (name, imported))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("open", "exec", "eval", "__import__", "input", "print"), (
                    "%s calls %s() at line %d" % (name, node.func.id, node.lineno))
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in PLAN_USES):
                assert node.attr in PLAN_USES[node.value.id], (
                    "%s uses %s.%s: only the pure %s" % (name, node.value.id, node.attr,
                                                         sorted(PLAN_USES[node.value.id])))
