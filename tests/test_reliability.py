"""Reliability, second pass: no silent wrong answers, one bad pair never stops a batch, one run
per output folder, validated settings. Each test feeds the case and asserts both the message
(naming the case and the file) and what was or was not written."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from remind2reg.cli import main
from remind2reg.inference.core.sector import sector_mask
from remind2reg.inference.errors import EXIT_FAILURE, EXIT_INPUT, EXIT_OK
from remind2reg.inference.io.atomic import atomic_path, remove_stale_partials
from remind2reg.inference.io.lock import LOCK_NAME, FolderBusyError, folder_lock
from remind2reg.inference.io.nifti import write_image
from tests.conftest import make_case_files, oblique_vox2world

SHAPE = (20, 22, 18)
VOX2WORLD = oblique_vox2world(spacing=(0.5, 0.5, 0.5))


def register(input_dir: Path, output_dir: Path, *options: str) -> int:
    args = ["register", "--input", str(input_dir), "--output", str(output_dir), "--device", "cpu"]
    if "--method" not in options:
        args += ["--method", "identity"]
    return main([*args, *options])


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@pytest.fixture
def cases(tmp_path) -> Path:
    """Cases 0001 and 0002 with ceT1 and T2, under imagesTr/."""
    root = tmp_path / "data"
    for case in ("0001", "0002"):
        make_case_files(root, case, SHAPE, VOX2WORLD)
    return root


# -- 1. silent wrong answers -------------------------------------------------------------------


def _sector_volume(background: float) -> np.ndarray:
    """A US-like volume: speckle inside a ball (with some exact zeros), ``background`` outside."""
    rng = np.random.default_rng(0)
    idx = np.indices((40, 40, 40)).astype(float)
    inside = ((idx - 19.5) ** 2).sum(0) < 15.0**2
    speckle = rng.gamma(2.0, 20.0, size=inside.shape).round()
    speckle[rng.random(inside.shape) < 0.02] = 0.0  # dark speckle: zeros inside the sector too
    return np.where(inside, speckle, background).astype(np.float32), inside


@pytest.mark.parametrize("background", [0.0, 1.0, 17.0])
def test_sector_does_not_assume_a_zero_background(background):
    volume, inside = _sector_volume(background)
    mask = sector_mask(volume)
    assert (mask == inside).mean() > 0.995, background  # the ball, not the whole cube


@pytest.mark.parametrize("seed", range(4))
def test_sector_closing_on_the_bounding_box_equals_the_whole_grid(seed):
    """The mask is closed and hole-filled on its bounding box only; the reference does it on
    the whole grid (padded by 2, as before). Blobs with dark speckle and holes, one touching the
    grid's border, one with an enclosed cavity and one with a notch open to the outside."""
    rng = np.random.default_rng(seed)
    idx = np.indices((48, 44, 40)).astype(float)
    centre = rng.uniform([10, 10, 10], [38, 34, 30]) if seed else np.array([2.0, 20.0, 38.0])
    inside = ((idx - centre.reshape(3, 1, 1, 1)) ** 2).sum(0) < rng.uniform(8, 14) ** 2
    inside &= ((idx - centre.reshape(3, 1, 1, 1)) ** 2).sum(0) > 3.0**2  # an enclosed cavity
    inside[int(centre[0]) :, int(centre[1]), :] = False  # a notch open to the outside
    volume = np.where(inside & (rng.random(inside.shape) > 0.05), 5.0 + rng.random(inside.shape), 0.0)
    mask = volume != 0
    reference = ndimage.binary_fill_holes(
        ndimage.binary_closing(np.pad(mask, 2), iterations=2)[2:-2, 2:-2, 2:-2]
    )
    assert np.array_equal(sector_mask(volume.astype(np.float32)), reference)


