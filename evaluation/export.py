"""Results for viewers and other tools: the MR warped into the US, and the field as an ITK transform.

A challenge field (``disp_<case>_0000_<case>_<mod>.nii.gz``) is in voxels of the fixed grid,
fixed -> moving: ``warped(x) = moving(x + u(x))``. No viewer reads that. ``remind2reg export``
writes, per pair:

* ``ReMIND2Reg_<case>_<mod>_warped.nii.gz``: the MR resampled onto the US grid through the
  field (trilinear, 0 outside the MR), with the US's header: open it over the US in any viewer
  (3D Slicer, ITK-SNAP, FSLeyes) to see the registration.
* ``ReMIND2Reg_<case>_<mod>_fixed2moving_itk.nii.gz``: the same map as an ITK displacement
  field, read by 3D Slicer (as a transform: put the MR under it and it is shown registered to
  the US), ANTs (``antsApplyTransforms -t``) and SimpleITK (``DisplacementFieldTransform``).
  ITK's convention, converted here: at each fixed grid point ``p`` (LPS+ mm) the vector ``d``
  such that ``T(p) = p + d`` is the matching moving point (LPS+ mm), the resampling direction
  of every ITK registration transform. With ``V`` the fixed ``vox2world`` (RAS+) and the moving
  image on the fixed grid (as the batch loads it): ``d_ras(x) = V (x + u(x)) - V x``, and
  ``d_lps = (-d_ras[0], -d_ras[1], d_ras[2])`` (LPS and RAS differ by the sign of their first
  two axes). The file is written by SimpleITK, so the image's axes, direction and vector
  layout are ITK's own.

``tests/test_export.py`` checks both against ``sitk.Resample`` on an oblique, anisotropic grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from remind2reg.evaluation.qc import sample
from remind2reg.inference.errors import InputError
from remind2reg.inference.io.atomic import atomic_path
from remind2reg.inference.io.cases import load_fixed, load_moving
from remind2reg.inference.io.convert import LPS_TO_RAS, sitk_geometry
from remind2reg.inference.io.dataset import RegistrationPair, find_pairs, image_stem
from remind2reg.inference.io.displacement import read_displacement
from remind2reg.inference.io.nifti import write_image

log = logging.getLogger(__name__)

PRODUCTS = ("warped", "itk")  # what export can write, by name


def warp_moving(moving: NDArray, disp: NDArray) -> NDArray[np.float32]:
    """``warped[x] = moving(x + u(x))``: trilinear, 0 outside ``moving``; ``disp`` ``(I, J, K, 3)``
    in voxels of the grid ``moving`` is on (the fixed grid)."""
    if disp.shape != (*moving.shape, 3):
        raise ValueError(
            f"warp_moving: field shape {disp.shape} does not fit an image of shape {moving.shape}"
        )
    points = np.stack(np.indices(moving.shape, dtype=np.float64), axis=-1)  # points[x] = x, (I, J, K, 3)
    points += disp
    return sample(moving, points)  # trilinear, 0 outside


def itk_displacement(disp: NDArray, vox2world: NDArray) -> NDArray[np.float32]:
    """ITK's displacement vectors ``(I, J, K, 3)``, LPS+ mm, of a challenge field ``disp`` whose
    fixed and moving images share the grid ``vox2world`` (RAS+): ``d_ras(x) = V[:3, :3] u(x)``
    (the translation cancels in ``V (x + u) - V x``), then the first two components negated."""
    linear = (LPS_TO_RAS @ vox2world)[:3, :3]  # LPS_TO_RAS is its own inverse: RAS -> LPS
    return np.einsum("ab,ijkb->ijka", linear, disp).astype(np.float32)


def write_itk_displacement(
    path: Path, disp_lps: NDArray, vox2world: NDArray, source: Path | None = None
) -> Path:
    """Write ITK displacement vectors ``(I, J, K, 3)`` on the grid ``vox2world`` with SimpleITK
    (its axes ``[k, j, i]``, its LPS geometry), atomically; InputError naming ``source`` (the US)
    for a sheared grid, which an ITK image cannot carry."""
    import SimpleITK as sitk

    spacing, direction, origin = sitk_geometry(vox2world, source)
    image = sitk.GetImageFromArray(np.ascontiguousarray(disp_lps.transpose(2, 1, 0, 3)), isVector=True)
    image.SetSpacing(spacing)  # GetImageFromArray reads [k, j, i, c]: transposed from [i, j, k, c] above
    image.SetDirection(direction)
    image.SetOrigin(origin)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


@dataclass
class ExportResult:
    """The files written, and the pairs that failed (with their errors)."""

    written: list[Path] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # pair key -> error

    @property
    def ok(self) -> bool:
        return not self.failures


def export_pair(
    pair: RegistrationPair, pred_dir: Path, out_dir: Path, products: tuple[str, ...]
) -> list[Path]:
    """Write ``products`` of one pair into ``out_dir``; raises on invalid inputs."""
    fixed = load_fixed(pair)
    disp = read_displacement(pred_dir / pair.output_name, expected_shape=fixed.shape)
    stem = image_stem(pair.moving)
    written = []
    if "warped" in products:
        moving = load_moving(pair, fixed)  # on the fixed grid, as the field's voxels are
        path = out_dir / f"{stem}_warped.nii.gz"
        written.append(write_image(path, warp_moving(moving.array, disp), fixed.vox2world))
    if "itk" in products:
        path = out_dir / f"{stem}_fixed2moving_itk.nii.gz"
        vectors = itk_displacement(disp, fixed.vox2world)
        written.append(write_itk_displacement(path, vectors, fixed.vox2world, pair.fixed))
    return written


def export_fields(
    data_dir: str | Path,
    pred_dir: str | Path,
    out_dir: str | Path,
    modalities: tuple[str, ...] = ("0001", "0002"),
    products: tuple[str, ...] = PRODUCTS,
) -> ExportResult:
    """Export every pair of ``data_dir`` with a field in ``pred_dir`` into ``out_dir``. A pair
    that fails (missing or invalid field, bad image) is logged and listed; the others are written."""
    unknown = sorted(set(products) - set(PRODUCTS))
    if unknown or not products:
        raise ValueError(f"products must be some of {', '.join(PRODUCTS)}, got {list(products)}")
    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    if not pred_dir.is_dir():
        raise InputError("prediction folder not found", path=pred_dir)
    result = ExportResult()
    for pair in find_pairs(data_dir, modalities):
        log.info("Exporting %s", pair.key)
        try:
            result.written += export_pair(pair, pred_dir, out_dir, products)
        except Exception as exc:  # one bad pair must not stop the others
            message = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            log.error("%s: %s", pair.key, message, exc_info=None if isinstance(exc, InputError) else exc)
            result.failures[pair.key] = message
    return result
