"""NiftyReg ``reg_aladin`` (block-matching rigid/affine registration) as a function.

Matrix convention, read once here at the boundary: the 4x4 matrix that ``reg_aladin -aff``
writes (and ``reg_resample -trans`` reads) maps REFERENCE world mm to FLOATING world mm,
with world = the NIfTI ``vox2world`` as nibabel reads it. With the US as reference and the
MR as floating image that is exactly our ``fixed2moving_world``:
``moving_world = fixed2moving_world @ fixed_world``. ``tests/test_niftyreg.py`` checks this
against ``reg_resample`` on oblique, anisotropic grids.

Inputs are averaged down to ``working_spacing_mm`` before ``reg_aladin`` runs: one
full-resolution 256^3 run takes minutes on 2 cores.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from remind2reg.inference.affine.binaries import niftyreg_executable
from remind2reg.inference.errors import Remind2RegError
from remind2reg.inference.io.nifti import Image, write_image
from remind2reg.inference.settings import AladinSettings

log = logging.getLogger(__name__)


@dataclass
class AffineResult:
    fixed2moving_world: NDArray[np.float64]  # moving_world = fixed2moving_world @ fixed_world
    seconds: float
    commands: list[list[str]]


def read_aladin_matrix(path: str | Path) -> NDArray[np.float64]:
    """``fixed2moving_world`` from a ``reg_aladin -aff`` file (reference = fixed)."""
    matrix = np.loadtxt(path, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.allclose(matrix[3], [0, 0, 0, 1]):
        raise Remind2RegError(f"{path}: not a 4x4 affine matrix")
    return matrix  # NiftyReg's reference->floating world map is our fixed2moving_world


def write_aladin_matrix(path: str | Path, fixed2moving_world: NDArray) -> None:
    """Write ``fixed2moving_world`` in the format ``reg_aladin -inaff``/``reg_resample`` read."""
    np.savetxt(path, np.asarray(fixed2moving_world, dtype=np.float64), fmt="%.10f")


def downsample(image: Image, factor: int, order_mask: bool = False) -> Image:
    """Average over ``factor^3`` blocks (a mask: more than half inside).

    New voxel ``w`` covers old voxels ``factor * w ... factor * w + factor - 1``; its centre is
    old voxel ``factor * w + (factor - 1) / 2``, so ``new_vox2world = old_vox2world @ S`` with
    ``S = [[f, 0, 0, (f-1)/2], [0, f, 0, (f-1)/2], [0, 0, f, (f-1)/2], [0, 0, 0, 1]]``.
    """
    if factor <= 1:
        return image
    a = image.array
    crop = tuple(slice(0, (n // factor) * factor) for n in a.shape)
    blocks = a[crop].reshape(
        a.shape[0] // factor, factor, a.shape[1] // factor, factor, a.shape[2] // factor, factor
    )
    small = blocks.mean(axis=(1, 3, 5))
    if order_mask:
        small = (small > 0.5).astype(np.float32)
    scale = np.eye(4)
    scale[:3, :3] *= factor
    scale[:3, 3] = (factor - 1) / 2.0
    return Image(array=small.astype(np.float32), vox2world=image.vox2world @ scale, path=image.path)


def crop_to(image: Image, mask: Image, margin: int = 4) -> Image:
    """``image`` cropped to the bounding box of ``mask > 0`` plus ``margin`` voxels (same grid):
    voxel ``v`` of the crop is voxel ``lo + v`` of the image, so ``vox2world`` gains ``T(lo)``."""
    idx = np.argwhere(mask.array > 0)
    if len(idx) == 0:
        return image
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, image.shape)
    shift = np.eye(4)
    shift[:3, 3] = lo
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    return Image(np.ascontiguousarray(image.array[box]), image.vox2world @ shift, image.path)


def _run(cmd: list[str], cwd: Path) -> None:
    """Run a NiftyReg command in ``cwd`` (its scratch folder), raising with its output's tail."""
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-2000:]
        raise Remind2RegError(f"{Path(cmd[0]).name} failed (exit {result.returncode}): {tail}")


