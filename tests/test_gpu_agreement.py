"""The whole pipeline on the CPU and on a CUDA device gives the same registration (skipped without one).

The GPU path stores the MIND features in float16 (``stages/features.py::feature_dtype``) and
its grid sampling sums gradients with atomics, so the devices agree up to rounding, not bit for
bit: a near-tie in the convex stage's argmin can flip one coarse cell, which the smoothing then
spreads. The bounds below are for that (a mean difference of a tenth of a millimetre), far below
the 0.6-voxel accuracy the same pair is registered to (``test_convex_adam.py``), and far above
float32 rounding.

The GPU tests have not yet run on a GPU (none was lent to the sessions that wrote them):
``scripts/device_check.sh`` runs them together with the GPU timing, in one command. One part
of the GPU path runs here on the CPU: the float16 storage of the features (measured: it moves
the field by about 0.001 mm).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.io.nifti import Image
from remind2reg.inference.methods.convex_adam import ConvexAdamMethod
from remind2reg.inference.settings import AdamSettings, AffineStageSettings
from tests.conftest import oblique_vox2world, smooth_deformation_pair

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

SHAPE = (80, 72, 64)  # 0.5 mm voxels: a 40 x 36 x 32 working grid at 1 mm
SPACING_MM = 0.5


@pytest.fixture(scope="module")
def pair() -> tuple[Image, dict[str, Image], np.ndarray]:
    """A smooth known deformation (5 mm and a 1-2 mm bend) between two images of inverted
    contrast on an oblique grid: ``fixed(x) = moving(x + u(x))``."""
    moving, truth, warped = smooth_deformation_pair(SHAPE)
    fixed = 10.0 - warped  # inverted contrast
    vox2world = oblique_vox2world(spacing=(SPACING_MM,) * 3)
    return Image(fixed.astype(np.float32), vox2world), {"0001": Image(moving + 10.0, vox2world)}, truth


CONFIGS = {
    "default": RegistrationConfig(crop_margin_mm=0.0),
    "off-grid sampling": RegistrationConfig(
        crop_margin_mm=0.0, adam=AdamSettings(jitter_sampling=True, schedule="linear")
    ),
    "rigid search first": RegistrationConfig(crop_margin_mm=0.0, affine=AffineStageSettings(method="search")),
    "block matching first": RegistrationConfig(
        crop_margin_mm=0.0, affine=AffineStageSettings(method="blockmatch", transform="rigid")
    ),
}


def _inner_difference_mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Length (mm) of the difference of two fields, 6 mm away from the grid's border."""
    inner = (slice(12, -12),) * 3
    return np.linalg.norm((a - b)[inner], axis=-1) * SPACING_MM


@pytest.mark.parametrize("name", ["default", "block matching first"])
def test_float16_feature_storage_of_the_gpu_path_leaves_the_field_unchanged(pair, name, monkeypatch):
    """On CUDA the features are stored in float16 (memory); the costs are computed in float32.
    Forced on the CPU, that storage must not change the registration beyond rounding."""
    import remind2reg.inference.stages.features as features
    import remind2reg.inference.stages.global_alignment as global_alignment

    fixed, moving, _ = pair
    reference = ConvexAdamMethod(CONFIGS[name], device="cpu")(fixed, moving)

    def half(device: torch.device) -> torch.dtype:  # what feature_dtype returns on CUDA
        return torch.float16

    monkeypatch.setattr(features, "feature_dtype", half)
    monkeypatch.setattr(global_alignment, "feature_dtype", half)
    stored_half = ConvexAdamMethod(CONFIGS[name], device="cpu")(fixed, moving)
    assert stored_half.notes.get("decision_0001") == reference.notes.get("decision_0001")
    diff_mm = _inner_difference_mm(reference.fields["0001"], stored_half.fields["0001"])
    assert 0 < diff_mm.max() < 0.02, diff_mm.max()  # > 0: the float16 path did run


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cpu_and_gpu_register_the_pair_alike(pair, name):
    fixed, moving, truth = pair
    cpu = ConvexAdamMethod(CONFIGS[name], device="cpu")(fixed, moving)
    gpu = ConvexAdamMethod(CONFIGS[name], device="cuda")(fixed, moving)
    a, b = cpu.fields["0001"], gpu.fields["0001"]
    assert a.shape == b.shape == (*SHAPE, 3) and np.isfinite(b).all()
    # The same guard decision on both devices (a flip would change the written field wholesale).
    assert gpu.notes.get("decision_0001") == cpu.notes.get("decision_0001"), (cpu.notes, gpu.notes)
    diff_mm = _inner_difference_mm(a, b)
    assert diff_mm.mean() < 0.1 and np.quantile(diff_mm, 0.99) < 0.5, (diff_mm.mean(), diff_mm.max())
    # ... and the GPU registers the pair as well as the CPU does.
    error_cpu = _inner_difference_mm(a, truth).mean()
    error_gpu = _inner_difference_mm(b, truth).mean()
    assert abs(error_gpu - error_cpu) < 0.05, (error_cpu, error_gpu)


@pytest.mark.gpu
@needs_cuda
def test_gpu_reruns_agree(pair):
    """Two GPU runs of the default: the atomics of the grid-sampling gradients may reorder sums,
    but the result must not wander (bit-identical on the CPU: ``test_reliability.py``)."""
    fixed, moving, _ = pair
    first = ConvexAdamMethod(CONFIGS["default"], device="cuda")(fixed, moving).fields["0001"]
    second = ConvexAdamMethod(CONFIGS["default"], device="cuda")(fixed, moving).fields["0001"]
    assert np.abs(first - second).max() * SPACING_MM < 0.05
