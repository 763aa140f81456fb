"""The container, checked without a Docker engine: lint, paths, versions, and the contract.

The contract test runs the image's ENTRYPOINT command with the image's ENV defaults, in this
virtual environment, on a tiny read-only flat input folder (as mounted at /input).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from remind2reg.evaluation.pack import pack_submission
from remind2reg.inference.errors import EXIT_INPUT, InputError
from remind2reg.inference.io.nifti import write_image
from tests.conftest import REPO, make_case_files, oblique_vox2world

DOCKERFILE = REPO / "Dockerfile"
SHAPE = (24, 28, 20)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def image_env() -> dict[str, str]:
    env = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


def entrypoint() -> list[str]:
    return next(json.loads(rest) for word, rest in dockerfile_instructions() if word == "ENTRYPOINT")


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_copied_path_exists():
    for word, rest in dockerfile_instructions():
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _ = shlex.split(rest)
            for src in sources:
                assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"


def test_versions_in_the_dockerfile_agree_with_the_project():
    text = DOCKERFILE.read_text()
    torch_version = re.search(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda", text).group(1)
    pyproject = (REPO / "pyproject.toml").read_text()
    torch_req = next(
        Requirement(r) for r in re.findall(r'"(torch[^"]*)"', pyproject) if r.startswith("torch")
    )
    assert torch_req.specifier.contains(torch_version), (
        f"base image torch {torch_version} vs pyproject {torch_req}"
    )
    niftyreg_docker = re.search(r"ARG NIFTYREG_VERSION=(\S+)", text).group(1)
    niftyreg_script = re.search(
        r'NIFTYREG_VERSION="([^"]+)"', (REPO / "scripts" / "install_niftyreg.sh").read_text()
    ).group(1)
    assert niftyreg_docker == niftyreg_script
    assert "--uid 1000" in text and "USER 1000:1000" in text  # non-root
    assert re.search(r"AS build", text) and text.count("FROM ") == 2  # multi-stage


def _flat_input(root: Path, cases: dict[str, tuple[str, ...]]) -> Path:
    vox2world = oblique_vox2world(spacing=(0.5, 0.5, 0.5))
    for case, mods in cases.items():
        make_case_files(root, case, SHAPE, vox2world, modalities=mods, layout="")
    for p in [*root.iterdir(), root]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    return root


def run_entrypoint(input_dir: Path, output_dir: Path, **env_overrides: str) -> subprocess.CompletedProcess:
    """The image's ENTRYPOINT with its ENV, /input and /output replaced by test folders."""
    cmd = [str(Path(sys.executable).parent / "remind2reg") if a == "remind2reg" else a for a in entrypoint()]
    cmd = [str(input_dir) if a == "/input" else str(output_dir) if a == "/output" else a for a in cmd]
    env = {**os.environ, **image_env(), **env_overrides}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture
def flat_input(tmp_path):
    folder = _flat_input(tmp_path / "input", {"0001": ("0000", "0001", "0002"), "0002": ("0000", "0001")})
    yield folder
    folder.chmod(0o755)


def test_contract_both_sequences_and_a_case_without_t2(flat_input, tmp_path):
    out = tmp_path / "output"
    result = run_entrypoint(flat_input, out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("disp_*")) == [
        "disp_0001_0000_0001_0001.nii.gz",
        "disp_0001_0000_0001_0002.nii.gz",
        "disp_0002_0000_0002_0001.nii.gz",
    ]
    assert "No CUDA device available: running on the CPU" in result.stderr  # device=auto fallback, logged
    assert (out / "timings.json").is_file()
    assert not list(out.glob(".*partial*"))


def test_contract_one_sequence_from_the_environment(flat_input, tmp_path):
    out = tmp_path / "output"
    result = run_entrypoint(flat_input, out, REMIND2REG_MODALITIES="T2")
    assert result.returncode == 0, result.stderr
    assert [p.name for p in out.glob("disp_*")] == ["disp_0001_0000_0001_0002.nii.gz"]


def test_contract_empty_input_and_bad_environment(tmp_path):
    empty = tmp_path / "input"
    empty.mkdir()
    result = run_entrypoint(empty, tmp_path / "output")
    assert result.returncode == EXIT_INPUT
    assert "no registration pair found" in result.stderr
    bad = run_entrypoint(empty, tmp_path / "output", REMIND2REG_DEVICE="gpu")
    assert bad.returncode == 2 and "REMIND2REG_DEVICE='gpu' is not one of auto, cpu, cuda" in bad.stderr


def test_contract_a_corrupt_case_gets_the_identity_field_and_the_batch_succeeds(flat_input, tmp_path):
    """The image's defaults (on error: identity, failures allowed): a complete submission."""
    broken = flat_input / "ReMIND2Reg_0002_0001.nii.gz"  # the MR: the US grid still gives the shape
    flat_input.chmod(0o755)
    data = broken.read_bytes()
    broken.unlink()
    broken.write_bytes(data[:200])  # truncated gzip
    flat_input.chmod(0o555)
    out = tmp_path / "output"
    result = run_entrypoint(flat_input, out)
    assert result.returncode == 0, result.stderr
    assert "case 0002" in result.stderr and str(broken) in result.stderr
    assert (out / "disp_0002_0000_0002_0001.nii.gz").is_file()
    timings = json.loads((out / "timings.json").read_text())
    assert timings["pairs"]["disp_0002_0000_0002_0001.nii.gz"]["fallback"] == "identity"


