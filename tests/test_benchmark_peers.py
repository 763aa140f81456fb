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


def test_harness_method_commands(tmp_path, benchmark_script):
    harness = benchmark_script("registration_benchmark")
    ours = harness.method_command("convex-adam", tmp_path / "in", tmp_path / "out", tmp_path / "c.toml", 1)
    assert ours[1:7] == ["-m", "remind2reg", "-q", "register", "--method", "convex-adam"]
    assert ours[-2:] == ["--config", str(tmp_path / "c.toml")] and ours[ours.index("--threads") + 1] == "1"
    peer = harness.method_command(
        "peer:convexadam-baseline-rigid", tmp_path / "in", tmp_path / "out", None, 2
    )
    assert peer[1].endswith("convexadam_package.py") and peer[2:4] == ["--preset", "baseline-rigid"]
    assert harness.method_dir(tmp_path, "peer:convexadam-defaults") == tmp_path / "peer_convexadam-defaults"


def _tiny_standard_set(data) -> None:
    """Two cases (US + ceT1) with landmarks 2 voxels apart, in two families and both halves."""
    from remind2reg.inference.io.landmarks import write_landmarks_csv
    from tests.conftest import make_case_files

    shape, vox2world = (20, 20, 20), np.diag([0.5, 0.5, 0.5, 1.0])
    for case in ("0001", "0002"):
        make_case_files(data, case, shape, vox2world, modalities=("0000", "0001"))
        fix = np.array([[5.0, 6.0, 7.0], [10.0, 10.0, 10.0], [14.0, 12.0, 8.0]])
        write_landmarks_csv(data / "landmarksTr" / f"ReMIND2Reg_{case}_0000.csv", fix)
        write_landmarks_csv(data / "landmarksTr" / f"ReMIND2Reg_{case}_0001.csv", fix + [2.0, 0.0, 0.0])
    cases = {
        "0001": {"family": "pre-resection", "split": "tuning", "nearly_aligned": False},
        "0002": {"family": "post-resection", "split": "held-out", "nearly_aligned": False},
    }
    (data / "split.json").write_text(json.dumps({"tuning": ["0001"], "held-out": ["0002"], "cases": cases}))


def test_harness_runs_scores_and_reuses(tmp_path, capsys, benchmark_script):
    """identity (and the baseline peer when installed) on a tiny folder; the second call reuses."""
    harness = benchmark_script("registration_benchmark")
    data = tmp_path / "data"
    _tiny_standard_set(data)
    methods = ["identity"] + (["peer:convexadam-baseline"] if adapter.package_available() else [])
    args = ["--data", str(data), "--methods", *methods, "--results", str(tmp_path / "res"), "--threads", "1"]
    assert (
        harness.main([*args, "--markdown", str(tmp_path / "table.md"), "--json", str(tmp_path / "t.json")])
        == 0
    )
    first = capsys.readouterr().out
    assert "[identity] running 2 pair(s)" in first
    rows = {(r["group"], r["method"]): r for r in json.loads((tmp_path / "t.json").read_text())["rows"]}
    # identity: TRE = initial = 2 voxels x 0.5 mm, no change, no pair made worse; per family and overall
    for group in ("pre-resection", "post-resection", "all"):
        row = rows[(group, "identity")]
        assert row["tre"] == row["tre0"] == 1.0 and row["change"] == 0.0 and row["worse"] == 0.0
    assert rows[("all", "identity")]["pairs"] == 2
    runs = json.loads((tmp_path / "res" / "identity" / "benchmark_runs.json").read_text())
    assert runs["runs"][0]["peak_rss_mb"] > 10 and runs["runs"][0]["pairs"]
    assert "| family | method |" in (tmp_path / "table.md").read_text()
    assert harness.main([*args, "--split", "held-out"]) == 0
    second = capsys.readouterr().out
    assert (
        "running" not in second
        and "0002_0000<--0002_0001" in second
        and "0001_0000<--0001_0001" not in second
    )


def test_harness_on_dask_gives_the_serial_table(tmp_path, benchmark_script):
    """(method, case) tasks on a LocalCluster: the same per-pair numbers as the serial run."""
    harness = benchmark_script("registration_benchmark")
    data = tmp_path / "data"
    _tiny_standard_set(data)
    tables = []
    for name, extra in (("serial", []), ("dask", ["--scheduler", "local:2"])):
        out = tmp_path / f"{name}.json"
        args = [
            "--data",
            str(data),
            "--methods",
            "identity",
            "convex-adam",
            "--results",
            str(tmp_path / name),
        ]
        assert harness.main([*args, "--threads", "1", "--json", str(out), *extra]) == 0
        tables.append(json.loads(out.read_text()))
    for method in ("identity", "convex-adam"):
        serial, dask = (t["pairs"][method] for t in tables)
        assert {k: v["tre"] for k, v in serial.items()} == {k: v["tre"] for k, v in dask.items()}
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "peak_gib")} for r in tables[0]["rows"]]
    assert strip == [
        {k: v for k, v in r.items() if k not in ("seconds", "peak_gib")} for r in tables[1]["rows"]
    ]


