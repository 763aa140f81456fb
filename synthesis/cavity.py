"""The resection cavity in the fixed (intra-operative) frame.

Works on a crop ``box`` of the fixed grid (the sector's bounding box): ``labels_box`` are the
warped pre-operative labels there, ``origin`` the fixed voxel of the crop's first corner, and
world points are ``vox2world @ (index + origin)``. The probe plan gives the craniotomy point
``surface_world`` and the unit beam ``beam_world`` (world mm).

Two shapes:

* legacy (``CavitySettings.irregular`` False): the tumour voxels shallower than a depth
  quantile along the beam (a planar floor: box-like) plus an optional straight corridor;
* irregular: the tumour nearest the craniotomy point is resected (a bowl around the entry
  with a noisy wall), the corridor's radius varies, and the whole wall is displaced by
  smooth noise (a level set of the signed distance plus noise), holes are filled and small
  islands dropped; the cavity is then limited to a share of the sector by keeping the part
  nearest the entry (the surgeon resects outwards from the entry).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from remind2reg.inference.geometry import apply_affine
from remind2reg.synthesis import labels as L
from remind2reg.synthesis.families import CavitySettings
from remind2reg.synthesis.ultrasound import smooth_noise


@dataclass(frozen=True)
class CavityFrame:
    """Where the cavity is carved: the crop and the probe (see the module docstring)."""

    origin: NDArray  # fixed voxel of the crop's corner (3,)
    vox2world: NDArray
    spacing_mm: float
    surface_world: NDArray
    beam_world: NDArray
    tumour_world: NDArray

    def depth_mm(self, index: NDArray) -> NDArray:
        """Depth along the beam below the craniotomy (mm) of crop voxels ``(N, 3)``."""
        world = apply_affine(self.vox2world, index + self.origin)
        return (world - self.surface_world) @ self.beam_world

    def entry_distance_mm(self, index: NDArray) -> NDArray:
        """Distance (mm) of crop voxels ``(N, 3)`` to the craniotomy point: the surgeon
        resects outwards from the entry, so a cavity is a bowl around it."""
        world = apply_affine(self.vox2world, index + self.origin)
        return np.linalg.norm(world - self.surface_world, axis=1)

    def corridor_distance_mm(self, shape: tuple[int, ...], funnel: float = 0.0) -> NDArray:
        """Distance (mm, crop shape) of every voxel to the segment surface -> tumour centre,
        divided by ``1 + funnel * (1 - t)`` (``t`` = 0 at the surface, 1 at the tumour): with
        ``funnel`` > 0 a fixed radius makes a corridor that widens towards the surface."""
        pts = apply_affine(self.vox2world, np.argwhere(np.ones(shape, dtype=bool)) + self.origin)
        seg = self.tumour_world - self.surface_world
        t = np.clip(((pts - self.surface_world) @ seg) / (seg @ seg), 0.0, 1.0)
        dist = np.linalg.norm(pts - (self.surface_world + t[:, None] * seg), axis=1)
        return (dist / (1.0 + funnel * (1.0 - t))).reshape(shape)


@dataclass(frozen=True)
class CavityDraw:
    """What was drawn for a cavity (written to the case record)."""

    resected_fraction: float
    corridor: bool
    capped: bool = False
    wall_roughness_mm: float = 0.0


def legacy_cavity(
    labels_box: NDArray, frame: CavityFrame, fraction: float, corridor: bool, rng: np.random.Generator
) -> NDArray[np.bool_]:
    """The original cavity: tumour shallower than the ``fraction`` depth quantile, plus a
    straight corridor of radius 3-6 mm (drawn) when ``corridor``."""
    tumour = labels_box == L.TUMOUR
    cavity = np.zeros_like(tumour)
    if not tumour.any():
        return cavity
    idx = np.argwhere(tumour)
    depth = frame.depth_mm(idx)
    cavity[tuple(idx[depth <= np.quantile(depth, fraction)].T)] = True
    if corridor:
        radius = rng.uniform(3.0, 6.0)
        cavity |= (frame.corridor_distance_mm(labels_box.shape) <= radius) & (labels_box != L.BACKGROUND)
    return cavity


def _largest_piece(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(np.argmax(sizes)) + 1)


def _rough_core(
    labels_box: NDArray, frame: CavityFrame, s: CavitySettings, draw: CavityDraw, rng: np.random.Generator
) -> NDArray[np.bool_]:
    """Resected tumour nearest the entry under a noisy wall, plus a corridor of varying radius
    that widens towards the surface (the cortical opening)."""
    shape, sp = labels_box.shape, frame.spacing_mm
    scale_vox = float(rng.uniform(*s.wall_scale_mm)) / sp
    tumour = labels_box == L.TUMOUR
    idx = np.argwhere(tumour)
    wobble = 2.0 * draw.wall_roughness_mm * smooth_noise(shape, (scale_vox,) * 3, rng)[tumour]
    floor = frame.entry_distance_mm(idx) + wobble
    core = np.zeros(shape, dtype=bool)
    core[tuple(idx[floor <= np.quantile(floor, draw.resected_fraction)].T)] = True
    if draw.corridor:
        radius = float(rng.uniform(*s.corridor_radius_mm))
        width = 1.0 + 0.4 * smooth_noise(shape, (2.0 * scale_vox,) * 3, rng)
        core |= frame.corridor_distance_mm(shape, funnel=0.6) <= radius * width
    return core & (labels_box != L.BACKGROUND)


def irregular_cavity(
    labels_box: NDArray,
    sector_box: NDArray[np.bool_],
    frame: CavityFrame,
    s: CavitySettings,
    rng: np.random.Generator,
) -> tuple[NDArray[np.bool_], CavityDraw]:
    """An irregular cavity in the crop (see the module docstring) and what was drawn."""
    draw = CavityDraw(
        resected_fraction=float(rng.uniform(*s.resected_fraction)),
        corridor=bool(rng.random() < s.corridor_probability),
        wall_roughness_mm=float(rng.uniform(*s.wall_roughness_mm)),
    )
    if not (labels_box == L.TUMOUR).any():
        return np.zeros(labels_box.shape, dtype=bool), draw
    core = _rough_core(labels_box, frame, s, draw, rng)
    sp = frame.spacing_mm
    signed = ndimage.distance_transform_edt(~core) * sp - ndimage.distance_transform_edt(core) * sp
    scale_vox = float(rng.uniform(*s.wall_scale_mm)) / sp
    bumps = 0.7 * smooth_noise(core.shape, (scale_vox,) * 3, rng)
    bumps += 0.3 * smooth_noise(core.shape, (2.5 * scale_vox,) * 3, rng)
    cavity = (signed + draw.wall_roughness_mm * bumps / 0.76 < 0) & (labels_box != L.BACKGROUND)
    cavity = ndimage.binary_fill_holes(_largest_piece(cavity))
    floor_wobble = 3.0 * draw.wall_roughness_mm * bumps  # the cap leaves an uneven floor too
    cavity, capped = _cap_to_sector_share(cavity, sector_box, frame, s.max_sector_fraction, floor_wobble)
    return cavity, CavityDraw(draw.resected_fraction, draw.corridor, capped, draw.wall_roughness_mm)


def _cap_to_sector_share(
    cavity: NDArray[np.bool_],
    sector_box: NDArray[np.bool_],
    frame: CavityFrame,
    share: float,
    wobble_mm: NDArray,
) -> tuple[NDArray[np.bool_], bool]:
    """Keep the cavity voxels nearest the craniotomy (distance plus ``wobble_mm``, so that the
    new wall is not a sphere) so that at most ``share`` of the sector is cavity."""
    limit = int(share * sector_box.sum())
    inside = cavity & sector_box
    if inside.sum() <= limit:
        return cavity, False
    idx = np.argwhere(cavity)
    distance = frame.entry_distance_mm(idx) + wobble_mm[cavity]
    order = np.argsort(distance, kind="stable")
    in_sector = sector_box[tuple(idx[order].T)]
    n_keep = int(np.searchsorted(np.cumsum(in_sector), limit, side="right"))
    out = np.zeros_like(cavity)
    out[tuple(idx[order[:n_keep]].T)] = True
    return _largest_piece(out), True


__all__ = ["CavityDraw", "CavityFrame", "irregular_cavity", "legacy_cavity"]
