"""The scene of a synthetic case: pre-operative brain, probe plan and the case grid.

Steps 1-4 of :mod:`synthesis.generate`:

1. :func:`pick_brain`: a pre-operative brain (MNI152 with an inserted tumour, or a real MRI);
2. :func:`plan_probe`: a craniotomy at the brain surface nearest the tumour, the beam;
3. :func:`case_geometry`: a cubic, oblique grid (``vox2world``) centred on the imaged sector,
   oriented like a real ReMIND2Reg grid when the shared geometry is there
   (:func:`load_template_orientations`), else randomly (:func:`random_orientation`);
4. :func:`resample_moving`: the ceT1, T2 and labels on that grid (the moving images).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial.transform import Rotation

from remind2reg.inference.geometry import apply_affine
from remind2reg.synthesis import labels as L
from remind2reg.synthesis.config import SynthConfig
from remind2reg.synthesis.deformation import random_perpendicular
from remind2reg.synthesis.sources import SHARED_SUBJECTS, SourceBrain, insert_tumour, load_mni, load_shared

GEOMETRY_FILE = Path("remind2reg_geometry") / "validation_affines.json"


def pick_brain(
    source: str,
    index: int,
    rng: np.random.Generator,
    config: SynthConfig,
    shared: Path | None,
    subject: str | None = None,
) -> SourceBrain:
    """The pre-operative brain of case ``index`` (cached loads; MNI gets a random tumour).

    ``source`` "shared": the real subject ``subject`` (default: the subjects of
    :data:`synthesis.sources.SHARED_SUBJECTS` in turn by ``index``) from ``shared/mri``.
    """
    if source == "shared":
        if shared is None:
            raise ValueError("the shared source needs the shared data folder")
        name = subject or sorted(SHARED_SUBJECTS)[index % len(SHARED_SUBJECTS)]
        return _cached(("shared", name), lambda: load_shared(shared, name))
    brain = _cached(("mni",), load_mni)
    labels = brain.labels
    inside = labels != L.BACKGROUND
    depth = _surface_depth(inside)
    z_world = apply_affine(brain.vox2world, np.argwhere(inside))[:, 2]
    lo, hi = config.tumour_depth_mm
    candidates = np.argwhere(inside)[
        (depth[inside] >= lo)
        & (depth[inside] <= hi)
        & (z_world > 0.0)
        & np.isin(labels[inside], [L.GREY_MATTER, L.WHITE_MATTER])
    ]
    centre = candidates[rng.integers(len(candidates))].astype(np.float64)
    radius = float(rng.uniform(*config.tumour_radius_mm))
    return insert_tumour(brain, centre, radius, rng, enhancing=bool(rng.random() < 0.5))


_CACHE: dict[tuple, SourceBrain] = {}


def _cached(key: tuple, load) -> SourceBrain:
    if key not in _CACHE:
        _CACHE[key] = load()
    return _CACHE[key]


@dataclass(frozen=True)
class ClosedBrain:
    """The closed, hole-filled brain mask of a source (1 mm grid), the distance of each voxel
    to its outside (voxels, float32) and the index of the nearest outside voxel (3, ...)."""

    filled: NDArray[np.bool_]
    depth: NDArray[np.float32]
    nearest: NDArray[np.int32]


_CLOSED: dict[str, ClosedBrain] = {}


def closed_brain(inside: NDArray[np.bool_]) -> ClosedBrain:
    """:class:`ClosedBrain` of a brain mask, cached by the mask's content (the MNI brain with
    any inserted tumour and each real subject keep one mask)."""
    key = hashlib.sha1(np.packbits(inside).tobytes() + str(inside.shape).encode()).hexdigest()
    if key not in _CLOSED:
        filled = ndimage.binary_fill_holes(ndimage.binary_closing(inside, iterations=3))
        depth, nearest = ndimage.distance_transform_edt(filled, return_indices=True)
        _CLOSED[key] = ClosedBrain(filled, depth.astype(np.float32), nearest.astype(np.int32))
    return _CLOSED[key]


def _surface_depth(inside: NDArray[np.bool_]) -> NDArray[np.float32]:
    """Distance (voxels of the 1 mm source grid) to the outside of the closed brain mask."""
    return closed_brain(inside).depth


@dataclass(frozen=True)
class ProbePlan:
    """Craniotomy and probe, in the source's world mm."""

    surface_world: NDArray  # where the probe touches the brain
    beam_world: NDArray  # unit vector into the brain
    tumour_world: NDArray
    tumour_radius_mm: float


