"""The project's registration method: the pipeline of :mod:`remind2reg.inference.pipeline`.

MIND-SSC features, an optional global (rigid/affine) stage, coupled convex optimisation and
Adam, an optional learned refinement, the NMI guard. ``blockmatch-rigid`` and
``blockmatch-affine`` are the same pipeline with the global stage alone.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.io.nifti import Image
from remind2reg.inference.methods.base import MethodResult
from remind2reg.inference.pipeline import run_pipeline


class ConvexAdamMethod:
    """:func:`~remind2reg.inference.pipeline.run_pipeline` with a fixed config and device."""

    name = "convex-adam"

    def __init__(self, config: RegistrationConfig | None = None, device: str = "cpu"):
        self.config = config or RegistrationConfig()
        self.device = torch.device(device)

    def __call__(
        self, fixed: Image, moving: dict[str, Image], init_fixed2moving: NDArray[np.float64] | None = None
    ) -> MethodResult:
        return run_pipeline(fixed, moving, self.config, self.device, init_fixed2moving=init_fixed2moving)
