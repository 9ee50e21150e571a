"""The import graph of uge_hf (drawn in docs/DESIGN.md): no cycle, nothing imports upward, fast side-effect-free import.

Every `import` counts, at module level or inside a function (a lazy import still ties two modules together).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "uge_hf"
TOP = {"uge_hf", "uge_hf.cli"}  # the API surface and the command line: nothing inside the package imports them
LEAVES = {"uge_hf.cli", "uge_hf.demo"}  # front ends: only the other front end imports them (`uge-hf demo`)
TRAINING = {"uge_hf.training", "uge_hf.trajectory", "uge_hf.solver", "uge_hf.methods.gradient_matching"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the uge_hf modules it imports (a `from .x import name` of a submodule counts as that submodule)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets.add(base)
                targets |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def below(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_nothing_imports_upward():
    graph = import_graph()
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                    if (b in TOP and a not in TOP)
                    or (b.startswith(tuple(LEAVES)) and not a.startswith(tuple(LEAVES))))
    assert upward == []


def test_the_release_writer_and_readers_do_not_pull_in_the_trainer():
    """Writing and reading a release needs no trainer: only gradient-matching (imported by name, when chosen), the
    lock method's surrogate poison (`adversarial`, when chosen), `authorized_training`, `evaluate` and the demo's
    generator do."""
    graph = import_graph()
    # the lock method trains a network only for a surrogate poison, importing uge_hf.adversarial when one is chosen
    graph = {**graph, "uge_hf.methods.lock": graph["uge_hf.methods.lock"] - {"uge_hf.adversarial"}}
    for module in ("uge_hf.release", "uge_hf.card", "uge_hf.layout", "uge_hf.verify", "uge_hf.fetch", "uge_hf.apply",
                   "uge_hf.pipeline", "uge_hf.authorized", "uge_hf.hub", "uge_hf.demo.inspect_tab", "uge_hf.methods.keyed",
                   "uge_hf.methods.lock", "uge_hf.unlocking", "uge_hf.lock", "uge_hf.poisons"):
        assert not below(graph, module) & TRAINING, module


def test_import_is_fast_and_loads_no_heavy_library():
    code = "import sys, uge_hf, uge_hf.cli; print(sorted(m for m in ('torch', 'datasets', 'gradio') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
