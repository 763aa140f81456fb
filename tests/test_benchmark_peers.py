"""The convexAdam peer adapter: the package's output convention, checked on a known shift.

A blurred random volume is rolled by a known integer vector ``t`` (``moving[x] = fixed[x - t]``),
so the exact answer in the challenge convention (fixed -> moving, voxels of the fixed grid along
the array axes, ``warped = moving(x + u(x))``) is ``u = +t`` everywhere. A distinct value per
axis catches a swapped or reversed axis order, the sign catches a moving -> fixed field, and the
magnitude catches normalised ([-1, 1]) or millimetre units.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, map_coordinates

REPO = Path(__file__).resolve().parents[1]
ADAPTER = REPO / "benchmarks" / "peers" / "convexadam_package.py"


def _load_adapter():
    spec = importlib.util.spec_from_file_location("convexadam_package", ADAPTER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


adapter = _load_adapter()
needs_package = pytest.mark.skipif(
    not adapter.package_available(),
    reason="convexAdam is not installed (pip install convexAdam==0.2.0, the 'peers' extra)",
)


def _shifted_pair(n: int, shift: tuple[int, int, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    fixed = gaussian_filter(rng.standard_normal((n, n, n)), 2.0)
    fixed = ((fixed - fixed.min()) / (fixed.max() - fixed.min()) + 0.1).astype(np.float32)  # > 0: no mask
    moving = np.roll(fixed, shift, axis=(0, 1, 2))  # moving[x] = fixed[x - shift]
    return fixed, moving


def _check_convention(disp: np.ndarray, fixed: np.ndarray, moving: np.ndarray, shift, tol: float) -> None:
    n = fixed.shape[0]
    assert disp.shape == (n, n, n, 3)
    assert disp.dtype == np.float32
    inner = (slice(n // 4, 3 * n // 4),) * 3
    median = np.median(disp[inner].reshape(-1, 3), axis=0)
    np.testing.assert_allclose(
        median, shift, atol=tol, err_msg=f"median displacement {median}, expected {shift}"
    )
    # The field must warp the moving image onto the fixed one: warped = moving(x + u(x)).
    grid = np.mgrid[:n, :n, :n].astype(np.float64)
    warped = map_coordinates(moving, grid + disp.transpose(3, 0, 1, 2), order=1, mode="grid-wrap")
    before = np.abs(moving - fixed)[inner].mean()
    after = np.abs(warped - fixed)[inner].mean()
    assert after < 0.25 * before, (before, after)
    # The opposite sign does not align (the field is not moving -> fixed): as bad as no field.
    wrong = map_coordinates(moving, grid - disp.transpose(3, 0, 1, 2), order=1, mode="grid-wrap")
    assert np.abs(wrong - fixed)[inner].mean() > 4 * after


@needs_package
def test_baseline_chain_convention():
    """The organisers' chain (convex + masked cost + IC, no Adam): whole coarse cells, distinct per axis.

    Smaller MIND / grid than the preset (r=2, d=2, grid_sp 4) to keep it fast on 48^3: the
    convention does not depend on them, and 48^3 holds too few grid_sp 6 cells for a clean answer.
    """
    shift = (8, -4, 0)
    fixed, moving = _shifted_pair(48, shift)
    raw = adapter.run_baseline(fixed, moving, mind_r=2, mind_d=2, grid_sp=4, disp_hw=4)
    disp = adapter.to_challenge(raw, fixed.shape)
    _check_convention(disp, fixed, moving, shift, tol=0.5)


@needs_package
def test_package_entry_point_convention():
    """The package's own ``convex_adam_pt`` (the defaults preset path), Adam included (40 iterations)."""
    shift = (6, -4, 2)
    fixed, moving = _shifted_pair(48, shift)
    raw = adapter.run_defaults(fixed, moving, selected_niter=40)
    disp = adapter.to_challenge(raw, fixed.shape)
    _check_convention(disp, fixed, moving, shift, tol=0.6)


def test_to_challenge_rejects_wrong_shape():
    with pytest.raises(ValueError, match="expected"):
        adapter.to_challenge(np.zeros((3, 8, 8, 8)), (8, 8, 8))


