"""The package's layering holds: no module imports a layer above its own, and no imports form a circle.

Layers, lowest first (a module may import its own layer and the ones below it; see
docs/ARCHITECTURE.md)::

    data     fastbert.data                      (the shipped data files and their loader)
    kernels  fastbert.kernels
    ops      fastbert.ops
    modules  fastbert.modules
    models   fastbert.models
    api      fastbert (the package), fastbert.optimize, fastbert.prune, fastbert.pretrained
    tools    fastbert.configs, fastbert.cli_args, fastbert.numerics, fastbert.check,
             fastbert.bench, fastbert.prune.command, fastbert.prune.folders
    cli      fastbert.cli

Every import counts, at module level or inside a function (those run later, but a circle
through them is still a circle a reader has to untangle), and so do ``__import__`` /
``importlib.import_module`` calls with a literal module name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastbert"

LAYERS = ("data", "kernels", "ops", "modules", "models", "api", "tools", "cli")
PLACES = {
    "fastbert.data": "data",
    "fastbert.kernels": "kernels",
    "fastbert.ops": "ops",
    "fastbert.modules": "modules",
    "fastbert.models": "models",
    "fastbert": "api",  # the package's __init__ only: what ``import fastbert`` offers
    "fastbert.optimize": "api",
    "fastbert.wrapped_models": "api",  # the HF models inside sentence-transformers objects, for optimize
    "fastbert.prune": "api",
    "fastbert.pretrained": "api",  # fastbert.from_pretrained: checkpoints, pruned ones included
    "fastbert.configs": "tools",
    "fastbert.cli_args": "tools",
    "fastbert.numerics": "tools",
    "fastbert.check": "tools",
    "fastbert.bench": "tools",
    "fastbert.prune.command": "tools",  # the ``fastbert prune`` command, beside the algorithm it runs
    "fastbert.prune.folders": "tools",  # the folders ``fastbert prune`` reads and writes (HF, sentence-transformers)
    "fastbert.cli": "cli",
}
"""Module (or package, covering its submodules) -> layer; the longest matching name wins."""


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name (None when :data:`PLACES` does not place it)."""
    if module in PLACES:
        return PLACES[module]
    prefixes = [p for p in PLACES if p != "fastbert" and module.startswith(p + ".")]
    return PLACES[max(prefixes, key=len)] if prefixes else None


def _literal_import(node: ast.Call) -> str | None:
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if name in ("__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant):
        value = node.args[0].value
        return value if isinstance(value, str) else None
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The fastbert modules ``module`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from package import submodule`` imports the submodule; ``from module import name`` the module.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        elif isinstance(node, ast.Call):
            literal = _literal_import(node)
            targets = [literal] if literal else []
        for target in targets:
            while target and target not in modules:  # ``import fastbert.x.y`` of a name below a module
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: fastbert modules it imports}`` for every module of the package."""
    modules = module_names(package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import of a module in a higher layer than the importer's."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return sorted(
        f"{a} ({layer_of(a)}) -> {b} ({layer_of(b)})"
        for a, targets in graph.items()
        for b in targets
        if rank[layer_of(b)] > rank[layer_of(a)]
    )


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    unplaced = [m for m in module_names() if layer_of(m) is None]
    assert not unplaced, f"place these modules in a layer (PLACES in tests/test_layering.py): {unplaced}"


def test_no_module_imports_a_higher_layer():
    upward = upward_imports(import_graph())
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


# --- the checker itself, on a small made-up package ------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "fastbert" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "fastbert"


def test_checker_on_a_made_up_package(tmp_path):
    """An upward import inside a function and the circle it closes are found; submodules,
    relative imports and literal ``import_module`` calls resolve to the modules they name."""
    package = _write(tmp_path, {
        "__init__.py": "from fastbert import ops\n",
        "ops/__init__.py": "from . import dispatch\nfrom .dispatch import register\n",
        "ops/dispatch.py": "import importlib\n\ndef load():\n    importlib.import_module('fastbert.kernels.linear')\n",
        "kernels/__init__.py": "",
        "kernels/linear.py": "import fastbert.kernels\n",
        "modules/__init__.py": "",
        "modules/encoder.py": "def from_hf(model):\n    from fastbert.models import build\n    return build(model)\n",
        "models/__init__.py": "from fastbert.modules.encoder import from_hf as build\n",
    })  # fmt: skip
    graph = import_graph(package)
    assert graph["fastbert"] == {"fastbert.ops"}
    assert graph["fastbert.ops"] == {"fastbert.ops.dispatch"}
    assert graph["fastbert.ops.dispatch"] == {"fastbert.kernels.linear"}
    assert graph["fastbert.kernels.linear"] == {"fastbert.kernels"}
    assert graph["fastbert.modules.encoder"] == {"fastbert.models"}
    assert upward_imports(graph) == ["fastbert.modules.encoder (modules) -> fastbert.models (models)"]
    assert circles(graph) == [["fastbert.models", "fastbert.modules.encoder"]]


@pytest.mark.parametrize(("module", "layer"), [
    ("fastbert", "api"), ("fastbert.prune", "api"), ("fastbert.prune.masks", "api"), ("fastbert.prune.command", "tools"),
    ("fastbert.kernels.linear", "kernels"), ("fastbert.cli", "cli"), ("fastbert.bench.report", "tools"),
    ("fastbert.unknown", None),
])  # fmt: skip
def test_layer_of(module, layer):
    assert layer_of(module) == layer
