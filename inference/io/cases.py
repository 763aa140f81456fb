"""The images of one case, checked, the moving ones on the fixed grid: from files or from memory.

:func:`load_fixed` / :func:`load_moving` read a :class:`RegistrationPair`'s files (the batch);
:func:`checked_fixed` / :func:`on_fixed_grid` do the same checks on images already in memory
(the Python API), so both paths give the method identical inputs.
"""

from __future__ import annotations

import logging

import numpy as np

from remind2reg.inference.errors import InputError
from remind2reg.inference.geometry import resample_to_grid, same_grid
from remind2reg.inference.io.dataset import RegistrationPair
from remind2reg.inference.io.nifti import Image, check_not_constant, check_ultrasound, read_image

log = logging.getLogger(__name__)


def checked_fixed(fixed: Image, case: str | None = None) -> Image:
    """``fixed`` if it is a usable ultrasound (else :class:`InputError`: constant, empty, no sector)."""
    check_ultrasound(fixed, case)
    return fixed


def on_fixed_grid(moving: Image, fixed: Image, case: str | None = None, name: str = "moving image") -> Image:
    """``moving`` checked (not constant) and resampled onto the fixed grid if the grids differ
    (trilinear, through world coordinates: ``out[x] = moving(inv(M) @ F @ x)``)."""
    check_not_constant(moving, case, what="MR image")
    if same_grid(fixed.shape, fixed.vox2world, moving.shape, moving.vox2world):
        return moving
    fixed_name = fixed.path.name if fixed.path else "the ultrasound"
    log.warning(
        "Case %s: %s is not on the grid of %s; resampling it onto the fixed grid (world coordinates)",
        case,
        name,
        fixed_name,
    )
    array = resample_to_grid(moving.array, moving.vox2world, fixed.shape, fixed.vox2world, order=1)
    if not np.any(array):
        raise InputError(
            f"resampled onto the grid of {fixed_name}, it is empty: the two images do not overlap",
            path=moving.path,
            case=case,
        )
    return Image(array=array, vox2world=fixed.vox2world, path=moving.path)


def load_fixed(pair: RegistrationPair) -> Image:
    """Read and check the ultrasound of a case (constant, empty or sector-less US: InputError)."""
    return checked_fixed(read_image(pair.fixed, pair.case), pair.case)


def load_moving(pair: RegistrationPair, fixed: Image) -> Image:
    """Read a moving image; resample it onto the fixed grid if their grids differ."""
    return on_fixed_grid(read_image(pair.moving, pair.case), fixed, pair.case, pair.moving.name)