@needs_package
def test_register_folder_writes_challenge_files(tmp_path):
    from remind2reg.inference.io.displacement import read_displacement
    from tests.conftest import make_case_files

    shape = (24, 24, 24)
    vox2world = np.diag([0.5, 0.5, 0.5, 1.0])
    make_case_files(tmp_path / "in", "0007", shape, vox2world, modalities=("0000", "0001"))
    records = adapter.register_folder(tmp_path / "in", tmp_path / "out", "baseline", ("0001", "0002"))
    assert [r.output for r in records] == ["disp_0007_0000_0007_0001.nii.gz"]
    disp = read_displacement(tmp_path / "out" / records[0].output, expected_shape=shape)
    assert np.isfinite(disp).all()
    timings = json.loads((tmp_path / "out" / "timings.json").read_text())
    entry = timings["pairs"]["disp_0007_0000_0007_0001.nii.gz"]
    assert entry["total_s"] > 0 and set(entry["stages"]) == {"load", "register", "write"}
    assert timings["method"] == "peer:convexadam-baseline"


def _load_harness():
    path = REPO / "benchmarks" / "registration_benchmark.py"
    spec = importlib.util.spec_from_file_location("registration_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_harness_method_commands(tmp_path):
    harness = _load_harness()
    ours = harness.method_command("convex-adam", tmp_path / "in", tmp_path / "out", tmp_path / "c.toml")
    assert ours[1:6] == ["-m", "remind2reg", "register", "--method", "convex-adam"]
    assert ours[-2:] == ["--config", str(tmp_path / "c.toml")]
    peer = harness.method_command("peer:convexadam-baseline", tmp_path / "in", tmp_path / "out", None)
    assert peer[1].endswith("convexadam_package.py") and peer[2:4] == ["--preset", "baseline"]
    assert harness.method_dir(tmp_path, "peer:convexadam-defaults") == tmp_path / "peer_convexadam-defaults"
    assert harness._per_method(["3", "identity=5"], int, "x") == (3, {"identity": 5})


def test_harness_runs_scores_and_reuses(tmp_path, capsys):
    """identity (and the baseline peer when installed) on a tiny folder; the second call reuses."""
    from remind2reg.inference.io.landmarks import write_landmarks_csv
    from tests.conftest import make_case_files

    harness = _load_harness()
    data = tmp_path / "data"
    shape, vox2world = (20, 20, 20), np.diag([0.5, 0.5, 0.5, 1.0])
    for case in ("0001", "0002"):
        make_case_files(data, case, shape, vox2world, modalities=("0000", "0001"))
        fix = np.array([[5.0, 6.0, 7.0], [10.0, 10.0, 10.0], [14.0, 12.0, 8.0]])
        write_landmarks_csv(data / "landmarksTr" / f"ReMIND2Reg_{case}_0000.csv", fix)
        write_landmarks_csv(data / "landmarksTr" / f"ReMIND2Reg_{case}_0001.csv", fix + [2.0, 0.0, 0.0])
    methods = ["identity"] + (["peer:convexadam-baseline"] if adapter.package_available() else [])
    args = ["--data", str(data), "--methods", *methods, "--results", str(tmp_path / "res")]
    assert harness.main([*args, "--markdown", str(tmp_path / "table.md")]) == 0
    first = capsys.readouterr().out
    assert "initial (zero field)" in first and "running 2 pair(s)" in first
    # identity: TRE = initial = 2 voxels x 0.5 mm
    identity_row = next(line for line in first.splitlines() if line.startswith("identity "))
    assert identity_row.split()[1:4] == ["2/2", "1.000", "1.000"]
    runs = json.loads((tmp_path / "res" / "identity" / "benchmark_runs.json").read_text())
    assert runs["runs"][0]["peak_rss_mb"] > 10 and runs["runs"][0]["pairs"]
    assert "| method |" in (tmp_path / "table.md").read_text()
    assert harness.main(args) == 0
    second = capsys.readouterr().out
    assert "running" not in second and "reusing 2 finished pair(s)" in second
