"""Batch policy of ``remind2reg register``: --on-error, exit codes, --resume, determinism, OOM."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import ClassVar

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from remind2reg import cli
from remind2reg.cli import main
from remind2reg.inference.batch import register_folder, seeded
from remind2reg.inference.device import set_deterministic_algorithms
from remind2reg.inference.errors import EXIT_FAILURE, EXIT_INPUT, EXIT_OK, EXIT_USAGE
from remind2reg.inference.io.nifti import Image, write_image
from remind2reg.inference.methods.base import MethodResult
from remind2reg.inference.settings import METHODS, ON_ERROR_POLICIES
from tests.conftest import make_case_files, oblique_vox2world

SHAPE = (20, 22, 18)
VOX2WORLD = oblique_vox2world(spacing=(0.5, 0.5, 0.5))
OUT_0001 = "disp_0001_0000_0001_0001.nii.gz"
OUT_0002 = "disp_0002_0000_0002_0001.nii.gz"
OUT_0003 = "disp_0003_0000_0003_0001.nii.gz"


def register(input_dir: Path, output_dir: Path, *options: str) -> int:
    args = ["register", "--input", str(input_dir), "--output", str(output_dir), "--device", "cpu"]
    if "--method" not in options:
        args += ["--method", "identity"]
    return main([*args, *options])


@pytest.fixture
def three_cases(tmp_path) -> Path:
    """Cases 0001-0003 (US + ceT1); case 0002's US is truncated (an input error)."""
    root = tmp_path / "data"
    for case in ("0001", "0002", "0003"):
        make_case_files(root, case, SHAPE, VOX2WORLD, modalities=("0000", "0001"))
    us = root / "imagesTr" / "ReMIND2Reg_0002_0000.nii.gz"
    us.write_bytes(us.read_bytes()[:-200])
    return root


def _timings(out: Path) -> dict:
    return json.loads((out / "timings.json").read_text())


def test_cli_choices_match_the_pipeline():
    actions = {
        a.dest: a for a in cli.build_parser()._subparsers._group_actions[0].choices["register"]._actions
    }
    assert tuple(actions["on_error"].choices) == ON_ERROR_POLICIES
    assert tuple(actions["method"].choices) == tuple(METHODS)


def test_cli_choices_reject_an_unknown_method(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["register", "--input", "a", "--output", "b", "--method", "nope"])
    assert exit_info.value.code == EXIT_USAGE
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_skip_goes_on_and_exits_3(three_cases, tmp_path, caplog):
    out = tmp_path / "out"
    assert register(three_cases, out, "--on-error", "skip") == EXIT_INPUT
    assert sorted(p.name for p in out.glob("disp_*")) == [OUT_0001, OUT_0003]
    assert "case 0002 (disp_0002_0000_0002_0001.nii.gz): skipped (no output)" in caplog.text
    assert _timings(out)["on_error"] == "skip"


def test_fail_stops_at_the_first_failing_case(three_cases, tmp_path, caplog):
    out = tmp_path / "out"
    assert register(three_cases, out, "--on-error", "fail") == EXIT_INPUT
    assert sorted(p.name for p in out.glob("disp_*")) == [OUT_0001]  # the finished case keeps its file
    assert "not attempted after the failure: cases 0003" in caplog.text


def test_identity_writes_and_records_the_zero_field(three_cases, tmp_path, caplog):
    out = tmp_path / "out"
    assert register(three_cases, out, "--on-error", "identity") == EXIT_INPUT  # still non-zero
    assert sorted(p.name for p in out.glob("disp_*")) == [OUT_0001, OUT_0002, OUT_0003]
    zero = nib.load(str(out / OUT_0002))
    assert zero.shape == (*SHAPE, 3) and not np.asarray(zero.dataobj).any()
    np.testing.assert_allclose(zero.affine, VOX2WORLD, atol=1e-5)
    entry = _timings(out)["pairs"][OUT_0002]
    assert entry["fallback"] == "identity"
    assert "ReMIND2Reg_0002_0000.nii.gz: image data is truncated or corrupt" in entry["error"]
    assert "fallback" not in _timings(out)["pairs"][OUT_0001]
    assert "wrote the identity field" in caplog.text


def test_allow_failures_and_environment_defaults(three_cases, tmp_path, monkeypatch):
    monkeypatch.setenv("REMIND2REG_ON_ERROR", "identity")
    monkeypatch.setenv("REMIND2REG_ALLOW_FAILURES", "1")
    out = tmp_path / "out"
    assert register(three_cases, out) == EXIT_OK  # what the container runs
    assert _timings(out)["pairs"][OUT_0002]["fallback"] == "identity"
    assert register(three_cases, tmp_path / "o2", "--no-allow-failures") == EXIT_INPUT
    monkeypatch.setenv("REMIND2REG_ON_ERROR", "ignore")
    with pytest.raises(SystemExit) as exit_info:
        register(three_cases, tmp_path / "o3")
    assert exit_info.value.code == EXIT_USAGE


