"""The image, built and run in a real Docker engine (``make test-docker``).

What it proves, on a machine without a GPU and without an image registry:

* the Dockerfile builds, unchanged but for its base (``--build-arg TORCH_IMAGE=...``): by
  default on a stand-in base made from Debian packages by ``scripts/standin_base.sh``
  (cached); ``REMIND2REG_DOCKER_BASE=default`` builds on the Dockerfile's own pytorch base
  instead (needs a registry), any other value is passed as ``TORCH_IMAGE``. The result is
  tagged ``remind2reg:latest`` and ``reg:latest``;
* the runtime stage: uid 1000, no compiler, no pip cache, no test data, the weights, NiftyReg's
  tools run (libgomp present), ``remind2reg --version``;
* the challenge's command, ``docker run --rm --network none -v IN:/input:ro -v OUT:/output``,
  on a synthetic flat folder (two cases, one without T2) writes one valid field per pair
  (fixed shape + 3, finite, owned by uid 1000) that lowers the TRE, as scored on the host;
* compose: ``reg`` then ``evaluate`` (which does not re-run the registration), and the GPU
  override file;
* the image's defaults on a corrupt case (identity field, exit 0, the case in the log),
  ``REMIND2REG_MODALITIES=T2``, a read-only /input and an unwritable /output.

Needs a Docker engine: where none answers the tests skip with the reason, except with
``CI=true``, where they fail. ``scripts/docker_engine.sh run`` (what ``make test-docker``
uses) installs and starts one when it can.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3000)]

IMAGE = "remind2reg:latest"
ALIASES = ("reg:latest",)
UID = 1000
CASES = 2
BIN = Path(sys.executable).parent
# The three pairs of the synthetic input: case 0001 with both sequences, case 0002 without T2.
STANDIN_PREFIX = "remind2reg-standin:"
STANDIN_KEY = pytest.StashKey[bool]()
ALL_FIELDS = [
    "disp_0001_0000_0001_0001.nii.gz",
    "disp_0001_0000_0001_0002.nii.gz",
    "disp_0002_0000_0002_0001.nii.gz",
]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def _unavailable(reason: str):
    """Skip, or fail where CI=true: CI must run the container test, not skip it."""
    if _in_ci():
        pytest.fail(f"CI=true but the container test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def _run(cmd: list[str], timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def _report(config: pytest.Config, line: str) -> None:
    """A measurement line in pytest's output (shown even when output is captured)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[docker] {line}")


def _image_id(ref: str) -> str:
    return _run(["docker", "image", "inspect", "--format", "{{.Id}}", ref]).stdout.strip()


def _compose() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if _run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    return None


def _docker_run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return _run(["docker", "run", "--rm", *args], timeout=timeout)


def _in_image(*command: str, user: str | None = None) -> subprocess.CompletedProcess:
    """A command in the image instead of its ENTRYPOINT, without a network."""
    extra = ["--user", user] if user else []
    return _docker_run("--network", "none", *extra, "--entrypoint", command[0], IMAGE, *command[1:])


def _writable_output(path: Path) -> Path:
    """An output folder that uid 1000 (the image's user) can write."""
    path.mkdir(parents=True)
    if os.geteuid() == 0:
        os.chown(path, UID, UID)
    else:
        path.chmod(0o777)
    return path


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def engine() -> None:
    if shutil.which("docker") is None:
        _unavailable("no docker client on PATH (make test-docker installs one as root)")
    probe = _run(["docker", "info"], timeout=60)
    if probe.returncode != 0:
        _unavailable(
            f"no Docker engine answers ({probe.stderr.strip()[:200]}); make test-docker starts one as root"
        )


