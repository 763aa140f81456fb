"""End-to-end runs of ``remind2reg register`` and ``remind2reg evaluate`` on tiny folders."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from remind2reg.cli import main
from remind2reg.inference.errors import EXIT_INPUT, EXIT_OK
from remind2reg.inference.geometry import affine_displacement, apply_affine
from remind2reg.inference.io.displacement import write_displacement
from remind2reg.inference.io.landmarks import write_landmarks_csv
from tests.conftest import make_case_files, oblique_vox2world

SHAPE = (24, 28, 20)


def register(input_dir, output_dir, *options: str) -> int:
    """``remind2reg register --input input_dir --output output_dir [options]`` in-process."""
    return main(["register", "--input", str(input_dir), "--output", str(output_dir), *options])


@pytest.fixture
def dataset(tmp_path):
    """Two cases on an oblique grid; case 0002 has no T2. Moving landmarks follow a known rigid map."""
    root = tmp_path / "data"
    vox2world = oblique_vox2world(spacing=(0.5, 0.5, 0.5))
    centre = apply_affine(vox2world, (np.array(SHAPE) - 1)[None] / 2)[0]
    rot = Rotation.from_rotvec(np.deg2rad([3.0, -2.0, 4.0])).as_matrix()
    f2m = np.eye(4)
    f2m[:3, :3] = rot
    f2m[:3, 3] = centre - rot @ centre + [1.5, -1.0, 0.8]
    fix = np.random.default_rng(0).uniform(5, np.array(SHAPE) - 6, size=(12, 3))
    mov = apply_affine(np.linalg.inv(vox2world) @ f2m @ vox2world, fix)
    for case, mods in (("0001", ("0000", "0001", "0002")), ("0002", ("0000", "0001"))):
        make_case_files(root, case, SHAPE, vox2world, modalities=mods)
        write_landmarks_csv(root / "landmarksTr" / f"ReMIND2Reg_{case}_0000.csv", fix)
        for m in mods[1:]:
            write_landmarks_csv(root / "landmarksTr" / f"ReMIND2Reg_{case}_{m}.csv", mov)
    truth = affine_displacement(f2m, vox2world, SHAPE)
    return root, truth, vox2world, fix, mov


def test_register_identity_then_evaluate_gives_initial_tre(dataset, tmp_path, capsys):
    root, _, _, fix, mov = dataset
    out = tmp_path / "pred"
    assert register(str(root), str(out), "--method", "identity", "--device", "cpu") == EXIT_OK
    names = sorted(p.name for p in out.glob("disp_*.nii.gz"))
    assert names == [
        "disp_0001_0000_0001_0001.nii.gz",
        "disp_0001_0000_0001_0002.nii.gz",
        "disp_0002_0000_0002_0001.nii.gz",
    ]
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["pairs"]) == set(names) and timings["method"] == "identity"

    json_path, csv_path = tmp_path / "m.json", tmp_path / "m.csv"
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(root),
                "--pred",
                str(out),
                "--json",
                str(json_path),
                "--csv",
                str(csv_path),
            ]
        )
        == EXIT_OK
    )
    printed = capsys.readouterr().out
    assert "0001_0000<--0001_0002" in printed and "TRE30" in printed
    metrics = json.loads(json_path.read_text())
    initial = float(np.linalg.norm((fix - mov) * 0.5, axis=1).mean())
    for case in metrics["cases"].values():
        assert case["TRE_lm"]["mean"] == pytest.approx(initial, rel=1e-9)
        assert case["folding_percent"]["mean"] == 0.0
        assert case["runtime_s"]["mean"] >= 0.0
    assert metrics["aggregates"]["TRE_lm"]["30"] == pytest.approx(initial, rel=1e-9)
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 3 and {r["moving_modality"] for r in rows} == {"ceT1", "T2"}


def test_evaluate_known_field_gives_zero_tre(dataset, tmp_path):
    root, truth, vox2world, _, _ = dataset
    pred = tmp_path / "pred"
    for name in ("disp_0001_0000_0001_0001", "disp_0001_0000_0001_0002", "disp_0002_0000_0002_0001"):
        write_displacement(pred / f"{name}.nii.gz", truth, vox2world, truth.shape[:3])
    from remind2reg.evaluation.evaluate import evaluate

    report = evaluate(root, pred)
    assert max(p.tre for p in report.pairs) < 1e-3
    assert all(p.tre_initial > 1.0 for p in report.pairs)


def test_evaluate_missing_prediction_exits_with_input_error(dataset, tmp_path, caplog):
    root = dataset[0]
    (tmp_path / "pred").mkdir()
    assert main(["evaluate", "--data", str(root), "--pred", str(tmp_path / "pred")]) == EXIT_INPUT
    assert "missing displacement fields: disp_0001_0000_0001_0001.nii.gz" in caplog.text


def test_register_flat_read_only_input_with_one_sequence(dataset, tmp_path):
    root = dataset[0]
    flat = tmp_path / "input"
    flat.mkdir()
    for p in (root / "imagesTr").glob("*.nii.gz"):
        shutil.copy(p, flat / p.name)
    for p in [*flat.iterdir(), flat]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    out = tmp_path / "out"
    try:
        assert register(str(flat), str(out), "--modalities", "T2", "--device", "cpu") == EXIT_OK
    finally:
        flat.chmod(0o755)
    assert sorted(p.name for p in out.glob("disp_*")) == ["disp_0001_0000_0001_0002.nii.gz"]


def test_register_empty_input_is_a_clear_error(tmp_path, caplog):
    (tmp_path / "in").mkdir()
    assert register(str(tmp_path / "in"), str(tmp_path / "out"), "--device", "cpu") == EXIT_INPUT
    assert "no registration pair found" in caplog.text
    assert not list((tmp_path / "out").glob("disp_*"))  # nothing written, not even partially


def test_register_resamples_a_moving_image_on_another_grid(dataset, tmp_path, caplog):
    root = dataset[0]
    from remind2reg.inference.io.nifti import write_image

    other = oblique_vox2world(spacing=(0.6, 0.6, 0.6), angles_deg=(10, 0, 0))
    moving = np.random.default_rng(1).random((20, 20, 20))
    write_image(root / "imagesTr" / "ReMIND2Reg_0002_0001.nii.gz", moving, other)
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        assert register(str(root), str(out), "--modalities", "ceT1", "--device", "cpu") == EXIT_OK
    assert "Case 0002: ReMIND2Reg_0002_0001.nii.gz is not on the grid" in caplog.text
    import nibabel as nib

    assert nib.load(str(out / "disp_0002_0000_0002_0001.nii.gz")).shape == (*SHAPE, 3)


def test_register_convex_adam_writes_fold_free_fields_and_stage_timings(dataset, tmp_path):
    root = dataset[0]
    out = tmp_path / "out"
    config = tmp_path / "fast.toml"
    config.write_text("[adam]\niterations = 5\n[[convex.levels]]\ngrid_sp = 2\ndisp_hw = 2\n")
    args = [
        "register",
        "--input",
        str(root),
        "--output",
        str(out),
        "--config",
        str(config),
        "--device",
        "cpu",
    ]
    assert main(args) == EXIT_OK
    import nibabel as nib

    from remind2reg.evaluation.metrics import folding_percent, jacobian_determinant

    for name in (
        "disp_0001_0000_0001_0001.nii.gz",
        "disp_0001_0000_0001_0002.nii.gz",
        "disp_0002_0000_0002_0001.nii.gz",
    ):
        disp = nib.load(str(out / name)).get_fdata()
        assert disp.shape == (*SHAPE, 3) and np.isfinite(disp).all()
        assert folding_percent(jacobian_determinant(disp)) == 0.0
    timings = json.loads((out / "timings.json").read_text())
    stages = timings["pairs"]["disp_0001_0000_0001_0001.nii.gz"]["stages"]
    assert {"load", "features", "convex", "adam", "embed", "write"} <= set(stages)
    assert timings["method"] == "convex-adam" and timings["peak_memory_mb"] > 0


def test_register_rejects_a_bad_config_naming_the_file(dataset, tmp_path, caplog):
    bad = tmp_path / "bad.toml"
    bad.write_text("[adam]\nlearning_rat = 1.0\n")
    args = ["register", "--input", str(dataset[0]), "--output", str(tmp_path / "o"), "--config", str(bad)]
    assert main(args) == EXIT_INPUT
    assert "bad.toml" in caplog.text and "learning_rat" in caplog.text


def test_parsing_the_command_line_does_not_import_torch():
    # evaluate/report/pack must not pay seconds of torch imports (nor need torch installed to parse).
    import subprocess
    import sys

    code = (
        "import sys; from remind2reg.cli import build_parser; "
        "a = build_parser().parse_args(['evaluate', '--data', 'd', '--pred', 'p']); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
