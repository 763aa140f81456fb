"""Reading ReMIND2Reg folders, images, landmarks; writing displacement fields atomically."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from remind2reg.inference.errors import InputError
from remind2reg.inference.io.dataset import RegistrationPair, find_pairs, landmark_path
from remind2reg.inference.io.displacement import read_displacement, write_displacement
from remind2reg.inference.io.landmarks import read_landmarks_csv, read_tag_file, write_landmarks_csv
from remind2reg.inference.io.nifti import read_image, write_image
from tests.conftest import make_case_files, oblique_vox2world

SHAPE = (6, 7, 5)


def test_flat_folder_pairs_each_mr_with_its_us(tmp_path):
    make_case_files(tmp_path, "0099", SHAPE, np.eye(4), layout="")
    make_case_files(tmp_path, "0100", SHAPE, np.eye(4), modalities=("0000", "0001"), layout="")  # no T2
    pairs = find_pairs(tmp_path)
    assert [p.output_name for p in pairs] == [
        "disp_0099_0000_0099_0001.nii.gz",
        "disp_0099_0000_0099_0002.nii.gz",
        "disp_0100_0000_0100_0001.nii.gz",
    ]
    assert all(p.fixed.name.endswith("_0000.nii.gz") for p in pairs)
    assert [p.output_name for p in find_pairs(tmp_path, ("0002",))] == ["disp_0099_0000_0099_0002.nii.gz"]


def test_images_tr_folder_and_missing_us_is_an_error(tmp_path):
    make_case_files(tmp_path, "0007", SHAPE, np.eye(4), modalities=("0001",))
    with pytest.raises(InputError, match=r"case 0007.*no ultrasound"):
        find_pairs(tmp_path)


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no registration pair found"):
        find_pairs(tmp_path)
    with pytest.raises(InputError, match="input folder not found"):
        find_pairs(tmp_path / "nope")


def _write_json(root, **lists):
    meta = {"name": "ReMIND2Reg", "training": [], "registration_val": [], "registration_test": []}
    meta.update(lists)
    (root / "ReMIND2Reg_dataset.json").write_text(json.dumps(meta))


def test_dataset_json_prefers_test_then_val_then_training(tmp_path):
    make_case_files(tmp_path, "0001", SHAPE, np.eye(4))
    make_case_files(tmp_path, "0002", SHAPE, np.eye(4))

    def pair(c, m):
        return {
            "fixed": f"./imagesTr/ReMIND2Reg_{c}_0000.nii.gz",
            "moving": f"./imagesTr/ReMIND2Reg_{c}_{m}.nii.gz",
        }

    training = [{"image": f"./imagesTr/ReMIND2Reg_0001_{m}.nii.gz"} for m in ("0000", "0001", "0002")]
    _write_json(
        tmp_path,
        training=training,
        registration_val=[pair("0001", "0002")],
        registration_test=[pair("0002", "0001")],
    )
    assert [p.key for p in find_pairs(tmp_path)] == ["0002_0000<--0002_0001"]
    _write_json(tmp_path, training=training, registration_val=[pair("0001", "0002")])
    assert [p.key for p in find_pairs(tmp_path)] == ["0001_0000<--0001_0002"]
    _write_json(tmp_path, training=training)
    assert [p.key for p in find_pairs(tmp_path)] == ["0001_0000<--0001_0001", "0001_0000<--0001_0002"]


def test_dataset_json_that_disagrees_with_files_names_the_file(tmp_path):
    make_case_files(tmp_path, "0001", SHAPE, np.eye(4))
    _write_json(
        tmp_path,
        registration_val=[
            {
                "fixed": "./imagesTr/ReMIND2Reg_0003_0000.nii.gz",
                "moving": "./imagesTr/ReMIND2Reg_0003_0001.nii.gz",
            }
        ],
    )
    with pytest.raises(InputError, match=r"ReMIND2Reg_0003_0000\.nii\.gz.*does not exist"):
        find_pairs(tmp_path)


def test_landmark_path_follows_the_challenge_rule(tmp_path):
    paths = make_case_files(tmp_path, "0005", SHAPE, np.eye(4))
    assert landmark_path(paths["0001"]) is None
    target = tmp_path / "landmarksTr" / "ReMIND2Reg_0005_0001.csv"
    write_landmarks_csv(target, np.array([[1.0, 2.0, 3.0]]))
    assert landmark_path(paths["0001"]) == target


def test_landmarks_csv_round_trip_and_tag_reader(tmp_path):
    pts = np.array([[1.25, 2.5, 3.75], [10.0, 0.0, 4.5]])
    write_landmarks_csv(tmp_path / "a.csv", pts)
    np.testing.assert_allclose(read_landmarks_csv(tmp_path / "a.csv"), pts)
    (tmp_path / "t.tag").write_text(
        'MNI Tag Point File\nVolumes = 2;\n\nPoints =\n 1 2 3 4 5 6 ""\n 7 8 9 10 11 12 "";\n'
    )
    mri, us = read_tag_file(tmp_path / "t.tag")
    np.testing.assert_array_equal(mri, [[1, 2, 3], [7, 8, 9]])
    np.testing.assert_array_equal(us, [[4, 5, 6], [10, 11, 12]])


def test_real_resect_tag_files_parse(shared_data):
    files = sorted((shared_data / "resect_tags").glob("*.tag"))
    assert files
    for f in files:
        mri, us = read_tag_file(f)
        assert mri.shape == us.shape and 10 <= len(mri) <= 20


def test_displacement_is_written_in_challenge_format(tmp_path):
    vox2world = oblique_vox2world()
    disp = np.random.default_rng(0).normal(size=(*SHAPE, 3)).astype(np.float64)
    path = write_displacement(tmp_path / "disp_0001_0000_0001_0001.nii.gz", disp, vox2world, SHAPE)
    img = nib.load(str(path))
    assert img.shape == (*SHAPE, 3) and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, vox2world, atol=1e-5)
    np.testing.assert_allclose(read_displacement(path, SHAPE), disp.astype(np.float32), atol=0)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


@pytest.mark.parametrize("level", [0, 1, 6])
def test_displacement_bytes_are_a_valid_gzip_and_identical_on_rerun(tmp_path, level):
    """Any gzip level gives a .nii.gz that gzip and nibabel read back exactly; the gzip header
    carries no time stamp or file name, so rewriting the same field gives the same bytes."""
    disp = np.random.default_rng(1).normal(size=(*SHAPE, 3)).astype(np.float32)
    first = write_displacement(tmp_path / "a" / "disp.nii.gz", disp, np.eye(4), SHAPE, compresslevel=level)
    second = write_displacement(tmp_path / "b" / "disp.nii.gz", disp, np.eye(4), SHAPE, compresslevel=level)
    assert first.read_bytes() == second.read_bytes()
    raw = gzip.decompress(first.read_bytes())
    assert len(raw) == 352 + disp.nbytes  # NIfTI-1 header + extension flags, then the voxels
    np.testing.assert_array_equal(read_displacement(first, SHAPE), disp)
    with pytest.raises(ValueError, match="compresslevel"):
        write_displacement(tmp_path / "c.nii.gz", disp, np.eye(4), SHAPE, compresslevel=10)


def test_invalid_displacement_leaves_no_file(tmp_path):
    disp = np.zeros((*SHAPE, 3))
    disp[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_displacement(tmp_path / "disp_x.nii.gz", disp, np.eye(4), SHAPE)
    with pytest.raises(ValueError, match="shape"):
        write_displacement(tmp_path / "disp_y.nii.gz", np.zeros((*SHAPE, 2)), np.eye(4), SHAPE)
    assert list(tmp_path.iterdir()) == []


def test_displacement_on_another_grid_is_refused(tmp_path):
    """The field must have the FIXED grid's shape, not merely be (I, J, K, 3)."""
    other = tuple(n + 1 for n in SHAPE)
    with pytest.raises(ValueError, match=r"expected \(.*\) \(fixed grid \+ 3\)"):
        write_displacement(tmp_path / "disp_z.nii.gz", np.zeros((*other, 3)), np.eye(4), SHAPE)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "img.nii.gz"
    write_image(path, np.ones(SHAPE), np.eye(4))
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(nib.Nifti1Image, "to_file_map", boom)  # what both .nii and .nii.gz writes call
    with pytest.raises(OSError, match="disk full"):
        write_image(path, np.zeros(SHAPE), np.eye(4))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["img.nii.gz"]


