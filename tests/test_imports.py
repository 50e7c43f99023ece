"""Modules that read results never import torch, directly or through the ablation modules they import.

Parses imports with ``ast`` (also those inside functions) and follows ``ablation.*`` imports, including the
``__init__`` of every package on the way, so a result folder can be explored on a machine without torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ablation"
SHARED = [
    "ablation.store",
    "ablation.config",
    "ablation.skips",
    "ablation.io",
    "ablation.errors",
    "ablation.packing",
]


def _module_file(name: str) -> Path | None:
    parts = name.split(".")[1:]
    base = PACKAGE.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imports(name: str, path: Path) -> set[str]:
    """Every module name ``path`` imports; relative imports resolved against ``name``."""
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
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return found


def _torch_chain(start: str) -> list[str] | None:
    """The import chain from ``start`` to torch, or None when torch is unreachable."""
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
    # The checker itself must be able to fail: the training loop does import torch.
    train_modules = [f"ablation.train.{p.stem}" for p in (PACKAGE / "train").glob("*.py")]
    models = [f"ablation.models.{p.stem}" for p in (PACKAGE / "models").glob("*.py")]
    if not train_modules and not models:
        pytest.skip("no torch-using module in this checkout yet")
    assert any(_torch_chain(m) for m in train_modules + models)


def test_report_runs_without_loading_torch(tmp_path):
    code = (
        "import sys; from ablation.report.fixtures import make_fake_results; "
        "from ablation.report import write_report; "
        f"make_fake_results({str(tmp_path)!r}, subsets=['0000', '1111', '1000'], folds=None, n_images=3); "
        f"write_report({str(tmp_path)!r}, n_boot=100); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
