"""The evaluator's metrics against an independent copy of the official formulas and analytic fields."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from remind2reg.evaluation.metrics import (
    folding_percent,
    jacobian_determinant,
    official_aggregates,
    sdlogj,
    target_registration_error,
)
from remind2reg.inference.geometry import affine_displacement, apply_affine


def official_tre(fix_lms, mov_lms, disp, spacing_mov):
    """Written from the challenge's compute_tre description: cubic map_coordinates per component."""
    ux = map_coordinates(disp[:, :, :, 0], fix_lms.transpose())
    uy = map_coordinates(disp[:, :, :, 1], fix_lms.transpose())
    uz = map_coordinates(disp[:, :, :, 2], fix_lms.transpose())
    warped = fix_lms + np.array((ux, uy, uz)).transpose()
    return np.linalg.norm((warped - mov_lms) * spacing_mov, axis=1)


def official_jacobian(disp):
    """The official stencil on a (1, 3, H, W, D) array, correlate along each spatial axis."""
    d = disp[np.newaxis].transpose(0, 4, 1, 2, 3)
    kernels = [np.array([-0.5, 0, 0.5]).reshape(s) for s in ((1, 3, 1, 1), (1, 1, 3, 1), (1, 1, 1, 3))]
    grads = [
        np.stack([scipy.ndimage.correlate(d[:, c], k, mode="constant", cval=0.0) for c in range(3)], axis=1)
        for k in kernels
    ]
    jac = np.concatenate(grads, 0) + np.eye(3).reshape(3, 3, 1, 1, 1)
    jac = jac[:, :, 2:-2, 2:-2, 2:-2]
    return (
        jac[0, 0] * (jac[1, 1] * jac[2, 2] - jac[1, 2] * jac[2, 1])
        - jac[1, 0] * (jac[0, 1] * jac[2, 2] - jac[0, 2] * jac[2, 1])
        + jac[2, 0] * (jac[0, 1] * jac[1, 2] - jac[0, 2] * jac[1, 1])
    )


@pytest.fixture
def random_case():
    rng = np.random.default_rng(42)
    shape = (29, 37, 23)  # non-cubic: any axis mix-up breaks shapes or values
    disp = np.stack([scipy.ndimage.gaussian_filter(rng.normal(size=shape), 3) * 20 for _ in range(3)], -1)
    fix = rng.uniform(0, np.array(shape) - 1, size=(40, 3))
    mov = fix + rng.normal(scale=2.0, size=fix.shape)
    return disp, fix, mov, np.array([0.5, 0.8, 1.1])


def test_tre_matches_official_formula(random_case):
    disp, fix, mov, spacing = random_case
    np.testing.assert_allclose(
        target_registration_error(fix, mov, disp, spacing), official_tre(fix, mov, disp, spacing), atol=1e-6
    )


def test_zero_field_gives_initial_tre(random_case):
    disp, fix, mov, spacing = random_case
    tre = target_registration_error(fix, mov, np.zeros_like(disp), spacing)
    np.testing.assert_allclose(tre, np.linalg.norm((fix - mov) * spacing, axis=1), atol=1e-12)


def test_translation_along_first_array_axis_only():
    shape = (30, 20, 25)
    disp = np.zeros((*shape, 3))
    disp[..., 0] = 2.5  # voxels along array axis 0
    fix = np.array([[10.0, 8.0, 12.0], [15.5, 10.2, 9.7], [20.0, 5.0, 18.0]])
    assert target_registration_error(fix, fix + [2.5, 0, 0], disp, (1, 1, 1)).max() < 1e-6
    # The same landmarks moved along another axis must give the full error: no axis swap.
    np.testing.assert_allclose(
        target_registration_error(fix, fix + [0, 2.5, 0], disp, (1, 1, 1)), np.sqrt(2) * 2.5, rtol=1e-6
    )


