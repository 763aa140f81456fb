"""Fields, correlation, coupled convex and Adam: analytic checks on known displacements."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from remind2reg.evaluation.metrics import jacobian_determinant as official_jacobian
from remind2reg.inference.core.correlation import cost_volume, displacement_offsets, pool
from remind2reg.inference.core.fields import (
    compose,
    identity_voxels,
    pool_cells,
    sample,
    scaling_and_squaring,
    upsample_cells,
    warp,
)
from remind2reg.inference.core.losses import diffusion_penalty, geman_mcclure, masked_ssd, robust_masked_ssd
from remind2reg.inference.deformable.convex import coupled_convex, inverse_consistent
from remind2reg.inference.deformable.instance import instance_optimise, lr_factor
from remind2reg.inference.settings import AdamSettings

SHAPE = (20, 24, 18)


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def test_sample_matches_scipy_map_coordinates():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=SHAPE)
    pts = rng.uniform(0, 1, size=(3, 5, 6, 7)) * (np.array(SHAPE) - 1)[:, None, None, None]
    ours = sample(_t(vol)[None, None], _t(pts)[None])[0, 0].numpy()
    ref = ndimage.map_coordinates(vol, pts, order=1)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_warp_by_constant_field_is_a_shift():
    vol = torch.rand(1, 1, *SHAPE)
    disp = torch.zeros(1, 3, *SHAPE)
    disp[:, 1] = 2.0  # two voxels along array axis j
    out = warp(vol, disp)
    torch.testing.assert_close(out[..., :, :-2, :], vol[..., :, 2:, :])  # out(x) = vol(x + 2 e_j)


def test_compose_adds_translations_and_follows_the_convention():
    a = torch.zeros(1, 3, *SHAPE)
    b = torch.zeros(1, 3, *SHAPE)
    a[:, 0], b[:, 2] = 1.5, -2.0
    torch.testing.assert_close(compose(a, b)[..., 3:-3, 3:-3, 3:-3], (a + b)[..., 3:-3, 3:-3, 3:-3])
    # Non-constant second field: compose(first, second)(x) = first(x) + second(x + first(x)).
    second = identity_voxels(SHAPE)[:, [0, 0, 0]] * 0.1  # every component equals 0.1 * i
    out = compose(a, second)
    assert torch.isclose(out[0, 1, 5, 6, 7], torch.tensor(0.1 * (5 + 1.5)))


def test_cells_round_trip_for_a_linear_field():
    lin = identity_voxels(SHAPE) * torch.tensor([0.2, -0.1, 0.05]).view(1, 3, 1, 1, 1)
    coarse = pool_cells(lin, 2)
    back = upsample_cells(coarse, 2, SHAPE)
    torch.testing.assert_close(back[..., 2:-2, 2:-2, 2:-2], lin[..., 2:-2, 2:-2, 2:-2], atol=1e-5, rtol=1e-5)


def test_exp_of_constant_velocity_and_fold_free_exp():
    v = torch.zeros(1, 3, *SHAPE)
    v[:, 0] = 1.25
    torch.testing.assert_close(
        scaling_and_squaring(v)[..., 2:-2, 2:-2, 2:-2], v[..., 2:-2, 2:-2, 2:-2], atol=1e-5, rtol=0
    )
    rough = torch.from_numpy(
        ndimage.gaussian_filter(np.random.default_rng(1).normal(size=(3, *SHAPE)), (0, 2, 2, 2)) * 20
    ).float()[None]
    assert float(jacobian_determinant(rough).min()) < 0  # as a displacement it folds ...
    assert (
        float(jacobian_determinant(scaling_and_squaring(rough, 8)).min()) > 0
    )  # ... its exponential does not


def test_diffusion_penalty_is_zero_on_translations_and_analytic_on_linear_fields():
    v = torch.full((1, 3, *SHAPE), 3.0)
    assert float(diffusion_penalty(v)) == 0.0
    lin = identity_voxels(SHAPE) * 0.5  # u_c = 0.5 x_c: slope 0.5 of each component along its own axis
    expected = sum(0.25 / 3 for _ in range(3))  # mean over components of (0.5^2) for one axis in three
    assert float(diffusion_penalty(lin)) == pytest.approx(expected, rel=1e-6)


def test_cost_volume_finds_a_known_shift_and_prefers_zero_without_data():
    rng = np.random.default_rng(2)
    fixed = _t(ndimage.gaussian_filter(rng.normal(size=(12, *SHAPE)), (0, 1, 1, 1)))[None]
    moving = torch.roll(fixed, shifts=(2, -1, 1), dims=(2, 3, 4))  # fixed(x) = moving(x + d), d = (2, -1, 1)
    cost = cost_volume(fixed, moving, 3)
    best = displacement_offsets(3)[cost[:, 5:-5, 5:-5, 5:-5].reshape(cost.shape[0], -1).argmin(0)]
    assert (best == torch.tensor([2.0, -1.0, 1.0])).all(dim=1).float().mean() > 0.95
    empty = cost_volume(fixed, moving, 3, weight=torch.zeros(1, 1, *SHAPE))
    assert (displacement_offsets(3)[empty.reshape(empty.shape[0], -1).argmin(0)] == 0).all()


def test_coupled_convex_recovers_a_smooth_displacement():
    rng = np.random.default_rng(3)
    shape = (32, 32, 32)
    moving_np = ndimage.gaussian_filter(rng.normal(size=(8, *shape)), (0, 1.5, 1.5, 1.5))
    true = np.stack(
        [
            np.full(shape, 1.0),
            1.5 * np.sin(np.linspace(0, np.pi, 32))[:, None, None] * np.ones(shape),
            np.zeros(shape),
        ]
    )
    coords = np.indices(shape) + true  # fixed(x) = moving(x + u(x))
    fixed_np = np.stack([ndimage.map_coordinates(c, coords, order=1, mode="nearest") for c in moving_np])
    fixed_c, _ = pool(_t(fixed_np)[None], None, 2)
    moving_c, _ = pool(_t(moving_np)[None], None, 2)
    field = coupled_convex(cost_volume(fixed_c, moving_c, 3), 3)
    fine = upsample_cells(field, 2, shape)[0].numpy()
    err = np.abs(fine - true)[:, 6:-6, 6:-6, 6:-6]
    assert err.mean() < 0.5  # voxels


def test_instance_optimisation_lowers_its_loss_and_refines_a_subvoxel_shift():
    rng = np.random.default_rng(4)
    moving = _t(ndimage.gaussian_filter(rng.normal(size=(6, *SHAPE)), (0, 1.5, 1.5, 1.5)))[None]
    true = torch.zeros(1, 3, *SHAPE)
    true[:, 0] = 0.6
    fixed = warp(moving, true)
    disp, losses = instance_optimise(
        fixed,
        moving,
        torch.zeros_like(true),
        None,
        AdamSettings(iterations=40, feature_pool=1, regularisation=0.1),
    )
    assert losses[-1] < 0.5 * losses[0]
    assert abs(float(disp[0, 0, 5:-5, 5:-5, 5:-5].mean()) - 0.6) < 0.15


def test_adam_eps_makes_the_step_follow_the_strength_of_the_evidence():
    """Adam divides each step by the size of its gradients, so with a negligible eps the same
    shift seen through features 10 times weaker (gradients 100 times smaller) is followed just
    as far: the step ignores the strength of the evidence (with the default's full-size first
    steps, two weak-contrast cases slide 10-17 mm from the truth). An eps between the two
    gradient scales slows the weak pair's
    step, not the strong one's. Measured on Adam's first step (no overshoot, no regulariser):
    0.475 voxels either way with eps 1e-10; with eps 1e-6 0.468 and 0.190. A non-positive eps
    is refused."""
    rng = np.random.default_rng(4)
    strong = _t(ndimage.gaussian_filter(rng.normal(size=(6, *SHAPE)), (0, 1.5, 1.5, 1.5)))[None]
    true = torch.zeros(1, 3, *SHAPE)
    true[:, 0] = 0.6
    inner = (0, 0, slice(5, -5), slice(5, -5), slice(5, -5))

    def first_step(scale: float, eps: float) -> float:
        moving = strong * scale
        settings = AdamSettings(iterations=1, learning_rate=0.1, feature_pool=1, regularisation=0.0, eps=eps)
        disp, _ = instance_optimise(warp(moving, true), moving, torch.zeros_like(true), None, settings)
        return float(disp[inner].mean())

    plain = first_step(1.0, 1e-10)
    assert plain > 0.3 and abs(first_step(0.1, 1e-10) - plain) < 0.01 * plain  # blind to the scale
    assert abs(first_step(1.0, 1e-6) - plain) < 0.05 * plain
    assert first_step(0.1, 1e-6) < 0.5 * plain
    with pytest.raises(ValueError, match="eps"):
        AdamSettings(eps=0.0)


def test_the_learning_rate_schedule_and_its_warm_up():
    """``lr_factor``: constant 1 by default; "linear" falls to 1 / iterations; a warm-up of W
    steps ramps (i + 1) / W and multiplies the schedule; wired into Adam, a 10-step warm-up
    makes the first step a tenth of the plain one (Adam's first step is proportional to lr)."""
    plain = AdamSettings(iterations=8)
    assert [lr_factor(i, plain) for i in range(8)] == [1.0] * 8
    linear = AdamSettings(iterations=8, schedule="linear")
    assert np.allclose([lr_factor(i, linear) for i in range(8)], 1 - np.arange(8) / 8)
    warm = AdamSettings(iterations=8, warmup=4)
    assert np.allclose([lr_factor(i, warm) for i in range(8)], [0.25, 0.5, 0.75, 1, 1, 1, 1, 1])
    both = AdamSettings(iterations=8, warmup=4, schedule="linear")
    assert np.allclose(
        [lr_factor(i, both) for i in range(8)], np.minimum(1, (np.arange(8) + 1) / 4) * (1 - np.arange(8) / 8)
    )
    with pytest.raises(ValueError, match="warmup"):
        AdamSettings(warmup=-1)

    rng = np.random.default_rng(4)
    moving = _t(ndimage.gaussian_filter(rng.normal(size=(6, *SHAPE)), (0, 1.5, 1.5, 1.5)))[None]
    true = torch.zeros(1, 3, *SHAPE)
    true[:, 0] = 0.6
    inner = (0, 0, slice(5, -5), slice(5, -5), slice(5, -5))

    def first_step(warmup: int) -> float:
        settings = AdamSettings(
            iterations=1, learning_rate=0.1, feature_pool=1, regularisation=0.0, warmup=warmup
        )
        disp, _ = instance_optimise(warp(moving, true), moving, torch.zeros_like(true), None, settings)
        return float(disp[inner].mean())

    assert abs(first_step(10) / first_step(0) - 0.1) < 0.02


def test_inverse_consistency_makes_round_trips_closer_to_identity():
    rng = np.random.default_rng(5)
    forward = torch.from_numpy(
        ndimage.gaussian_filter(rng.normal(size=(3, *SHAPE)), (0, 3, 3, 3)) * 8
    ).float()[None]
    backward = (
        -forward
        + 0.3
        * torch.from_numpy(ndimage.gaussian_filter(rng.normal(size=(3, *SHAPE)), (0, 3, 3, 3)) * 8).float()[
            None
        ]
    )

    def round_trip(u1, u2):
        return float((u1 + warp(u2, u1))[..., 3:-3, 3:-3, 3:-3].abs().mean())

    sym = inverse_consistent(forward, backward, iterations=10)
    sym_back = inverse_consistent(backward, forward, iterations=10)
    assert round_trip(sym, sym_back) < 0.5 * round_trip(forward, backward)


def jacobian_determinant(disp: torch.Tensor) -> np.ndarray:
    """det J of a torch field (1, 3, I, J, K) with the evaluator's official stencil."""
    return official_jacobian(disp[0].permute(1, 2, 3, 0).numpy())


def test_affine_after_field_matches_the_numpy_composition():
    """The torch composition (guard, working grid) and the numpy one (written field) agree:
    ``x + u(x) = A (x + d(x))`` for a general voxel affine and a varying field."""
    from remind2reg.inference.core.fields import affine_after_field, affine_field
    from remind2reg.inference.geometry import affine_displacement, compose_affine_displacement
    from tests.conftest import oblique_vox2world

    shape = (9, 7, 8)
    vox2world = oblique_vox2world()
    rng = np.random.default_rng(4)
    f2m = np.eye(4)
    f2m[:3, :3] += rng.normal(0, 0.05, (3, 3))
    f2m[:3, 3] = rng.normal(0, 3, 3)
    vox2vox = np.linalg.inv(vox2world) @ f2m @ vox2world
    d = rng.normal(0, 1, (*shape, 3)).astype(np.float32)  # (I, J, K, 3) channels last
    expected = compose_affine_displacement(d, f2m, vox2world)
    got = affine_after_field(vox2vox, torch.from_numpy(d).permute(3, 0, 1, 2)[None])  # -> (1, 3, I, J, K)
    np.testing.assert_allclose(got[0].permute(1, 2, 3, 0).numpy(), expected, atol=1e-3)
    zero = affine_field(vox2vox, shape)[0].permute(1, 2, 3, 0).numpy()
    np.testing.assert_allclose(zero, affine_displacement(f2m, vox2world, shape), atol=1e-3)


def test_geman_mcclure_is_linear_for_small_residuals_and_saturates_for_large_ones():
    r = torch.tensor([0.0, 1e-4, 1.0, 1e6])
    out = geman_mcclure(r, 1.0)
    assert out[0] == 0.0 and out[2] == pytest.approx(0.5)
    assert out[1] == pytest.approx(1e-4, rel=1e-3) and out[3] == pytest.approx(1.0, abs=1e-5)


def test_robust_masked_ssd_matches_the_formula_and_checks_shapes():
    fixed, moving = torch.zeros(1, 2, 3, 3, 3), torch.zeros(1, 2, 3, 3, 3)
    moving[0, :, 0, 0, 0] = 10.0  # one voxel nothing explains: contributes at most 1 / n
    weight = torch.ones(1, 1, 3, 3, 3)
    value = float(robust_masked_ssd(fixed, moving, weight, scale=1.0))
    assert value == pytest.approx((100.0 / 101.0) / 27.0, rel=1e-6)
    plain = float(masked_ssd(fixed, moving, weight))
    assert plain == pytest.approx(100.0 * 2 / (27 * 2))  # the plain SSD is pulled 100x harder
    with pytest.raises(ValueError, match="weight"):
        robust_masked_ssd(fixed, moving, torch.ones(1, 1, 2, 3, 3), scale=1.0)


def test_robust_cost_volume_still_finds_a_known_shift():
    rng = np.random.default_rng(2)
    fixed = _t(ndimage.gaussian_filter(rng.normal(size=(12, *SHAPE)), (0, 1, 1, 1)))[None]
    moving = torch.roll(fixed, shifts=(2, -1, 1), dims=(2, 3, 4))  # fixed(x) = moving(x + d), d = (2, -1, 1)
    cost = cost_volume(fixed, moving, 3, robust=1.0)
    best = displacement_offsets(3)[cost[:, 5:-5, 5:-5, 5:-5].reshape(cost.shape[0], -1).argmin(0)]
    assert (best == torch.tensor([2.0, -1.0, 1.0])).all(dim=1).float().mean() > 0.95
