"""reg_aladin wrapper: matrix convention against reg_resample, known rigid/affine recovery."""

from __future__ import annotations

import subprocess

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from remind2reg.inference.affine.binaries import niftyreg_executable
from remind2reg.inference.affine.niftyreg import (
    crop_to,
    downsample,
    read_aladin_matrix,
    run_aladin,
    write_aladin_matrix,
)
from remind2reg.inference.geometry import apply_affine, resample_to_grid
from remind2reg.inference.io.nifti import Image, write_image
from remind2reg.inference.settings import AladinSettings
from tests.conftest import oblique_vox2world, voxel_grid

FIXED_SHAPE = (56, 60, 48)
MOVING_SHAPE = (60, 56, 52)


def _centred(shape, vox2world: np.ndarray) -> np.ndarray:
    """The same oblique grid moved so that its centre voxel sits at world (0, 0, 0)."""
    out = vox2world.copy()
    out[:3, 3] = -out[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return out


def _transform(angles_deg, translation, scale=(1.0, 1.0, 1.0), centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """fixed2moving_world: q = R S (p - c) + c + t."""
    lin = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix() @ np.diag(scale)
    m = np.eye(4)
    m[:3, :3] = lin
    m[:3, 3] = np.asarray(centre) - lin @ np.asarray(centre) + np.asarray(translation)
    return m


def _pair(f2m: np.ndarray):
    """A fixed and a moving image of one smooth 'anatomy' with fixed(x) = moving at f2m(x)."""
    fixed_v2w = _centred(FIXED_SHAPE, oblique_vox2world(spacing=(1.0, 1.2, 0.9)))
    moving_v2w = _centred(
        MOVING_SHAPE, oblique_vox2world(spacing=(0.9, 1.1, 1.0), angles_deg=(-8.0, 6.0, 15.0))
    )
    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter(rng.normal(size=(100, 100, 100)), 3.0)
    base_v2w = np.eye(4)
    base_v2w[:3, 3] = -50.0  # base voxel (i, j, k) sits at world (i-50, j-50, k-50) mm

    def render(shape, vox2world, world_map=None):
        world_map = np.eye(4) if world_map is None else world_map
        world = apply_affine(world_map @ vox2world, voxel_grid(shape).reshape(-1, 3))
        coords = apply_affine(np.linalg.inv(base_v2w), world).T
        return ndimage.map_coordinates(base, coords, order=1).reshape(shape).astype(np.float32) * 1000 + 500

    fixed = Image(render(FIXED_SHAPE, fixed_v2w), fixed_v2w)
    # moving(y) = base(inv(f2m) M y), so that moving(f2m(p)) = base(p) = fixed at p.
    moving = Image(render(MOVING_SHAPE, moving_v2w, np.linalg.inv(f2m)), moving_v2w)
    return fixed, moving


def _max_error_mm(estimate: np.ndarray, truth: np.ndarray, fixed: Image) -> float:
    inner = voxel_grid(FIXED_SHAPE)[10:-10:4, 10:-10:4, 10:-10:4].reshape(-1, 3)
    pts = apply_affine(fixed.vox2world, inner)
    return float(np.linalg.norm(apply_affine(estimate, pts) - apply_affine(truth, pts), axis=1).max())


def test_matrix_files_round_trip(tmp_path):
    m = _transform((3, -2, 5), (1.0, -2.0, 0.5))
    write_aladin_matrix(tmp_path / "m.txt", m)
    np.testing.assert_allclose(read_aladin_matrix(tmp_path / "m.txt"), m, atol=1e-9)


def test_downsample_keeps_world_positions():
    img = Image(np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8), oblique_vox2world())
    small = downsample(img, 2)
    # New voxel (1, 2, 3) is the mean of old voxels 2..3, 4..5, 6..7, centred on old (2.5, 4.5, 6.5).
    assert small.array[1, 2, 3] == pytest.approx(img.array[2:4, 4:6, 6:8].mean())
    np.testing.assert_allclose(
        apply_affine(small.vox2world, [[1, 2, 3]]), apply_affine(img.vox2world, [[2.5, 4.5, 6.5]])
    )


@pytest.mark.niftyreg
def test_our_convention_matches_reg_resample(tmp_path):
    f2m = _transform((4, -3, 5), (2.0, -1.5, 1.0))
    fixed, moving = _pair(np.eye(4))
    write_image(tmp_path / "fix.nii.gz", fixed.array, fixed.vox2world)
    write_image(tmp_path / "mov.nii.gz", moving.array, moving.vox2world)
    write_aladin_matrix(tmp_path / "m.txt", f2m)
    cmd = [
        str(niftyreg_executable("reg_resample")),
        "-ref",
        str(tmp_path / "fix.nii.gz"),
        "-flo",
        str(tmp_path / "mov.nii.gz"),
    ]
    subprocess.run(
        [
            *cmd,
            "-trans",
            str(tmp_path / "m.txt"),
            "-res",
            str(tmp_path / "out.nii.gz"),
            "-inter",
            "1",
            "-voff",
        ],
        check=True,
    )
    theirs = nib.load(str(tmp_path / "out.nii.gz")).get_fdata()
    ours = resample_to_grid(
        moving.array, moving.vox2world, FIXED_SHAPE, fixed.vox2world, fixed2moving_world=f2m
    )
    inside = (ours != 0) & (theirs != 0) & np.isfinite(theirs)
    assert inside.sum() > 0.3 * inside.size
    np.testing.assert_allclose(ours[inside], theirs[inside], atol=1e-2, rtol=1e-5)


@pytest.mark.niftyreg
@pytest.mark.parametrize(
    ("name", "truth", "rigid_only"),
    [
        ("rigid", _transform((4.0, -3.0, 5.0), (3.0, -2.0, 1.5)), True),
        ("affine", _transform((3.0, 2.0, -4.0), (-2.0, 1.0, 2.0), scale=(1.06, 0.95, 1.03)), False),
    ],
)
def test_reg_aladin_recovers_a_known_transform(name, truth, rigid_only, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # reg_aladin writes outputResult.nii.gz to the CWD unless told
    fixed, moving = _pair(truth)
    settings = AladinSettings(working_spacing_mm=1.0, rigid_only=rigid_only, levels=3, levels_to_perform=3)
    result = run_aladin(fixed, moving, settings=settings)
    assert _max_error_mm(result.fixed2moving_world, truth, fixed) < 0.5, name
    assert _max_error_mm(np.eye(4), truth, fixed) > 3.0  # the test transform is not trivial
    assert list(tmp_path.iterdir()) == []  # nothing left in the working directory


def test_crop_to_keeps_every_voxel_at_its_world_position():
    """Crop voxel v is image voxel lo + v, so crop2world = image_vox2world @ T(lo)."""
    rng = np.random.default_rng(0)
    vox2world = np.array([[0.0, 0.5, 0.0, 10.0], [0.7, 0.0, 0.0, -3.0], [0.0, 0.0, -0.9, 4.0], [0, 0, 0, 1]])
    image = Image(rng.random((20, 18, 16)).astype(np.float32), vox2world)
    mask = np.zeros(image.shape, np.float32)
    mask[6:9, 5:12, 10:11] = 1
    crop = crop_to(image, Image(mask, vox2world), margin=2)
    assert crop.shape == (7, 11, 5)  # box 6..8, 5..11, 10..10 plus 2 voxels, clipped at 15
    v = np.array([[0, 0, 0], [6, 10, 4], [3, 2, 1]])
    lo = np.array([4, 3, 8])
    np.testing.assert_allclose(apply_affine(crop.vox2world, v), apply_affine(vox2world, v + lo))
    for a, b in zip(v, v + lo, strict=True):
        assert crop.array[tuple(a)] == image.array[tuple(b)]
    empty = crop_to(image, Image(np.zeros(image.shape, np.float32), vox2world))
    assert empty is image  # nothing to crop to: the image as given


@pytest.mark.niftyreg
def test_reg_aladin_starts_from_a_given_transform(tmp_path, monkeypatch):
    """A motion far beyond reg_aladin's reach from the header (30 degrees, 16 mm: it ends 37 mm
    off) is recovered within 0.5 mm when the method starts from a transform 6 mm off the truth
    (``-inaff``; what ``register --init-transforms`` gives the niftyreg methods)."""
    from remind2reg.inference.methods.niftyreg import NiftyRegMethod

    monkeypatch.chdir(tmp_path)
    truth = _transform((30.0, -20.0, 25.0), (12.0, -8.0, 6.0))
    fixed, moving = _pair(truth)
    start = truth @ _transform((4.0, -3.0, 5.0), (3.0, -2.0, 2.0))
    settings = AladinSettings(working_spacing_mm=1.0, rigid_only=True, levels=3, levels_to_perform=3)
    method = NiftyRegMethod(True, settings)
    from_header = np.asarray(method(fixed, {"0001": moving}).notes["fixed2moving_world_0001"])
    from_start = np.asarray(method(fixed, {"0001": moving}, start).notes["fixed2moving_world_0001"])
    assert _max_error_mm(from_header, truth, fixed) > 10.0  # out of reach without the start
    assert _max_error_mm(start, truth, fixed) > 5.0
    assert _max_error_mm(from_start, truth, fixed) < 0.5
