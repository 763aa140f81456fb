"""The NMI guard: a result that does not raise the mutual information is not trusted."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from scipy import ndimage

from remind2reg.inference.core.fields import warp
from remind2reg.inference.core.losses import normalised_mutual_information
from remind2reg.inference.io.nifti import Image
from remind2reg.inference.settings import GuardSettings, MindSettings
from remind2reg.inference.stages.features import extract_features
from remind2reg.inference.stages.guard import choose, guard, jitter, jitter_shifts
from remind2reg.inference.stages.guard import criterion as criterion_value
from remind2reg.inference.stages.sector import find_sector
from remind2reg.inference.stages.transforms import Alignment, GroupTransform

# The plain rule (any rise of the criterion is evidence), for the tests about which candidate the
# criterion prefers; the default's relative margin has its own tests below.
PLAIN = GuardSettings(relative_margin=0.0)


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
    result = guard(images, (GroupTransform(Alignment(("0001",)), disp_true),), PLAIN)
    kept, notes = result.transforms[0].disp, result.notes()
    assert torch.equal(kept, disp_true) and "fallback_0001" not in notes
    wrong = -3.0 * disp_true
    result = guard(images, (GroupTransform(Alignment(("0001",)), wrong),), PLAIN)
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
        result = guard(images, (GroupTransform(alignment, zero),), PLAIN)
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
def test_guard_keeps_the_global_stage_when_the_field_after_it_harms(criterion, caplog):
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
    settings = GuardSettings(criterion=criterion, relative_margin=0.0)
    with caplog.at_level(logging.WARNING, logger="remind2reg.inference.stages.guard"):
        result = guard(images, (GroupTransform(alignment, harmful),), settings, case="0007")
    kept = result.transforms[0]
    assert result.decisions["0001"] == "global stage" and kept.alignment.fixed2moving_world is not None
    # the message reports the full result against the candidate it lost to, the global stage
    (message,) = [r.getMessage() for r in caplog.records if r.name.endswith("stages.guard")]
    assert "Case 0007: registering 0001 did not raise the" in message and "over the global stage" in message
    before, after = (float(v) for v in re.search(r"\((-?[\d.]+) -> (-?[\d.]+)", message).groups())
    global_score = criterion_value(images, "0001", kept.total_field(), settings)
    assert abs(before - global_score) < 1e-3 and after < before
    assert float(kept.disp.abs().max()) == 0.0 and result.confidence["0001"] > 0
    result = guard(images, (GroupTransform(Alignment(("0001",)), shift),), settings)
    assert result.decisions["0001"] == "full" and torch.equal(result.transforms[0].disp, shift)


def test_choose_with_a_relative_margin_needs_a_gain_above_k_jitters():
    """The pure rule: a candidate replaces the simpler one only when its gain exceeds
    max(min_gain, k * its jitter); k = 0 is the plain rule."""
    totals = [("input alignment", 1.100), ("full", 1.106)]  # gain 0.006
    jitters = {"full": 0.004}
    assert choose(totals, 0.0) == "full"
    assert choose(totals, 0.0, jitters, relative_margin=1.0) == "full"  # 0.006 > 0.004
    assert choose(totals, 0.0, jitters, relative_margin=2.0) == "input alignment"  # 0.006 <= 0.008
    assert choose(totals, 0.01, jitters, relative_margin=1.0) == "input alignment"  # the larger margin wins
    with pytest.raises(ValueError, match="jitter"):
        choose(totals, 0.0, None, relative_margin=1.0)


def test_jitter_is_the_criterion_change_under_unit_shifts():
    """Six shifts of one voxel; for structured images the NMI changes under them (jitter > 0),
    for a constant MR it cannot (jitter 0)."""
    assert sorted(jitter_shifts(1.0)) == sorted(
        [(1.0, 0, 0), (-1.0, 0, 0), (0, 1.0, 0), (0, -1.0, 0), (0, 0, 1.0), (0, 0, -1.0)]
    )
    us_np = _volume(6) + 3.0
    images = _working_images(Image(us_np, np.eye(4)), Image(np.exp(us_np), np.eye(4)))
    settings = GuardSettings()
    assert jitter(images, ("0001",), None, settings) > 0.01
    flat = _working_images(Image(us_np, np.eye(4)), Image(np.full_like(us_np, 2.0), np.eye(4)))
    assert jitter(flat, ("0001",), None, settings) == 0.0


def test_default_guard_keeps_a_correct_result_on_an_exact_copy():
    """An image and its shifted copy: the NMI peaks in a spike at the truth. The jitter is taken
    at the input alignment, so the spike does not count against the correct result: corrections
    of 1 and 3 voxels are kept, with their evidence (gain in jitters) in the notes."""
    moving_np = _volume(2) + 3.0
    for size in (1.0, 3.0):
        shift = torch.zeros(1, 3, *moving_np.shape)
        shift[:, 0] = size
        fixed_np = warp(torch.from_numpy(moving_np)[None, None], shift)[
            0, 0
        ].numpy()  # fixed(x) = moving(x + s e_i)
        images = _working_images(Image(fixed_np, np.eye(4)), Image(moving_np, np.eye(4)))
        result = guard(images, (GroupTransform(Alignment(("0001",)), shift),))
        assert result.decisions["0001"] == "full" and result.evidence["0001"] > 2.0, size
        assert result.notes()["evidence_0001"] == round(result.evidence["0001"], 3)


def _noisy_other_modality(moving_np: np.ndarray, size: float, seed: int) -> np.ndarray:
    """fixed(x) = exp(moving(x + size e_0)) + noise: another contrast of the same anatomy, with
    noise, so that the NMI has a rounded peak as between real MR and US."""
    shift = torch.zeros(1, 3, *moving_np.shape)
    shift[:, 0] = size
    warped = np.exp(warp(torch.from_numpy(moving_np)[None, None], shift)[0, 0].numpy())
    noise = np.random.default_rng(seed).normal(scale=0.5 * warped.std(), size=warped.shape)
    return (warped + noise).astype(np.float32)


def test_default_guard_keeps_a_clear_correction_and_refuses_a_sub_voxel_one():
    """The default (relative margin 2): correcting a 3-voxel shift between two noisy contrasts
    gains more than twice the change under 1-voxel shifts (kept, evidence > 2); correcting half
    a voxel gains less (the input alignment is kept, evidence 0), as the plain rule would not."""
    moving_np = _volume(2) + 3.0
    decisions = {}
    for size in (3.0, 0.5):
        fixed_np = _noisy_other_modality(moving_np, size, seed=7)
        images = _working_images(Image(fixed_np, np.eye(4)), Image(moving_np, np.eye(4)))
        shift = torch.zeros(1, 3, *moving_np.shape)
        shift[:, 0] = size
        transforms = (GroupTransform(Alignment(("0001",)), shift),)
        decisions[size] = guard(images, transforms)
        assert guard(images, transforms, PLAIN).decisions["0001"] == "full"
    assert GuardSettings().relative_margin == 2.0
    assert decisions[3.0].decisions["0001"] == "full" and decisions[3.0].evidence["0001"] > 2.0
    assert decisions[0.5].decisions["0001"] == "input alignment" and decisions[0.5].evidence["0001"] == 0.0
    # what the refused result itself scored is kept for the report: its gain and that gain in
    # jitters, below the margin of 2
    refused = decisions[0.5]
    before, after = refused.nmi["0001"]
    assert refused.result_gain["0001"] == pytest.approx(after - before)
    assert refused.result_evidence["0001"] < 2.0
    assert refused.notes()["result_evidence_0001"] == round(refused.result_evidence["0001"], 3)
    assert decisions[3.0].result_evidence["0001"] == pytest.approx(decisions[3.0].evidence["0001"])


def test_calibration_rule_with_two_criteria_needs_both(benchmark_script):
    """The agreeing rule takes a candidate only when NMI and LC2 each rise by k of their jitters."""
    cal = benchmark_script("guard_calibration")
    from remind2reg.inference.stages.guard import FULL, IDENTITY

    def row(nmi_gain: float, lc2_gain: float) -> dict:
        return {
            "scores": {
                IDENTITY: {"nmi": 1.0, "lc2": 0.2, "nmi_jitter": 0.01, "lc2_jitter": 0.02},
                FULL: {"nmi": 1.0 + nmi_gain, "lc2": 0.2 + lc2_gain},
            }
        }

    assert cal.decide(row(0.05, 0.10), cal.AGREEING, 2.0) == FULL  # 5 and 5 jitters
    assert cal.decide(row(0.05, 0.03), cal.AGREEING, 2.0) == IDENTITY  # LC2 only 1.5 jitters
    assert cal.decide(row(-0.01, 0.10), cal.AGREEING, 2.0) == IDENTITY  # NMI fell
    assert cal.decide(row(0.05, 0.03), cal.AGREEING, 1.0) == FULL
    # LC2 alone, relative: 1.5 jitters passes k = 1, not k = 2
    assert cal.decide(row(-0.01, 0.03), cal.LC2_RELATIVE, 1.0) == FULL
    assert cal.decide(row(-0.01, 0.03), cal.LC2_RELATIVE, 2.0) == IDENTITY


def test_calibration_compares_two_rules_paired_per_case(benchmark_script):
    """Two cases; the agreeing rule refuses case 0002's result (LC2 fell), the default takes it."""
    cal = benchmark_script("guard_calibration")
    from remind2reg.inference.stages.guard import FULL, IDENTITY

    def row(pair: str, lc2_gain: float, tre_full: float) -> dict:
        scores = {
            IDENTITY: {"nmi": 1.0, "lc2": 0.2, "nmi_jitter": 0.01, "lc2_jitter": 0.02},
            FULL: {"nmi": 1.05, "lc2": 0.2 + lc2_gain},  # NMI up 5 jitters
        }
        return {"pair": pair, "scores": scores, "tre": {IDENTITY: 3.0, FULL: tre_full}}

    rows = [
        row("0001_0000<--0001_0001", 0.10, 1.0),  # both rules take the result
        row("0002_0000<--0002_0001", -0.01, 4.0),  # the result is harmful: only the default takes it
        row("0002_0000<--0002_0002", -0.01, 5.0),
    ]
    line = cal.compare_rules(rows, "nmi-and-lc2-relative-input@2")
    # case 0002: the agreeing rule keeps 3.0 mm for both pairs, the default 4.5 on average
    assert "(2 cases, 3 pairs): mean -0.750 mm" in line and "1 better / 0 worse / 1 same" in line
    assert cal.parse_rule("nmi-relative-input@2") == ("nmi-relative-input", 2.0)
    with pytest.raises(ValueError, match="RULE@K"):
        cal.parse_rule("nmi-relative-input")
