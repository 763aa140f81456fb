"""The ground-truth deformation model: analytic checks of its pieces."""

from __future__ import annotations

import numpy as np
import pytest

from remind2reg.evaluation.metrics import folding_percent, jacobian_determinant
from remind2reg.inference.geometry import apply_affine
from remind2reg.synthesis.brainshift import (
    BrainShiftParams,
    CoarseGrid,
    nonrigid_displacement_coarse,
    rigid_fixed2moving_world,
    scaling_and_squaring,
    upsample,
)
from tests.conftest import oblique_vox2world


def _params(**overrides) -> BrainShiftParams:
    base = dict(
        sink_mm=4.0, sink_lateral_mm=25.0, sink_decay_mm=30.0, gravity_world=(0.0, 0.0, -1.0),
        cavity_mm=3.0, cavity_centre_world=(0.0, 0.0, -20.0), cavity_radius_mm=8.0,
        residual_mm=0.0, residual_smooth_mm=12.0, rotation_deg=3.0, rotation_axis_world=(0.0, 1.0, 0.0),
        translation_world=(1.0, 2.0, -1.0), pivot_world=(0.0, 0.0, 0.0), apex_world=(0.0, 0.0, 0.0),
        beam_world=(0.0, 0.0, -1.0),
    )  # fmt: skip
    base.update(overrides)
    return BrainShiftParams(**base)


def test_exp_of_constant_velocity_is_that_translation():
    v = np.zeros((9, 10, 11, 3))
    v[..., :] = [1.5, -0.5, 2.0]
    np.testing.assert_allclose(scaling_and_squaring(v, coarse_step=2.0), v, atol=1e-9)
    assert np.abs(scaling_and_squaring(np.zeros_like(v), 2.0)).max() == 0


def test_rigid_part_keeps_the_pivot_and_rotates_by_the_angle():
    p = _params(pivot_world=(5.0, -3.0, 10.0), translation_world=(0.0, 0.0, 0.0))
    m = rigid_fixed2moving_world(p)
    np.testing.assert_allclose(
        apply_affine(m, np.array([[5.0, -3.0, 10.0]])), [[5.0, -3.0, 10.0]], atol=1e-12
    )
    angle = np.rad2deg(np.arccos((np.trace(m[:3, :3]) - 1) / 2))
    assert angle == pytest.approx(3.0)


def test_nonrigid_field_is_fold_free_and_upsampled_consistently():
    vox2world = oblique_vox2world(spacing=(1.0, 1.0, 1.0), origin=(-32.0, -32.0, -40.0))
    fine = (64, 64, 64)
    coarse = CoarseGrid(fine, step=2)
    noise = np.random.default_rng(0).normal(size=(*coarse.shape, 3))
    u_coarse = nonrigid_displacement_coarse(_params(cavity_mm=6.0, residual_mm=0.0), vox2world, coarse, noise)
    u = upsample(u_coarse, coarse.step, fine)
    assert u.shape == (*fine, 3)
    np.testing.assert_allclose(
        u[::2, ::2, ::2], u_coarse[:32, :32, :32], atol=1e-4
    )  # coarse point c is fine voxel 2c
    assert np.abs(u).max() > 1.0  # there is a deformation
    assert folding_percent(jacobian_determinant(u)) == 0.0


def test_scaled_params_scale_every_magnitude():
    p = _params().scaled(2.0)
    assert (p.sink_mm, p.cavity_mm, p.rotation_deg) == (8.0, 6.0, 6.0)
    assert p.translation_world == (2.0, 4.0, -2.0) and p.sink_lateral_mm == 25.0
