"""The drift script's exact global stage (``--exact-global``): the known motion and the moved MR
keep the direction the pipeline's ``init_fixed2moving`` states, ``moving_world = M @ fixed_world``."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from remind2reg.inference.geometry import affine_displacement
from remind2reg.inference.io.nifti import Image
from tests.conftest import oblique_vox2world


def test_the_moved_mr_read_through_the_known_motion_is_the_aligned_mr(benchmark_script):
    """``moved(M x) = aligned(x)``: the aligned MR moved by :func:`moved_by` and read back at
    ``x + u_M(x)`` (the field of ``M``) is the aligned MR, inside the sector; the motion is a
    rotation (up to the asked degrees) about the sector's centre and is reproducible per seed."""
    script = benchmark_script("deformable_from_truth")
    shape = (56, 48, 52)
    vox2world = oblique_vox2world(spacing=(0.7, 0.5, 0.9))
    rng = np.random.default_rng(5)
    aligned = ndimage.gaussian_filter(rng.normal(size=shape), 3.0).astype(np.float32) * 50 + 100
    us = np.zeros(shape, np.float32)
    us[12:44, 10:38, 12:40] = rng.uniform(1, 2, size=(32, 28, 28))  # a "sector" the motion turns about
    fixed = Image(us, vox2world)
    motion = script.known_rigid_motion(fixed, 7, 6.0, 3.0)
    assert np.array_equal(motion, script.known_rigid_motion(fixed, 7, 6.0, 3.0))
    rotation = motion[:3, :3]
    assert np.allclose(rotation @ rotation.T, np.eye(3)) and np.linalg.det(rotation) > 0
    angle = np.degrees(np.arccos((np.trace(rotation) - 1) / 2))
    assert 0.5 < angle <= 6.0 * np.sqrt(3)
    moved = script.moved_by(Image(aligned, vox2world), motion)
    u = affine_displacement(motion, vox2world, shape)  # fixed voxels: x + u(x) = inv(V) M V x
    coords = np.indices(shape, dtype=np.float64) + np.moveaxis(u, -1, 0)
    read_back = ndimage.map_coordinates(moved.array, coords, order=3)
    inner = (slice(16, 40), slice(14, 34), slice(16, 36))
    assert np.abs(read_back - aligned)[inner].max() < 0.05 * aligned[inner].std()
    wrong_way = ndimage.map_coordinates(moved.array, np.indices(shape) - np.moveaxis(u, -1, 0), order=3)
    assert (
        np.abs(wrong_way - aligned)[inner].mean() > 0.3 * aligned[inner].std()
    )  # the test sees the direction
