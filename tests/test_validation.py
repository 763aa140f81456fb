"""Bad inputs: each is fed to ``remind2reg register`` (or ``evaluate``); the message must name the
case and the file, and nothing partial may be written. Plus property-based tests of the reader."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from remind2reg.cli import main
from remind2reg.inference.errors import EXIT_INPUT, EXIT_OK, InputError
from remind2reg.inference.io.dataset import Discovery, find_pairs
from remind2reg.inference.io.landmarks import write_landmarks_csv
from remind2reg.inference.io.nifti import read_image, write_image
from tests.conftest import make_case_files, oblique_vox2world

SHAPE = (20, 22, 18)
VOX2WORLD = oblique_vox2world(spacing=(0.5, 0.5, 0.5))


def register(input_dir: Path, output_dir: Path, *options: str) -> int:
    args = ["register", "--input", str(input_dir), "--output", str(output_dir), "--method", "identity"]
    return main([*args, "--device", "cpu", *options])


@pytest.fixture
def two_cases(tmp_path) -> Path:
    """Cases 0001 (good) and 0002 (to be broken), ceT1 only, under imagesTr/."""
    root = tmp_path / "data"
    for case in ("0001", "0002"):
        make_case_files(root, case, SHAPE, VOX2WORLD, modalities=("0000", "0001"))
    return root


def _image(root: Path, mod: str) -> Path:
    return root / "imagesTr" / f"ReMIND2Reg_0002_{mod}.nii.gz"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(gzip.compress(b"this is not a NIfTI file " * 40))


def _array(values: np.ndarray):
    return lambda path: write_image(path, values, VOX2WORLD)


def _with(index, value) -> np.ndarray:
    array = np.random.default_rng(3).random(SHAPE)
    array[index] = value
    return array


def _sparse_us() -> np.ndarray:
    us = np.zeros(SHAPE)
    us[5, 5, 5:8] = 1.0  # three voxels: no sector
    return us


BAD_IMAGES = {
    "truncated gz": ("0000", _truncate, "image data is truncated or corrupt"),
    "not a NIfTI": ("0001", _garbage, "not a readable NIfTI image"),
    "empty file": ("0001", lambda p: p.write_bytes(b""), "not a readable NIfTI image"),
    "2D": ("0001", _array(np.ones((20, 22))), "expected a 3D image, found 2D"),
    "4D": ("0000", _array(np.ones((*SHAPE, 2))), "expected a 3D image, found 4D"),
    "NaN": ("0001", _array(_with((1, 2, 3), np.nan)), "1 voxels are NaN or Inf"),
    "Inf": ("0000", _array(_with((4, 5, 6), np.inf)), "1 voxels are NaN or Inf"),
    "constant US": ("0000", _array(np.full(SHAPE, 7.0)), "the ultrasound is constant"),
    "empty US": ("0000", _array(np.zeros(SHAPE)), "the ultrasound is constant (every voxel is 0)"),
    "US without sector": ("0000", _array(_sparse_us()), "the ultrasound has no sector: 3 non-zero voxels"),
    "constant MR": ("0001", _array(np.full(SHAPE, 2.0)), "the MR image is constant"),
    "missing MR on disk": ("0001", lambda p: p.unlink(), "file not found"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_fails_its_case_only_and_writes_nothing_for_it(
    two_cases, tmp_path, caplog, monkeypatch, name
):
    mod, corrupt, message = BAD_IMAGES[name]
    path = _image(two_cases, mod)
    if name == "missing MR on disk":  # the pair is found, then the file vanishes before it is read
        pairs = find_pairs(two_cases)
        monkeypatch.setattr("remind2reg.inference.batch.discover", lambda *args, **kwargs: Discovery(pairs))
    corrupt(path)
    assert register(two_cases, tmp_path / "out") == EXIT_INPUT
    assert f"case 0002, file {path}: {message}" in caplog.text
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["disp_0001_0000_0001_0001.nii.gz", "timings.json"]
    assert "1 cases failed" in caplog.text  # the summary at the end
    timings = json.loads((out / "timings.json").read_text())
    assert list(timings["pairs"]) == ["disp_0001_0000_0001_0001.nii.gz"]


def test_moving_image_that_does_not_overlap_the_us_is_an_error(two_cases, tmp_path, caplog):
    far = VOX2WORLD.copy()
    far[:3, 3] += 500.0  # half a metre away
    path = _image(two_cases, "0001")
    write_image(path, np.random.default_rng(0).random(SHAPE), far)
    assert register(two_cases, tmp_path / "out") == EXIT_INPUT
    assert "Case 0002: ReMIND2Reg_0002_0001.nii.gz is not on the grid" in caplog.text  # resampled, logged
    assert f"case 0002, file {path}: resampled onto the grid of ReMIND2Reg_0002_0000.nii.gz, it is empty" in (
        caplog.text
    )
    assert not (tmp_path / "out" / "disp_0002_0000_0002_0001.nii.gz").exists()


def _json(root: Path, **lists) -> Path:
    meta = {"name": "ReMIND2Reg", "tensorImageShape": {"0": list(SHAPE)}, "training": []}
    meta.update(lists)
    path = root / "ReMIND2Reg_dataset.json"
    path.write_text(json.dumps(meta))
    return path


def _entry(case: str, fixed: str = "0000", moving: str = "0001") -> dict:
    return {
        "fixed": f"./imagesTr/ReMIND2Reg_{case}_{fixed}.nii.gz",
        "moving": f"./imagesTr/ReMIND2Reg_{case}_{moving}.nii.gz",
    }


@pytest.mark.parametrize(
    ("lists", "message"),
    [
        (
            {"registration_val": [_entry("0003")]},
            "lists './imagesTr/ReMIND2Reg_0003_0000.nii.gz', which does not",
        ),
        (
            {"registration_val": [_entry("0001", "0001", "0000")]},
            "case 0001, file {json}: registration_val lists",
        ),
        ({"registration_val": [{"fixed": "./imagesTr/ReMIND2Reg_0001_0000.nii.gz"}]}, "malformed entry"),
        (
            {"registration_val": [_entry("0001")], "tensorImageShape": {"0": [256, 256, 256]}},
            "disagrees with",
        ),
        ({"training": [{"img": "x"}]}, "malformed 'training' list"),
    ],
    ids=["missing file", "fixed is an MR", "no moving", "shape", "training"],
)
def test_dataset_json_that_disagrees_with_the_files(two_cases, tmp_path, caplog, lists, message):
    json_path = _json(two_cases, **lists)
    assert register(two_cases, tmp_path / "out") == EXIT_INPUT
    assert message.format(json=json_path) in caplog.text
    assert not (tmp_path / "out").exists()  # refused before anything is created


def test_dataset_json_shape_error_names_the_case_and_the_image(two_cases):
    _json(two_cases, registration_val=[_entry("0002")], tensorImageShape={"0": [256, 256, 256]})
    with pytest.raises(
        InputError, match=r"case 0002, file .*ReMIND2Reg_0002_0000\.nii\.gz: shape \(20, 22, 18\)"
    ):
        find_pairs(two_cases)


def test_dataset_json_count_mismatch_is_logged(two_cases, caplog):
    _json(two_cases, registration_val=[_entry("0001")], numRegistration_val=4)
    assert len(find_pairs(two_cases)) == 1
    assert "numRegistration_val is 4 but registration_val lists 1 entries" in caplog.text


def test_evaluator_rejects_landmarks_outside_the_grid(two_cases, tmp_path, caplog):
    assert register(two_cases, tmp_path / "pred", "--modalities", "ceT1") == EXIT_OK
    inside = np.array([[3.0, 4.0, 5.0], [10.0, 10.0, 10.0]])
    outside = np.array([[3.0, 4.0, 5.0], [10.0, 40.0, 10.0]])  # j = 40 > 21
    lms = two_cases / "landmarksTr"
    for case in ("0001", "0002"):
        write_landmarks_csv(lms / f"ReMIND2Reg_{case}_0000.csv", inside)
        write_landmarks_csv(lms / f"ReMIND2Reg_{case}_0001.csv", outside if case == "0002" else inside)
    metrics = tmp_path / "metrics.json"
    assert (
        main(["evaluate", "--data", str(two_cases), "--pred", str(tmp_path / "pred"), "--json", str(metrics)])
        == 3
    )
    assert (
        f"case 0002, file {lms / 'ReMIND2Reg_0002_0001.csv'}: landmarks outside the image grid" in caplog.text
    )
    # The valid pair is still scored; the bad one is listed, not silently dropped (issue 15).
    written = json.loads(metrics.read_text())
    assert list(written["cases"]) == ["0001_0000<--0001_0001"]
    assert "landmarks outside the image grid" in written["failures"]["0002_0000<--0002_0001"]


# -- property-based: the reader either returns a valid image or raises InputError naming the file --


def _check_read(path: Path) -> None:
    try:
        image = read_image(path, case="0042")
    except InputError as exc:
        assert f"case 0042, file {path}" in str(exc)
        return
    assert image.array.ndim == 3 and image.array.dtype == np.float32 and image.array.size > 0
    assert np.isfinite(image.array).all()
    assert abs(np.linalg.det(image.vox2world[:3, :3])) > 1e-12


@settings(max_examples=40, deadline=None)
@given(
    gz=st.booleans(),
    edits=st.lists(st.tuples(st.integers(0, 351), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_read_image_survives_corrupted_headers(tmp_path_factory, gz, edits, cut):
    raw = bytearray(
        nib.Nifti1Image(np.random.default_rng(0).random((6, 5, 4)).astype(np.float32), VOX2WORLD).to_bytes()
    )
    for offset, value in edits:  # random bytes anywhere in the 348-byte header (+ extension flag)
        raw[offset] = value
    data = gzip.compress(bytes(raw)) if gz else bytes(raw)
    if cut is not None:
        data = data[: int(len(data) * cut)]
    path = tmp_path_factory.mktemp("hyp") / ("ReMIND2Reg_0042_0000.nii" + (".gz" if gz else ""))
    path.write_bytes(data)
    _check_read(path)


@settings(max_examples=40, deadline=None)
@given(
    array=hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64, np.int16, np.uint8]),
        shape=hnp.array_shapes(min_dims=1, max_dims=5, min_side=1, max_side=4),
    ),
    poison=st.sampled_from([None, np.nan, np.inf, -np.inf]),
)
def test_read_image_survives_random_arrays(tmp_path_factory, array, poison):
    if poison is not None and array.dtype.kind == "f":
        array = array.copy()
        array.flat[0] = poison
    path = tmp_path_factory.mktemp("hyp") / "ReMIND2Reg_0042_0000.nii.gz"
    write_image(path, array, VOX2WORLD, dtype=array.dtype.type)
    _check_read(path)
    if poison is not None and array.dtype.kind == "f" and array.ndim in (3, 4):
        with pytest.raises(InputError):
            read_image(path, case="0042")