def test_results_made_under_other_settings_are_moved_aside_not_reused(tmp_path, capsys, benchmark_script):
    harness = benchmark_script("registration_benchmark")
    mdir = tmp_path / "convex-adam"
    mdir.mkdir()
    (mdir / "disp_0001_0000_0001_0001.nii.gz").write_bytes(b"old")
    (mdir / "timings.json").write_text("{}")
    default = harness.method_settings("convex-adam", None)
    harness.retire_stale(mdir, default)  # fields without a settings record: of unknown settings
    assert not (mdir / "disp_0001_0000_0001_0001.nii.gz").exists()
    assert len(list(mdir.glob("stale-*/disp_0001_0000_0001_0001.nii.gz"))) == 1
    (mdir / "disp_0001_0000_0001_0001.nii.gz").write_bytes(b"new")
    harness.retire_stale(mdir, default)  # same settings: kept
    assert (mdir / "disp_0001_0000_0001_0001.nii.gz").read_bytes() == b"new"
    preset = harness.method_settings("convex-adam@niftyreg_plain", None)
    assert preset != default and preset["settings"]["affine"]["aladin"]["use_masks"] is False
    # methods that do not run the pipeline depend only on what they read
    assert harness.method_settings("identity", None) == {"method": "identity"}
    # under a fusion a ceT1 field depends on whether the T2 was registered with it: a ceT1-only
    # run must not reuse a two-sequence run's ceT1 fields (reg_aladin registers each alone)
    assert harness.method_settings("convex-adam", None, "ceT1") != default
    assert harness.method_settings("niftyreg-rigid", None, "ceT1") == harness.method_settings(
        "niftyreg-rigid", None, "both"
    )
    assert set(harness.method_settings("niftyreg-rigid", None)) == {"method", "aladin"}
    import time

    time.sleep(1.1)  # the stale folder is named by the second
    harness.retire_stale(mdir, preset)
    assert not (mdir / "disp_0001_0000_0001_0001.nii.gz").exists()
    assert "settings changed" in capsys.readouterr().out
    assert len(list(mdir.glob("stale-*"))) == 2
    # --discard-stale: results of other settings are deleted, and so are the stale folders
    (mdir / "disp_0001_0000_0001_0001.nii.gz").write_bytes(b"preset")
    harness.retire_stale(mdir, default, discard=True)
    assert not list(mdir.glob("stale-*")) and not list(mdir.glob("disp_*"))
    assert "deleted them" in capsys.readouterr().out
    (mdir / "disp_0001_0000_0001_0001.nii.gz").write_bytes(b"default")
    harness.retire_stale(mdir, default, discard=True)  # same settings: kept
    assert (mdir / "disp_0001_0000_0001_0001.nii.gz").read_bytes() == b"default"


def test_paired_table_uses_case_means_per_family(benchmark_script):
    """Two cases of two pairs each: a method better by exactly 1 mm on one case, equal on the other."""
    harness = benchmark_script("registration_benchmark")
    from remind2reg.evaluation.evaluate import PairResult
    from remind2reg.inference.io.dataset import RegistrationPair

    pairs, scored = [], {"a": {}, "b": {}}
    for case, gain in (("0001", 1.0), ("0002", 0.0)):
        for seq in ("0001", "0002"):
            p = RegistrationPair(
                Path(f"ReMIND2Reg_{case}_0000.nii.gz"), Path(f"ReMIND2Reg_{case}_{seq}.nii.gz")
            )
            pairs.append(p)
            key = f"{case}_0000<--{case}_{seq}"
            tre_b = 3.0 if seq == "0001" else 5.0  # case mean 4.0 for the baseline
            scored["b"][p.output_name] = PairResult(key, case, "ceT1", 3, 6.0, tre_b)
            scored["a"][p.output_name] = PairResult(key, case, "ceT1", 3, 6.0, tre_b - gain)
    info = {
        "0001": harness.CaseInfo("pre-resection", "tuning"),
        "0002": harness.CaseInfo("weak-contrast", "tuning"),
    }
    rows = {
        (r.group, r.method): r.comparison
        for r in harness.build_paired_rows(["b", "a"], "b", scored, pairs, info)
    }
    assert set(rows) == {("pre-resection", "a"), ("weak-contrast", "a"), ("all", "a")}
    assert rows[("pre-resection", "a")].mean_diff == -1.0 and rows[("pre-resection", "a")].better == 1
    assert rows[("weak-contrast", "a")].ties == 1 and rows[("weak-contrast", "a")].p_value == 1.0
    overall = rows[("all", "a")]
    assert (overall.n, overall.mean_diff, overall.better, overall.ties) == (2, -0.5, 1, 1)
