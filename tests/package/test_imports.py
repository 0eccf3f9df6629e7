"""The package's import graph: no cycles, and the layering the architecture promises.

Every import of a pairmine module counts, also those inside functions (a lazy import still ties two
modules together); only ``if TYPE_CHECKING:`` blocks are left out, since they never run.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import pairmine

PACKAGES = ("pairmine", "pairmine.operators", "pairmine.pipelines", "pairmine.training")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        try:
            module = importlib.import_module(package)
        except ModuleNotFoundError:
            continue
        found[package] = Path(module.__file__)
        for info in pkgutil.iter_modules(module.__path__):
            if not info.ispkg:
                found[f"{package}.{info.name}"] = Path(module.__path__[0]) / f"{info.name}.py"
    return found


MODULES = _modules()


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(name: str, path: Path) -> set[str]:
    """The modules `name` imports (pairmine's by their module name, others by their top-level name)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # `from pkg import module` imports the module; `from mod import name` the module
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


GRAPH = {name: {m for m in _imports(name, path) if m in MODULES and m != name} for name, path in MODULES.items()}
EXTERNAL = {name: {m.split(".")[0] for m in _imports(name, path) if not m.startswith("pairmine")} for name, path in MODULES.items()}


def test_the_graph_covers_the_package():
    assert {"pairmine.dataset", "pairmine.operators.syn4removal", "pairmine.pipelines.cli"} <= set(MODULES)
    assert "pairmine.dataset" in GRAPH["pairmine.pipelines.writer"]  # relative imports are resolved


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("pairmine.operators")))
def test_operators_hold_no_ray_code(module):
    assert "ray" not in EXTERNAL[module], f"{module} imports ray: Ray wiring belongs in pipelines/"
    assert not any(m.startswith("pairmine.pipelines") or m.startswith("pairmine.training") for m in GRAPH[module])


@pytest.mark.parametrize("module", ["pairmine.dataset", "pairmine.storage", "pairmine.errors"])
def test_the_contract_needs_no_pipeline_or_model_code(module):
    assert not (EXTERNAL[module] & {"ray", "torch", "cv2", "diffusers"}), EXTERNAL[module]
    assert all(m in ("pairmine", "pairmine.storage", "pairmine.errors", "pairmine.tv_cpu_shim") for m in GRAPH[module])


def test_model_wrappers_never_import_their_stages():
    for wrapper, stage in (("clip_model", "clip_scorer"), ("gdino_sam2_models", "gdino_sam2")):
        assert f"pairmine.operators.{stage}" not in GRAPH[f"pairmine.operators.{wrapper}"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_package_version_is_the_distribution_version():
    from importlib.metadata import version

    assert pairmine.__version__ == version("pairmine")


def test_the_core_pipelines_and_the_cli_need_no_torch():
    """The core install (no [models], no [train]) runs the data pipelines: nothing on their path imports torch."""
    import subprocess
    import sys

    code = (
        "import sys; from pairmine.pipelines import cli; cli.build_parser();"
        "import pairmine.pipelines.syn4removal, pairmine.pipelines.video4removal, pairmine.pipelines.writer;"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'diffusers', 'transformers'))))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "", f"the core path imported {found.stdout.strip()}"
