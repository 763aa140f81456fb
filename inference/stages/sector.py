"""Stage 1, sector: the US field of view on the full grid and the working grid around it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from remind2reg.inference.core.sector import sector_mask
from remind2reg.inference.core.working_grid import WorkingGrid, working_grid
from remind2reg.inference.errors import InputError
from remind2reg.inference.io.nifti import Image, required_sector_voxels

log = logging.getLogger(__name__)

WHOLE_GRID = 0.97  # a sector covering more of the grid than this is reported: no background was found


@dataclass(frozen=True)
class Sector:
    mask: NDArray[np.bool_]  # the voxels of the full fixed grid that the costs and the guard use
    grid: WorkingGrid  # the crop around them at about the working spacing

    @property
    def fraction(self) -> float:
        """The share of the fixed grid in the sector."""
        return float(self.mask.mean())

    def notes(self) -> dict[str, object]:
        return {"working_shape": self.grid.shape, "sector_fraction": round(self.fraction, 4)}


def find_sector(
    fixed: Image,
    working_spacing_mm: float,
    crop_margin_mm: float,
    mask: NDArray[np.bool_] | None = None,
    case: str | None = None,
) -> Sector:
    """The sector of the US ``fixed`` (or the given ``mask``, e.g. to leave regions out) and
    its working grid. Raises :class:`InputError` when fewer than ``MIN_SECTOR_VOXELS`` remain."""
    if mask is None:
        mask = sector_mask(fixed.array)
    elif mask.shape != fixed.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the fixed image's {fixed.shape}")
    needed = required_sector_voxels(fixed.shape)
    if int(mask.sum()) < needed:
        raise InputError(
            f"the ultrasound has (almost) no sector: {int(mask.sum())} voxels, at least {needed} needed",
            path=fixed.path,
            case=case,
        )
    sector = Sector(mask, working_grid(mask, fixed.spacing, working_spacing_mm, crop_margin_mm))
    if sector.fraction > WHOLE_GRID:
        log.warning(
            "case %s, file %s: the ultrasound fills the whole grid (%.0f %%): no constant background "
            "outside a sector was found, so every voxel is taken as imaged",
            case,
            fixed.path,
            100 * sector.fraction,
        )
    return sector