@pytest.fixture(scope="module")
def image(engine, pytestconfig, tmp_path_factory) -> str:
    """The project's image, built from this checkout (tagged remind2reg:latest, reg:latest)."""
    base = os.environ.get("REMIND2REG_DOCKER_BASE", "")
    build_args: list[str] = []
    start = time.monotonic()
    if base == "":
        if os.geteuid() != 0:
            _unavailable(
                "building the stand-in base image needs root (mmdebstrap); run as root, or set "
                "REMIND2REG_DOCKER_BASE=default to build on the Dockerfile's pytorch base"
            )
        made = _run([str(REPO / "scripts" / "standin_base.sh"), sys.executable], timeout=1800)
        assert made.returncode == 0, f"stand-in base failed:\n{made.stderr[-4000:]}"
        base = made.stdout.strip().splitlines()[-1]
        _report(pytestconfig, f"stand-in base {base}: {time.monotonic() - start:.0f} s")
    if base != "default":
        build_args = ["--build-arg", f"TORCH_IMAGE={base}"]
    tags = [arg for tag in (IMAGE, *ALIASES) for arg in ("--tag", tag)]
    previous = _image_id(IMAGE)
    log = tmp_path_factory.mktemp("build") / "docker-build.log"
    start_build = time.monotonic()
    with log.open("w") as out:
        built = subprocess.run(
            ["docker", "build", "--force-rm", *build_args, *tags, str(REPO)],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=2400,
            check=False,
        )
    text = log.read_text()
    assert built.returncode == 0, f"docker build failed (log {log}):\n{text[-6000:]}"
    if previous and previous != _image_id(IMAGE):
        _run(["docker", "image", "rm", previous])  # the image this build replaced, if now untagged
    context = next((line for line in text.splitlines() if "build context" in line), "")
    size = int(_run(["docker", "image", "inspect", "--format", "{{.Size}}", IMAGE]).stdout.strip())
    _report(pytestconfig, f"docker build: {time.monotonic() - start_build:.0f} s; {context.strip()}")
    base_size = _run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", f"{base}-runtime"]
    ).stdout.strip()
    of_base = f", of which base {int(base_size) / 1e9:.2f} GB" if base_size.isdigit() else ""
    _report(pytestconfig, f"image {IMAGE}: {size / 1e9:.2f} GB ({size} bytes{of_base}), base {base}")
    pytestconfig.stash[STANDIN_KEY] = base.startswith(STANDIN_PREFIX)
    return IMAGE


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, Path]:
    """(flat input folder, ground-truth dataset): 2 cases, case 0002 without T2.

    As the challenge mounts /input: a flat folder of images, here with the landmark files
    beside them (the evaluator's flat layout), and no dataset json.
    """
    root = tmp_path_factory.mktemp("synth")
    dataset = root / "dataset"
    made = _run(
        [
            str(BIN / "remind2reg"),
            "synth",
            "--out",
            str(dataset),
            "--cases",
            str(CASES),
            "--grid",
            "128",
            "--seed",
            "0",
        ],
        timeout=900,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    flat = root / "input"
    flat.mkdir()
    for sub, pattern in (("imagesTr", "*.nii.gz"), ("landmarksTr", "*.csv")):
        for path in sorted((dataset / sub).glob(pattern)):
            if not path.name.startswith("ReMIND2Reg_0002_0002."):  # case 0002: no T2
                shutil.copy2(path, flat / path.name)
    assert len(list(flat.glob("*.nii.gz"))) == 5 and len(list(flat.glob("*.csv"))) == 5
    for path in [flat, *flat.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return flat, dataset


def _copy_input(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    dst.chmod(0o755)
    return dst


def _check_fields(out: Path, inputs: Path, expected: list[str]) -> None:
    assert sorted(p.name for p in out.glob("disp_*")) == expected
    for name in expected:
        disp = out / name
        case = name.split("_")[1]
        fixed = nib.load(inputs / f"ReMIND2Reg_{case}_0000.nii.gz")
        field = nib.load(disp)
        assert field.shape == (*fixed.shape, 3), f"{name}: shape {field.shape}, fixed {fixed.shape}"
        data = np.asarray(field.dataobj)
        assert np.isfinite(data).all(), f"{name}: NaN or Inf"
        assert disp.stat().st_uid == UID, f"{name} is owned by uid {disp.stat().st_uid}, not {UID}"


def _evaluate(inputs: Path, pred: Path, json_path: Path) -> dict:
    scored = _run(
        [
            str(BIN / "remind2reg"),
            "evaluate",
            "--data",
            str(inputs),
            "--pred",
            str(pred),
            "--json",
            str(json_path),
        ]
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    return json.loads(json_path.read_text())


# --------------------------------------------------------------------------- tests


def test_runtime_stage(image, pytestconfig):
    """Non-root, lean (no compiler, pip cache, test data), NiftyReg runs, the CLI answers."""
    config = json.loads(_run(["docker", "image", "inspect", image]).stdout)[0]["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["remind2reg", "register", "--input", "/input", "--output", "/output"]

    ids = _in_image("id", "-u")
    assert ids.returncode == 0 and ids.stdout.strip() == str(UID), ids.stdout + ids.stderr

    cli = _in_image("remind2reg", "--version")
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == f"remind2reg {version('remind2reg')}"

    # Every NiftyReg tool runs (`-v`: its version) and finds its libraries (libgomp.so.1).
    niftyreg = _in_image(
        "sh",
        "-c",
        'bin=$(python -c "import niftyreg; print(niftyreg.bin_path)") && ls "$bin"/reg_* >/dev/null && '
        'for tool in "$bin"/reg_*; do '
        '  ldd "$tool" | grep "not found" && exit 1; '
        '  "$tool" -v >/dev/null 2>&1 || { echo "$tool -v failed"; exit 1; }; echo "$(basename "$tool") ok"; '
        "done",
    )
    assert niftyreg.returncode == 0, niftyreg.stdout + niftyreg.stderr
    assert "reg_aladin ok" in niftyreg.stdout and "reg_resample ok" in niftyreg.stdout
    _report(pytestconfig, "NiftyReg in the runtime stage: " + " ".join(niftyreg.stdout.split()[::2]))

    compilers = _in_image("sh", "-c", "for c in gcc g++ cc c++ clang; do command -v $c; done; true")
    assert compilers.stdout.strip() == "", f"compilers in the runtime stage: {compilers.stdout.split()}"

    # As root, to see every home: no pip cache, no build leftovers, no test data of ours
    # (NIfTI files outside the installed packages; nibabel ships its own test images).
    leftovers = _in_image(
        "sh",
        "-c",
        "ls -d /root/.cache/pip /home/reg/.cache/pip /tmp/wheels /tmp/constraints.txt /src 2>/dev/null; "
        "find / -xdev -name '*.nii.gz' -not -path '*/site-packages/*' -print 2>/dev/null; "
        "find / -xdev -path '*/site-packages/remind2reg*' -name 'test_*' -print 2>/dev/null; true",
        user="0",
    )
    assert leftovers.stdout.strip() == "", f"left in the image: {leftovers.stdout.split()[:20]}"

    weights = _in_image("sh", "-c", "cd /opt/remind2reg/weights && sha256sum *.pt")
    expected = _run(["sh", "-c", "cd weights && sha256sum *.pt"], cwd=REPO).stdout
    assert weights.returncode == 0 and weights.stdout == expected and expected, (
        weights.stdout + weights.stderr
    )


def test_register_as_the_challenge_runs_it_and_score(image, synthetic, tmp_path, pytestconfig):
    inputs, _ = synthetic
    out = _writable_output(tmp_path / "output")
    start = time.monotonic()
    # Exactly the challenge's command.
    ran = _run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            f"{inputs}:/input:ro",
            "-v",
            f"{out}:/output",
            image,
        ]
    )
    seconds = time.monotonic() - start
    assert ran.returncode == 0, ran.stderr[-4000:]
    assert "No CUDA device available: running on the CPU" in ran.stderr
    _check_fields(out, inputs, ALL_FIELDS)
    assert (out / "timings.json").is_file()
    metrics = _evaluate(inputs, out, tmp_path / "metrics.json")
    initial, final = metrics["aggregates"]["TRE_initial"], metrics["aggregates"]["TRE_lm"]
    assert final["mean"] < initial["mean"] and final["30"] < initial["30"], (initial, final)
    _report(
        pytestconfig,
        f"docker run on {CASES} cases (3 pairs): {seconds:.0f} s; TRE {initial['mean']:.2f} -> {final['mean']:.2f} mm "
        f"(TRE30 {initial['30']:.2f} -> {final['30']:.2f})",
    )
    if pytestconfig.stash.get(STANDIN_KEY, False):
        # Same code, same torch (CPU), same pinned numpy/scipy: the native install agrees.
        native_out = tmp_path / "native"
        native = _run(
            [str(BIN / "remind2reg"), "register", "--input", str(inputs), "--output", str(native_out)]
        )
        assert native.returncode == 0, native.stderr[-3000:]
        native_tre = _evaluate(inputs, native_out, tmp_path / "native.json")["aggregates"]["TRE_lm"]["mean"]
        assert abs(native_tre - final["mean"]) < 0.05, (
            f"image {final['mean']:.3f} mm vs native {native_tre:.3f} mm"
        )


def test_input_is_read_only_and_output_writable(image, synthetic, tmp_path):
    inputs, _ = synthetic
    out = _writable_output(tmp_path / "output")
    probe = _docker_run(
        "--network",
        "none",
        "-v",
        f"{inputs}:/input:ro",
        "-v",
        f"{out}:/output",
        "--entrypoint",
        "sh",
        image,
        "-c",
        "touch /input/x; echo input=$?; touch /output/x; echo output=$?",
    )
    assert "input=1" in probe.stdout and "Read-only file system" in probe.stderr, probe.stdout + probe.stderr
    assert "output=0" in probe.stdout
    assert (out / "x").stat().st_uid == UID


def test_compose_reg_then_evaluate(image, synthetic, tmp_path):
    compose = _compose()
    if compose is None:
        _unavailable("neither docker-compose nor `docker compose` is installed")
    inputs, _ = synthetic
    project = tmp_path / "project"
    project.mkdir()
    for name in ("docker-compose.yml", "docker-compose.gpu.yml"):
        shutil.copy2(REPO / name, project / name)
    _copy_input(inputs, project / "input")
    out = _writable_output(project / "output")
    name = f"remind2regtest{os.getpid()}"
    cmd = [*compose, "--project-name", name]

    # The GPU lives in the override file only: the default file runs without the NVIDIA runtime.
    plain = _run([*cmd, "config"], cwd=project)
    assert plain.returncode == 0 and "nvidia" not in plain.stdout, plain.stdout + plain.stderr
    gpu = _run([*cmd, "-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml", "config"], cwd=project)
    assert gpu.returncode == 0 and "driver: nvidia" in gpu.stdout, gpu.stdout + gpu.stderr

    try:
        reg = _run([*cmd, "up", "--no-build", "--exit-code-from", "reg", "reg"], cwd=project)
        assert reg.returncode == 0, reg.stdout[-4000:] + reg.stderr[-2000:]
        _check_fields(out, inputs, ALL_FIELDS)
        before = {p.name: p.stat().st_mtime_ns for p in out.glob("disp_*")}

        evaluate = _run([*cmd, "run", "--rm", "evaluate"], cwd=project)
        assert evaluate.returncode == 0, evaluate.stdout[-4000:] + evaluate.stderr[-2000:]
        assert "TRE30" in evaluate.stdout
        # evaluate scores what reg wrote: no second registration, fields untouched.
        assert "Registering" not in evaluate.stdout + evaluate.stderr
        assert {p.name: p.stat().st_mtime_ns for p in out.glob("disp_*")} == before
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["aggregates"]["TRE_lm"]["mean"] < metrics["aggregates"]["TRE_initial"]["mean"]
        assert (out / "metrics.csv").is_file()
    finally:
        _run([*cmd, "down", "--remove-orphans"], cwd=project)


def test_a_corrupt_case_gets_the_identity_field_under_the_image_defaults(image, synthetic, tmp_path):
    inputs, _ = synthetic
    batch = _copy_input(inputs, tmp_path / "input")
    broken = batch / "ReMIND2Reg_0002_0001.nii.gz"  # the MR: the US still gives the field's grid
    broken.write_bytes(broken.read_bytes()[:200])  # truncated gzip
    out = _writable_output(tmp_path / "output")
    ran = _docker_run("--network", "none", "-v", f"{batch}:/input:ro", "-v", f"{out}:/output", image)
    assert ran.returncode == 0, ran.stderr[-4000:]
    assert "case 0002" in ran.stderr and "/input/ReMIND2Reg_0002_0001.nii.gz" in ran.stderr, ran.stderr[
        -4000:
    ]
    _check_fields(out, batch, ALL_FIELDS)
    identity = np.asarray(nib.load(out / "disp_0002_0000_0002_0001.nii.gz").dataobj)
    assert not identity.any(), "the failed case's field is not the identity (zero) field"
    assert np.asarray(nib.load(out / "disp_0001_0000_0001_0001.nii.gz").dataobj).any()
    timings = json.loads((out / "timings.json").read_text())
    assert timings["pairs"]["disp_0002_0000_0002_0001.nii.gz"]["fallback"] == "identity"


def test_modalities_from_the_environment(image, synthetic, tmp_path):
    inputs, _ = synthetic
    out = _writable_output(tmp_path / "output")
    ran = _docker_run(
        "--network",
        "none",
        "-e",
        "REMIND2REG_MODALITIES=T2",
        "-v",
        f"{inputs}:/input:ro",
        "-v",
        f"{out}:/output",
        image,
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    _check_fields(out, inputs, ["disp_0001_0000_0001_0002.nii.gz"])


def test_an_unwritable_output_fails_at_once_without_a_traceback(image, synthetic, tmp_path):
    """A missing ./output: Docker creates it owned by root, which uid 1000 cannot write."""
    if os.geteuid() != 0:
        pytest.skip("needs root on the host: Docker then creates the missing folder owned by root")
    inputs, _ = synthetic
    out = tmp_path / "missing-output"
    ran = _docker_run(
        "--network", "none", "-v", f"{inputs}:/input:ro", "-v", f"{out}:/output", image, timeout=300
    )
    assert out.is_dir() and out.stat().st_uid == 0  # what Docker did
    log = ran.stdout + ran.stderr
    assert ran.returncode != 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert ran.returncode == 3, log[-3000:]
    naming = [line for line in log.splitlines() if "/output" in line]
    assert len(naming) == 1 and "chown" in naming[0], log[-3000:]  # one line: the folder and the fix
    assert not list(out.iterdir())  # failed before any work
