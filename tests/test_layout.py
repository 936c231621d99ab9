"""The house rules of ``famous_addon`` (docs/design.md, "Rules"), checked on the source.

A module a newcomer can read in one sitting, functions that fit a screen or
two, imports that flow one way (no loops; core never imports the commands,
Blender, the UI or the package root), no private name borrowed from another
module, and an import inside a function only with a comment saying why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "famous_addon"
MAX_FILE_LINES = 700
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = _modules()


def _imports(name: str, path: Path):
    """(node, imported module names within the package, imported names) of each import."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield node, [a.name for a in node.names if a.name in MODULES], []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                prefix = base[: len(base) - node.level + 1]
                module = ".".join(prefix + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [a.name for a in node.names]
            found = [m for m in [module, *(f"{module}.{n}" for n in names)] if m in MODULES]
            yield node, found, names if module in MODULES else []


def _graph() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for _, targets, _ in _imports(name, path):
            graph[name].update(t for t in targets if t != name)
    return graph


def test_no_file_is_too_long():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in MODULES.values()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES
    }
    assert not long, f"over {MAX_FILE_LINES} lines: {long}"


def test_no_function_is_too_long():
    long = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.name} ({n})")
    assert not long, f"over {MAX_FUNCTION_LINES} lines: {long}"


def test_imports_flow_one_way_without_loops():
    graph = _graph()
    upward = [
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if (m.startswith("famous_addon.core") and not t.startswith("famous_addon.core"))
        or (m.startswith("famous_addon.blender") and t.startswith("famous_addon.ui"))
    ]
    assert not upward, upward
    # a loop: a module that reaches itself again through what it imports
    loops = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m == start:
                loops.append(start)
                break
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
    assert not loops, f"modules in an import loop: {loops}"


def test_no_private_name_is_imported_across_modules():
    borrowed = [
        f"{name}: {n}"
        for name, path in MODULES.items()
        for _, _, names in _imports(name, path)
        for n in names
        if n.startswith("_") and n != "__version__"
    ]
    assert not borrowed, borrowed


@pytest.mark.parametrize("name", sorted(MODULES))
def test_an_import_inside_a_function_says_why(name):
    path = MODULES[name]
    lines = path.read_text(encoding="utf-8").splitlines()
    tree = ast.parse("\n".join(lines))
    inner = {
        node
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(fn)
        if isinstance(node, ast.Import | ast.ImportFrom)
    }
    covered = {k for node in inner for k in range(node.lineno, node.end_lineno + 1)}
    silent = []
    for node in inner:
        # a comment on the line, or above the block of imports it belongs to
        k = node.lineno - 1
        while k in covered or not lines[k - 1].strip():
            k -= 1
        if "#" not in lines[node.lineno - 1] and not lines[k - 1].strip().startswith("#"):
            silent.append(f"{path.name}:{node.lineno}")
    assert not silent, f"imports inside functions with no reason given: {sorted(silent)}"


def test_core_never_imports_blender():
    for name, path in MODULES.items():
        if name.startswith("famous_addon.core"):
            text = path.read_text(encoding="utf-8")
            assert "import bpy" not in text and "from bpy" not in text, name
