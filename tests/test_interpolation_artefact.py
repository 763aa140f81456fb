"""The interpolation artefact of the Adam stage's SSD, and the off-grid sampling that removes it.

Two images share a smooth structure ``s`` and carry independent rough noise (as the MIND
features of an ultrasound and its MR do). Comparing ``fixed(x)`` with the trilinearly
interpolated ``moving(x + t)`` lowers the moving noise's energy most at half-voxel ``t``, so the
plain SSD is lower half a voxel off than at the truth ``t = 0``. With both sides sampled at the
same random sub-voxel offset (``[adam] jitter_sampling``), the expected SSD is lowest at the
truth again.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from remind2reg.inference.core.fields import warp
from remind2reg.inference.core.losses import masked_ssd
from remind2reg.inference.core.mind import gaussian_kernel, gaussian_smooth
from remind2reg.inference.deformable.instance import instance_optimise, sample_pair
from remind2reg.inference.settings import AdamSettings

SHAPE = (24, 26, 22)
SMOOTH = 1.5  # voxels: a structure rough enough that half a voxel of misalignment shows


def _pair(seed: int = 0, noise: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    structure = ndimage.gaussian_filter(rng.normal(size=SHAPE), SMOOTH)
    structure /= structure.std()
    fixed = structure + noise * rng.normal(size=SHAPE)
    moving = structure + noise * rng.normal(size=SHAPE)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32))[None, None]

    weight = torch.zeros(1, 1, *SHAPE)
    weight[..., 3:-3, 3:-3, 3:-3] = 1.0  # away from the border (edge replication)
    return t(fixed), t(moving), weight


def _shift(t: float, axis: int = 0) -> torch.Tensor:
    d = torch.zeros(1, 3, *SHAPE)
    d[:, axis] = t
    return d


def _expected_ssd(fixed, moving, weight, disp, settings, draws: int) -> float:
    g = torch.Generator().manual_seed(settings.jitter_seed)
    costs = []
    for _ in range(draws):
        f, w, m = sample_pair(fixed, weight, moving, disp, settings, g)
        costs.append(float(masked_ssd(f, m, w)))
    return float(np.mean(costs))


def test_plain_ssd_prefers_a_half_voxel_shift_to_the_truth():
    fixed, moving, weight = _pair()
    at_truth = float(masked_ssd(fixed, warp(moving, _shift(0.0)), weight))
    half = float(masked_ssd(fixed, warp(moving, _shift(0.5)), weight))
    assert half < 0.9 * at_truth  # the artefact: interpolation lowers the noise energy there


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_jittered_sampling_puts_the_expected_minimum_back_at_the_truth(axis):
    fixed, moving, weight = _pair(seed=axis)
    settings = AdamSettings(jitter_sampling=True)
    costs = {
        t: _expected_ssd(fixed, moving, weight, _shift(t, axis), settings, draws=64) for t in (-0.5, 0.0, 0.5)
    }
    assert costs[0.0] < costs[0.5] and costs[0.0] < costs[-0.5]


def test_sample_pair_without_jitter_is_the_plain_warp_and_with_jitter_a_common_offset():
    fixed, moving, weight = _pair()
    disp = _shift(0.3, axis=1)
    g = torch.Generator().manual_seed(0)
    f, w, m = sample_pair(fixed, weight, moving, disp, AdamSettings(), g)
    assert f is fixed and w is weight and torch.equal(m, warp(moving, disp))
    # a linear ramp is reproduced exactly by trilinear interpolation: fixed(x + o) = fixed(x) + o_0
    ramp = torch.arange(SHAPE[0], dtype=torch.float32).view(1, 1, -1, 1, 1).expand(1, 1, *SHAPE).contiguous()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    f, _, m = sample_pair(ramp, weight, ramp, disp, AdamSettings(jitter_sampling=True), g1)
    offset = (torch.rand(3, generator=g2, dtype=torch.float64) - 0.5).float()
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2), slice(2, -2))
    assert torch.allclose(f[inner], ramp[inner] + offset[0], atol=1e-4)
    assert torch.allclose(m[inner], ramp[inner] + offset[0], atol=1e-4)  # disp is along axis 1


def test_jittered_adam_is_reproducible_and_its_schedule_is_validated():
    fixed, moving, weight = _pair()
    feats_f, feats_m = fixed.repeat(1, 4, 1, 1, 1), moving.repeat(1, 4, 1, 1, 1)
    settings = AdamSettings(iterations=6, jitter_sampling=True, schedule="linear")
    init = torch.zeros(1, 3, *SHAPE)
    a, losses_a = instance_optimise(feats_f, feats_m, init, weight, settings)
    b, losses_b = instance_optimise(feats_f, feats_m, init, weight, settings)
    assert torch.equal(a, b) and losses_a == losses_b
    other, _ = instance_optimise(feats_f, feats_m, init, weight, replace(settings, jitter_seed=1))
    assert not torch.equal(a, other)
    with pytest.raises(ValueError, match="schedule"):
        AdamSettings(schedule="cosine")


def test_gaussian_smooth_keeps_constants_and_respects_the_weight():
    kernel = gaussian_kernel(1.0)
    assert kernel.numel() == 7 and torch.isclose(kernel.sum(), torch.tensor(1.0))
    ones = torch.full((1, 2, 10, 11, 12), 3.0)
    assert torch.allclose(gaussian_smooth(ones, 1.5), ones)
    # normalised convolution: a constant inside the weight stays constant up to the weight's border
    weight = torch.zeros(1, 1, 10, 11, 12)
    weight[..., 2:8, 2:9, 2:10] = 1.0
    values = torch.where(weight > 0, ones, torch.zeros_like(ones))
    out = gaussian_smooth(values, 1.0, weight)
    assert torch.allclose(out[..., 2:8, 2:9, 2:10], ones[..., 2:8, 2:9, 2:10], atol=1e-5)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel(0.0)


def test_similarity_scan_shifts_read_the_image_further_along_the_axis(benchmark_script):
    """``axis_shift(.., axis, s)`` warps ``img`` to ``img(x + s e_axis)``, the convention both scans state."""
    benchmark_script("deformable_from_truth")  # similarity_scan imports it by name
    scan = benchmark_script("similarity_scan")
    ramp = torch.arange(SHAPE[1], dtype=torch.float32).view(1, 1, 1, -1, 1).expand(1, 1, *SHAPE).contiguous()
    field = scan.axis_shift(ramp, 1, 0.5)
    assert field.shape == (1, 3, *SHAPE) and torch.count_nonzero(field[:, [0, 2]]) == 0
    inner = (slice(None), slice(None), slice(None), slice(1, -2), slice(None))
    assert torch.allclose(warp(ramp, field)[inner], ramp[inner] + 0.5, atol=1e-4)
