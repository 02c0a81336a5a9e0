"""The shape of the code: imports go one way (cli -> app -> core -> foundations), with no cycle,
lazy imports inside functions included; and the CLI starts without llama.cpp or the Hub client."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "moecli"

# What each layer may not import (each name covers a module or a package and all it holds).
CORE = ("planner", "engine", "hub", "store", "gguf", "machine", "synth", "bench", "measurements")
FOUNDATIONS = ("facts", "params", "units", "errors", "paths", "ggml", "archs", "cpu", "templates")
EDGES = ("cli", "render", "output", "chat", "serve")
FORBIDDEN = {
    **{core: ("app", *EDGES) for core in CORE},
    **{base: ("app", *EDGES, *CORE) for base in FOUNDATIONS},
    "app": ("cli", "render"),
    "engine": ("app", *EDGES, "machine", "hub", "store", "planner"),
    "planner": ("app", *EDGES, "engine", "hub", "store", "machine", "gguf"),
    "hub": ("app", *EDGES, "store", "engine", "planner"),
    "gguf": ("app", *EDGES, "hub", "store", "engine", "planner"),
}


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:` (annotations only: never imported at run time)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = child.test if isinstance(child, ast.If) else None
            if test is not None and "TYPE_CHECKING" in ast.unparse(test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every moecli module `name` imports at run time, anywhere in the file (lazy imports too). `from X import
    Y` counts Y when Y is a module; importing a.b.c also runs a.b's __init__ (unless the importer
    lives inside a.b)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["_LAZY"]:
            # a package's names imported on first use (PEP 562): {name: its submodule}
            targets = [f"{name}.{v.value}" for v in node.value.values if isinstance(v, ast.Constant)]
        for target in targets:
            if target not in known:
                continue
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # the module and the packages above it
                module = ".".join(parts[:i])
                if not name.startswith(module + "."):  # the importer's own packages already run
                    found.add(module)
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _module_names()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_the_import_graph_has_no_cycle(graph):
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_imports_go_one_way(graph):
    wrong = sorted(f"{src} imports {dst}" for src, dsts in graph.items() for dst in dsts
                   if _top(dst) in FORBIDDEN.get(_top(src), ()) and _top(dst) != _top(src))
    assert not wrong, "\n".join(wrong)


def test_the_layers_are_what_the_test_says(graph):
    """A test of the test: a forbidden arrow is found, and every layer named exists."""
    tops = {_top(m) for m in graph}
    assert set(CORE) | set(FOUNDATIONS) | set(EDGES) | {"app"} <= tops
    assert "moecli.app" in graph["moecli.cli"] and "moecli.planner" in graph["moecli.app.planning"]


def test_the_cli_starts_without_llama_cpp_or_the_hub_client():
    code = ("import sys, moecli.cli, moecli; "
            "print(sorted(m for m in ('llama_cpp', 'huggingface_hub', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
