"""The house's layout rules: the product path never imports the demo world, package imports
sit at module tops, no module reaches for another's private names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from unique_cube.config.pipeline import load_pipeline
from unique_cube.errors import ConfigError
from unique_cube.inputs.search import open_catalog

PACKAGE = Path(__file__).resolve().parents[1] / "unique_cube"
STAGES = ("config", "inputs", "grid", "gpp", "downscale", "product", "evaluation", "report")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_product_path_never_imports_the_demo() -> None:
    stages = [
        "unique_cube",
        "unique_cube.gpp.train",
        "unique_cube.downscale.train",
        "unique_cube.product.run",
        "unique_cube.evaluation.evaluate",
        "unique_cube.report",
    ]
    code = (
        f"import importlib, sys\nfor name in {stages!r}:\n    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('unique_cube.demo')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_package_imports_are_at_module_tops_and_public() -> None:
    inside, private = [], []
    for path in _modules():
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            ours = node.level > 0 or (node.module or "").startswith("unique_cube")
            if ours and id(node) not in top and not _type_checking_only(tree, node):
                inside.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
            if ours and node.level == 0:
                private += [f"{path.relative_to(PACKAGE)}:{node.lineno} {a.name}"
                            for a in node.names if a.name.startswith("_")
                            and a.name != "__version__"]  # fmt: skip
    assert inside == [], "package imports inside functions"
    assert private == [], "private names imported from another module"


def _type_checking_only(tree: ast.Module, node: ast.ImportFrom) -> bool:
    return any(
        isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        and any(sub is node for sub in block.body)
        for block in tree.body
    )  # fmt: skip


@pytest.mark.parametrize("stage", STAGES)
def test_stages_do_not_import_the_command_line(stage: str) -> None:
    paths = [PACKAGE / f"{stage}.py"] if (PACKAGE / f"{stage}.py").exists() else []
    paths += sorted((PACKAGE / stage).glob("*.py")) if (PACKAGE / stage).is_dir() else []
    assert paths
    for path in paths:
        imported = [
            node.module or "" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom)
        ] + [
            alias.name for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Import) for alias in node.names
        ]  # fmt: skip
        assert not [m for m in imported if m.startswith(("unique_cube.cli", "unique_cube.demo"))]


def test_a_pipeline_names_the_sections_a_command_needs(tmp_path: Path) -> None:
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(
        "name: p\ncatalog: demo\nflux: {directory: f, sites: f/sites.csv}\n"
        "gpp:\n  train: {start: 2023-01-01, end: 2023-12-31}\n"
        "  modis: {source: modis-sr}\n  landsat: {source: hls-l30}\n  output: models\n"
        "product: {output: product}\n"
    )
    pipeline = load_pipeline(spec)
    with pytest.raises(
        ConfigError,
        match=r"`unique-cube run` needs the grid and product "
        r"sections; grid and downscale \(product.scheme is fusion\) missing",
    ):
        pipeline.require("grid", "product", command="unique-cube run")
    served = spec.with_name("served.yaml")
    served.write_text(spec.read_text() + "serve_world: demo-world\n")
    with (
        pytest.raises(ConfigError, match="served by the `unique-cube` command"),
        open_catalog(load_pipeline(served)),
    ):
        pass
