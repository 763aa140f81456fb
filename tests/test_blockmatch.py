"""In-house MIND-SSC block matching: LTS fits and recovery of known transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from remind2reg.inference.affine.blockmatch import block_match
from remind2reg.inference.core.mind import mind_ssc
from remind2reg.inference.core.pointfit import fit_affine, fit_rigid, lts_fit
from remind2reg.inference.geometry import apply_affine, resample_to_grid
from remind2reg.inference.settings import BlockMatchSettings
from tests.conftest import oblique_vox2world


def _transform(kind: str, centre: np.ndarray, shift=(3.0, -2.0, 2.5), angles=(4.0, -3.0, 5.0)) -> np.ndarray:
    """A rigid (or rigid + anisotropic scaling) fixed2moving_world about ``centre``."""
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    if kind == "affine":
        m[:3, :3] = m[:3, :3] @ np.array([[1.04, 0.02, 0.0], [0.0, 0.97, 0.01], [0.0, 0.0, 1.02]])
    m[:3, 3] = centre - m[:3, :3] @ centre + np.asarray(shift)
    return m


@pytest.mark.parametrize("kind", ["rigid", "affine"])
def test_point_fits_are_exact_on_noise_free_matches(kind):
    rng = np.random.default_rng(1)
    src = rng.uniform(-50, 50, (30, 3))
    truth = _transform(kind, np.zeros(3))
    dst = apply_affine(truth, src)
    fitted = (fit_rigid if kind == "rigid" else fit_affine)(src, dst)
    np.testing.assert_allclose(fitted, truth, atol=1e-9)
    assert np.linalg.det(fit_rigid(src, dst)[:3, :3]) > 0  # a rotation, never a reflection


@pytest.mark.parametrize("kind", ["rigid", "affine"])
@pytest.mark.parametrize("outlier_fraction", [0.0, 0.2, 0.4])
def test_lts_fit_ignores_outlier_matches(kind, outlier_fraction):
    """With inlier_fraction 0.5, up to 40 % gross outliers (random matches) leave the fit at
    the inliers' precision (0.3 mm match noise -> < 0.15 mm transform error)."""
    rng = np.random.default_rng(2)
    n = 400
    src = rng.uniform(-40, 40, (n, 3))
    truth = _transform(kind, np.zeros(3), shift=(6.0, -4.0, 3.0), angles=(8.0, -5.0, 6.0))
    dst = apply_affine(truth, src) + rng.normal(0, 0.3, (n, 3))
    bad = rng.permutation(n)[: int(outlier_fraction * n)]
    dst[bad] = src[bad] + rng.uniform(-15, 15, (len(bad), 3))  # wrong matches anywhere in the search
    fit = lts_fit(src, dst, kind, inlier_fraction=0.5)
    err = np.linalg.norm(apply_affine(fit.matrix, src) - apply_affine(truth, src), axis=1)
    assert err.max() < 0.15, err.max()
    if outlier_fraction:
        assert not fit.inliers[bad].any()  # every outlier was trimmed
        plain = (fit_rigid if kind == "rigid" else fit_affine)(src, dst)  # least squares on all
        assert np.linalg.norm(apply_affine(plain, src) - apply_affine(truth, src), axis=1).max() > 0.5


def test_lts_fit_needs_enough_matches():
    with pytest.raises(ValueError, match="at least 4"):
        lts_fit(np.zeros((3, 3)), np.zeros((3, 3)), "affine")


def _textured(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blobs = (ndimage.gaussian_filter(rng.normal(size=shape), 2.0) > 0).astype(np.float32)
    return blobs + 0.3 * ndimage.gaussian_filter(rng.normal(size=shape), 1.0).astype(np.float32)


@pytest.mark.parametrize("kind", ["rigid", "affine"])
def test_block_match_recovers_a_known_transform_on_an_oblique_anisotropic_grid(kind):
    """5 mm of misalignment -> < 0.5 mm everywhere in the mask, with a non-monotone intensity
    change between the images (MIND features, not intensities, are matched)."""
    shape = (72, 64, 80)
    vox2world = oblique_vox2world(spacing=(1.0, 1.2, 0.9))
    fixed = _textured(shape)
    centre = apply_affine(vox2world, (np.array(shape) - 1) / 2)
    truth = _transform(kind, centre)
    # moving(T x) = g(fixed(x)): resample fixed through the inverse map, then remap intensities.
    moving = resample_to_grid(fixed, vox2world, shape, vox2world, fixed2moving_world=np.linalg.inv(truth))
    moving = (moving - 0.5) ** 2  # not monotone: no linear/NCC relation to the fixed image
    mask = np.zeros(shape, np.float32)
    mask[10:-10, 10:-10, 10:-10] = 1

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]

    result = block_match(
        mind_ssc(tensor(fixed), 1, 2),
        mind_ssc(tensor(moving), 1, 2),
        tensor(mask),
        vox2world,
        kind,
        BlockMatchSettings(),
    )
    points = apply_affine(vox2world, np.argwhere(mask > 0)[::53])
    initial = np.linalg.norm(apply_affine(truth, points) - points, axis=1)
    err = np.linalg.norm(
        apply_affine(result.fixed2moving_world, points) - apply_affine(truth, points), axis=1
    )
    assert initial.mean() > 4.0
    assert err.max() < 0.5, (err.mean(), err.max())
    if kind == "rigid":
        rotation = result.fixed2moving_world[:3, :3]
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
