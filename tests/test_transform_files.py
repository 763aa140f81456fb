"""Initial transforms from files: conventions against SimpleITK's own resampling and
reg_aladin's matrix files, refusals, and ``remind2reg register --init-transforms`` end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from remind2reg.cli import main
from remind2reg.inference.affine.niftyreg import read_aladin_matrix, write_aladin_matrix
from remind2reg.inference.errors import EXIT_INPUT, EXIT_USAGE, InputError
from remind2reg.inference.geometry import affine_displacement
from remind2reg.inference.io.convert import LPS_TO_RAS
from remind2reg.inference.io.nifti import write_image
from remind2reg.inference.io.transform_files import (
    check_init_folder,
    find_init_transform,
    read_fixed2moving,
)
from tests.conftest import oblique_vox2world, sitk_image, voxel_grid


def _transforms(centre=(0.0, 0.0, 0.0)) -> dict[str, sitk.Transform]:
    """Linear ITK transforms of several kinds about ``centre`` (LPS mm), each moving points by
    several millimetres."""
    c = np.asarray(centre, dtype=np.float64)
    euler = sitk.Euler3DTransform(tuple(c), 0.15, -0.1, 0.2, (2.0, -3.0, 1.5))
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((1.05, 0.08, -0.03, -0.06, 0.97, 0.05, 0.02, -0.04, 1.02))
    affine.SetTranslation((-2.5, 1.0, 3.0))
    affine.SetCenter(tuple(c + (5.0, 0.0, -4.0)))
    versor = sitk.VersorRigid3DTransform(
        (0.1, 0.05, -0.08, 0.99), (1.0, 2.0, -1.0), tuple(c + (0.0, 5.0, 3.0))
    )
    similarity = sitk.Similarity3DTransform(1.03, (0.0, 0.0, 1.0), 0.2, (2.0, 0.0, -3.0), tuple(c))
    composite = sitk.CompositeTransform([euler, affine])
    return {
        "euler": euler,
        "affine": affine,
        "versor": versor,
        "similarity": similarity,
        "composite": composite,
    }


@pytest.mark.parametrize(
    ("kind", "suffix"),
    [
        (kind, suffix)
        for kind in ("euler", "affine", "versor", "similarity", "composite")
        for suffix in (".tfm", ".h5", ".mat")
        if (kind, suffix) != ("composite", ".mat")  # ITK's MATLAB format holds one transform only
    ],
)
def test_itk_transforms_warp_as_simpleitk_resamples(kind, suffix, tmp_path):
    """The read matrix, turned into our challenge-format field, warps the moving image exactly as
    ``sitk.Resample`` does with the file's transform: oblique, anisotropic, different grids, so a
    wrong LPS/RAS flip, direction or axis order shows as a misplaced image."""
    fixed_shape, fixed_v2w = (26, 22, 20), oblique_vox2world(spacing=(1.1, 0.9, 1.3))
    centre = (fixed_v2w @ np.r_[(np.asarray(fixed_shape) - 1) / 2.0, 1.0])[:3]  # RAS mm
    moving_shape = (40, 44, 38)
    moving_v2w = oblique_vox2world(spacing=(1.0, 0.8, 0.9), angles_deg=(-9.0, 14.0, 5.0))
    moving_v2w[:3, 3] += centre - (moving_v2w @ np.r_[(np.asarray(moving_shape) - 1) / 2.0, 1.0])[:3]
    rng = np.random.default_rng(1)
    moving = ndimage.gaussian_filter(rng.normal(size=moving_shape), 2.5).astype(np.float64) * 100.0
    transform = _transforms(centre * (-1.0, -1.0, 1.0))[kind]  # the centre in LPS
    path = tmp_path / f"init{suffix}"
    sitk.WriteTransform(transform, str(path))

    matrix = read_fixed2moving(path)
    field = affine_displacement(matrix, fixed_v2w, fixed_shape, moving_v2w)
    ours = ndimage.map_coordinates(
        moving, np.moveaxis(voxel_grid(fixed_shape) + field, -1, 0), order=1, cval=np.nan
    )
    theirs = sitk.Resample(
        sitk_image(moving, moving_v2w),
        sitk_image(np.zeros(fixed_shape), fixed_v2w),
        transform,
        sitk.sitkLinear,
        np.nan,
    )
    theirs = sitk.GetArrayFromImage(theirs).transpose(2, 1, 0)  # [k, j, i] -> [i, j, k]
    both = np.isfinite(ours) & np.isfinite(theirs)
    assert both.mean() > 0.3 and np.abs(field).max() > 3.0  # a real overlap and a real motion (voxels)
    assert np.abs(ours[both] - theirs[both]).max() < 1e-3 * np.abs(moving).max()


def test_a_reg_aladin_matrix_is_read_as_reg_aladin_writes_it(tmp_path):
    """``.txt``: the ``reg_aladin -aff`` matrix, already fixed->moving in the NIfTI world (its
    convention is checked against ``reg_resample`` in ``tests/test_niftyreg.py``)."""
    matrix = np.array(
        [[0.98, -0.17, 0.03, 4.5], [0.17, 0.98, -0.02, -3.0], [-0.03, 0.02, 1.0, 7.25], [0, 0, 0, 1]]
    )
    path = tmp_path / "ReMIND2Reg_0001_0000.txt"
    write_aladin_matrix(path, matrix)
    assert np.array_equal(read_fixed2moving(path), read_aladin_matrix(path))
    assert np.allclose(read_fixed2moving(path), matrix)


def test_itk_and_niftyreg_files_of_one_transform_agree(tmp_path):
    """The same rigid motion written as an ITK file (LPS) and as a NiftyReg matrix (RAS, converted
    by hand: ``M_ras = F @ M_lps @ F``) reads as the same ``fixed2moving_world``."""
    euler = _transforms()["euler"]
    sitk.WriteTransform(euler, str(tmp_path / "a.tfm"))
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(euler.GetMatrix()).reshape(3, 3)
    centre = np.asarray(euler.GetCenter())
    lps[:3, 3] = np.asarray(euler.GetTranslation()) + centre - lps[:3, :3] @ centre  # ITK: A (x - c) + t + c
    write_aladin_matrix(tmp_path / "a.txt", LPS_TO_RAS @ lps @ LPS_TO_RAS)
    assert np.allclose(
        read_fixed2moving(tmp_path / "a.tfm"), read_fixed2moving(tmp_path / "a.txt"), atol=1e-6
    )


def test_unusable_transform_files_are_refused_naming_the_file(tmp_path):
    """Each refusal is an InputError that names the file and says why; nothing is guessed."""
    bad: dict[str, tuple[str, object]] = {}
    fsl = tmp_path / "flirt.mat"
    np.savetxt(fsl, np.eye(4))
    bad["ambiguous"] = (str(fsl), "text .mat matrix is ambiguous")
    bspline = sitk.BSplineTransformInitializer(sitk.Image(8, 8, 8, sitk.sitkFloat32), (4, 4, 4))
    params = np.zeros(len(bspline.GetParameters()))
    params[5] = 3.0
    bspline.SetParameters(tuple(params))
    sitk.WriteTransform(bspline, str(tmp_path / "bspline.tfm"))
    bad["nonlinear"] = (str(tmp_path / "bspline.tfm"), "not a linear")
    sitk.WriteTransform(sitk.Euler2DTransform(), str(tmp_path / "flat.tfm"))
    bad["2d"] = (str(tmp_path / "flat.tfm"), "2D transform; 3D is needed")
    (tmp_path / "rows.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n")
    bad["rows"] = (str(tmp_path / "rows.txt"), "3 rows of 4 numbers")
    (tmp_path / "words.txt").write_text("identity\n")
    bad["words"] = (str(tmp_path / "words.txt"), "not a NiftyReg 4x4 text matrix")
    np.savetxt(tmp_path / "singular.txt", np.diag([1.0, 0.0, 1.0, 1.0]))
    bad["singular"] = (str(tmp_path / "singular.txt"), "singular")
    np.savetxt(tmp_path / "projective.txt", np.ones((4, 4)))
    bad["projective"] = (str(tmp_path / "projective.txt"), "is not affine: last row")
    (tmp_path / "garbage.tfm").write_text("#Insight Transform File V1.0\nTransform: NoSuchTransform\n")
    bad["garbage"] = (str(tmp_path / "garbage.tfm"), "SimpleITK cannot read it")
    (tmp_path / "matrix.csv").write_text("1,0,0,0\n")
    bad["suffix"] = (str(tmp_path / "matrix.csv"), "unknown initial transform format '.csv'")
    bad["missing"] = (str(tmp_path / "absent.txt"), "does not exist")
    for name, (path, message) in bad.items():
        with pytest.raises(InputError, match=message) as info:
            read_fixed2moving(path, case="0007")
        assert str(info.value).startswith(f"case 0007, file {path}: "), name


def test_each_case_takes_the_file_named_after_its_ultrasound(tmp_path, caplog):
    us = tmp_path / "data" / "ReMIND2Reg_0001_0000.nii.gz"
    folder = tmp_path / "init"
    folder.mkdir()
    with pytest.raises(
        InputError, match=r"expected one of ReMIND2Reg_0001_0000\.txt, ReMIND2Reg_0001_0000\.tfm"
    ):
        find_init_transform(folder, us, "0001")
    np.savetxt(folder / "ReMIND2Reg_0001_0000.txt", np.eye(4))
    assert find_init_transform(folder, us, "0001") == folder / "ReMIND2Reg_0001_0000.txt"
    sitk.WriteTransform(sitk.Euler3DTransform(), str(folder / "ReMIND2Reg_0001_0000.tfm"))
    with pytest.raises(
        InputError, match=r"more than one initial transform .*: ReMIND2Reg_0001_0000\.txt, Re"
    ):
        find_init_transform(folder, us, "0001")
    np.savetxt(folder / "ReMIND2Reg_0009_0000.txt", np.eye(4))  # names no ultrasound of the input
    with caplog.at_level(logging.WARNING):
        check_init_folder(folder, [us])
    assert "1 files in" in caplog.text and "ReMIND2Reg_0009_0000.txt" in caplog.text
    with pytest.raises(InputError, match="folder of initial transforms does not exist"):
        check_init_folder(tmp_path / "nowhere", [us])


SHAPE = (40, 36, 32)
VOX2WORLD = oblique_vox2world(spacing=(0.5, 0.5, 0.5))


def _rigid(angles_deg, translation_mm) -> np.ndarray:
    """``fixed2moving_world``: a rotation about the image centre, then a translation (world mm)."""
    euler = sitk.Euler3DTransform((0.0, 0.0, 0.0), *(float(a) for a in np.deg2rad(angles_deg)))
    rotation = np.asarray(euler.GetMatrix()).reshape(3, 3)
    centre = (VOX2WORLD @ np.r_[(np.asarray(SHAPE) - 1) / 2.0, 1.0])[:3]
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre - rotation @ centre + np.asarray(translation_mm)
    return matrix


@pytest.fixture
def cases_with_transforms(tmp_path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """Cases 0001-0003 (smooth US + ceT1); initial transforms for 0001 (NiftyReg .txt) and 0003
    (ITK .tfm, the same kind of motion in LPS), none for 0002."""
    data, init = tmp_path / "data", tmp_path / "init"
    init.mkdir()
    rng = np.random.default_rng(3)
    for case in ("0001", "0002", "0003"):
        for mod in ("0000", "0001"):
            image = ndimage.gaussian_filter(rng.normal(size=SHAPE), 2.0).astype(np.float32) + 5.0
            write_image(data / "imagesTr" / f"ReMIND2Reg_{case}_{mod}.nii.gz", image, VOX2WORLD)
    given = {
        "0001": _rigid((8.0, -4.0, 6.0), (3.0, -2.0, 2.5)),
        "0003": _rigid((-5.0, 7.0, 3.0), (-2.0, 1.0, 3.0)),
    }
    write_aladin_matrix(init / "ReMIND2Reg_0001_0000.txt", given["0001"])
    lps = LPS_TO_RAS @ given["0003"] @ LPS_TO_RAS
    itk = sitk.AffineTransform(3)
    itk.SetMatrix(tuple(lps[:3, :3].ravel()))
    itk.SetTranslation(tuple(lps[:3, 3]))
    sitk.WriteTransform(itk, str(init / "ReMIND2Reg_0003_0000.tfm"))
    return data, init, given


def _nothing_after_the_transform(tmp_path: Path) -> Path:
    config = tmp_path / "given_only.toml"
    config.write_text("crop_margin_mm = 0.0\ndeformable = false\n\n[guard]\nenabled = false\n")
    return config


def test_register_starts_each_case_from_its_transform_file(cases_with_transforms, tmp_path, caplog):
    """With nothing after the given transform, each written field is that transform's analytic
    field; the case without a file fails alone, naming the files it looked for; timings.json
    records which file each field started from."""
    data, init, given = cases_with_transforms
    out = tmp_path / "out"
    args = ["register", "--input", str(data), "--output", str(out), "--device", "cpu", "--threads", "1"]
    config = _nothing_after_the_transform(tmp_path)
    assert main([*args, "--config", str(config), "--init-transforms", str(init)]) == EXIT_INPUT
    assert "case 0002" in caplog.text and "expected one of ReMIND2Reg_0002_0000.txt" in caplog.text
    assert not (out / "disp_0002_0000_0002_0001.nii.gz").exists()
    timings = json.loads((out / "timings.json").read_text())
    assert timings["init_transforms"] == str(init)
    import nibabel as nib

    for case, suffix in (("0001", ".txt"), ("0003", ".tfm")):
        name = f"disp_{case}_0000_{case}_0001.nii.gz"
        field = np.asarray(nib.load(out / name).dataobj)
        expected = affine_displacement(given[case], VOX2WORLD, SHAPE)
        assert np.abs(expected).max() > 5.0  # voxels
        assert np.abs(field - expected).max() < 1e-3, case
        assert timings["pairs"][name]["init_transform"] == str(init / f"ReMIND2Reg_{case}_0000{suffix}")


def test_register_refuses_initial_transforms_it_cannot_use_before_writing(cases_with_transforms, tmp_path):
    """A method other than convex-adam, or a config with its own global stage: exit 2, nothing
    written; a missing folder: exit 3, nothing written."""
    data, init, _ = cases_with_transforms
    own_global = tmp_path / "blockmatch.toml"
    own_global.write_text('[affine]\nmethod = "blockmatch"\n')
    runs = {
        EXIT_USAGE: [["--method", "blockmatch-rigid"], ["--config", str(own_global)]],
        EXIT_INPUT: [["--init-transforms", str(tmp_path / "nowhere")]],
    }
    for code, option_sets in runs.items():
        for options in option_sets:
            out = tmp_path / f"out_{code}_{options[0].strip('-')}"
            args = ["register", "--input", str(data), "--output", str(out), "--device", "cpu"]
            if "--init-transforms" not in options:
                options = [*options, "--init-transforms", str(init)]
            assert main([*args, *options]) == code, options
            assert not out.exists() or not any(out.iterdir()), options


def test_the_api_takes_a_matrix_or_a_file(cases_with_transforms, tmp_path):
    """``remind2reg.register(..., init_fixed2moving=)``: a file, and the matrix read from it, give
    the same field, the given transform's."""
    import remind2reg
    from remind2reg.inference.config import RegistrationConfig

    data, init, given = cases_with_transforms
    config = RegistrationConfig.from_file(_nothing_after_the_transform(tmp_path))
    us, mr = (data / "imagesTr" / f"ReMIND2Reg_0001_{m}.nii.gz" for m in ("0000", "0001"))
    path = init / "ReMIND2Reg_0001_0000.txt"
    by_file = remind2reg.register(us, mr, config=config, device="cpu", init_fixed2moving=path)
    by_matrix = remind2reg.register(
        us, mr, config=config, device="cpu", init_fixed2moving=read_fixed2moving(path)
    )
    assert np.abs(by_file.fields["ceT1"] - affine_displacement(given["0001"], VOX2WORLD, SHAPE)).max() < 1e-3
    assert np.array_equal(by_file.fields["ceT1"], by_matrix.fields["ceT1"])


def test_the_folder_may_come_from_the_environment(cases_with_transforms, tmp_path, monkeypatch):
    """``$REMIND2REG_INIT_TRANSFORMS`` is the container's way to pass the folder: it is used (a
    missing folder named there is the same input error as on the command line)."""
    data, _, _ = cases_with_transforms
    monkeypatch.setenv("REMIND2REG_INIT_TRANSFORMS", str(tmp_path / "nowhere"))
    out = tmp_path / "out"
    assert main(["register", "--input", str(data), "--output", str(out), "--device", "cpu"]) == EXIT_INPUT
    assert not out.exists()


def test_the_api_checks_a_matrix_for_every_method(cases_with_transforms):
    """A singular matrix is refused before any method runs, reg_aladin's included (it would take
    it without complaint)."""
    import remind2reg

    data, _, _ = cases_with_transforms
    us, mr = (data / "imagesTr" / f"ReMIND2Reg_0001_{m}.nii.gz" for m in ("0000", "0001"))
    for method in ("convex-adam", "niftyreg-rigid"):
        with pytest.raises(ValueError, match="fixed2moving_world is singular"):
            remind2reg.register(
                us, mr, method=method, device="cpu", init_fixed2moving=np.diag([1.0, 0, 1, 1])
            )
