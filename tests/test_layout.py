"""The package layout keeps its promises: every module imports on its own, and imports point down.

Layers, from the bottom: ``datamodules`` (never imports model code) <- ``lightning_modules`` (whose
``networks`` and ``metrics`` never import Lightning or a family's LightningModule) <- ``recipes``.
``cluster`` may import anything below ``recipes``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("datamodules", "lightning_modules", "recipes", "cluster")


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(
    module_name(path)
    for package in PACKAGES
    for path in (PROJECT_ROOT / package).rglob("*.py")
    if path.name != "__main__.py"
)


def imports_of(module: str) -> set[str]:
    """First-party modules named by the import statements of ``module`` (function-level ones included)."""
    path = PROJECT_ROOT / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES or name.rsplit(".", 1)[0] in MODULES}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


FORBIDDEN = [
    ("datamodules", "lightning_modules", "data code never imports model code"),
    ("datamodules", "recipes", "data code never imports recipes"),
    ("lightning_modules", "recipes", "models never import recipes"),
    ("lightning_modules.networks", "lightning_modules.fusion", "networks are plain nn.Modules"),
    ("lightning_modules.metrics", "lightning_modules.fusion", "metrics know nothing of the training modules"),
    ("lightning_modules.inference", "lightning_modules.fusion", "inference helpers know nothing of training"),
]
NO_LIGHTNING = (
    "lightning_modules.networks",
    "lightning_modules.metrics.reference",
    "lightning_modules.metrics.kernels",
)


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module: str) -> None:
    imported = imports_of(module)
    for layer, forbidden, why in FORBIDDEN:
        if within(module, layer):
            wrong = sorted(name for name in imported if within(name, forbidden))
            assert not wrong, f"{module} imports {wrong}: {why}"
    if any(within(module, layer) for layer in NO_LIGHTNING):
        path = PROJECT_ROOT / Path(*module.split("."))
        source = (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text()
        assert "pytorch_lightning" not in source and "import lightning" not in source, f"{module} imports Lightning"


def test_every_module_imports_on_its_own() -> None:
    """Each module is imported first in its own interpreter: an import cycle breaks only the module that starts it."""
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_import_each_module.py")), *MODULES],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
