"""The Python API: ``remind2reg.register`` / ``remind2reg.evaluate`` against the command line."""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import remind2reg
from remind2reg.cli import main
from remind2reg.evaluation.evaluate import evaluate as evaluate_folder
from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.errors import InputError
from remind2reg.inference.io.convert import as_image
from remind2reg.inference.io.displacement import read_displacement
from remind2reg.inference.io.landmarks import read_landmarks_csv, write_landmarks_csv
from remind2reg.inference.io.nifti import write_image
from remind2reg.inference.settings import AffineStageSettings
from tests.conftest import oblique_vox2world

SHAPE = (48, 40, 44)


@pytest.fixture
def case_folder(tmp_path):
    """One case (US, ceT1, T2) on an oblique 1 mm grid, the US a shifted copy of smooth structure."""
    rng = np.random.default_rng(5)
    mr = ndimage.gaussian_filter(rng.normal(size=SHAPE), 2.5).astype(np.float32) + 3.0
    us = np.roll(mr, 2, axis=0) ** 2  # a monotone map of the shifted MR, zero outside a box
    us[:4], us[-4:] = 0, 0
    vox2world = oblique_vox2world(spacing=(1.0, 1.0, 1.0))
    folder = tmp_path / "in"
    write_image(folder / "ReMIND2Reg_0001_0000.nii.gz", us, vox2world)
    write_image(folder / "ReMIND2Reg_0001_0001.nii.gz", mr, vox2world)
    write_image(folder / "ReMIND2Reg_0001_0002.nii.gz", -mr, vox2world)
    return folder


def test_register_gives_the_cli_field_bit_for_bit(case_folder, tmp_path):
    out = tmp_path / "out"
    assert main(["register", "--input", str(case_folder), "--output", str(out), "--device", "cpu"]) == 0
    images = {m: nib.load(case_folder / f"ReMIND2Reg_0001_{m}.nii.gz") for m in ("0000", "0001", "0002")}
    result = remind2reg.register(images["0000"], {"ceT1": images["0001"], "T2": images["0002"]}, device="cpu")
    assert set(result.fields) == {"ceT1", "T2"} and result.device == "cpu"
    for name, mod in (("ceT1", "0001"), ("T2", "0002")):
        cli = np.asarray(nib.load(out / f"disp_0001_0000_0001_{mod}.nii.gz").dataobj)
        assert cli.dtype == np.float32 and np.array_equal(result.fields[name], cli)
    np.testing.assert_array_equal(result.fixed_vox2world, images["0000"].affine)
    assert {"sector", "features", "convex", "adam", "guard", "embed"} <= set(result.stages)
    assert np.array_equal(np.asarray(result.to_nifti("T2").dataobj), result.fields["T2"])


@pytest.mark.parametrize(("given", "expected"), [(None, "AUTO,STRICT"), ("COMPATIBLE", "COMPATIBLE")])
def test_importing_the_package_pins_mkl_to_alignment_independent_results(given, expected):
    """The bit-for-bit promise above needs MKL's conditional numerical reproducibility set before
    torch first calls MKL; ``import remind2reg`` sets it and keeps a value the user chose."""
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    if given is not None:
        env["MKL_CBWR"] = given
    code = "import os, remind2reg; print(os.environ['MKL_CBWR'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_register_takes_simpleitk_images_and_paths_alike(case_folder):
    sitk = pytest.importorskip("SimpleITK")
    us, t1 = (case_folder / f"ReMIND2Reg_0001_{m}.nii.gz" for m in ("0000", "0001"))
    # The headers SimpleITK hands over differ from nibabel's by ~1e-8 mm (float64 vs the file's
    # float32). The default changes the field by < 1e-4 voxel for it; the global search's
    # multi-start optimisation amplifies it to ~0.02 voxel, so it is compared separately.
    search = RegistrationConfig(affine=AffineStageSettings(method="search"))
    for config, atol in ((None, 1e-4), (search, 0.05)):
        from_paths = remind2reg.register(us, t1, device="cpu", config=config)
        from_sitk = remind2reg.register(
            sitk.ReadImage(str(us)), {"0001": sitk.ReadImage(str(t1))}, device="cpu", config=config
        )
        assert list(from_paths.fields) == ["ceT1"] and list(from_sitk.fields) == ["0001"]
        np.testing.assert_allclose(from_sitk.fields["0001"], from_paths.fields["ceT1"], atol=atol)


def test_simpleitk_conversion_matches_nibabel_on_an_oblique_grid(tmp_path):
    """Axis order (SimpleITK is [k, j, i]) and LPS -> RAS are converted once, at the boundary."""
    sitk = pytest.importorskip("SimpleITK")
    array = np.random.default_rng(0).random((7, 9, 5)).astype(np.float32)
    vox2world = oblique_vox2world(spacing=(0.7, 0.5, 0.9))
    path = write_image(tmp_path / "x.nii.gz", array, vox2world)
    converted = as_image(sitk.ReadImage(str(path)))
    assert converted.shape == (7, 9, 5)
    np.testing.assert_array_equal(converted.array, array)
    np.testing.assert_allclose(converted.vox2world, vox2world, atol=1e-4)


def test_register_refuses_bad_input_clearly(case_folder):
    us = nib.load(case_folder / "ReMIND2Reg_0001_0000.nii.gz")
    constant = nib.Nifti1Image(np.ones(SHAPE, np.float32), us.affine)
    with pytest.raises(InputError, match="constant"):
        remind2reg.register(us, constant, device="cpu")
    with pytest.raises(ValueError, match="unknown MR sequence 'FLAIR'"):
        remind2reg.register(us, {"FLAIR": us}, device="cpu")
    with pytest.raises(TypeError, match="nibabel image, a SimpleITK image or a file path"):
        remind2reg.register(us.get_fdata(), us, device="cpu")


def test_evaluate_matches_the_folder_evaluator(case_folder, tmp_path):
    rng = np.random.default_rng(3)
    fix = rng.uniform(6, np.array(SHAPE) - 7, size=(10, 3))
    mov = fix + [1.5, -0.5, 0.25]
    lms = case_folder / "landmarks"
    write_landmarks_csv(lms / "ReMIND2Reg_0001_0000.csv", fix)
    write_landmarks_csv(lms / "ReMIND2Reg_0001_0001.csv", mov)
    pred = tmp_path / "pred"
    assert main(["register", "--input", str(case_folder), "--output", str(pred), "--modalities", "ceT1"]) == 0
    field = read_displacement(pred / "disp_0001_0000_0001_0001.nii.gz")
    t1 = nib.load(case_folder / "ReMIND2Reg_0001_0001.nii.gz")
    fix, mov = (read_landmarks_csv(lms / f"ReMIND2Reg_0001_{m}.csv") for m in ("0000", "0001"))  # as written
    metrics = remind2reg.evaluate(field, fix, mov, t1)
    official = evaluate_folder(case_folder, pred, ("0001",)).pairs[0]
    assert metrics.tre == pytest.approx(official.tre, abs=1e-12)
    assert metrics.tre_initial == pytest.approx(official.tre_initial, abs=1e-12)
    assert metrics.sdlogj == pytest.approx(official.sdlogj, abs=1e-12)
    assert metrics.folding_percent == official.folding_percent
