"""The NMI guard: a result that does not raise the mutual information is not trusted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from remind2reg.inference.core.fields import warp
from remind2reg.inference.core.losses import normalised_mutual_information
from remind2reg.inference.io.nifti import Image
from remind2reg.inference.settings import GuardSettings, MindSettings
from remind2reg.inference.stages.features import extract_features
from remind2reg.inference.stages.guard import guard
from remind2reg.inference.stages.sector import find_sector
from remind2reg.inference.stages.transforms import Alignment, GroupTransform


def _volume(seed: int, shape=(40, 44, 36)) -> np.ndarray:
    return ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 2.0).astype(np.float32)


def _working_images(fixed: Image, moving: Image, with_grid: bool = False):
    """The working-grid images of the pipeline (1 mm grid, no crop margin) for one MR, and the
    working grid's vox2world when asked."""
    sector = find_sector(fixed, working_spacing_mm=1.0, crop_margin_mm=0.0)
    images = extract_features(fixed, {"0001": moving}, sector, MindSettings(), torch.device("cpu")).images
    return (images, sector.grid.vox2world(fixed.vox2world)) if with_grid else images


def test_nmi_is_highest_for_aligned_images():
    a = torch.from_numpy(_volume(0))[None, None]
    mask = torch.ones_like(a)
    aligned = normalised_mutual_information(a, torch.exp(a), mask)  # monotone map: fully dependent
    shifted = normalised_mutual_information(a, torch.roll(torch.exp(a), 4, dims=2), mask)
    unrelated = normalised_mutual_information(a, torch.from_numpy(_volume(1))[None, None], mask)
    assert aligned > shifted > unrelated >= 1.0


def test_guard_keeps_a_good_field_and_rejects_a_bad_one():
    moving_np = _volume(2) + 3.0
    disp_true = torch.zeros(1, 3, *moving_np.shape)
    disp_true[:, 0] = 2.0
    fixed_np = warp(torch.from_numpy(moving_np)[None, None], disp_true)[
        0, 0
    ].numpy()  # fixed(x) = moving(x + u)
    images = _working_images(Image(fixed_np, np.eye(4)), Image(moving_np, np.eye(4)))
    result = guard(images, (GroupTransform(Alignment(("0001",)), disp_true),))
    kept, notes = result.transforms[0].disp, result.notes()
    assert torch.equal(kept, disp_true) and "fallback_0001" not in notes
    wrong = -3.0 * disp_true
    result = guard(images, (GroupTransform(Alignment(("0001",)), wrong),))
    rejected, notes = result.transforms[0].disp, result.notes()
    assert float(rejected.abs().max()) == 0.0 and notes["fallback_0001"] is True


def test_guard_judges_the_affine_and_the_field_together():
    """A pure shift given as the affine stage (zero deformable field) is kept; its opposite is
    rejected, and the affine is dropped with the field."""
    moving_np = _volume(2) + 3.0
    shift = torch.zeros(1, 3, *moving_np.shape)
    shift[:, 0] = 2.0
    fixed_np = warp(torch.from_numpy(moving_np)[None, None], shift)[
        0, 0
    ].numpy()  # fixed(x) = moving(x + 2 e_i)
    images, w = _working_images(Image(fixed_np, np.eye(4)), Image(moving_np, np.eye(4)), with_grid=True)
    zero = torch.zeros_like(shift)
    for sign, keep in ((1.0, True), (-1.5, False)):
        f2m = np.eye(4)
        f2m[0, 3] = 2.0 * sign  # world = voxels here (identity vox2world)
        alignment = Alignment(("0001",), f2m, np.linalg.inv(w) @ f2m @ w)  # vox2vox in working voxels
        result = guard(images, (GroupTransform(alignment, zero),))
        affine, notes = result.transforms[0].alignment.fixed2moving_world, result.notes()
        assert (affine is not None) is keep and ("fallback_0001" not in notes) is keep


def test_guard_keeps_the_input_alignment_for_an_unrelated_mr():
    """Another subject's MR: whatever the optimiser found, no criterion rises: input alignment."""
    us_np = _volume(4) + 3.0
    unrelated = _volume(5) + 3.0
    images = _working_images(Image(us_np, np.eye(4)), Image(unrelated, np.eye(4)))
    some_field = torch.zeros(1, 3, *us_np.shape)
    some_field[:, 1] = 2.5
    for criterion in ("nmi", "lc2"):
        settings = GuardSettings(criterion=criterion, min_gain=0.002)
        result = guard(images, (GroupTransform(Alignment(("0001",)), some_field),), settings)
        assert float(result.transforms[0].disp.abs().max()) == 0.0, criterion
        assert result.decisions["0001"] == "input alignment" and result.confidence["0001"] == 0.0


@pytest.mark.parametrize("criterion", ["nmi", "lc2"])
def test_guard_keeps_the_global_stage_when_the_field_after_it_harms(criterion):
    """Candidates simplest first: a correct global shift followed by a harmful field keeps the
    global shift alone; followed by nothing it keeps it too; a correct field is kept whole."""
    moving_np = _volume(2) + 3.0
    shift = torch.zeros(1, 3, *moving_np.shape)
    shift[:, 0] = 2.0
    fixed_np = warp(torch.from_numpy(moving_np)[None, None], shift)[
        0, 0
    ].numpy()  # fixed(x) = moving(x + 2 e_i)
    images, w = _working_images(Image(fixed_np, np.eye(4)), Image(moving_np, np.eye(4)), with_grid=True)
    f2m = np.eye(4)
    f2m[0, 3] = 2.0  # world = voxels (identity vox2world): the true shift
    alignment = Alignment(("0001",), f2m, np.linalg.inv(w) @ f2m @ w)
    harmful = torch.zeros_like(shift)
    harmful[:, 1] = 3.0
    settings = GuardSettings(criterion=criterion)
    result = guard(images, (GroupTransform(alignment, harmful),), settings)
    kept = result.transforms[0]
    assert result.decisions["0001"] == "global stage" and kept.alignment.fixed2moving_world is not None
    assert float(kept.disp.abs().max()) == 0.0 and result.confidence["0001"] > 0
    result = guard(images, (GroupTransform(Alignment(("0001",)), shift),), settings)
    assert result.decisions["0001"] == "full" and torch.equal(result.transforms[0].disp, shift)
