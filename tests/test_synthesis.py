"""The synthetic dataset generator, end to end on a small grid (MNI source, no shared data)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from remind2reg.evaluation.evaluate import evaluate
from remind2reg.evaluation.metrics import folding_percent, jacobian_determinant
from remind2reg.inference.core.pointfit import rigid_fit_residual
from remind2reg.inference.io.dataset import find_pairs
from remind2reg.synthesis import labels as L
from remind2reg.synthesis.generate import (
    SynthConfig,
    generate_dataset,
    random_orientation,
)
from remind2reg.synthesis.landmarks import pick_landmarks


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    records = generate_dataset(
        out, n_cases=1, source="mni", seed=7, config=SynthConfig(grid=64), shared_data=out / "none"
    )
    return out, records


def test_layout_and_formats(dataset):
    out, records = dataset
    meta = json.loads((out / "ReMIND2Reg_dataset.json").read_text())
    assert meta["numRegistration_val"] == len(meta["registration_val"]) == 2
    assert [p.output_name for p in find_pairs(out)] == [
        "disp_0001_0000_0001_0001.nii.gz",
        "disp_0001_0000_0001_0002.nii.gz",
    ]
    us = nib.load(str(out / "imagesTr" / "ReMIND2Reg_0001_0000.nii.gz"))
    t1 = nib.load(str(out / "imagesTr" / "ReMIND2Reg_0001_0001.nii.gz"))
    assert us.shape == t1.shape == (64, 64, 64)
    np.testing.assert_allclose(us.affine, t1.affine)
    np.testing.assert_allclose(np.linalg.norm(us.affine[:3, :3], axis=0), 2.0, rtol=1e-6)  # 128 mm / 64
    assert not np.allclose(np.abs(us.affine[:3, :3]) / 2.0, np.eye(3), atol=0.01)  # oblique grid
    gt = nib.load(str(out / "groundtruth" / "disp_0001_0000_0001_0001.nii.gz"))
    assert gt.shape == (64, 64, 64, 3) and gt.get_data_dtype() == np.float32
    assert records[0].n_landmarks >= 10


def test_ground_truth_field_scores_zero_and_does_not_fold(dataset):
    out, records = dataset
    report = evaluate(out, out / "groundtruth")
    assert max(p.tre for p in report.pairs) < 1e-4
    assert 1.5 < report.pairs[0].tre_initial < 8.0
    assert report.pairs[0].tre_initial == pytest.approx(records[0].initial_tre_mean_mm)
    disp = nib.load(str(out / "groundtruth" / "disp_0001_0000_0001_0001.nii.gz")).get_fdata()
    assert folding_percent(jacobian_determinant(disp)) == 0.0


def test_fixed_anatomy_is_the_moving_anatomy_warped_by_the_ground_truth(dataset):
    out, _ = dataset
    gt = out / "groundtruth"
    fixed = np.asarray(nib.load(str(gt / "labels_0001_0000.nii.gz")).dataobj)
    moving = np.asarray(nib.load(str(gt / "labels_0001_0001.nii.gz")).dataobj)
    disp = nib.load(str(gt / "disp_0001_0000_0001_0001.nii.gz")).get_fdata()
    us = nib.load(str(out / "imagesTr" / "ReMIND2Reg_0001_0000.nii.gz")).get_fdata()
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in fixed.shape], indexing="ij"), 0)
    warped = ndimage.map_coordinates(moving, grid + np.moveaxis(disp, -1, 0), order=0)
    sector = us > 0
    keep = sector & (fixed != L.CAVITY)
    assert keep.sum() > 500
    assert (warped[keep] == fixed[keep]).mean() > 0.97
    # Without the deformation the labels agree clearly less: the shift is real.
    assert (moving[keep] == fixed[keep]).mean() < (warped[keep] == fixed[keep]).mean() - 0.05


def test_landmarks_lie_in_the_ultrasound_sector(dataset):
    out, _ = dataset
    us = nib.load(str(out / "imagesTr" / "ReMIND2Reg_0001_0000.nii.gz")).get_fdata()
    fix = np.loadtxt(out / "landmarksTr" / "ReMIND2Reg_0001_0000.csv", delimiter=",")
    assert (us[tuple(np.round(fix).astype(int).T)] > 0).all()
    dists = np.linalg.norm(fix[:, None] - fix[None], axis=-1) * 2.0 + np.eye(len(fix)) * 1e9
    assert dists.min() >= 8.0 - 1e-6


def test_rigid_fit_residual_is_zero_for_rigid_motion_and_positive_otherwise():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(15, 3)) * 10
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rot *= np.sign(np.linalg.det(rot))
    assert rigid_fit_residual(pts, pts @ rot.T + [1, 2, 3]) < 1e-9
    assert rigid_fit_residual(pts, pts + rng.normal(size=pts.shape)) > 0.3


def test_random_orientations_are_rotations():
    rng = np.random.default_rng(1)
    for _ in range(5):
        m = random_orientation(rng)
        np.testing.assert_allclose(m.T @ m, np.eye(3), atol=1e-10)


def test_pick_landmarks_respects_mask_and_separation():
    rng = np.random.default_rng(2)
    image = ndimage.gaussian_filter(rng.normal(size=(40, 40, 40)), 2)
    allowed = np.zeros(image.shape, dtype=bool)
    allowed[5:35, 5:35, 5:20] = True
    pts = pick_landmarks(image, allowed, spacing_mm=1.0, n=12, rng=rng, min_separation_mm=6.0)
    assert len(pts) == 12 and allowed[tuple(pts.astype(int).T)].all()
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(12) * 1e9
    assert d.min() >= 6.0


@pytest.mark.shared_data
@pytest.mark.parametrize("subject", ["AURORA", "BraTS-GLI-00001-000"])
def test_shared_subjects_have_their_lesion_at_the_seed(shared_data, subject):
    from remind2reg.synthesis.sources import SHARED_SUBJECTS, load_shared

    brain = load_shared(shared_data, subject)
    lesion = np.argwhere(brain.labels == L.TUMOUR)
    assert 2_000 < len(lesion) < 80_000  # mm^3 on the 1 mm grid: 2-80 cm^3
    seed = np.asarray(SHARED_SUBJECTS[subject].lesion_seed_vox)
    assert np.linalg.norm(lesion.mean(axis=0) - seed) < 15.0
    # Tissue classes are ordered in the ceT1: CSF < GM < WM.
    means = [brain.t1[brain.labels == c].mean() for c in (L.CSF, L.GREY_MATTER, L.WHITE_MATTER)]
    assert means[0] < means[1] < means[2]


def test_unknown_family_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown family"):
        generate_dataset(
            tmp_path, n_cases=1, config=SynthConfig(grid=32), shared_data=tmp_path, family="boxy"
        )


def test_legacy_family_keeps_the_original_generator(tmp_path):
    (record,) = generate_dataset(
        tmp_path,
        n_cases=1,
        seed=3,
        config=SynthConfig(grid=48),
        shared_data=tmp_path / "none",
        family="legacy",
    )
    assert record.family == "legacy"
    assert set(record.extras) == {"target_initial_tre_mm", "resected_fraction", "corridor"}
    assert 3.5 <= record.extras["target_initial_tre_mm"] <= 5.0
    meta = json.loads((tmp_path / "ReMIND2Reg_dataset.json").read_text())
    assert "legacy" in meta["description"]