def test_method_error_exits_1_with_a_traceback(three_cases, tmp_path, caplog, monkeypatch):
    (three_cases / "imagesTr" / "ReMIND2Reg_0002_0000.nii.gz").unlink()  # only cases 0001 and 0003
    make_case_files(three_cases, "0002", SHAPE, VOX2WORLD, modalities=("0000",))

    class Broken:
        name = "broken"

        def __call__(self, fixed: Image, moving: dict, init_fixed2moving=None) -> MethodResult:
            if "0003" in fixed.path.name:
                raise RuntimeError("solver diverged")
            return MethodResult.per_sequence({m: np.zeros((*fixed.shape, 3), np.float32) for m in moving})

    monkeypatch.setattr("remind2reg.inference.batch.make_method", lambda *args, **kwargs: Broken())
    assert register(three_cases, tmp_path / "out") == EXIT_FAILURE
    assert "Case 0003 failed: RuntimeError: solver diverged" in caplog.text
    assert "Traceback" in caplog.text  # not an input error: could be a bug, so the traceback is kept


def test_a_failed_case_loses_the_output_of_an_earlier_run(three_cases, tmp_path, caplog):
    out = tmp_path / "out"
    write_image(out / OUT_0002, np.ones((*SHAPE, 3)), VOX2WORLD)  # from an earlier, successful run
    assert register(three_cases, out) == EXIT_INPUT
    assert not (out / OUT_0002).exists()
    assert "removing" in caplog.text and OUT_0002 in caplog.text


def test_resume_redoes_only_missing_or_broken_outputs_and_is_idempotent(three_cases, tmp_path, caplog):
    caplog.set_level("INFO")
    (three_cases / "imagesTr" / "ReMIND2Reg_0002_0000.nii.gz").unlink()
    make_case_files(three_cases, "0002", SHAPE, VOX2WORLD, modalities=("0000",))
    out = tmp_path / "out"
    assert register(three_cases, out) == EXIT_OK
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("disp_*")}
    (out / OUT_0002).write_bytes((out / OUT_0002).read_bytes()[:100])  # an unreadable leftover
    (out / OUT_0003).unlink()
    stale = out / ".disp_0003_0000_0003_0001.nii.gz.x1y2.partial.nii.gz"  # a killed run's temporary
    stale.write_bytes(b"half")
    assert register(three_cases, out, "--resume") == EXIT_OK
    assert "redoing disp_0002_0000_0002_0001.nii.gz, the existing file is not a valid field" in caplog.text
    assert not stale.exists()
    assert (out / OUT_0001).stat().st_mtime_ns == before[OUT_0001][1]  # kept, not rewritten
    for name, (data, _) in before.items():
        assert (out / name).read_bytes() == data  # the redone files equal the first run's
    timings = _timings(out)
    assert set(timings["pairs"]) == {OUT_0001, OUT_0002, OUT_0003}
    # Again: nothing to do, nothing changes.
    snapshot = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("disp_*")}
    caplog.clear()
    assert register(three_cases, out, "--resume") == EXIT_OK
    assert "Case 0001: already done, skipped (--resume)" in caplog.text
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("disp_*")} == snapshot
    assert _timings(out)["pairs"] == timings["pairs"]


def test_resume_does_not_accept_a_field_of_the_wrong_shape(three_cases, tmp_path):
    out = tmp_path / "out"
    write_image(out / OUT_0001, np.zeros((4, 4, 4, 3)), VOX2WORLD)
    register(three_cases, out, "--resume")
    assert nib.load(str(out / OUT_0001)).shape == (*SHAPE, 3)


def _sector_case(root: Path) -> None:
    """A US with a zero background (a ball-shaped sector) and a related MR: convex-adam has work."""
    shape, vox2world = (32, 32, 32), np.diag([1.0, 1.0, 1.0, 1.0])
    texture = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=shape), 2.0)
    ball = (np.indices(shape) - 15.5) ** 2
    us = np.where(ball.sum(0) < 13**2, texture - texture.min() + 0.1, 0.0)
    mr = np.roll(texture, 2, axis=0) + 0.05 * np.random.default_rng(1).normal(size=shape)
    write_image(root / "imagesTr" / "ReMIND2Reg_0007_0000.nii.gz", us, vox2world)
    write_image(root / "imagesTr" / "ReMIND2Reg_0007_0001.nii.gz", mr, vox2world)


