"""The package's structure: layers point one way, no import circle, torch stays out of what reads results, and the
code stays within the declared Python minimum.

Imports are parsed with ``ast`` (also those inside functions, and the module names a package's ``__init__``
resolves lazily), so these checks hold for every code path, not only what one import happens to load.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ablation"

# Import layers, lowest first: a module may import its own area and lower layers only. errors, skips, io,
# limits, lazy, config, config_text, store, packing and sources are the shared torch-free base (training writes
# run folders through store, the grid groups runs with packing, both find a run's source with sources);
# ablation.cli, ablation.__main__ and every area's cli.py (or *_cli.py) form the top layer.
LAYERS: dict[str, int] = {
    "errors": 0,
    "skips": 1,
    "io": 1,
    "limits": 1,
    "lazy": 1,
    "config": 2,
    "config_text": 2,
    "store": 3,
    "packing": 4,
    "sources": 4,
    "data": 5,
    "models": 6,
    "train": 7,
    "grid": 8,
    "report": 8,
    "predict": 8,
    "export": 8,
    "cli": 9,
}
SHARED = [
    "ablation.store",
    "ablation.store.layout",
    "ablation.store.readers",
    "ablation.store.writers",
    "ablation.store.state",
    "ablation.config",
    "ablation.config_text",
    "ablation.limits",
    "ablation.lazy",
    "ablation.skips",
    "ablation.io",
    "ablation.errors",
    "ablation.packing",
    "ablation.sources",
]


def _modules() -> dict[str, Path]:
    """Every ``ablation`` module name and its file (a package's name maps to its ``__init__.py``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _module_file(name: str) -> Path | None:
    return MODULES.get(name)


def _imports(name: str, path: Path) -> set[str]:
    """Every module name ``path`` imports; relative imports resolved against ``name``. ``from pkg import x``
    yields ``pkg.x`` when that is a module, else ``pkg``; a string that names an ``ablation`` module (a lazy
    export table) counts as an import of it."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in MODULES:
            found.add(node.value)
    found.discard(name)
    return found


def _area(name: str) -> str:
    """The layer key of a module: ``cli`` for command-line modules, else its top-level area."""
    parts = name.split(".")
    if parts[-1] in ("cli", "__main__") or parts[-1].endswith("_cli"):
        return "cli"
    return parts[1]


def _torch_chain(start: str) -> list[str] | None:
    """The import chain from ``start`` to torch (also through the packages on the way), or None."""
    stack, seen = [[start]], set()
    while stack:
        chain = stack.pop()
        name = chain[-1]
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        for imported in sorted(_imports(name, path)) + parents:
            if imported == "torch" or imported.startswith("torch."):
                return chain + [imported]
            if imported.startswith("ablation") and imported not in seen:
                stack.append(chain + [imported])
    return None


def _torch_free_modules() -> list[str]:
    report = [f"ablation.report.{p.stem}" for p in sorted((PACKAGE / "report").glob("*.py"))]
    data = [
        f"ablation.data.{p.stem}" for p in sorted((PACKAGE / "data").glob("*.py")) if p.name != "augment.py"
    ]
    return SHARED + ["ablation.report"] + report + data


@pytest.mark.parametrize("module", _torch_free_modules())
def test_module_never_reaches_torch(module):
    chain = _torch_chain(module)
    assert chain is None, " -> ".join(chain)


def test_checker_sees_torch_where_it_is_imported():
    # The checker itself must be able to fail: the training loop and the models do import torch.
    assert _torch_chain("ablation.train.engine") and _torch_chain("ablation.models.unet")


def test_layers_point_one_way():
    modules = [name for name in MODULES if name != "ablation"]
    unplaced = sorted(name for name in modules if _area(name) not in LAYERS)
    assert not unplaced, f"give these modules a layer in LAYERS: {unplaced}"
    upward = [
        f"{name} ({_area(name)}) imports {imported} ({_area(imported)})"
        for name in modules
        for imported in sorted(_imports(name, MODULES[name]))
        if imported in MODULES
        and imported != "ablation"
        and _area(imported) != _area(name)
        and LAYERS[_area(imported)] >= LAYERS[_area(name)]
    ]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle():
    graph = {name: {m for m in _imports(name, path) if m in MODULES} for name, path in MODULES.items()}
    circle = _cycle(graph)
    assert circle is None, " -> ".join(circle)
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"], "the checker finds circles"


def test_code_stays_within_the_declared_python_minimum():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    match = re.fullmatch(r">=\s*3\.(\d+)", project["project"]["requires-python"])
    assert match, "requires-python must be a lower bound such as >=3.11"
    minor = int(match.group(1))
    assert project["tool"]["ruff"]["target-version"] == f"py3{minor}", (
        "ruff must lint for the declared minimum"
    )
    assert sys.version_info >= (3, minor)
    for path in [
        *PACKAGE.rglob("*.py"),
        *(ROOT / "tests").rglob("*.py"),
        *(ROOT / "benchmarks").rglob("*.py"),
    ]:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, minor))


def test_report_runs_without_loading_torch(tmp_path):
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); "
        "from fake_results import make_fake_results; "
        "from ablation.report import write_report; "
        f"make_fake_results({str(tmp_path)!r}, subsets=['0000', '1111', '1000'], folds=None, n_images=3); "
        f"write_report({str(tmp_path)!r}, n_boot=100); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