def run_aladin(
    fixed: Image,
    moving: Image,
    fixed_mask: NDArray | None = None,
    settings: AladinSettings = AladinSettings(),
    init_fixed2moving: NDArray[np.float64] | None = None,
) -> AffineResult:
    """Rigid (then affine) ``reg_aladin`` of ``moving`` to ``fixed``; returns ``fixed2moving_world``.

    ``init_fixed2moving`` (world mm, ``moving_world = init_fixed2moving @ fixed_world``): where the
    rigid run starts (``-inaff``), in place of the header alignment. World coordinates survive the
    downsampling and cropping below, so the matrix needs no conversion.
    """
    t0 = time.perf_counter()
    factor = max(1, round(settings.working_spacing_mm / float(np.mean(fixed.spacing))))
    aladin = str(niftyreg_executable("reg_aladin"))
    commands: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="remind2reg-aladin-") as tmp:
        d = Path(tmp)
        small_fixed = downsample(fixed, factor)
        small_mask = None
        if fixed_mask is not None:
            small_mask = downsample(
                Image(np.asarray(fixed_mask, dtype=np.float32), fixed.vox2world), factor, order_mask=True
            )
            if settings.crop_reference:  # the US on its own small grid, as a stand-alone iUS volume is
                small_fixed, small_mask = crop_to(small_fixed, small_mask), crop_to(small_mask, small_mask)
        write_image(d / "fixed.nii.gz", small_fixed.array, small_fixed.vox2world)
        small_moving = downsample(
            moving, max(1, round(settings.working_spacing_mm / float(np.mean(moving.spacing))))
        )
        write_image(d / "moving.nii.gz", small_moving.array, small_moving.vox2world)
        common = [
            "-ref", str(d / "fixed.nii.gz"), "-flo", str(d / "moving.nii.gz"),
            "-ln", str(settings.levels), "-lp", str(settings.levels_to_perform),
            "-pv", str(settings.block_percent), "-pi", str(settings.inlier_percent), "-voff",
        ]  # fmt: skip
        if settings.header_init:
            common.append("-nac")  # start from the header alignment (neuronavigation), not from image centres
        if not settings.symmetric:
            common.append("-noSym")
        if settings.threads:
            common += ["-omp", str(settings.threads)]
        if small_mask is not None and settings.use_masks:
            write_image(d / "mask.nii.gz", small_mask.array, small_mask.vox2world, dtype=np.uint8)
            common += ["-rmask", str(d / "mask.nii.gz")]
            moving_mask = Image((small_moving.array > 0).astype(np.float32), small_moving.vox2world)
            write_image(d / "moving_mask.nii.gz", moving_mask.array, moving_mask.vox2world, dtype=np.uint8)
            common += ["-fmask", str(d / "moving_mask.nii.gz")]
        start: list[str] = []
        if init_fixed2moving is not None:
            write_aladin_matrix(d / "init.txt", init_fixed2moving)
            start = ["-inaff", str(d / "init.txt")]
        # -res: reg_aladin always writes the resampled floating image, by default as
        # outputResult.nii.gz in the working directory; keep it in the scratch folder.
        rigid = [
            aladin,
            *common,
            *start,
            "-rigOnly",
            "-aff",
            str(d / "rigid.txt"),
            "-res",
            str(d / "rigid_res.nii.gz"),
        ]
        _run(rigid, d)
        commands.append(rigid)
        result = d / "rigid.txt"
        if not settings.rigid_only:
            affine = [
                aladin, *common, "-inaff", str(d / "rigid.txt"), "-aff", str(d / "affine.txt"),
                "-res", str(d / "affine_res.nii.gz"),
            ]  # fmt: skip
            _run(affine, d)
            commands.append(affine)
            result = d / "affine.txt"
        matrix = read_aladin_matrix(result)
    seconds = time.perf_counter() - t0
    log.debug("reg_aladin (factor %d) in %.1f s", factor, seconds)
    return AffineResult(matrix, seconds, commands)
