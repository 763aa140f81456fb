"""Initial transforms from files (``remind2reg register --init-transforms``), read once, here.

What comes out is always ``fixed2moving_world``: the 4x4 map of fixed (US) world mm to moving
(MR) world mm, world = the NIfTI ``vox2world`` as nibabel reads it (RAS+):
``moving_world = fixed2moving_world @ fixed_world``. That is the direction a resampler needs
(for each fixed point, where to look in the moving image), the direction both formats below
store.

* **NiftyReg** (``.txt``): the 4x4 text matrix that ``reg_aladin -aff`` writes with the US as
  reference and the MR as floating image. It maps reference world to floating world in the
  NIfTI frame, which is ``fixed2moving_world`` as it stands
  (:mod:`remind2reg.inference.affine.niftyreg`).
* **ITK** (``.tfm``, ``.h5``, an ITK text file of any name, and binary ``.mat`` such as ANTs'
  ``0GenericAffine.mat``), read with SimpleITK. An ITK registration transform maps points of
  the fixed image to points of the moving image (the resampling direction; 3D Slicer saves its
  transforms to these files in that direction too), in the LPS+ world:
  ``moving_lps = T(fixed_lps)``. Any linear ITK transform is accepted (Euler, versor,
  similarity, affine, a composite of them): its matrix is recovered from how it maps four
  points and checked on others; a B-spline or displacement-field transform is refused. With
  ``F = diag(-1, -1, 1, 1)`` (LPS <-> RAS, its own inverse):
  ``fixed2moving_world = F @ T_lps @ F``.

A text ``.mat`` is refused: FSL FLIRT writes text ``.mat`` matrices in another convention
(scaled voxel coordinates), which would be read as a NiftyReg matrix without any error. Rename
a ``reg_aladin`` matrix to ``.txt``.

Which file belongs to which case (:func:`find_init_transform`): the one named after the case's
ultrasound, e.g. ``ReMIND2Reg_0001_0000.txt`` for ``ReMIND2Reg_0001_0000.nii.gz``; it is used
for every MR sequence of that case.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from remind2reg.inference.errors import InputError
from remind2reg.inference.geometry import affine_problem
from remind2reg.inference.io.convert import LPS_TO_RAS
from remind2reg.inference.io.dataset import image_stem

log = logging.getLogger(__name__)

ITK_SUFFIXES = (".tfm", ".h5", ".hdf5")
SUFFIXES = (".txt", ".tfm", ".mat", ".h5", ".hdf5")  # what find_init_transform looks for
ITK_TEXT_HEADER = b"#Insight Transform File"
PROBE_MM = 100.0  # the points that recover an ITK transform's matrix: 0 and PROBE_MM along each axis
LINEAR_TOLERANCE_MM = 1e-4  # how far a check point may land from the recovered matrix's image


def read_fixed2moving(path: str | Path, case: str | None = None) -> NDArray[np.float64]:
    """``fixed2moving_world`` (4x4, RAS+ world mm) from a NiftyReg or ITK transform file.

    Raises :class:`InputError` naming the file (and the case) for a file that is missing,
    unreadable, ambiguous (text ``.mat``), not linear, not finite, or not invertible.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("the initial transform file does not exist", path=path, case=case)
    try:
        with open(path, "rb") as stream:
            head = stream.read(4096)  # enough to tell the formats apart; files may be large (.h5)
    except OSError as exc:
        raise InputError(f"cannot read it ({exc.strerror})", path=path, case=case) from exc
    suffix = path.suffix.lower()
    if suffix in ITK_SUFFIXES or head.startswith(ITK_TEXT_HEADER):
        matrix = _read_itk(path, case)
    elif suffix == ".mat":
        if _is_text(head):
            raise InputError(
                "a text .mat matrix is ambiguous (FSL FLIRT writes text .mat files in another "
                "convention); name a reg_aladin matrix .txt, or give an ITK/ANTs transform",
                path=path,
                case=case,
            )
        matrix = _read_itk(path, case)
    elif suffix == ".txt":
        matrix = _read_niftyreg(path, case)
    else:
        raise InputError(
            f"unknown initial transform format {suffix or '(no suffix)'!r}: use {', '.join(SUFFIXES)}",
            path=path,
            case=case,
        )
    return checked_matrix(matrix, path, case)


def checked_matrix(matrix: NDArray[np.float64], path: Path, case: str | None) -> NDArray[np.float64]:
    """``matrix`` if it is a finite, invertible 4x4 affine, else :class:`InputError` naming ``path``."""
    problem = affine_problem(matrix)
    if problem is not None:
        raise InputError(f"the transform {problem}", path=path, case=case)
    return matrix


