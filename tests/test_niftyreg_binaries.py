"""NiftyReg executables: lookup (env override, error message) and a smoke run of the tools.

The ``niftyreg`` tests need the binaries (``scripts/install_niftyreg.sh``) and fail, rather
than skip, when they are missing; deselect them with ``-m "not niftyreg"``.
"""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import pytest

from remind2reg.inference.affine.binaries import NIFTYREG_DIR_ENV, niftyreg_executable, niftyreg_version

VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


def _fake_tool(folder: Path, name: str, body: str = "echo 9.8.7", executable: bool = True) -> Path:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    mode = path.stat().st_mode
    path.chmod(mode | stat.S_IXUSR if executable else mode & ~(stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    return path


@pytest.mark.niftyreg
@pytest.mark.parametrize("name", ["reg_aladin", "reg_resample", "reg_transform", "reg_f3d"])
def test_binary_found_and_runs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NIFTYREG_DIR_ENV, raising=False)
    exe = niftyreg_executable(name)
    assert exe.is_file()
    assert exe.name == name

    version = subprocess.run([str(exe), "-v"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert VERSION_RE.match(version.stdout.strip()), version.stdout

    helped = subprocess.run([str(exe), "-h"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert "Usage" in helped.stdout


@pytest.mark.niftyreg
def test_niftyreg_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NIFTYREG_DIR_ENV, raising=False)
    # scripts/install_niftyreg.sh pins niftyreg==1.5.70rc1, whose tools report 1.5.70.
    assert niftyreg_version() == "1.5.70"


def test_env_override_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_tool(tmp_path, "reg_aladin")
    monkeypatch.setenv(NIFTYREG_DIR_ENV, str(tmp_path))
    assert niftyreg_executable("reg_aladin") == fake
    assert niftyreg_version() == "9.8.7"


def test_env_override_is_strict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Present but not executable, and absent: neither falls back to another NiftyReg.
    _fake_tool(tmp_path, "reg_resample", executable=False)
    monkeypatch.setenv(NIFTYREG_DIR_ENV, str(tmp_path))
    for name in ("reg_resample", "reg_f3d"):
        with pytest.raises(FileNotFoundError) as err:
            niftyreg_executable(name)
        message = str(err.value)
        assert repr(name) in message
        assert NIFTYREG_DIR_ENV in message
        assert "scripts/install_niftyreg.sh" in message


def test_missing_executable_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NIFTYREG_DIR_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    name = "reg_does_not_exist"
    with pytest.raises(FileNotFoundError) as err:
        niftyreg_executable(name)
    message = str(err.value)
    assert repr(name) in message
    assert "scripts/install_niftyreg.sh" in message
    assert "make install" in message


def test_found_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NIFTYREG_DIR_ENV, raising=False)
    fake = _fake_tool(tmp_path, "reg_only_on_path_for_test")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert niftyreg_executable("reg_only_on_path_for_test") == fake


@pytest.mark.parametrize("bad", ["", "bin/reg_aladin", "/usr/bin/reg_aladin"])
def test_rejects_paths(bad: str) -> None:
    with pytest.raises(ValueError):
        niftyreg_executable(bad)
