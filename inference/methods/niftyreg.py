"""NiftyReg ``reg_aladin`` alone (rigid or affine): the organisers' baseline family.

Each moving image is registered on its own, with the US sector as reference mask, on inputs
averaged to 2 mm, from the header alignment or from a given transform (``-inaff``). The output
field is the affine's challenge-format displacement.
"""

from __future__ import annotations

import time

import numpy as np
from numpy.typing import NDArray

from remind2reg.inference.affine.niftyreg import run_aladin
from remind2reg.inference.core.sector import sector_mask
from remind2reg.inference.geometry import affine_displacement
from remind2reg.inference.io.nifti import Image
from remind2reg.inference.methods.base import MethodResult
from remind2reg.inference.settings import AladinSettings


class NiftyRegMethod:
    """``reg_aladin`` rigid (``rigid_only``) or rigid-then-affine registration."""

    def __init__(self, rigid_only: bool, settings: AladinSettings | None = None):
        self.settings = settings or AladinSettings(rigid_only=rigid_only)
        self.name = "niftyreg-rigid" if rigid_only else "niftyreg-affine"

    def __call__(
        self, fixed: Image, moving: dict[str, Image], init_fixed2moving: NDArray[np.float64] | None = None
    ) -> MethodResult:
        t = time.perf_counter()
        mask = sector_mask(fixed.array)
        stages = {"sector": time.perf_counter() - t, "aladin": 0.0, "field": 0.0}
        fields, notes = {}, {}
        for mod, image in moving.items():
            result = run_aladin(fixed, image, mask, self.settings, init_fixed2moving)
            stages["aladin"] += result.seconds
            t = time.perf_counter()
            fields[mod] = affine_displacement(
                result.fixed2moving_world, fixed.vox2world, fixed.shape, image.vox2world
            )
            stages["field"] += time.perf_counter() - t
            notes[f"fixed2moving_world_{mod}"] = np.round(result.fixed2moving_world, 6).tolist()
        return MethodResult.per_sequence(fields, stages=stages, notes=notes)