def plan_probe(brain: SourceBrain, rng: np.random.Generator, max_tilt_deg: float = 15.0) -> ProbePlan:
    """Craniotomy at the brain surface nearest the tumour, beam tilted by up to ``max_tilt_deg``."""
    tumour = brain.labels == L.TUMOUR
    inside = brain.labels != L.BACKGROUND
    tumour_vox = np.argwhere(tumour).mean(axis=0)
    closed = closed_brain(inside)
    filled, nearest = closed.filled, closed.nearest  # nearest outside voxel: the EDT's feature transform
    centre_idx = tuple(np.round(tumour_vox).astype(int))
    surface_vox = nearest[(slice(None), *centre_idx)].astype(np.float64)
    to_tumour = (
        apply_affine(brain.vox2world, tumour_vox[None])[0]
        - apply_affine(brain.vox2world, surface_vox[None])[0]
    )
    beam = to_tumour / np.linalg.norm(to_tumour)
    tilt = Rotation.from_rotvec(np.deg2rad(rng.uniform(0, max_tilt_deg)) * random_perpendicular(beam, rng))
    beam = tilt.apply(beam)
    tumour_world = apply_affine(brain.vox2world, tumour_vox[None])[0]
    # The probe sits where the tilted beam through the tumour centre leaves the brain.
    step = 0.5
    point = tumour_world.copy()
    world2vox = np.linalg.inv(brain.vox2world)
    for _ in range(400):
        vox = np.round(apply_affine(world2vox, point[None])[0]).astype(int)
        if (vox < 0).any() or (vox >= filled.shape).any() or not filled[tuple(vox)]:
            break
        point -= step * beam
    radius = float(
        (3.0 * tumour.sum() * np.prod(np.linalg.norm(brain.vox2world[:3, :3], axis=0)) / (4 * np.pi))
        ** (1 / 3)
    )
    return ProbePlan(surface_world=point, beam_world=beam, tumour_world=tumour_world, tumour_radius_mm=radius)


def load_template_orientations(shared: Path | None) -> list[NDArray]:
    """Direction matrices (3x3, unit columns) of the real ReMIND2Reg validation grids, if present."""
    path = shared / GEOMETRY_FILE if shared is not None else None
    if path is None or not path.is_file():
        return []
    meta = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for entry in meta.values():
        lin = np.asarray(entry["affine_vox2ras"], dtype=np.float64)[:3, :3]
        out.append(lin / np.linalg.norm(lin, axis=0))
    return out


def random_orientation(rng: np.random.Generator, max_tilt_deg: float = 20.0) -> NDArray:
    """An oblique direction matrix like those of ReMIND2Reg: a signed axis permutation
    (RPI, PIR, LPS, ...) tilted by up to ``max_tilt_deg`` about a random axis."""
    perm = np.eye(3)[rng.permutation(3)] * rng.choice([-1.0, 1.0], size=3)[:, None]
    tilt = Rotation.from_rotvec(
        np.deg2rad(rng.uniform(0, max_tilt_deg)) * random_perpendicular(rng.standard_normal(3), rng)
    )
    return tilt.as_matrix() @ perm.T


def case_geometry(
    orientation: NDArray, spacing_mm: float, grid: int, centre_world: NDArray
) -> NDArray[np.float64]:
    """``vox2world`` of a ``grid^3`` cube with the given directions whose centre is ``centre_world``."""
    vox2world = np.eye(4)
    vox2world[:3, :3] = orientation * spacing_mm
    centre_vox = np.full(3, (grid - 1) / 2.0)
    vox2world[:3, 3] = centre_world - vox2world[:3, :3] @ centre_vox
    return vox2world


def resample_moving(brain: SourceBrain, vox2world: NDArray, grid: int) -> dict[str, NDArray]:
    """ceT1, T2 (trilinear) and labels (nearest) of the brain on the case grid."""
    case2source = np.linalg.inv(brain.vox2world) @ vox2world  # case voxel -> source voxel
    shape = (grid, grid, grid)

    def warp(image: NDArray, order: int) -> NDArray:
        return ndimage.affine_transform(
            image, case2source[:3, :3], offset=case2source[:3, 3], output_shape=shape, order=order
        )

    return {"t1": warp(brain.t1, 1), "t2": warp(brain.t2, 1), "labels": warp(brain.labels, 0)}


__all__ = [
    "GEOMETRY_FILE",
    "ProbePlan",
    "case_geometry",
    "load_template_orientations",
    "pick_brain",
    "plan_probe",
    "random_orientation",
    "resample_moving",
]
