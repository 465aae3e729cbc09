"""The house rules a newcomer relies on, checked: small files and functions, imports at
the top (a deferred one says why), no import cycle, and no arrow from the library back
to the layers above it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "vqfast"
FILES = sorted(ROOT.rglob("*.py"))
# Where a module may not import from: models never the trainer, checkpoints or methods;
# kernels never the dispatch layer; nothing below the app layer imports it.
FORBIDDEN = {"vqfast.models": ("vqfast.training", "vqfast.checkpoint", "vqfast.methods", "vqfast.app", "vqfast.cli"),
             "vqfast.kernels": ("vqfast.ops", "vqfast.app", "vqfast.cli"),
             "vqfast.ops": ("vqfast.models", "vqfast.app", "vqfast.cli"),
             "vqfast.scorers": ("vqfast.methods", "vqfast.app", "vqfast.cli"),
             "vqfast.data": ("vqfast.models", "vqfast.methods", "vqfast.app", "vqfast.cli"),
             "vqfast.methods": ("vqfast.app", "vqfast.cli"),
             "vqfast.checkpoint": ("vqfast.app", "vqfast.methods"),
             "vqfast.training": ("vqfast.app", "vqfast.methods")}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _tree(path: Path):
    return ast.parse(path.read_text(), str(path))


def _top_imports(path: Path):
    """The vqfast modules ``path`` imports at its top level (a package's submodules named
    in ``from package import name`` included where they exist)."""
    out = set()
    for node in _tree(path).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vqfast") and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names}
            subs = {m for m in subs if (ROOT.parent / Path(*m.split("."))).with_suffix(".py").exists()
                    or (ROOT.parent / Path(*m.split(".")) / "__init__.py").exists()}
            # "from package import submodule" needs the submodule, not the package's other names
            out.update(subs if len(subs) == len(node.names) else subs | {node.module})
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("vqfast"))
    return out


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_functions_are_small(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= 450, f"{path}: {len(lines)} lines (split it by concern)"
    for node in ast.walk(_tree(path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            reason = "# long:" in "\n".join(lines[max(0, start - 4):start])
            assert length <= 80 or reason, f"{path}:{node.lineno} {node.name} is {length} lines"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_an_import_inside_a_function_says_why(path):
    lines = path.read_text().splitlines()
    for node in ast.walk(_tree(path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    assert "#" in lines[inner.lineno - 1], f"{path}:{inner.lineno}: a deferred import without a reason"


def test_no_import_cycle():
    graph = {_module(p): {m for m in _top_imports(p) if m != _module(p)} for p in FILES}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open" and not node.startswith(nxt + "."):
                # (a submodule importing a name its own package's __init__ defines runs while
                # that __init__ is importing it: Python's way of building packages)
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_arrow_back_to_a_layer_above(path):
    here = _module(path)
    for layer, banned in FORBIDDEN.items():
        if here == layer or here.startswith(layer + "."):
            for node in ast.walk(_tree(path)):
                if isinstance(node, ast.ImportFrom) and node.module:
                    assert not node.module.startswith(banned), f"{here} imports {node.module}"
