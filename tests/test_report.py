"""``remind2reg report``: figures and index on a small case whose true field is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from scipy import ndimage

from remind2reg.cli import main
from remind2reg.evaluation.evaluate import evaluate
from remind2reg.evaluation.metrics import jacobian_determinant
from remind2reg.evaluation.qc import Crop, det_j_plane
from remind2reg.evaluation.report import build_report
from remind2reg.inference.errors import EXIT_FAILURE, EXIT_INPUT
from remind2reg.inference.io.displacement import write_displacement
from remind2reg.inference.io.landmarks import write_landmarks_csv
from remind2reg.inference.io.nifti import write_image

SHAPE = (40, 40, 40)
VOX2WORLD = np.diag([1.0, 1.0, 1.0, 1.0])
SHIFT = 3  # voxels along axis 0: the moving image is the fixed anatomy moved by +3


@pytest.fixture
def shifted_case(tmp_path) -> tuple[Path, Path]:
    """US = texture in a ball-shaped sector; MR = the same texture shifted (a second contrast).

    The true field is the constant ``u = (SHIFT, 0, 0)``: ``MR(x + u) = texture(x)``.
    Predictions: case 0001 ceT1 the true field, T2 the zero field (no prediction for it: missing).
    """
    root, pred = tmp_path / "data", tmp_path / "pred"
    texture = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=SHAPE), 1.5)
    ball = ((np.indices(SHAPE) - 19.5) ** 2).sum(0) < 17**2
    us = np.where(ball, np.abs(texture) + 0.05, 0.0)
    mr = -np.roll(texture, SHIFT, axis=0)  # inverted contrast
    images = root / "imagesTr"
    write_image(images / "ReMIND2Reg_0001_0000.nii.gz", us, VOX2WORLD)
    write_image(images / "ReMIND2Reg_0001_0001.nii.gz", mr, VOX2WORLD)
    write_image(images / "ReMIND2Reg_0001_0002.nii.gz", mr**2, VOX2WORLD)
    fix = np.array([[20.0, 20.0, 20.0], [15.0, 22.0, 18.0], [24.0, 17.0, 21.0]])
    lms = root / "landmarksTr"
    write_landmarks_csv(lms / "ReMIND2Reg_0001_0000.csv", fix)
    write_landmarks_csv(lms / "ReMIND2Reg_0001_0001.csv", fix + [SHIFT, 0, 0])
    write_landmarks_csv(lms / "ReMIND2Reg_0001_0002.csv", fix + [SHIFT, 0, 0])
    truth = np.zeros((*SHAPE, 3), dtype=np.float32)
    truth[..., 0] = SHIFT
    write_displacement(pred / "disp_0001_0000_0001_0001.nii.gz", truth, VOX2WORLD, SHAPE)
    return root, pred


def test_report_draws_each_pair_and_lists_a_missing_one(shifted_case, tmp_path):
    root, pred = shifted_case
    out = tmp_path / "report"
    code = main(["report", "--data", str(root), "--pred", str(pred), "--out", str(out)])
    assert code == EXIT_FAILURE  # the T2 field is missing: reported, not fatal
    png = out / "qc_0001_0001.png"
    with PILImage.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 800 and image.size[1] > 300
    assert not (out / "qc_0001_0002.png").exists()
    qc = json.loads((out / "qc.json").read_text())
    ce = qc["0001_0000<--0001_0001"]
    assert ce["tre"] == pytest.approx(0.0, abs=1e-4) and ce["tre_initial"] == pytest.approx(SHIFT)
    assert ce["pmm_after"] > ce["pmm_before"] + 0.1  # the right field raises the patch-wise NMI
    assert "displacement field not found" in qc["0001_0000<--0001_0002"]["error"]
    page = (out / "index.html").read_text()
    assert '<img src="qc_0001_0001.png"' in page
    assert "0001_0000&lt;--0001_0002" in page and "displacement field not found" in page
    assert not list(out.glob(".*partial*"))


def test_report_table_uses_the_evaluator_numbers(shifted_case, tmp_path):
    root, pred = shifted_case
    write_displacement(pred / "disp_0001_0000_0001_0002.nii.gz", np.zeros((*SHAPE, 3)), VOX2WORLD, SHAPE)
    (pred / "timings.json").write_text(
        json.dumps(
            {
                "pairs": {
                    "disp_0001_0000_0001_0001.nii.gz": {
                        "total_s": 2.0, "decision": "full", "confidence": 0.0123, "evidence": 4.56,
                        "init_transform": "/init/ReMIND2Reg_0001_0000.tfm",
                    },
                    "disp_0001_0000_0001_0002.nii.gz": {"total_s": 1.5, "fallback": "identity"},
                }
            }
        )
    )  # fmt: skip
    result = build_report(root, pred, tmp_path / "report", ("0001", "0002"))
    assert result.ok
    expected = {p.key: p for p in evaluate(root, pred).pairs}
    for qc in result.pairs:
        assert qc.metrics is not None
        assert qc.metrics.tre == pytest.approx(expected[qc.pair.key].tre, abs=1e-12)
        assert qc.metrics.sdlogj == pytest.approx(expected[qc.pair.key].sdlogj, abs=1e-12)
    t2 = next(q for q in result.pairs if q.modality == "T2")
    assert t2.fallback == "identity" and t2.metrics.runtime_s == 1.5
    assert t2.pmm_after == pytest.approx(t2.pmm_before)  # zero field: nothing moves
    page = (tmp_path / "report" / "index.html").read_text()
    assert "fallback: identity" in page and "TRE30" in page
    assert "full (+0.0123, 4.6x jitter)" in page  # the guard's verdict, from timings.json
    assert "started from ReMIND2Reg_0001_0000.tfm" in page  # register --init-transforms
    qc = json.loads((tmp_path / "report" / "qc.json").read_text())
    assert qc["0001_0000<--0001_0001"]["guard"] == {
        "decision": "full",
        "confidence": 0.0123,
        "evidence": 4.56,
    }
    assert qc["0001_0000<--0001_0002"]["guard"] is None
    assert qc["0001_0000<--0001_0001"]["init_transform"] == "/init/ReMIND2Reg_0001_0000.tfm"
    assert qc["0001_0000<--0001_0002"]["init_transform"] is None
    assert f"{expected['0001_0000<--0001_0002'].tre_initial:.3f}" in page


def test_a_refused_result_shows_its_own_evidence_in_the_report():
    """A pair kept at its input alignment shows what the refused result gained, not the +0 of
    the input alignment over itself."""
    from remind2reg.evaluation.report_html import guard_cell

    refused = {
        "decision": "input alignment", "confidence": 0.0, "evidence": 0.0,
        "result_gain": 0.0031, "result_evidence": 0.62,
    }  # fmt: skip
    cell = guard_cell(refused)
    assert "input alignment (result refused: +0.0031, 0.6x jitter)" in cell and 'class="bad"' in cell
    kept = {
        "decision": "full",
        "confidence": 0.0123,
        "evidence": 4.56,
        "result_gain": 0.0123,
        "result_evidence": 4.56,
    }
    assert "full (+0.0123, 4.6x jitter)" in guard_cell(kept)
    given = {"decision": "global stage", "confidence": 0.01, "evidence": 3.0}
    assert "given transform (+0.0100, 3.0x jitter)" in guard_cell(given, given=True)
    assert "global stage (+0.0100" in guard_cell(given)


def test_det_j_plane_equals_the_whole_field_computation():
    rng = np.random.default_rng(1)
    disp = ndimage.gaussian_filter(rng.normal(size=(14, 16, 12, 3)), (2, 2, 2, 0)) * 4
    full = jacobian_determinant(disp)  # (10, 12, 8): cropped by 2
    crop = Crop((0, 0, 0), disp.shape[:3], (7, 8, 6))
    for axis, index in ((0, 7), (1, 2), (2, 9)):
        plane = det_j_plane(disp, axis, index, crop)
        expected = np.take(full, index - 2, axis=axis)
        np.testing.assert_allclose(plane[2:-2, 2:-2], expected, rtol=1e-12)
        assert np.isnan(plane[:2]).all() and np.isnan(plane[:, -2:]).all()
    assert np.isnan(det_j_plane(disp, 0, 1, crop)).all()  # too close to the border


def test_report_needs_the_prediction_folder(shifted_case, tmp_path, caplog):
    root, _ = shifted_case
    code = main(
        ["report", "--data", str(root), "--pred", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]
    )
    assert code == EXIT_INPUT and "prediction folder not found" in caplog.text