def test_us_with_a_constant_nonzero_background_is_registered_not_kept_silently(tmp_path, caplog):
    """Exports that write 1 outside the sector: the sector is found, and a US that truly fills the
    whole grid is said so in the log."""
    volume, _ = _sector_volume(1.0)
    root = tmp_path / "data"
    write_image(root / "ReMIND2Reg_0001_0000.nii.gz", volume, np.eye(4))
    mr = ndimage.gaussian_filter(np.random.default_rng(1).normal(size=volume.shape), 2).astype(np.float32)
    write_image(root / "ReMIND2Reg_0001_0001.nii.gz", mr, np.eye(4))
    assert register(root, tmp_path / "out", "--method", "convex-adam") == EXIT_OK
    timings = json.loads((tmp_path / "out" / "timings.json").read_text())
    sector = timings["pairs"]["disp_0001_0000_0001_0001.nii.gz"]["sector_fraction"]
    assert 0.2 < sector < 0.25  # the ball is 22 % of the cube, not 100 %
    full = np.random.default_rng(2).gamma(2.0, 20.0, size=(40, 40, 40)).astype(np.float32) + 1.0
    write_image(root / "ReMIND2Reg_0001_0000.nii.gz", full, np.eye(4))
    assert register(root, tmp_path / "out2", "--method", "convex-adam") == EXIT_OK
    assert "case 0001, file" in caplog.text and "fills the whole grid" in caplog.text


def test_prefixed_and_odd_names_are_ignored_with_a_log_line(cases, tmp_path, caplog):
    imgs = cases / "imagesTr"
    (imgs / "old_ReMIND2Reg_0001_0000.nii.gz").write_bytes(
        (imgs / "ReMIND2Reg_0002_0000.nii.gz").read_bytes()
    )
    (imgs / "ReMIND2Reg_00017_0001.nii.gz").write_bytes((imgs / "ReMIND2Reg_0002_0001.nii.gz").read_bytes())
    assert register(cases, tmp_path / "out") == EXIT_OK
    for name in ("old_ReMIND2Reg_0001_0000.nii.gz", "ReMIND2Reg_00017_0001.nii.gz"):
        assert f"Ignoring {imgs / name}: not a ReMIND2Reg_<4-digit case>" in caplog.text
    assert _files(tmp_path / "out") == sorted(
        [f"disp_{c}_0000_{c}_{m}.nii.gz" for c in ("0001", "0002") for m in ("0001", "0002")]
        + ["timings.json"]
    )


def test_two_files_claiming_one_output_fail_that_pair_only(cases, tmp_path, caplog):
    dup = cases / "ReMIND2Reg_0001_0001.nii.gz"  # flat AND under imagesTr/
    dup.write_bytes((cases / "imagesTr" / "ReMIND2Reg_0001_0001.nii.gz").read_bytes())
    assert register(cases, tmp_path / "out", "--on-error", "skip") == EXIT_INPUT
    assert f"two files claim disp_0001_0000_0001_0001.nii.gz: {dup}" in caplog.text
    assert "disp_0001_0000_0001_0001.nii.gz" not in _files(tmp_path / "out")
    assert "disp_0001_0000_0001_0002.nii.gz" in _files(tmp_path / "out")


