"""Build the image and run it on a synthetic input folder, then score the output.

Needs a Docker engine; skipped with the reason where none answers (as on the CI machines).
Run explicitly: ``pytest -m docker tests/test_docker_image.py``.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _engine_answers() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"no Docker engine answers: {probe.stderr.strip()[:200]}"


def test_image_builds_runs_and_scores(tmp_path):
    reason = _engine_answers()
    if reason:
        pytest.skip(reason)
    tag = "remind2reg:test"
    subprocess.run(["docker", "build", "-t", tag, str(REPO)], check=True)
    data = tmp_path / "data"
    subprocess.run(["remind2reg", "synth", "--out", str(data), "--cases", "1", "--grid", "128"], check=True)
    out = tmp_path / "output"
    out.mkdir(mode=0o777)
    out.chmod(0o777)  # the image runs as uid 1000
    run = ["docker", "run", "--rm", "-v", f"{data}:/input:ro", "-v", f"{out}:/output", tag]
    subprocess.run(run, check=True)
    assert sorted(p.name for p in out.glob("disp_*")) == [
        "disp_0001_0000_0001_0001.nii.gz",
        "disp_0001_0000_0001_0002.nii.gz",
    ]
    score = subprocess.run(
        ["remind2reg", "evaluate", "--data", str(data), "--pred", str(out)], capture_output=True, text=True
    )
    assert score.returncode == 0 and "TRE30" in score.stdout