def test_pack_writes_a_zip_of_every_checked_field(flat_input, tmp_path):
    pred = tmp_path / "pred"
    vox2world = oblique_vox2world(spacing=(0.5, 0.5, 0.5))
    names = [
        "disp_0001_0000_0001_0001.nii.gz",
        "disp_0001_0000_0001_0002.nii.gz",
        "disp_0002_0000_0002_0001.nii.gz",
    ]
    for n in names:
        write_image(pred / n, np.zeros((*SHAPE, 3)), vox2world)
    out = pack_submission(flat_input, pred, tmp_path / "submission.zip")
    assert sorted(zipfile.ZipFile(out).namelist()) == names


def test_pack_refuses_missing_misshapen_or_nan_fields(flat_input, tmp_path):
    pred = tmp_path / "pred"
    vox2world = oblique_vox2world(spacing=(0.5, 0.5, 0.5))
    write_image(pred / "disp_0001_0000_0001_0001.nii.gz", np.zeros((*SHAPE[:2], 19, 3)), vox2world)
    nan = np.zeros((*SHAPE, 3))
    nan[1, 1, 1, 1] = np.nan
    write_image(pred / "disp_0001_0000_0001_0002.nii.gz", nan, vox2world)
    with pytest.raises(InputError) as err:
        pack_submission(flat_input, pred, tmp_path / "submission.zip")
    message = str(err.value)
    assert "3 of 3 fields have problems" in message
    assert "disp_0001_0000_0001_0001.nii.gz: shape (24, 28, 19, 3), expected (24, 28, 20, 3)" in message
    assert "disp_0001_0000_0001_0002.nii.gz: 1 values are NaN or Inf" in message
    assert "disp_0002_0000_0002_0001.nii.gz: missing" in message
    assert not (tmp_path / "submission.zip").exists()


# --------------------------------------------------------------------------- pins, compose, context


def _pins(path: Path) -> dict[str, str]:
    """{canonical name: version} of the ``name==version`` lines of a constraints file."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path.name}: {line!r} is not an exact pin"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_constraints_pin_every_requirement_of_the_project_but_torch():
    """constraints.txt (make install and the image) pins what pyproject asks for, compatibly."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    pins = _pins(REPO / "constraints.txt")
    assert "torch" not in pins, "torch comes from the base image / TORCH_VERSION, not constraints.txt"
    for line in requirements:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pins, (
            f"{req.name} (pyproject) has no pin in constraints.txt: run scripts/freeze_constraints.py"
        )
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt {name}=={pins[name]} vs {req}"
        )


def test_one_set_of_pins_for_the_host_and_the_image():
    makefile = (REPO / "Makefile").read_text()
    assert '-c constraints.txt -e ".[dev,peers,synth,cluster]"' in makefile
    dockerfile = DOCKERFILE.read_text()
    assert (
        "COPY build-constraints.txt" in dockerfile
        and "PIP_CONSTRAINT=/src/build-constraints.txt" in dockerfile
    )
    assert (
        "COPY constraints.txt /tmp/constraints.txt" in dockerfile and "-c /tmp/constraints.txt" in dockerfile
    )
    script = (REPO / "scripts" / "install_niftyreg.sh").read_text()
    assert 'BUILD_CONSTRAINTS="$REPO_ROOT/build-constraints.txt"' in script
    assert {"setuptools", "scikit-build", "cmake", "ninja"} <= set(_pins(REPO / "build-constraints.txt"))


def test_the_runtime_stage_installs_libgomp_and_checks_niftyreg():
    runtime = DOCKERFILE.read_text().split("FROM ")[-1]
    assert "apt-get install -y --no-install-recommends libgomp1" in runtime
    assert "reg_aladin" in runtime and "remind2reg --version" in runtime  # checked at build time


def _service(compose: str, name: str) -> str:
    """The text of one service of a compose file (no YAML parser needed for these checks)."""
    match = re.search(rf"^  {name}:\n((?:    .*\n|\s*\n)*)", compose, re.MULTILINE)
    assert match, f"service {name} not found"
    return match.group(1)


def test_compose_runs_without_a_gpu_and_evaluate_does_not_rerun_reg():
    compose = (REPO / "docker-compose.yml").read_text()
    assert "nvidia" not in compose and "devices" not in compose
    evaluate = _service(compose, "evaluate")
    assert "depends_on" not in evaluate, "evaluate must not start (and so re-run) reg"
    assert "profiles" in evaluate, "a plain `up` must not start evaluate next to reg"
    gpu = (REPO / "docker-compose.gpu.yml").read_text()
    assert "driver: nvidia" in _service(gpu, "reg")


def test_dockerignore_sends_what_the_dockerfile_copies_and_little_else():
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", ".dockerignore should be a whitelist"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for word, rest in dockerfile_instructions():
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _ = shlex.split(rest)
            for src in sources:
                assert src.rstrip("/") in allowed, f"Dockerfile copies {src}, which .dockerignore leaves out"