@pytest.mark.parametrize("spacing", [2.0, 0.3, (0.5, 0.5, 1.0)])
def test_other_voxel_sizes_register_on_a_1mm_working_grid(tmp_path, spacing):
    """A known 3 mm shift on 2 mm, 0.3 mm and anisotropic grids is recovered to within 1 mm
    (a 2 mm grid used to be taken as the working grid: every setting in mm doubled)."""
    sp = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    shape = tuple(round(48 / s) for s in sp)  # 48 mm cube
    coords = np.indices(shape).astype(float) * sp[:, None, None, None]  # mm
    rng = np.random.default_rng(3)
    blobs = ndimage.gaussian_filter(rng.normal(size=(60, 60, 60)), 3.0) * 20 + 5.0  # 1 mm texture
    mr = ndimage.map_coordinates(blobs, coords + 6.0, order=1).astype(np.float32)
    us = ndimage.map_coordinates(blobs, coords + 6.0 + np.array([3.0, 0, 0])[:, None, None, None], order=1)
    vox2world = np.diag([*sp, 1.0])
    root = tmp_path / "data"
    write_image(root / "ReMIND2Reg_0001_0000.nii.gz", us.astype(np.float32) ** 2, vox2world)
    write_image(root / "ReMIND2Reg_0001_0001.nii.gz", mr, vox2world)
    assert register(root, tmp_path / "out", "--method", "convex-adam") == EXIT_OK
    field = np.asarray(nib.load(tmp_path / "out" / "disp_0001_0000_0001_0001.nii.gz").dataobj)
    inner = tuple(slice(n // 4, -n // 4) for n in shape)
    error_mm = np.abs(field[inner][..., 0] * sp[0] - 3.0).mean()
    assert error_mm < 1.0, (spacing, error_mm)


# -- 2. one problem never stops everything -------------------------------------------------------


def test_json_entry_naming_a_missing_file_fails_only_its_pair(cases, tmp_path, caplog):
    entries = [
        {"fixed": f"./imagesTr/ReMIND2Reg_{c}_0000.nii.gz", "moving": f"./imagesTr/ReMIND2Reg_{c}_{m}.nii.gz"}
        for c, m in (("0001", "0001"), ("0003", "0001"), ("0002", "0002"))
    ]
    (cases / "ReMIND2Reg_dataset.json").write_text(json.dumps({"registration_val": entries}))
    assert register(cases, tmp_path / "out", "--on-error", "identity") == EXIT_INPUT
    assert (
        "case 0003, file" in caplog.text
        and "ReMIND2Reg_0003_0000.nii.gz', which does not exist" in caplog.text
    )
    assert _files(tmp_path / "out") == [
        "disp_0001_0000_0001_0001.nii.gz", "disp_0002_0000_0002_0002.nii.gz", "timings.json"
    ]  # fmt: skip
    assert "1 cases failed" in caplog.text


def test_moving_image_without_its_us_fails_alone(cases, tmp_path, caplog):
    orphan = cases / "imagesTr" / "ReMIND2Reg_0007_0001.nii.gz"
    orphan.write_bytes((cases / "imagesTr" / "ReMIND2Reg_0001_0001.nii.gz").read_bytes())
    assert register(cases, tmp_path / "out", "--on-error", "identity") == EXIT_INPUT
    assert f"case 0007, file {orphan}: no ultrasound image (_0000) for this case" in caplog.text
    assert len([f for f in _files(tmp_path / "out") if f.startswith("disp_")]) == 4  # the 4 good pairs


def test_corrupt_ceT1_keeps_the_valid_T2_of_its_case(cases, tmp_path, caplog):
    bad = cases / "imagesTr" / "ReMIND2Reg_0002_0001.nii.gz"
    bad.write_bytes(bad.read_bytes()[:100])
    assert register(cases, tmp_path / "out", "--on-error", "skip") == EXIT_INPUT
    assert f"case 0002, file {bad}: " in caplog.text
    files = _files(tmp_path / "out")
    assert "disp_0002_0000_0002_0002.nii.gz" in files and "disp_0002_0000_0002_0001.nii.gz" not in files
    timings = json.loads((tmp_path / "out" / "timings.json").read_text())
    assert "disp_0002_0000_0002_0002.nii.gz" in timings["pairs"]


def test_evaluate_scores_every_valid_pair_and_lists_the_bad_ones(cases, tmp_path, capsys):
    from remind2reg.inference.io.landmarks import write_landmarks_csv

    for c in ("0001", "0002"):
        for m in ("0000", "0001", "0002"):
            write_landmarks_csv(cases / "landmarksTr" / f"ReMIND2Reg_{c}_{m}.csv", np.full((4, 3), 5.0))
    pred = tmp_path / "pred"
    assert register(cases, pred) == EXIT_OK
    (pred / "disp_0002_0000_0002_0002.nii.gz").unlink()
    (pred / "disp_0001_0000_0001_0002.nii.gz").write_bytes(b"corrupt")
    report = tmp_path / "m.json"
    code = main(["evaluate", "--data", str(cases), "--pred", str(pred), "--json", str(report)])
    assert code == EXIT_INPUT
    out = capsys.readouterr().out
    assert "0001_0000<--0001_0001" in out and "0002_0000<--0002_0001" in out  # scored
    assert "disp_0002_0000_0002_0002.nii.gz" in out and "displacement field not found" in out
    data = json.loads(report.read_text())
    assert sorted(data["cases"]) == ["0001_0000<--0001_0001", "0002_0000<--0002_0001"]
    assert sorted(data["failures"]) == ["0001_0000<--0001_0002", "0002_0000<--0002_0002"]


# -- 3. one run per output folder ----------------------------------------------------------------


def test_a_second_run_refuses_while_the_first_holds_the_folder(cases, tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(
            json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "x"})
        )
        assert register(cases, out) == EXIT_FAILURE
        assert (
            f"is in use by another remind2reg run (process {holder.pid} on {socket.gethostname()}"
            in caplog.text
        )
        assert _files(out) == []  # nothing written
    finally:
        holder.kill()
        holder.wait()
    assert register(cases, out) == EXIT_OK  # the lock of the dead process is stale: taken over
    assert "Taking over the stale lock" in caplog.text and not (out / LOCK_NAME).exists()


def test_lock_waits_then_refuses(tmp_path):
    with folder_lock(tmp_path), pytest.raises(FolderBusyError, match="in use by another remind2reg run"):
        t0 = time.monotonic()
        with folder_lock(tmp_path, wait_s=0.6, poll_s=0.1):
            pass
    assert time.monotonic() - t0 >= 0.6
    with folder_lock(tmp_path):  # released
        pass


def test_cleanup_removes_only_the_temporary_files_of_dead_processes(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".disp_x.nii.gz.{int(dead.stdout)}.abcd.partial.nii.gz"
    stale.write_text("")
    with atomic_path(tmp_path / "disp_y.nii.gz") as live:  # this process's live temporary file
        live.write_text("data")
        assert remove_stale_partials(tmp_path) == [stale]
        assert live.exists()
    assert (tmp_path / "disp_y.nii.gz").read_text() == "data"


def test_output_folder_that_cannot_be_made_is_one_clear_line(cases, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert register(cases, blocker / "out") == EXIT_INPUT
    assert f"file {blocker / 'out'}: cannot create the output folder" in caplog.text
    assert "Traceback" not in caplog.text


def test_unwritable_output_folder_is_one_clear_line(cases, tmp_path, caplog, monkeypatch):
    """(CI runs as root, which may write anywhere: the refusal is simulated at the lock file.)"""
    real_open = os.open

    def refuse(path, flags, *args):
        if str(path).endswith(LOCK_NAME):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse)
    out = tmp_path / "out"
    assert register(cases, out) == EXIT_INPUT
    assert (
        f"file {out}: the output folder is not writable" in caplog.text and "chown 1000:1000" in caplog.text
    )
    assert _files(out) == []


# -- 4-6. settings and thresholds ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[adam]\nlearning_rate = "fast"\n', "config.adam.learning_rate: expected float, got str 'fast'"),
        ("[adam]\niterations = -5\n", "config.adam: iterations must be >= 0; got -5"),
        ("working_spacing_mm = -1.0\n", "config: working_spacing_mm must be > 0; got -1.0"),
        (
            "[[convex.levels]]\ngrid_sp = 0\ndisp_hw = 4\n",
            "config.convex.levels[0]: grid_sp must be > 0; got 0",
        ),
        ("[convex]\nlevels = []\n", "config.convex: levels must not be empty"),
        ("[guard]\nenabled = 1\n", "config.guard.enabled: expected bool, got int 1"),
    ],
)
def test_settings_are_validated_when_read(cases, tmp_path, caplog, toml, message):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    assert register(cases, tmp_path / "out", "--method", "convex-adam", "--config", str(config)) == EXIT_INPUT
    assert f"file {config}: invalid config: {message}" in caplog.text
    assert "Traceback" not in caplog.text and not (tmp_path / "out").exists()


