"""The multi-start rigid search: large rotations that dense displacement search does not see."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from remind2reg.inference.affine.rigid_search import rigid_about, rotation_matrix, start_rotations
from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.geometry import apply_affine, resample_to_grid
from remind2reg.inference.io.nifti import Image
from remind2reg.inference.methods.convex_adam import ConvexAdamMethod
from remind2reg.inference.settings import AffineStageSettings
from tests.conftest import oblique_vox2world


def test_rodrigues_matches_scipy_and_rigid_about_keeps_the_centre():
    w = np.array([0.1, -0.25, 0.3])
    np.testing.assert_allclose(
        rotation_matrix(torch.tensor(w)).numpy(), Rotation.from_rotvec(w).as_matrix(), atol=1e-12
    )
    np.testing.assert_allclose(rotation_matrix(torch.zeros(3, dtype=torch.float64)).numpy(), np.eye(3))
    centre = torch.tensor([10.0, -4.0, 7.0], dtype=torch.float64)
    m = rigid_about(torch.tensor(w), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), centre).numpy()
    np.testing.assert_allclose(
        apply_affine(m, centre.numpy()[None])[0], centre.numpy() + [1, 2, 3], atol=1e-12
    )
    assert len(start_rotations((10.0, 20.0))) == 13


def _scene(vox2world: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Smooth structure with edges (world-coordinate blobs) and a ball-shaped sector around the centre."""
    rng = np.random.default_rng(7)
    blobs = ndimage.gaussian_filter(rng.normal(size=(140, 140, 140)), 4.0)
    world = apply_affine(vox2world, np.indices(shape).reshape(3, -1).T)  # (P, 3) mm
    centre = apply_affine(vox2world, (np.array(shape) - 1)[None] / 2)[0]
    coords = (world - centre + 70.0).T  # blob volume voxels (1 mm)
    image = ndimage.map_coordinates(blobs, coords, order=1).reshape(shape)
    image = (image > 0).astype(np.float32) + 0.5 * image.astype(np.float32) / np.abs(image).max() + 1.0
    sector = (np.linalg.norm(world - centre, axis=1) < 28.0).reshape(shape)
    return image, sector


@pytest.mark.parametrize("angles", [(15.0, 0.0, 0.0), (-6.0, 9.0, -10.0)])
def test_a_15_degree_10_mm_rigid_motion_is_recovered_within_half_a_millimetre(angles):
    """On an oblique, anisotropic grid, with the MR's contrast inverted (MIND), through the whole
    method with the rigid search as global stage and no deformable stage."""
    shape = (64, 56, 62)
    vox2world = oblique_vox2world(spacing=(1.0, 1.2, 0.9))
    fixed, sector = _scene(vox2world, shape)
    centre = apply_affine(vox2world, (np.array(shape) - 1)[None] / 2)[0]
    truth = np.eye(4)
    truth[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    shift = np.array([6.0, -8.0, 0.0])  # 10 mm
    truth[:3, 3] = centre - truth[:3, :3] @ centre + shift
    # moving(truth @ x) = fixed(x): the MR is the US scene moved by the inverse of the truth.
    moving = resample_to_grid(fixed, vox2world, shape, vox2world, fixed2moving_world=np.linalg.inv(truth))
    moving = np.where(moving > 0, 4.0 - moving, 0.0).astype(np.float32)  # inverted contrast
    us = np.where(sector, fixed, 0.0).astype(np.float32)
    config = RegistrationConfig(
        crop_margin_mm=4.0, deformable=False, affine=AffineStageSettings(method="search")
    )
    result = ConvexAdamMethod(config)(Image(us, vox2world), {"0001": Image(moving, vox2world)})
    found = np.asarray(result.notes["fixed2moving_world_0001"])
    points = apply_affine(vox2world, np.argwhere(sector)[::50])
    error = np.linalg.norm(apply_affine(found, points) - apply_affine(truth, points), axis=1)
    assert error.mean() < 0.5, (angles, error.mean(), error.max())


def test_rigid_projection_of_a_dense_field_recovers_the_rigid_part_despite_outliers():
    """MCPO's projection: a rigid field plus a local 6 mm bulge on a third of the sector is
    projected back onto the rigid transform by least trimmed squares."""
    from remind2reg.inference.core.fields import affine_field
    from remind2reg.inference.core.projection import project_field

    shape = (40, 36, 32)
    truth = rigid_about(
        torch.tensor([0.05, -0.08, 0.1]), torch.tensor([2.0, -1.0, 3.0]), torch.tensor([20.0, 18.0, 16.0])
    )
    disp = affine_field(truth.numpy(), shape)  # working voxels = mm here (identity vox2world)
    mask = torch.ones(1, 1, *shape)
    disp[:, 0, :13] += 6.0  # a bulge the rigid fit must trim
    fit = project_field(disp, mask, np.eye(4), "rigid", inlier_fraction=0.5)
    np.testing.assert_allclose(fit.matrix, truth.numpy(), atol=1e-3)
    assert fit.inliers.mean() == pytest.approx(0.5, abs=0.01)
