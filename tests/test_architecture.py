"""The layers hold: what each part of the package may import, what stays light, what is packaged.

Imports are read from the source with ``ast`` (module level and inside functions), so a
forbidden dependency fails here even when it is only imported lazily.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

# Repository folder -> installed package (pyproject's [tool.setuptools.package-dir]).
ROOTS = {
    "remind2reg": "remind2reg",
    "inference": "remind2reg.inference",
    "evaluation": "remind2reg.evaluation",
    "synthesis": "remind2reg.synthesis",
    "training": "remind2reg.training",
}


def _module_files() -> dict[str, Path]:
    out = {}
    for folder, package in ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join([package, *parts])
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every ``remind2reg.*`` module a file imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("remind2reg"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("remind2reg"))
    return found


MODULES = _module_files()


def _importers(prefix: str) -> dict[str, set[str]]:
    return {name: _imports(path) for name, path in MODULES.items() if name.startswith(prefix)}


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        # The ground floor imports no stage, engine, pipeline or method.
        (
            "remind2reg.inference.core",
            ("stages", "pipeline", "methods", "batch", "affine", "deformable", "refinement"),
        ),
        # Engines do not import each other's internals, the stages or the pipeline.
        (
            "remind2reg.inference.affine",
            ("deformable", "refinement", "stages", "pipeline", "methods", "batch"),
        ),
        (
            "remind2reg.inference.deformable",
            ("affine", "refinement", "stages", "pipeline", "methods", "batch"),
        ),
        (
            "remind2reg.inference.refinement",
            ("affine", "deformable", "stages", "pipeline", "methods", "batch"),
        ),
        # Stages do not reach up to the pipeline, the methods or the batch.
        ("remind2reg.inference.stages", ("pipeline", "methods", "batch")),
        # Reading and writing files knows nothing of registration.
        (
            "remind2reg.inference.io",
            ("stages", "pipeline", "methods", "batch", "affine", "deformable", "refinement"),
        ),
        # Scoring and reports do not import the method or the pipeline (loading images is io's).
        (
            "remind2reg.evaluation",
            ("pipeline", "methods", "batch", "stages", "affine", "deformable", "refinement"),
        ),
        # The trainer and the simulator use the ground floor, not the pipeline.
        ("remind2reg.training", ("pipeline", "methods", "batch", "stages", "affine", "deformable")),
        (
            "remind2reg.synthesis",
            ("pipeline", "methods", "batch", "stages", "affine", "deformable", "refinement"),
        ),
    ],
)
def test_layers_hold(importer, forbidden):
    offenders = {
        name: sorted(i for i in imports if any(i.startswith(f"remind2reg.inference.{f}") for f in forbidden))
        for name, imports in _importers(importer).items()
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"{importer} must not import {forbidden}: {offenders}"


def test_light_modules_import_neither_torch_nor_nibabel():
    """Settings, config reading and ``--help`` must not load torch or nibabel (seconds, and
    a CLI that parses without them)."""
    code = (
        "import sys, io, contextlib\n"
        "from remind2reg.inference.config import RegistrationConfig\n"
        "RegistrationConfig.from_file(sys.argv[1])\n"
        "from remind2reg.cli import build_parser\n"
        "for cmd in (['--help'], ['register', '--help'], ['train-refiner', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            build_parser().parse_args(cmd)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "import remind2reg\n"
        "print(sorted(m for m in ('torch', 'nibabel', 'scipy') if m in sys.modules))\n"
    )
    config = REPO / "configs" / "mcbo_multilevel.toml"
    out = subprocess.run(
        [sys.executable, "-c", code, str(config)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_cli_choices_come_from_the_registries():
    from remind2reg.cli import build_parser
    from remind2reg.inference.settings import DEVICES, METHODS, NETS, ON_ERROR_POLICIES

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    register = {a.dest: a for a in sub["register"]._actions}
    assert tuple(register["method"].choices) == METHODS
    assert tuple(register["on_error"].choices) == ON_ERROR_POLICIES
    assert tuple(register["device"].choices) == DEVICES
    train = {a.dest: a for a in sub["train-refiner"]._actions}
    assert set(train["net"].choices) == set(NETS)


def test_every_package_is_in_the_wheel():
    """pyproject lists its packages explicitly (package-dir mapping): a new subpackage must be added."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert on_disk == listed, f"missing: {sorted(on_disk - listed)}; stale: {sorted(listed - on_disk)}"


def test_no_top_level_packages_leak_into_site_packages():
    """Installed, the project exposes ``remind2reg`` only: no generic ``inference`` package."""
    code = "import importlib.util as u; print([n for n in ('inference', 'evaluation', 'synthesis', 'training') if u.find_spec(n)])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]", out.stdout
