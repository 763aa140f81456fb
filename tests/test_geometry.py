"""Coordinate frames: round trips, resampling and affine displacements on oblique grids."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from remind2reg.inference.geometry import (
    affine_displacement,
    apply_affine,
    compose_affine_displacement,
    resample_to_grid,
    same_grid,
    voxel_spacing,
)
from tests.conftest import oblique_vox2world, voxel_grid


def test_voxel_world_voxel_round_trip(oblique_grid):
    _, vox2world = oblique_grid
    pts = np.random.default_rng(0).uniform(-5, 40, size=(50, 3))
    back = apply_affine(np.linalg.inv(vox2world), apply_affine(vox2world, pts))
    np.testing.assert_allclose(back, pts, atol=1e-10)


def test_spacing_is_column_norms(oblique_grid):
    _, vox2world = oblique_grid
    np.testing.assert_allclose(voxel_spacing(vox2world), [0.7, 0.5, 0.9], atol=1e-12)


def test_affine_displacement_maps_points_like_the_matrix(oblique_grid):
    shape, vox2world = oblique_grid
    rot = oblique_vox2world(spacing=(1, 1, 1), angles_deg=(4.0, -3.0, 6.0), origin=(2.0, -1.5, 3.0))
    disp = affine_displacement(rot, vox2world, shape)
    assert disp.shape == (*shape, 3) and disp.dtype == np.float32
    x = np.array([[3, 7, 11], [20, 2, 5], [0, 30, 18]])
    expected = apply_affine(np.linalg.inv(vox2world) @ rot @ vox2world, x)
    np.testing.assert_allclose(x + disp[tuple(x.T)], expected, atol=1e-4)


def test_identity_affine_gives_zero_field(oblique_grid):
    shape, vox2world = oblique_grid
    assert np.abs(affine_displacement(np.eye(4), vox2world, shape)).max() < 1e-5


def test_resample_between_grids_follows_world_coordinates(oblique_grid):
    shape, fixed_vox2world = oblique_grid
    # A linear intensity ramp in world coordinates is reproduced exactly by trilinear resampling.
    moving_vox2world = oblique_vox2world(spacing=(0.6, 0.6, 0.6), angles_deg=(-5, 10, 3), origin=(-50, 0, 75))
    mshape = (60, 60, 60)
    world_m = apply_affine(moving_vox2world, voxel_grid(mshape).reshape(-1, 3))
    ramp = (world_m @ np.array([0.3, -0.2, 0.5])).reshape(mshape).astype(np.float32)
    out = resample_to_grid(ramp, moving_vox2world, shape, fixed_vox2world)
    world_f = apply_affine(fixed_vox2world, voxel_grid(shape).reshape(-1, 3))
    expected = (world_f @ np.array([0.3, -0.2, 0.5])).reshape(shape)
    inside = ndimage.binary_erosion(out != 0, iterations=2)
    assert inside.sum() > 100
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-3)


def test_same_grid_detects_shifts(oblique_grid):
    shape, vox2world = oblique_grid
    shifted = vox2world.copy()
    shifted[:3, 3] += [0.0, 0.01, 0.0]
    assert same_grid(shape, vox2world, shape, vox2world)
    assert not same_grid(shape, vox2world, shape, shifted)
    assert not same_grid(shape, vox2world, (shape[0] + 1, *shape[1:]), vox2world)


def test_field_then_affine_composition_is_analytic(oblique_grid):
    """x + u(x) = A (x + d(x)) for a known affine A and a known, spatially varying field d."""
    shape, vox2world = oblique_grid
    rng = np.random.default_rng(3)
    f2m = np.eye(4)
    f2m[:3, :3] += rng.normal(0, 0.03, (3, 3))  # general affine: rotation, scaling and shear
    f2m[:3, 3] = [2.0, -1.5, 3.0]
    zero = np.zeros((*shape, 3), dtype=np.float32)
    np.testing.assert_allclose(
        compose_affine_displacement(zero, f2m, vox2world),
        affine_displacement(f2m, vox2world, shape),
        atol=1e-4,
    )
    grid = voxel_grid(shape)
    d = np.stack([np.sin(grid[..., 1] / 5.0), 0.5 * np.cos(grid[..., 2] / 7.0), 0.1 * grid[..., 0]], -1)
    u = compose_affine_displacement(d.astype(np.float32), f2m, vox2world)
    vox2vox = np.linalg.inv(vox2world) @ f2m @ vox2world
    x = rng.integers(0, min(shape), size=(40, 3)).astype(float)
    idx = tuple(x.astype(int).T)
    np.testing.assert_allclose(x + u[idx], apply_affine(vox2vox, x + d[idx]), atol=1e-3)
