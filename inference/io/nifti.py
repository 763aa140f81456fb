"""Reading and writing NIfTI images with validation (nibabel)."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from remind2reg.inference.errors import InputError
from remind2reg.inference.geometry import voxel_spacing
from remind2reg.inference.io.atomic import atomic_path


@dataclass(frozen=True)
class Image:
    """A 3D image: voxel array plus its voxel-to-world matrix.

    ``array[i, j, k]`` is the intensity at voxel ``(i, j, k)``;
    ``world_mm = vox2world @ [i, j, k, 1]`` (NIfTI RAS+, the header's best affine).
    """

    array: NDArray[np.float32]
    vox2world: NDArray[np.float64]
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> NDArray[np.float64]:
        """Voxel size (mm) along the array axes."""
        return voxel_spacing(self.vox2world)


DEFAULT_COMPRESSLEVEL = 1  # nibabel's own default for .nii.gz

# Guards against corrupt headers: a real ReMIND2Reg image is 256^3 voxels.
MAX_VOXELS = 1024**3
# Fewer non-zero voxels than this and the ultrasound has no usable sector (field of view).
MIN_SECTOR_VOXELS = 1000


def _load(path: Path, case: str | None) -> nib.Nifti1Image:
    if not path.is_file():
        raise InputError("file not found", path=path, case=case)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for bad headers
        raise InputError(f"not a readable NIfTI image ({exc})", path=path, case=case) from exc
    return img


def _check_header(
    img: nib.spatialimages.SpatialImage, path: Path | None, case: str | None
) -> tuple[int, int, int]:
    """The 3D shape announced by the header; raises unless it is a plausible 3D real image."""
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(
            f"expected a 3D image, found {len(img.shape)}D shape {img.shape}", path=path, case=case
        )
    if min(shape) < 1:
        raise InputError(f"the image is empty (shape {img.shape})", path=path, case=case)
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise InputError(
            f"implausible image size {img.shape} (more than {MAX_VOXELS} voxels): corrupt header?",
            path=path,
            case=case,
        )
    dtype = np.dtype(img.get_data_dtype())
    if dtype.kind not in "biuf":
        raise InputError(f"unsupported voxel data type {dtype} (expected real numbers)", path=path, case=case)
    return shape  # type: ignore[return-value]


def read_image(path: str | Path, case: str | None = None, *, allow_nonfinite: bool = False) -> Image:
    """Read a 3D NIfTI image as float32 and validate it (:func:`image_from_nifti`).

    Raises :class:`InputError` naming the case and the file when the file is missing, corrupt
    (including a truncated ``.gz``), not 3D (a trailing singleton 4th axis is accepted), empty,
    of a non-real data type, holds NaN/Inf values, or has a singular voxel-to-world matrix.
    """
    path = Path(path)
    return image_from_nifti(_load(path, case), path, case, allow_nonfinite=allow_nonfinite)


def image_from_nifti(
    img: nib.spatialimages.SpatialImage,
    path: Path | None = None,
    case: str | None = None,
    *,
    allow_nonfinite: bool = False,
) -> Image:
    """A validated float32 :class:`Image` of a nibabel image (read from ``path``, or in memory)."""
    try:
        shape = _check_header(img, path, case)
        array = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except InputError:
        raise
    except Exception as exc:  # zlib, EOF, short reads, scaling overflow, bad sizes: all mean corrupt
        raise InputError(f"image data is truncated or corrupt ({exc})", path=path, case=case) from exc
    return validated_image(array, np.asarray(img.affine, dtype=np.float64), path, case, allow_nonfinite)


def validated_image(
    array: NDArray,
    vox2world: NDArray,
    path: Path | None = None,
    case: str | None = None,
    allow_nonfinite: bool = False,
) -> Image:
    """An :class:`Image` of a 3D float32 ``array``, checked for NaN/Inf and a usable ``vox2world``."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 3 or min(array.shape) < 1:
        raise InputError(f"expected a non-empty 3D image, found shape {array.shape}", path=path, case=case)
    if not allow_nonfinite and not np.isfinite(array).all():
        n_bad = int((~np.isfinite(array)).sum())
        raise InputError(f"{n_bad} voxels are NaN or Inf", path=path, case=case)
    vox2world = np.asarray(vox2world, dtype=np.float64)
    if (
        vox2world.shape != (4, 4)
        or not np.isfinite(vox2world).all()
        or abs(np.linalg.det(vox2world[:3, :3])) < 1e-12
    ):
        raise InputError("the header's voxel-to-world matrix is singular or invalid", path=path, case=case)
    return Image(array=array, vox2world=vox2world, path=path)


def check_not_constant(image: Image, case: str | None = None, what: str = "image") -> None:
    """Raise :class:`InputError` when every voxel of ``image`` has the same value."""
    lo, hi = float(image.array.min()), float(image.array.max())
    if lo == hi:
        raise InputError(
            f"the {what} is constant (every voxel is {lo:g}): nothing to register", path=image.path, case=case
        )


def required_sector_voxels(shape: tuple[int, ...], minimum: int = MIN_SECTOR_VOXELS) -> int:
    """Voxels a US sector needs at least: ``min(minimum, 1 % of the grid)`` (and 1)."""
    return min(minimum, max(1, int(np.prod(shape[:3], dtype=np.int64)) // 100))


def check_ultrasound(
    image: Image, case: str | None = None, min_sector_voxels: int = MIN_SECTOR_VOXELS
) -> None:
    """Raise :class:`InputError` unless ``image`` is a usable ultrasound (the fixed image).

    Rejected: a constant or all-zero US, and a US with fewer non-background voxels than
    :func:`required_sector_voxels` (no sector to register in; the background is the constant
    value outside the sector, usually 0). A US with no constant background is accepted.
    """
    from remind2reg.inference.core.sector import background_value  # numpy/scipy only

    check_not_constant(image, case, what="ultrasound")
    background = background_value(image.array)
    inside = image.array.size if background is None else int(np.count_nonzero(image.array != background))
    needed = required_sector_voxels(image.shape, min_sector_voxels)
    if inside < needed:
        raise InputError(
            f"the ultrasound has no sector: {inside} non-zero voxels, at least {needed} needed",
            path=image.path,
            case=case,
        )


def read_header(path: str | Path, case: str | None = None) -> tuple[tuple[int, ...], NDArray[np.float64]]:
    """Shape and ``vox2world`` of a NIfTI file, without reading its voxels."""
    path = Path(path)
    img = _load(path, case)
    return tuple(img.shape), np.asarray(img.affine, dtype=np.float64)


def header_spacing(path: str | Path) -> NDArray[np.float64]:
    """Voxel size from the header's ``pixdim`` (``get_zooms()[:3]``), as the challenge reads it."""
    return np.asarray(_load(Path(path), None).header.get_zooms()[:3], dtype=np.float64)


def write_image(
    path: str | Path,
    array: NDArray,
    vox2world: NDArray,
    dtype: type = np.float32,
    compresslevel: int = DEFAULT_COMPRESSLEVEL,
) -> Path:
    """Write a NIfTI image atomically; sform and qform both carry ``vox2world``.

    A ``.nii.gz`` is a gzip stream at ``compresslevel`` (0-9; 0 stores the bytes in deflate
    blocks without compressing them: still a valid ``.nii.gz`` for every reader) whose header
    has no file name and no time stamp, so the same image gives the same bytes on every run.
    """
    path = Path(path)
    if not 0 <= compresslevel <= 9:
        raise ValueError(f"{path}: compresslevel must be 0-9, got {compresslevel}")
    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), np.asarray(vox2world, dtype=np.float64))
    img.set_sform(np.asarray(vox2world), code=1)
    img.set_qform(np.asarray(vox2world), code=1)
    with atomic_path(path) as tmp:
        if path.name.endswith(".gz"):
            with open(tmp, "wb") as raw, gzip.GzipFile("", "wb", compresslevel, raw, mtime=0) as stream:
                img.to_file_map({"image": nib.FileHolder(fileobj=stream)})
        else:
            nib.save(img, str(tmp))
    return path