def test_a_tiny_us_that_passes_the_documented_check_registers(tmp_path):
    """The documented sector check (min(1000, 1 % of the grid) non-zero voxels) is the one the
    method applies: a 16^3 US with a small sector registers instead of failing later."""
    rng = np.random.default_rng(4)
    us = np.zeros((16, 16, 16), np.float32)
    us[4:12, 4:12, 4:12] = rng.gamma(2.0, 20.0, size=(8, 8, 8))
    root = tmp_path / "data"
    write_image(root / "ReMIND2Reg_0001_0000.nii.gz", us, np.eye(4))
    write_image(root / "ReMIND2Reg_0001_0001.nii.gz", rng.random((16, 16, 16)).astype(np.float32), np.eye(4))
    assert register(root, tmp_path / "out", "--method", "convex-adam") == EXIT_OK
    field = np.asarray(nib.load(tmp_path / "out" / "disp_0001_0000_0001_0001.nii.gz").dataobj)
    assert field.shape == (16, 16, 16, 3) and np.isfinite(field).all()


# -- property: good pairs do not depend on the bad ones ------------------------------------------

BREAKS = ("fine", "truncated US", "truncated ceT1", "missing US", "constant T2")


def _make_batch(root: Path, plan: tuple[str, ...]) -> None:
    for index, how in enumerate(plan):
        case = f"{index + 1:04d}"
        paths = make_case_files(root, case, SHAPE, VOX2WORLD)
        if how == "truncated US":
            paths["0000"].write_bytes(paths["0000"].read_bytes()[:150])
        elif how == "truncated ceT1":
            paths["0001"].write_bytes(paths["0001"].read_bytes()[:150])
        elif how == "missing US":
            paths["0000"].unlink()
        elif how == "constant T2":
            write_image(paths["0002"], np.full(SHAPE, 3.0), VOX2WORLD)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.sampled_from(BREAKS), min_size=2, max_size=4).map(tuple))
