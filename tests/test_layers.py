"""The package's layering, read from its source: a layer imports only ``core`` and the layers before it, there are
no import cycles, TransformerLens is imported in one place, and no module outgrows a reader."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mi_toolkit"

LAYERS = ["core", "tasks", "models", "training", "analysis", "interventions", "plot", "report", "experiments", "cli"]
"""In the order data flows (ARCHITECTURE.md). ``mi_toolkit/__init__.py`` is the public facade over all of them."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    return _imports_in(_module_name(path), path.name == "__init__.py", path.read_text(), modules)


def _imports_in(name: str, is_package: bool, source: str, modules: dict[str, Path]) -> set[str]:
    """The mi_toolkit modules that module ``name`` imports, at any depth of its code (function-level imports too)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: up (level - 1) packages from this one
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            # "from pkg import name" imports the submodule pkg.name where one exists, else pkg itself.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # "import a.b.c" of a function path: take the module part
                target = target.rpartition(".")[0]
            if target.startswith("mi_toolkit"):
                found.add(target)
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return None if len(parts) == 1 else LAYERS.index(parts[1])


def test_every_module_belongs_to_a_layer():
    for module in _modules():
        if module != "mi_toolkit":
            assert module.split(".")[1] in LAYERS, f"{module} is not in a layer of {LAYERS} (see ARCHITECTURE.md)"


def test_layers_import_only_core_and_earlier_layers():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        if module == "mi_toolkit":
            continue
        for target in _imports(path, modules):
            if target == "mi_toolkit" or _layer(target) > _layer(module):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "a lower layer imports a higher one:\n" + "\n".join(wrong)


def test_no_import_cycles():
    modules = _modules()
    # The top-level facade imports everything and is imported by nothing inside the package (checked above).
    graph = {module: _imports(path, modules) - {module, "mi_toolkit"} for module, path in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1  # on the stack
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2  # done

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_package_inits_only_re_export():
    """A subpackage's __init__ holds imports and a docstring, no logic, so importing a package is never a cycle."""
    for path in PACKAGE.rglob("__init__.py"):
        if path.parent == PACKAGE:
            continue
        for node in ast.parse(path.read_text()).body:
            is_docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            is_all = isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__all__"]
            assert isinstance(node, (ast.Import, ast.ImportFrom)) or is_docstring or is_all, (
                f"{path.relative_to(PACKAGE.parent)} line {node.lineno}: a package __init__ only re-exports")


def test_transformer_lens_is_imported_in_one_place():
    outside = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "transformer_lens" for n in names) and path != PACKAGE / "core" / "tl.py":
                outside.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not outside, f"TransformerLens imported outside mi_toolkit/core/tl.py: {outside}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_readable(path):
    assert len(path.read_text().splitlines()) <= 420, f"{path.name} has grown past ~400 lines: split it"


def test_the_checker_sees_violations():
    """The parser resolves absolute, relative and function-level imports (else the tests above prove nothing)."""
    modules = _modules()
    source = (
        "import torch\nfrom mi_toolkit.core.types import Metric\n\n"
        "def late():\n    from mi_toolkit.experiments import runs\n    from ..analysis import metrics\n"
        "    import mi_toolkit.plot.grokking\n"
    )
    found = _imports_in("mi_toolkit.core.losses", False, source, modules)
    assert found == {"mi_toolkit.core.types", "mi_toolkit.experiments.runs", "mi_toolkit.analysis.metrics",
                     "mi_toolkit.plot.grokking"}
    assert all(_layer(t) > _layer("mi_toolkit.core.losses") for t in found - {"mi_toolkit.core.types"})