def test_rotation_about_oblique_axis_on_oblique_grid(oblique_grid):
    shape, vox2world = oblique_grid
    centre = apply_affine(vox2world, (np.array(shape) - 1)[None] / 2)[0]
    rot = Rotation.from_rotvec(
        np.deg2rad(8.0) * np.array([1.0, 2.0, -1.5]) / np.linalg.norm([1.0, 2.0, -1.5])
    ).as_matrix()
    fixed2moving_world = np.eye(4)
    fixed2moving_world[:3, :3] = rot
    fixed2moving_world[:3, 3] = centre - rot @ centre + [1.0, -0.5, 0.7]
    disp = affine_displacement(fixed2moving_world, vox2world, shape)
    rng = np.random.default_rng(3)
    fix = rng.uniform(4, np.array(shape) - 5, size=(25, 3))
    mov = apply_affine(np.linalg.inv(vox2world) @ fixed2moving_world @ vox2world, fix)
    spacing = np.linalg.norm(vox2world[:3, :3], axis=0)
    assert target_registration_error(fix, mov, disp, spacing).max() < 1e-3  # mm
    # Initial TRE in voxels x spacing equals the world distance on an orthonormal oblique grid.
    world_dist = np.linalg.norm(apply_affine(vox2world, fix) - apply_affine(vox2world, mov), axis=1)
    np.testing.assert_allclose(target_registration_error(fix, mov, 0 * disp, spacing), world_dist, rtol=1e-9)


def test_jacobian_matches_official_stencil(random_case):
    disp = random_case[0]
    np.testing.assert_allclose(jacobian_determinant(disp), official_jacobian(disp), atol=1e-10)


def test_linear_field_has_constant_determinant():
    shape = (20, 22, 18)
    a = np.array([[1.1, 0.05, 0.0], [0.02, 0.9, 0.1], [0.0, -0.03, 1.2]])
    x = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), -1)
    disp = x @ (a - np.eye(3)).T
    jac = jacobian_determinant(disp)
    assert jac.shape == tuple(n - 4 for n in shape)
    np.testing.assert_allclose(jac[2:-2, 2:-2, 2:-2], np.linalg.det(a), rtol=1e-10)


def test_sdlogj_and_folding():
    zero = np.zeros((12, 13, 14, 3))
    assert sdlogj(jacobian_determinant(zero)) == pytest.approx(0.0, abs=1e-12)
    assert folding_percent(jacobian_determinant(zero)) == 0.0
    # A mirror along axis 0 (u_0 = -2 x_0) has det J = -1 everywhere: 100 % folding.
    x0 = np.arange(12, dtype=float)[:, None, None] * np.ones((12, 13, 14))
    flip = np.zeros((12, 13, 14, 3))
    flip[..., 0] = -2 * x0
    jac = jacobian_determinant(flip)
    assert folding_percent(jac[1:-1, 1:-1, 1:-1]) == 100.0
    # Official SDlogJ uses log(detJ + 3): the mirror's constant -1 gives log(2), std 0 inside.
    assert sdlogj(jac[1:-1, 1:-1, 1:-1]) == pytest.approx(0.0, abs=1e-12)


def test_official_aggregates_use_numpy_quantile():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    agg = official_aggregates(values)
    assert agg["mean"] == 3.0
    assert agg["30"] == pytest.approx(np.quantile(values, 0.3)) and agg["30"] == pytest.approx(2.2)
    assert agg["std"] == pytest.approx(np.std(values))


def test_report_summary_counts_improved_and_worse_pairs():
    from remind2reg.evaluation.evaluate import EvaluationReport, PairResult

    def pair(case: str, before: float, after: float) -> PairResult:
        return PairResult(f"{case}_0000<--{case}_0001", case, "ceT1", 3, before, after)

    report = EvaluationReport([pair("0001", 4.0, 2.0), pair("0002", 2.0, 2.0), pair("0003", 2.0, 3.0)])
    assert report.summary() == (
        "Summary: mean TRE 2.67 -> 2.33 mm (-12 %), 1 of 3 pairs improved, 1 made worse"
    )
    # landmarks already on each other: no relative change to print, and no division by zero
    assert EvaluationReport([pair("0004", 0.0, 0.0)]).summary() == (
        "Summary: mean TRE 0.00 -> 0.00 mm, 0 of 1 pairs improved, 0 made worse"
    )