def test_read_image_rejects_bad_files_with_case_and_file(tmp_path):
    good = write_image(tmp_path / "ReMIND2Reg_0001_0000.nii.gz", np.ones(SHAPE), np.eye(4))
    truncated = tmp_path / "trunc.nii.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(InputError, match=r"case 0001, file .*trunc\.nii\.gz"):
        read_image(truncated, case="0001")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a nifti at all" * 10))
    with pytest.raises(InputError, match="garbage"):
        read_image(garbage, case="0001")
    four_d = write_image(tmp_path / "4d.nii.gz", np.ones((*SHAPE, 2)), np.eye(4))
    with pytest.raises(InputError, match="expected a 3D image"):
        read_image(four_d)
    nan = np.ones(SHAPE)
    nan[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        read_image(write_image(tmp_path / "nan.nii.gz", nan, np.eye(4)))
    with pytest.raises(InputError, match="file not found"):
        read_image(tmp_path / "missing.nii.gz")


def test_registration_pair_names():
    pair = RegistrationPair(
        fixed=Path("ReMIND2Reg_0099_0000.nii.gz"),
        moving=Path("ReMIND2Reg_0099_0002.nii.gz"),
    )
    assert pair.output_name == "disp_0099_0000_0099_0002.nii.gz"
    assert pair.key == "0099_0000<--0099_0002"
    assert pair.label == "0099 T2"