def test_good_pairs_are_bit_identical_to_a_clean_run_of_them_alone(tmp_path_factory, plan):
    base = tmp_path_factory.mktemp("batch")
    mixed, clean = base / "mixed", base / "clean"
    _make_batch(mixed, plan)
    main(["-q", "register", "--input", str(mixed), "--output", str(base / "out_mixed"), "--method", "convex-adam",
          "--device", "cpu", "--on-error", "skip"])  # fmt: skip
    written = sorted(p.name for p in (base / "out_mixed").glob("disp_*"))
    # The clean run: only the images of the pairs that were written.
    for name in written:
        case, mod = name[5:9], name[-11:-7]
        for m in ("0000", mod):
            src = mixed / "imagesTr" / f"ReMIND2Reg_{case}_{m}.nii.gz"
            dst = clean / "imagesTr" / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    if written:
        assert main(["-q", "register", "--input", str(clean), "--output", str(base / "out_clean"), "--method",
                     "convex-adam", "--device", "cpu"]) == EXIT_OK  # fmt: skip
    for name in written:
        a = np.asarray(nib.load(base / "out_mixed" / name).dataobj)
        b = np.asarray(nib.load(base / "out_clean" / name).dataobj)
        assert np.array_equal(a, b), name
    expected = sum(
        2 if how == "fine" else 1 if how in ("truncated ceT1", "constant T2") else 0 for how in plan
    )
    assert len(written) == expected, (plan, written)
