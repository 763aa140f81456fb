"""Images from other libraries converted to :class:`~remind2reg.inference.io.nifti.Image`, once, here.

* nibabel: ``array[i, j, k]`` and ``affine`` (RAS+ world) are already our conventions.
* SimpleITK: ``GetArrayFromImage`` returns the axes in REVERSED order (``[k, j, i]``, i.e.
  z, y, x), and the physical frame is LPS+: ``p_lps = origin + D @ diag(spacing) @ [i, j, k]``.
  We transpose the array to ``[i, j, k]`` and map LPS to RAS by negating the first two world
  coordinates: ``vox2world = diag(-1, -1, 1, 1) @ [[D diag(spacing), origin], [0, 1]]``.
* a path: read with :func:`~remind2reg.inference.io.nifti.read_image`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from remind2reg.inference.errors import InputError
from remind2reg.inference.io.nifti import Image, image_from_nifti, read_image, validated_image

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # flips the x and y world axes; its own inverse


def sitk_vox2world(spacing, direction, origin) -> NDArray[np.float64]:
    """RAS+ ``vox2world`` of a SimpleITK image's geometry (``GetSpacing``, ``GetDirection``, ``GetOrigin``)."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) @ np.diag(spacing)
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def sitk_geometry(
    vox2world: NDArray[np.float64], source: str | Path | None = None
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """SimpleITK's ``(spacing, direction, origin)`` of a RAS+ ``vox2world``, the inverse of
    :func:`sitk_vox2world`: ``[[D diag(spacing), origin], [0, 1]] = diag(-1, -1, 1, 1) @ vox2world``.
    :class:`InputError` (naming ``source``, the image the grid is from) for a sheared grid,
    whose axes an ITK direction matrix (orthonormal) cannot carry."""
    lps = LPS_TO_RAS @ np.asarray(vox2world, dtype=np.float64)  # LPS_TO_RAS is its own inverse
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-5):
        raise InputError("the grid is sheared: an ITK image cannot carry it", path=source)
    return tuple(map(float, spacing)), tuple(map(float, direction.ravel())), tuple(map(float, lps[:3, 3]))


def as_image(image: Any, what: str = "image") -> Image:
    """Our :class:`Image` of a nibabel image, a SimpleITK image, an :class:`Image` or a file path."""
    if isinstance(image, Image):
        return image
    if isinstance(image, str | Path):
        return read_image(image)
    if hasattr(image, "dataobj") and hasattr(image, "affine"):  # nibabel SpatialImage
        return image_from_nifti(image)
    if type(image).__module__.startswith("SimpleITK"):
        import SimpleITK as sitk

        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"the {what} must be a 3D scalar image, got {image.GetDimension()}D")
        array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # [k, j, i] -> [i, j, k]
        vox2world = sitk_vox2world(image.GetSpacing(), image.GetDirection(), image.GetOrigin())
        return validated_image(np.ascontiguousarray(array, dtype=np.float32), vox2world)
    raise TypeError(
        f"the {what} must be a nibabel image, a SimpleITK image or a file path, not {type(image).__name__}"
    )
