"""The CUDA path of the pipeline keeps its tensors on one device: checked on the CPU, without a GPU.

On a GPU, an op that combines a CUDA tensor with a CPU tensor (other than a 0-dim scalar)
raises "Expected all tensors to be on the same device", and so does ``.numpy()`` of a CUDA
tensor; CI has no GPU, so those bugs used to surface only on one (the rigid search had three,
fixed in c057698, found by hand). Here the whole pipeline runs with ``device="cuda"`` under
:class:`tests.virtual_cuda.VirtualCuda`, which keeps "CUDA" tensors on the CPU, tracks them,
makes ``x.device`` report ``cuda:0`` (so every GPU branch is taken, the float16 feature storage
included) and raises :class:`~tests.virtual_cuda.DevicePlacementError` where a GPU would.
What it cannot see (CUDA-only kernels, numerics, autocast, memory) is listed in that module.

The pipeline runs in one subprocess for all configurations (the package caches tensors and the
refiner by device; nothing of the virtual run must reach other tests), on a small pair.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from functools import cache, partial

import numpy as np
import pytest
import torch

from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.io.nifti import Image
from remind2reg.inference.methods.convex_adam import ConvexAdamMethod
from remind2reg.inference.paths import default_weights_path
from remind2reg.inference.settings import (
    AdamSettings,
    AffineStageSettings,
    ConvexSettings,
    GuardSettings,
    LevelSettings,
    RefineSettings,
    ShrinkSettings,
)
from remind2reg.inference.stages.features import feature_dtype
from tests.conftest import REPO, oblique_vox2world, smooth_deformation_pair
from tests.test_gpu_agreement import CONFIGS as GPU_AGREEMENT_CONFIGS
from tests.virtual_cuda import DevicePlacementError, VirtualCuda, is_virtual_cuda

SHAPE = (48, 40, 40)  # 0.5 mm voxels: a 24 x 20 x 20 working grid at 1 mm
SPACING_MM = 0.5

#: The configurations of the GPU agreement test, and the optional branches of each stage.
CONFIGS: dict[str, RegistrationConfig] = {
    **GPU_AGREEMENT_CONFIGS,
    "every option": RegistrationConfig(
        crop_margin_mm=0.0,
        fusion="mean",
        affine=AffineStageSettings(method="blockmatch", transform="affine"),
        convex=ConvexSettings(
            levels=(LevelSettings(grid_sp=4, disp_hw=3, weight=0.5), LevelSettings(grid_sp=2, disp_hw=2)),
            combine="weighted",
            inverse_consistent=True,
            rigid_projection=True,
            robust=1.0,
        ),
        adam=AdamSettings(robust=1.0, feature_smoothing=1.0, iterations=10),
        shrink=ShrinkSettings(residual_weight=0.5),
        guard=GuardSettings(criterion="lc2"),
    ),
}
#: The learned refinement (needs the weight file), with a test-time optimisation of either
#: target: both run the network's velocity and displacement, the pieces of its forward pass.
REFINE_CONFIGS: dict[str, RegistrationConfig] = {
    "refinement, TTO of the velocity": RegistrationConfig(
        crop_margin_mm=0.0, refine=RefineSettings(enabled=True, tto_steps=2)
    ),
    "refinement, TTO of the network": RegistrationConfig(
        crop_margin_mm=0.0,
        refine=RefineSettings(enabled=True, tto_steps=2, tto_target="network", tto_lr=1e-4, similarity="ncc"),
    ),
}
HAVE_WEIGHTS = default_weights_path().is_file()
MUTATION = "mutation: convex offsets left on the CPU"
#: The subprocess imports this module under its package name (pytest's name for it may differ).
JOBS = "tests.test_device_placement:virtual_cuda_jobs"


@cache
def pair() -> tuple[Image, dict[str, Image]]:
    """A smooth known deformation between a US-like image and two MR sequences of other
    contrasts (ceT1, T2: the joint fusion concatenates their features), on an oblique grid."""
    moving, _, warped = smooth_deformation_pair(SHAPE)
    vox2world = oblique_vox2world(spacing=(SPACING_MM,) * 3)
    fixed = Image((10.0 - warped).astype(np.float32), vox2world)  # inverted contrast
    return fixed, {"0001": Image(moving + 10.0, vox2world), "0002": Image(20.0 - 2.0 * moving, vox2world)}


def register(config: RegistrationConfig) -> None:
    """A job of the subprocess: the pipeline on ``cuda`` (virtual there); its fields must be
    finite, one ``(*SHAPE, 3)`` array per sequence."""
    fixed, moving = pair()
    fields = ConvexAdamMethod(config, device="cuda")(fixed, moving).fields
    assert set(fields) == set(moving)
    for field in fields.values():
        assert field.shape == (*SHAPE, 3) and np.isfinite(field).all()


def register_with_offsets_on_the_cpu() -> None:
    """The mutation: the convex stage's displacement offsets made without their device argument
    (``displacement_offsets(disp_hw)``), a CPU tensor in a CUDA computation. Must raise."""
    import remind2reg.inference.deformable.convex as convex

    make_offsets = convex.displacement_offsets
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(convex, "displacement_offsets", lambda disp_hw, device=None: make_offsets(disp_hw))
        register(CONFIGS["default"])


def virtual_cuda_jobs() -> list[tuple[str, Callable[[], object]]]:
    """What the subprocess runs: every configuration, and the mutation."""
    configs = {**CONFIGS, **(REFINE_CONFIGS if HAVE_WEIGHTS else {})}
    jobs: list[tuple[str, Callable[[], object]]] = [(n, partial(register, c)) for n, c in configs.items()]
    return [*jobs, (MUTATION, register_with_offsets_on_the_cpu)]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The outcome of each job of :func:`virtual_cuda_jobs` by name, run in a fresh interpreter
    under :class:`VirtualCuda` (``python -m tests.virtual_cuda``, :func:`tests.virtual_cuda.main`)."""
    results = tmp_path_factory.mktemp("virtual_cuda") / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.virtual_cuda", JOBS, str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(results.read_text())


needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason=f"no refiner weights at {default_weights_path()}")


@pytest.mark.parametrize("name", [*CONFIGS, *(pytest.param(n, marks=needs_weights) for n in REFINE_CONFIGS)])
def test_the_cuda_path_keeps_every_tensor_on_its_device(outcomes, name):
    """The pipeline on virtual CUDA runs through: no op mixes devices, no CUDA tensor goes to numpy."""
    outcome = outcomes[name]
    assert outcome["ok"], f"{outcome['error']}: {outcome['message']}"
    assert outcome["cuda_results"] > 1000  # the run did take the CUDA path


def test_a_cpu_tensor_left_in_the_cuda_path_is_caught(outcomes):
    """The check can fail: with the convex stage's offsets on the CPU, the default run raises,
    naming the convex stage."""
    outcome = outcomes[MUTATION]
    assert outcome["error"] == "DevicePlacementError", outcome
    assert "deformable/convex.py" in outcome["message"] and "coupled_convex" in outcome["message"]


# ----------------------------------------------------------------------------- the checker itself


def test_mixing_virtual_cuda_with_cpu_raises_naming_the_op_and_the_line():
    with VirtualCuda():
        on_gpu, on_cpu = torch.ones(3, device="cuda"), torch.ones(3)
        with pytest.raises(
            DevicePlacementError,
            match=r"torch\.add mixes devices \(cuda:0 \(3,\), cpu \(3,\)\) at .*test_device_placement\.py:\d+",
        ):
            torch.add(on_gpu, on_cpu)
        with pytest.raises(DevicePlacementError, match=r"torch\.Tensor\.matmul mixes devices"):
            torch.eye(3) @ on_gpu  # the rigid search's bug before c057698
        with pytest.raises(DevicePlacementError, match="mixes devices"):
            on_cpu * on_gpu.sum()  # a CUDA 0-dim tensor is no CPU scalar
        with pytest.raises(DevicePlacementError, match="indices must be on the CPU"):
            torch.arange(3)[on_gpu.long()]


def test_ops_on_one_device_pass_and_report_cuda():
    with VirtualCuda():
        x = torch.arange(6.0, device=torch.device("cuda")).reshape(2, 3)
        y = (x * 2 + torch.ones_like(x)).sum(0) * torch.tensor(0.5)  # a CPU scalar is allowed
        assert is_virtual_cuda(y) and y.device == torch.device("cuda", 0) and y.is_cuda
        assert feature_dtype(y.device) == torch.float16  # the GPU branches are taken
        assert x[torch.tensor([1])].is_cuda  # CPU indices into a CUDA tensor are allowed
        moved = torch.zeros(3).to(y.device)
        assert is_virtual_cuda(moved) and float(moved.sum()) == 0.0
        back = y.cpu()
        assert not is_virtual_cuda(back) and np.array_equal(back.numpy(), [4.0, 6.0, 8.0])
        assert float((back + torch.ones(3)).sum()) == 21.0


def test_a_transfer_copies_and_leaves_the_source_on_its_device():
    with VirtualCuda():
        source = torch.ones(3)
        copy = source.to("cuda")
        assert is_virtual_cuda(copy) and not is_virtual_cuda(source)
        copy.add_(1.0)
        assert float(source.sum()) == 3.0  # no aliasing, as on a GPU
        assert source.cuda().is_cuda and not source.is_cuda


def test_numpy_of_a_virtual_cuda_tensor_raises():
    with VirtualCuda():
        x = torch.ones(3, device="cuda")
        with pytest.raises(DevicePlacementError, match=r"numpy of a cuda:0 tensor .*\.cpu\(\)"):
            x.numpy()
        with pytest.raises(DevicePlacementError, match="numpy"):
            np.asarray(x)
        assert x.cpu().numpy().sum() == 3.0


def test_module_to_cuda_moves_the_parameters_and_a_forgotten_module_is_caught():
    with VirtualCuda():
        x = torch.ones(2, 3, device="cuda")
        moved = torch.nn.Linear(3, 2).to("cuda")
        assert all(is_virtual_cuda(p) for p in moved.parameters())
        assert moved(x).is_cuda
        with pytest.raises(DevicePlacementError, match="linear mixes devices"):
            torch.nn.Linear(3, 2)(x)
