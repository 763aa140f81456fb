"""Displacement fields in the challenge format.

A field has shape ``(I, J, K, 3)`` (fixed grid + 3), float32, and holds displacements in
VOXELS of the fixed grid along the array axes, from fixed to moving:
``warped[x] = moving(x + u(x))``. The header carries the fixed image's ``vox2world``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from remind2reg.inference.errors import InputError
from remind2reg.inference.io.nifti import write_image

# gzip level of the written fields. A displacement field's float32 mantissas barely compress
# (level 1 saves about 7 % of a 256^3 field and takes about 4 s of a 16 s pair on 2 cores);
# level 0 writes a valid .nii.gz that every reader opens, in a fraction of a second.
FIELD_COMPRESSLEVEL = 0


@dataclass(frozen=True)
class SharedField:
    """One challenge-format field ``(I, J, K, 3)`` (fixed voxels, fixed -> moving) and the
    moving sequences it serves (``("0001", "0002")`` when ceT1 and T2 share one transform)."""

    modalities: tuple[str, ...]
    field: NDArray[np.float32]


def validate_displacement(disp: NDArray, fixed_shape: tuple[int, ...], name: str = "displacement") -> None:
    """Raise ValueError unless ``disp`` has shape fixed_shape + (3,) and finite values."""
    expected = (*tuple(fixed_shape[:3]), 3)
    if disp.shape != expected:
        raise ValueError(f"{name}: shape {disp.shape}, expected {expected} (fixed grid + 3)")
    if not np.isfinite(disp).all():
        raise ValueError(f"{name}: contains NaN or Inf")


def write_displacement(
    path: str | Path,
    disp: NDArray,
    fixed_vox2world: NDArray,
    fixed_shape: tuple[int, ...],
    compresslevel: int = FIELD_COMPRESSLEVEL,
) -> Path:
    """Validate a challenge displacement field against the fixed grid and write it atomically (float32).

    Raises ValueError unless ``disp`` has shape ``fixed_shape + (3,)`` and finite values.
    The same field gives the same bytes on every run (no time stamp in the gzip header).
    """
    path = Path(path)
    if not path.name.endswith(".nii.gz"):
        raise ValueError(f"{path}: displacement files must end in .nii.gz")
    validate_displacement(disp, fixed_shape, name=path.name)
    return write_image(path, disp, fixed_vox2world, dtype=np.float32, compresslevel=compresslevel)


def read_displacement(path: str | Path, expected_shape: tuple[int, ...] | None = None) -> NDArray[np.float64]:
    """Read a displacement field as the official evaluator does (``get_fdata``, float64).

    ``.npz`` files (key ``arr_0``) are accepted too, like the official evaluator.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("displacement field not found", path=path)
    try:
        if path.name.endswith(".npz"):
            with np.load(path) as npz:
                disp = np.asarray(npz["arr_0"], dtype=np.float64)
        else:
            disp = np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float64)
    except Exception as exc:
        raise InputError(f"cannot read the displacement field ({exc})", path=path) from exc
    if expected_shape is not None:
        expected = (*tuple(expected_shape[:3]), 3)
        if disp.shape != expected:
            raise InputError(f"displacement shape {disp.shape}, expected {expected}", path=path)
    if not np.isfinite(disp).all():
        raise InputError("displacement field contains NaN or Inf", path=path)
    return disp
