"""Do no harm: started at the truth, the whole default method stays there on a simulated cavity
case, and a nearly aligned case is not made worse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from remind2reg.evaluation.metrics import sample_displacement, target_registration_error
from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.io.dataset import find_pairs, landmark_path
from remind2reg.inference.io.displacement import read_displacement
from remind2reg.inference.io.landmarks import read_landmarks_csv
from remind2reg.inference.io.nifti import Image, read_image
from remind2reg.inference.pipeline import run_pipeline
from remind2reg.inference.settings import GuardSettings
from remind2reg.synthesis.config import SynthConfig
from remind2reg.synthesis.generate import CaseSpec, generate_cases, generate_dataset


@pytest.fixture(scope="module")
def cavity_case(tmp_path_factory):
    """A post-resection case (irregular cavity, rim, enhancement as drawn) on a 1 mm, 96^3 grid."""
    out = tmp_path_factory.mktemp("cavity")
    generate_dataset(
        out,
        1,
        seed=3,
        config=SynthConfig(grid=96, fov_mm=96.0),
        family="post-resection",
        shared_data=NO_SHARED,
    )
    return out


# configs/guard_margin.toml
MARGIN = RegistrationConfig(guard=GuardSettings(min_gain=0.01, relative_margin=0.0))
PLAIN_GUARD = RegistrationConfig(guard=GuardSettings(relative_margin=0.0))  # configs/guard_plain.toml
NO_GUARD = RegistrationConfig(guard=GuardSettings(enabled=False))  # the deformable stage's own result
NO_SHARED = Path("/nonexistent-shared-data")  # the fast tests never read ../shared: the MNI template


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(RegistrationConfig(), id="default"),
        pytest.param(
            NO_GUARD,
            marks=pytest.mark.xfail(
                strict=True,
                reason="issue 14.2 not solved: the deformable stage itself drifts 1.76 mm from the "
                "truth here (the guard refuses its result; docs/benchmark.md section 4)",
            ),
            id="guard-off",
        ),
    ],
)
def test_started_at_the_truth_the_method_moves_the_landmarks_less_than_a_millimetre(cavity_case, config):
    pair = find_pairs(cavity_case, ("0001",))[0]
    fixed, moving = read_image(pair.fixed), read_image(pair.moving)
    truth = read_displacement(cavity_case / "groundtruth" / pair.output_name)
    coords = np.indices(fixed.shape, dtype=np.float32) + np.moveaxis(truth, -1, 0)
    aligned = ndimage.map_coordinates(moving.array, coords, order=1).astype(
        np.float32
    )  # moving(x + u_true(x))
    result = run_pipeline(fixed, {"0001": Image(aligned, moving.vox2world)}, config)
    landmarks = read_landmarks_csv(landmark_path(pair.fixed, cavity_case))
    drift = np.linalg.norm(
        sample_displacement(result.fields["0001"], landmarks, order=1) * fixed.spacing, axis=1
    )
    assert drift.mean() < 1.0, (drift.mean(), result.notes)


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(RegistrationConfig(), id="default"),
        pytest.param(
            PLAIN_GUARD,
            marks=pytest.mark.xfail(
                strict=True,
                reason="without the guard's relative margin the deformable result (1.45 -> 2.32 mm) "
                "raises the NMI a little and is kept, as every method made the nearly aligned real "
                "pair worse (REFERENCE section 6); the default's margin keeps the input",
            ),
            id="plain-guard",
        ),
        pytest.param(MARGIN, id="guard-margin-0.01"),
    ],
)
def test_a_nearly_aligned_case_is_not_made_worse(tmp_path, config):
    """A pre-resection case drawn nearly aligned (initial TRE 1-1.5 mm): the method may improve
    it, and must not make it worse by more than 0.2 mm."""
    spec = CaseSpec("0001", 0, "mni", "pre-resection", nearly_aligned=True)
    generate_cases(tmp_path, [spec], 5, SynthConfig(grid=96, fov_mm=96.0), None)
    pair = find_pairs(tmp_path, ("0001",))[0]
    fix = read_landmarks_csv(landmark_path(pair.fixed, tmp_path))
    mov = read_landmarks_csv(landmark_path(pair.moving, tmp_path))
    fixed, moving = read_image(pair.fixed), read_image(pair.moving)
    before = float(np.linalg.norm((fix - mov) * moving.spacing, axis=1).mean())
    assert 0.9 < before < 1.6, before  # what the family promises
    result = run_pipeline(fixed, {"0001": moving}, config)
    after = float(target_registration_error(fix, mov, result.fields["0001"], moving.spacing).mean())
    assert after <= before + 0.2, (before, after, result.notes)
