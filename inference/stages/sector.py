"""Stage 1, sector: the US field of view on the full grid and the working grid around it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from remind2reg.inference.core.sector import sector_mask
from remind2reg.inference.core.working_grid import WorkingGrid, working_grid
from remind2reg.inference.errors import InputError
from remind2reg.inference.io.nifti import MIN_SECTOR_VOXELS, Image


@dataclass(frozen=True)
class Sector:
    mask: NDArray[np.bool_]  # the voxels of the full fixed grid that the costs and the guard use
    grid: WorkingGrid  # the crop around them at about the working spacing


def find_sector(
    fixed: Image,
    working_spacing_mm: float,
    crop_margin_mm: float,
    mask: NDArray[np.bool_] | None = None,
) -> Sector:
    """The sector of the US ``fixed`` (or the given ``mask``, e.g. to leave regions out) and
    its working grid. Raises :class:`InputError` when fewer than ``MIN_SECTOR_VOXELS`` remain."""
    if mask is None:
        mask = sector_mask(fixed.array)
    elif mask.shape != fixed.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the fixed image's {fixed.shape}")
    if int(mask.sum()) < MIN_SECTOR_VOXELS:
        raise InputError(
            f"the ultrasound has (almost) no non-zero sector: {int(mask.sum())} voxels, "
            f"at least {MIN_SECTOR_VOXELS} needed",
            path=fixed.path,
        )
    spacing = float(np.mean(fixed.spacing))
    return Sector(mask, working_grid(mask, spacing, working_spacing_mm, crop_margin_mm))
