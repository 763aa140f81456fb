"""``remind2reg export``: the warped MR and the ITK displacement field, checked against SimpleITK's
own resampling on an oblique, anisotropic grid (a wrong LPS sign, axis order or direction
shows as a misplaced image)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from remind2reg.cli import main
from remind2reg.evaluation.export import export_fields, itk_displacement, warp_moving
from remind2reg.inference.errors import EXIT_INPUT, EXIT_OK, InputError
from remind2reg.inference.geometry import affine_displacement
from remind2reg.inference.io.convert import as_image, sitk_geometry, sitk_vox2world
from remind2reg.inference.io.displacement import write_displacement
from remind2reg.inference.io.nifti import write_image
from tests.conftest import oblique_vox2world, sitk_image

SHAPE = (30, 26, 22)
VOX2WORLD = oblique_vox2world(spacing=(0.9, 0.6, 1.2))


def _field() -> np.ndarray:
    """A rigid motion (world mm, about the centre) plus a smooth bend, in fixed voxels."""
    angle = np.deg2rad(9.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    centre = (VOX2WORLD @ np.r_[(np.asarray(SHAPE) - 1) / 2.0, 1.0])[:3]
    f2m = np.eye(4)
    f2m[:3, :3] = rotation
    f2m[:3, 3] = centre - rotation @ centre + (2.0, -1.5, 1.0)
    bend = ndimage.gaussian_filter(np.random.default_rng(5).normal(size=(*SHAPE, 3)), (4, 4, 4, 0)) * 8.0
    return affine_displacement(f2m, VOX2WORLD, SHAPE) + bend.astype(np.float32)


def _moving() -> np.ndarray:
    rng = np.random.default_rng(6)
    return (ndimage.gaussian_filter(rng.normal(size=SHAPE), 2.0) * 100.0 + 50.0).astype(np.float32)


def test_sitk_geometry_inverts_sitk_vox2world_and_refuses_shear():
    spacing, direction, origin = sitk_geometry(VOX2WORLD)
    assert np.allclose(sitk_vox2world(spacing, direction, origin), VOX2WORLD)
    image = as_image(sitk_image(_moving(), VOX2WORLD))  # and through a SimpleITK image and back
    assert np.allclose(image.vox2world, VOX2WORLD) and np.array_equal(image.array, _moving())
    sheared = VOX2WORLD.copy()
    sheared[:3, 1] += 0.2 * sheared[:3, 0]
    with pytest.raises(InputError, match="sheared"):
        sitk_geometry(sheared, "us.nii.gz")


def test_the_itk_field_resamples_as_the_challenge_field_warps(tmp_path):
    """``sitk.Resample`` of the MR with the written displacement-field transform equals
    ``warp_moving`` (the challenge's ``moving(x + u(x))``), and maps each fixed voxel centre to
    the moving point the challenge field names."""
    disp, moving = _field(), _moving()
    assert np.abs(disp).max() > 5.0  # voxels: a real motion
    ours = warp_moving(moving, disp)
    path = tmp_path / "t_itk.nii.gz"
    from remind2reg.evaluation.export import write_itk_displacement

    write_itk_displacement(path, itk_displacement(disp, VOX2WORLD), VOX2WORLD)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64))
    reference = sitk_image(np.zeros(SHAPE, np.float32), VOX2WORLD)
    theirs = sitk.Resample(sitk_image(moving, VOX2WORLD), reference, transform, sitk.sitkLinear, 0.0)
    theirs = sitk.GetArrayFromImage(theirs).transpose(2, 1, 0)  # [k, j, i] -> [i, j, k]
    inside = (ours != 0) & (theirs != 0)
    assert inside.mean() > 0.5
    assert np.abs(ours[inside] - theirs[inside]).max() < 1e-3 * np.abs(moving).max()
    voxel = np.array([11, 7, 15])
    fixed_lps = (np.diag([-1.0, -1.0, 1.0]) @ (VOX2WORLD @ np.r_[voxel, 1.0])[:3]).tolist()
    moving_ras = (VOX2WORLD @ np.r_[voxel + disp[tuple(voxel)], 1.0])[:3]
    assert np.allclose(transform.TransformPoint(fixed_lps), moving_ras * (-1.0, -1.0, 1.0), atol=1e-4)


def test_warp_moving_is_the_identity_for_a_zero_field_and_checks_shapes():
    moving = _moving()
    assert np.array_equal(warp_moving(moving, np.zeros((*SHAPE, 3))), moving)
    with pytest.raises(ValueError, match="does not fit"):
        warp_moving(moving, np.zeros((*SHAPE[:2], 5, 3)))


def _case(root: Path, case: str) -> None:
    images = root / "imagesTr"
    write_image(images / f"ReMIND2Reg_{case}_0000.nii.gz", _moving() + 1.0, VOX2WORLD)
    write_image(images / f"ReMIND2Reg_{case}_0001.nii.gz", _moving(), VOX2WORLD)


def test_export_writes_each_pair_and_lists_the_ones_it_cannot(tmp_path):
    """Two cases, one without its field: the other's files are written (the warped MR with the
    US's header), the missing one is named, and the command exits 3."""
    data, pred, out = tmp_path / "data", tmp_path / "pred", tmp_path / "out"
    _case(data, "0001")
    _case(data, "0002")
    write_displacement(pred / "disp_0001_0000_0001_0001.nii.gz", _field(), VOX2WORLD, SHAPE)
    result = export_fields(data, pred, out, ("0001",))
    assert [p.name for p in result.written] == [
        "ReMIND2Reg_0001_0001_warped.nii.gz",
        "ReMIND2Reg_0001_0001_fixed2moving_itk.nii.gz",
    ]
    assert list(result.failures) == ["0002_0000<--0002_0001"]
    assert "displacement field not found" in result.failures["0002_0000<--0002_0001"]
    warped = nib.load(out / "ReMIND2Reg_0001_0001_warped.nii.gz")
    assert np.allclose(warped.affine, VOX2WORLD, atol=1e-5)
    assert np.allclose(np.asarray(warped.dataobj), warp_moving(_moving(), _field()), atol=1e-4)
    args = ["export", "--data", str(data), "--pred", str(pred), "--out", str(tmp_path / "o2")]
    assert main([*args, "--what", "warped", "--modalities", "ceT1"]) == EXIT_INPUT
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["ReMIND2Reg_0001_0001_warped.nii.gz"]
    (pred / "disp_0002_0000_0002_0001.nii.gz").write_bytes(
        (pred / "disp_0001_0000_0001_0001.nii.gz").read_bytes()
    )
    assert main([*args, "--what", "itk"]) == EXIT_OK
