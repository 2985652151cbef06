"""The engine's layer order, checked on the source: every import of every module, including the
imports inside functions, goes to the same layer or a lower one, and no two modules import each
other through any chain (no cycles, not even hidden inside functions).

Lowest first (the README's Development section draws the same picture):
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import dswb

LAYERS: list[tuple[str, ...]] = [
    ("dswb.util",),                                                  # standard library only
    ("dswb.errors", "dswb.stats"),
    ("dswb.config", "dswb.rundir"),
    ("dswb.presets", "dswb.launch"),
    ("dswb.engine.data", "dswb.engine.fp8", "dswb.engine.telemetry", "dswb.engine.context"),
    ("dswb.engine.model", "dswb.engine.placement", "dswb.engine.preference"),
    ("dswb.engine.adapters", "dswb.engine.distributed", "dswb.engine.moe"),
    ("dswb.engine.checkpoint",),
    ("dswb.engine.train",),
    ("dswb.engine.eval", "dswb.engine.rl"),
    ("dswb.engine.stages",),
    ("dswb.engine.runner", "dswb.tui"),
    ("dswb.bench",),
    ("dswb.cli",),
    ("dswb.__main__",),
]
NO_CODE = {"dswb", "dswb.engine"}   # packages whose __init__ holds only a docstring
ROOT = Path(dswb.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    best, found = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, found = len(p), i
    return found


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every dswb module `path` imports, anywhere in the file (resolved to the deepest module), except
    under `if TYPE_CHECKING:` (never executed: annotations only)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                 for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("dswb"):
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    graph = {m: imports_of(p, modules) for m, p in files.items()}
    # `import a.b.c` also runs a/__init__ and a/b/__init__: count only explicit edges, but drop an edge
    # from a module to its own package's __init__ (Python imports it first anyway)
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}


def test_every_module_has_a_layer():
    assert [m for m in import_graph() if layer_of(m) is None and m not in NO_CODE] == []


def test_no_module_imports_from_a_higher_layer():
    upward = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
              for m, targets in sorted(import_graph().items()) if m not in NO_CODE
              for t in sorted(targets) if layer_of(t) is not None and layer_of(t) > layer_of(m)]
    assert upward == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = defaultdict(int)   # 0 new, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state[nxt] == 1:
                return stack[stack.index(nxt):] + [nxt]
            if state[nxt] == 0 and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state[node] == 0 and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_even_inside_functions():
    assert find_cycle(import_graph()) is None


def test_the_checks_catch_the_cycles_and_upward_imports_this_layout_removed():
    """The two cycles and the upward imports of the old layout, replayed on a copy of the graph."""
    graph = import_graph()
    old = {k: set(v) for k, v in graph.items()}
    old["dswb.engine.train.step"].add("dswb.engine.distributed.pipeline")
    old["dswb.engine.distributed.pipeline"].add("dswb.engine.eval.loss")   # train_step -> ... -> evaluate
    assert find_cycle(old) is not None
    old = {k: set(v) for k, v in graph.items()}
    old["dswb.engine.checkpoint.dcp"].add("dswb.engine.checkpoint.io")     # checkpoint <-> dist_checkpoint
    assert find_cycle(old) is not None
    for low, high in [("dswb.engine.rl.rewards", "dswb.engine.stages.common"),
                      ("dswb.engine.eval.saved_model", "dswb.engine.stages.rm"),
                      ("dswb.bench.faults", "dswb.cli.app")]:
        assert layer_of(high) > layer_of(low), (low, high)
    assert layer_of("dswb.bench.faults") < layer_of("dswb.cli.app")