def _is_text(data: bytes) -> bool:
    """True when ``data`` (a file's first bytes) looks like ASCII text: no NUL, nothing above 127."""
    if b"\x00" in data:
        return False
    try:
        data.decode("ascii")
    except UnicodeDecodeError:
        return False
    return True


def _read_niftyreg(path: Path, case: str | None) -> NDArray[np.float64]:
    """The 4x4 text matrix of ``reg_aladin -aff``: already ``fixed2moving_world`` (RAS+). The
    format :func:`remind2reg.inference.affine.niftyreg.read_aladin_matrix` reads (a test checks
    they agree); read here again to give input errors that name the case."""
    try:
        matrix = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise InputError(f"not a NiftyReg 4x4 text matrix ({exc})", path=path, case=case) from exc
    if matrix.shape != (4, 4):
        raise InputError(
            f"not a NiftyReg 4x4 text matrix: {matrix.shape[0]} rows of {matrix.shape[1]} numbers",
            path=path,
            case=case,
        )
    return matrix


def _read_itk(path: Path, case: str | None) -> NDArray[np.float64]:
    """An ITK transform file as ``fixed2moving_world`` (RAS+): ``F @ T_lps @ F``."""
    import SimpleITK as sitk

    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(f"SimpleITK cannot read it as a transform ({first})", path=path, case=case) from exc
    if transform.GetDimension() != 3:
        raise InputError(f"a {transform.GetDimension()}D transform; 3D is needed", path=path, case=case)
    if not transform.IsLinear():  # B-spline, displacement field, or a composite holding one
        raise InputError(
            f"not a linear (rigid or affine) transform ({transform.GetName()}): only those can "
            "start the registration",
            path=path,
            case=case,
        )
    lps = linear_matrix(transform.TransformPoint, path, case)
    return LPS_TO_RAS @ lps @ LPS_TO_RAS


def linear_matrix(transform_point, path: Path, case: str | None) -> NDArray[np.float64]:
    """The 4x4 matrix ``A`` with ``transform_point(p) == (A @ [p, 1])[:3]``, recovered from the
    images of the origin and of ``PROBE_MM`` along each axis, then checked on other points
    (:class:`InputError` when a check point lands more than ``LINEAR_TOLERANCE_MM`` away: the
    transform is not linear)."""
    origin = np.asarray(transform_point((0.0, 0.0, 0.0)), dtype=np.float64)
    matrix = np.eye(4)
    matrix[:3, 3] = origin
    for axis in range(3):
        probe = np.zeros(3)
        probe[axis] = PROBE_MM
        matrix[:3, axis] = (np.asarray(transform_point(tuple(probe)), dtype=np.float64) - origin) / PROBE_MM
    for point in np.random.default_rng(0).uniform(-150.0, 150.0, size=(8, 3)):
        p = np.asarray(point, dtype=np.float64)
        expected = matrix[:3, :3] @ p + matrix[:3, 3]
        got = np.asarray(transform_point(tuple(float(v) for v in p)), dtype=np.float64)
        if np.linalg.norm(got - expected) > LINEAR_TOLERANCE_MM:
            raise InputError(
                "not a linear (rigid or affine) transform: only those can start the registration",
                path=path,
                case=case,
            )
    return matrix


def find_init_transform(folder: Path, fixed: Path, case: str | None = None) -> Path:
    """The initial transform of the case whose ultrasound is ``fixed``: ``folder/<US name><suffix>``
    (e.g. ``ReMIND2Reg_0001_0000.txt``). :class:`InputError` when there is none, or more than one."""
    stem = image_stem(fixed)
    found = [folder / f"{stem}{s}" for s in SUFFIXES if (folder / f"{stem}{s}").is_file()]
    if not found:
        expected = ", ".join(f"{stem}{s}" for s in SUFFIXES)
        raise InputError(
            f"no initial transform for this case in {folder} (expected one of {expected})",
            path=fixed,
            case=case,
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise InputError(
            f"more than one initial transform for this case in {folder}: {names}", path=fixed, case=case
        )
    return found[0]


def check_init_folder(folder: Path, fixed_images: Iterable[Path]) -> None:
    """:class:`InputError` when ``folder`` is not a folder; a warning for each transform file in it
    that no case's ultrasound names (a file that will not be used, most likely misnamed)."""
    if not folder.is_dir():
        raise InputError("the folder of initial transforms does not exist", path=folder)
    stems = {image_stem(p) for p in fixed_images}
    unused = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in SUFFIXES and p.stem not in stems
    )
    if unused:
        log.warning(
            "%d files in %s name no ultrasound of the input and will not be used: %s",
            len(unused),
            folder,
            ", ".join(unused[:10]) + (" ..." if len(unused) > 10 else ""),
        )