def test_same_input_and_seed_give_bit_identical_fields_on_cpu(tmp_path):
    root = tmp_path / "data"
    _sector_case(root)
    config = tmp_path / "fast.toml"
    config.write_text("guard = false\n[adam]\niterations = 8\n[[convex.levels]]\ngrid_sp = 2\ndisp_hw = 2\n")
    arrays = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert (
            register(root, out, "--method", "convex-adam", "--config", str(config), "--seed", "3") == EXIT_OK
        )
        arrays.append(np.asarray(nib.load(str(out / "disp_0007_0000_0007_0001.nii.gz")).dataobj))
        assert not torch.are_deterministic_algorithms_enabled()  # the global setting is restored
    assert np.abs(arrays[0]).max() > 0.1  # a real registration, not a zero field
    assert arrays[0].tobytes() == arrays[1].tobytes()
    files = [gzip.decompress((tmp_path / r / "disp_0007_0000_0007_0001.nii.gz").read_bytes()) for r in "ab"]
    assert files[0] == files[1]
    # the written files themselves too: no time stamp or name in the gzip header
    assert (tmp_path / "a" / "disp_0007_0000_0007_0001.nii.gz").read_bytes() == (
        tmp_path / "b" / "disp_0007_0000_0007_0001.nii.gz"
    ).read_bytes()


def test_seeded_turns_deterministic_algorithms_on_for_the_cpu_only_and_restores_them():
    assert not torch.are_deterministic_algorithms_enabled()
    with seeded(0, "cpu"):
        assert torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()
    with seeded(0, "cuda"):
        assert not torch.are_deterministic_algorithms_enabled()
    # A caller's own setting is switched off for a CUDA run (its kernels would raise under it)
    # and restored afterwards.
    set_deterministic_algorithms(True)
    try:
        with seeded(0, "cuda"):
            assert not torch.are_deterministic_algorithms_enabled()
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        set_deterministic_algorithms(False)


class _GreedyMethod:
    """Runs out of GPU memory on "cuda"; works on the CPU."""

    name = "greedy"
    built: ClassVar[list[str]] = []

    def __init__(self, device: str):
        self.device = device
        _GreedyMethod.built.append(device)

    def __call__(self, fixed: Image, moving: dict, init_fixed2moving=None) -> MethodResult:
        if self.device == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return MethodResult.per_sequence({m: np.full((*fixed.shape, 3), 0.25, np.float32) for m in moving})


def test_cuda_out_of_memory_retries_the_case_on_the_cpu(three_cases, tmp_path, caplog, monkeypatch):
    (three_cases / "imagesTr" / "ReMIND2Reg_0002_0000.nii.gz").unlink()
    make_case_files(three_cases, "0002", SHAPE, VOX2WORLD, modalities=("0000",))
    _GreedyMethod.built = []
    monkeypatch.setattr(
        "remind2reg.inference.batch.make_method", lambda name, config, device: _GreedyMethod(device)
    )
    out = tmp_path / "out"
    summary = register_folder(three_cases, out, method="greedy", device="cuda", progress=False)
    assert summary.ok and len(summary.records) == 3
    assert _GreedyMethod.built == ["cuda", "cpu"]  # one CPU method, reused for every retry
    assert (
        caplog.text.count("out of GPU memory on cuda (CUDA out of memory. Tried to allocate 2.00 GiB)") == 3
    )
    timings = _timings(out)
    assert {e["device"] for e in timings["pairs"].values()} == {"cpu"}
    assert timings["peak_memory_mb"] > 0
    assert np.asarray(nib.load(str(out / OUT_0003)).dataobj).min() == pytest.approx(0.25)


def test_unknown_policy_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="on_error must be one of fail, skip, identity"):
        register_folder(tmp_path, tmp_path / "o", on_error="retry")  # type: ignore[arg-type]


def test_no_partial_file_survives_a_crash_in_the_writer(three_cases, tmp_path, monkeypatch, caplog):
    def crash(self, file_map, *args, **kwargs):  # the disk fills after the first bytes
        file_map["image"].fileobj.write(b"\0" * 1000)
        raise OSError("No space left on device")

    monkeypatch.setattr(nib.Nifti1Image, "to_file_map", crash)
    out = tmp_path / "out"
    assert register(three_cases, out) == EXIT_FAILURE
    assert "OSError: No space left on device" in caplog.text
    assert sorted(os.listdir(out)) == ["timings.json"]
