"""Render an intra-operative 3D ultrasound (iUS) volume from a tissue label map.

Inputs come from the anatomy/deformation model, all on the FIXED (intra-operative) grid:
a ``uint8`` label map with the codes of :mod:`synthesis.labels`, the (warped) pre-operative
T1 on the same grid, and a probe :class:`Sector`.

Conventions
-----------
* All geometry is in VOXEL coordinates of the fixed grid, array axis order (i, j, k); the grid
  is isotropic with spacing ``spacing_mm`` (a float, mm). A point ``p`` (voxel) lies at
  ``p * spacing_mm`` mm along the array axes; no world/affine coordinates are used here.
* The probe field of view is a pyramid (fan in two directions) with its virtual apex at
  ``Sector.apex_vox``; rays leave the apex. For a voxel ``x`` with ``v = (x - apex) * spacing``:
  ``r = |v|`` (mm), lateral angle ``theta = atan2(v.u1, v.a)`` and elevational angle
  ``phi = atan2(v.u2, v.a)``, where ``(a, u1, u2)`` is the orthonormal beam frame of
  :meth:`Sector.frame`. The sector is ``near_mm <= r <= depth_mm``, ``|theta| <= lat/2``,
  ``|phi| <= elev/2``. "Beam depth" is ``r``, the distance from the apex (the far boundary is a
  spherical cap, as in a real fan). The apex is *virtual*: the imaged region starts at
  ``near_mm`` from it (probe face plus dead zone), so put the apex about ``near_mm`` outside
  the cortical surface (it may lie outside the volume).

Image formation (all vectorised, in a beam-aligned (r, theta, phi) grid covering the sector):
per-label scattering strength (:class:`~synthesis.ultrasound_params.UltrasoundParams`), a weak
T1 high-pass texture, low-frequency tissue heterogeneity, specular interface reflection
``|grad Z . beam|^2 / |grad Z|`` (angle-dependent), complex Gaussian scatterers convolved with
an anisotropic Gaussian PSF and envelope-detected (speckle, optionally compounded), per-label
attenuation integrated along rays with a TGC tuned to brain (so fluid gives posterior
enhancement), shadowing behind strong reflectors, near-field brightening, power-law
compression and output scaling to the RESECT intensity range. The result is resampled back
to the voxel grid.

Realism features, off in the legacy defaults and switched on by the families
(:mod:`synthesis.families`):

* thin reflecting sheets at the centre surfaces of the T1 valleys (sulci, falx), found by a
  Hessian filter with non-maximum suppression (:func:`sheet_lines`): one voxel wide whatever
  the CSF width in the MR, then widened by the PSF only;
* short thin segments in the parenchyma (vessel walls, :func:`vessel_segments`);
* an echo map that follows the T1 (``t1_echo_mix``, the tissue-echo family);
* a patchy cavity rim and textured (echogenic) cavity content;
* a soft display saturation (``saturation_ratio``) and the partial-volume outermost voxel
  layer of the sector (:func:`edge_coverage`), both measured on RESECT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from remind2reg.synthesis import labels as L
from remind2reg.synthesis.families import SectorSettings
from remind2reg.synthesis.hessian import ridge_centres
from remind2reg.synthesis.ultrasound_params import N_LABELS, UltrasoundParams

# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sector:
    """Probe field of view: a pyramid with a virtual apex (see module docstring).

    Attributes:
        apex_vox: virtual apex, voxel coordinates (i, j, k); may lie outside the volume.
        axis: beam direction into the brain, in the voxel/array axis frame (normalised on use).
        depth_mm: maximal distance from the apex (far spherical cap), mm.
        opening_deg: full opening angles (lateral, elevational), degrees.
        near_mm: dead zone radius around the apex (no image closer than this), mm.
        roll_deg: rotation of the lateral direction about the beam axis, degrees.
    """

    apex_vox: tuple[float, float, float]
    axis: tuple[float, float, float]
    depth_mm: float = 70.0
    opening_deg: tuple[float, float] = (55.0, 38.0)
    near_mm: float = 25.0
    roll_deg: float = 0.0

    def frame(self) -> np.ndarray:
        """(3, 3) orthonormal rows (a, u1, u2): beam axis, lateral, elevational directions."""
        a = np.asarray(self.axis, dtype=np.float64)
        a = a / np.linalg.norm(a)
        helper = np.eye(3)[int(np.argmin(np.abs(a)))]
        u1 = np.cross(a, helper)
        u1 /= np.linalg.norm(u1)
        u2 = np.cross(a, u1)
        c, s = np.cos(np.radians(self.roll_deg)), np.sin(np.radians(self.roll_deg))
        return np.stack([a, c * u1 + s * u2, -s * u1 + c * u2])

    @classmethod
    def random(
        cls,
        apex_vox: tuple[float, float, float],
        axis: tuple[float, float, float],
        rng: np.random.Generator,
    ) -> Sector:
        """A sector with RESECT-calibrated random size; see :func:`random_sector`."""
        return random_sector(apex_vox, axis, rng)


# The RESECT ranges of synthesis.families.SectorSettings (imaged depth 38-48 mm, a fan of
# 45-65 x 30-45 degrees with its virtual apex 20-35 mm above the first imaged voxel).
SECTOR_RANGES: dict[str, tuple[float, float]] = SectorSettings().ranges()


def random_sector(
    apex_vox: tuple[float, float, float],
    axis: tuple[float, float, float],
    rng: np.random.Generator,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> Sector:
    """Draw near/depth/opening/roll uniformly from ``ranges`` (default :data:`SECTOR_RANGES`)."""
    rg = {**SECTOR_RANGES, **(ranges or {})}
    near = float(rng.uniform(*rg["near_mm"]))
    return Sector(
        apex_vox=tuple(float(x) for x in apex_vox),
        axis=tuple(float(x) for x in axis),
        depth_mm=near + float(rng.uniform(*rg["imaged_depth_mm"])),
        opening_deg=(float(rng.uniform(*rg["lateral_deg"])), float(rng.uniform(*rg["elevational_deg"]))),
        near_mm=near,
        roll_deg=float(rng.uniform(*rg["roll_deg"])),
    )


def _ray_directions(sector: Sector, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Unit ray directions (..., 3) in the voxel frame for lateral/elevational angles (rad)."""
    a, u1, u2 = sector.frame()
    d = a + np.tan(theta)[..., None] * u1 + np.tan(phi)[..., None] * u2
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def sector_bbox(shape: tuple[int, ...], spacing_mm: float, sector: Sector) -> tuple[slice, ...]:
    """Voxel bounding box (slices, clipped to ``shape``) of the sector, 2 voxels of margin."""
    half = np.radians(np.asarray(sector.opening_deg)) / 2
    th, ph = np.meshgrid(np.linspace(-half[0], half[0], 9), np.linspace(-half[1], half[1], 9))
    d = _ray_directions(sector, th, ph).reshape(-1, 3)
    pts = np.concatenate([d * sector.near_mm, d * sector.depth_mm]) / spacing_mm
    pts = pts + np.asarray(sector.apex_vox)
    lo = np.floor(pts.min(axis=0)).astype(int) - 2
    hi = np.ceil(pts.max(axis=0)).astype(int) + 3
    lo = np.clip(lo, 0, shape)
    hi = np.clip(hi, 0, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _polar_coords(
    bbox: tuple[slice, ...], spacing_mm: float, sector: Sector
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Beam coordinates (r mm, theta rad, phi rad) of every voxel of ``bbox`` (float32)."""
    frame = sector.frame().astype(np.float32)
    axes = [
        (np.arange(s.start, s.stop, dtype=np.float32) - np.float32(c)) * np.float32(spacing_mm)
        for s, c in zip(bbox, sector.apex_vox, strict=True)
    ]
    vi, vj, vk = np.meshgrid(*axes, indexing="ij", sparse=True)
    comps = [f[0] * vi + f[1] * vj + f[2] * vk for f in frame]  # along a, u1, u2
    r = np.sqrt(comps[0] ** 2 + comps[1] ** 2 + comps[2] ** 2)
    theta = np.arctan2(comps[1], comps[0])
    phi = np.arctan2(comps[2], comps[0])
    return r, theta, phi


def _mask_from_polar(r: np.ndarray, theta: np.ndarray, phi: np.ndarray, sector: Sector) -> np.ndarray:
    """Sector membership from beam coordinates."""
    half = np.radians(np.asarray(sector.opening_deg, dtype=np.float64)) / 2
    return (
        (r >= sector.near_mm) & (r <= sector.depth_mm) & (np.abs(theta) <= half[0]) & (np.abs(phi) <= half[1])
    )


def sector_mask(shape: tuple[int, int, int], spacing_mm: float, sector: Sector) -> np.ndarray:
    """Boolean mask of the voxels inside ``sector`` on a grid of ``shape``."""
    out = np.zeros(shape, dtype=bool)
    bbox = sector_bbox(shape, spacing_mm, sector)
    if any(s.stop <= s.start for s in bbox):
        return out
    out[bbox] = _mask_from_polar(*_polar_coords(bbox, spacing_mm, sector), sector)
    return out


def beam_depth_mm(shape: tuple[int, int, int], spacing_mm: float, sector: Sector) -> np.ndarray:
    """Distance from the virtual apex (mm, float32) of every voxel (defined everywhere)."""
    axes = [
        (np.arange(n, dtype=np.float32) - np.float32(c)) * np.float32(spacing_mm)
        for n, c in zip(shape, sector.apex_vox, strict=True)
    ]
    vi, vj, vk = np.meshgrid(*axes, indexing="ij", sparse=True)
    return np.sqrt(vi**2 + vj**2 + vk**2).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Parameters (synthesis.ultrasound_params; re-exported here)
# --------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------
# Tissue maps on the voxel grid (crop)
# --------------------------------------------------------------------------------------------


def case_echo_table(params: UltrasoundParams, rng: np.random.Generator) -> np.ndarray:
    """Per-label echogenicity of one case: defaults times log-normal per-case factors."""
    base = np.asarray(params.echo, dtype=np.float32)
    spread = np.asarray(params.echo_spread, dtype=np.float32)
    return (base * np.exp(rng.normal(0.0, 1.0, N_LABELS) * spread)).astype(np.float32)


def thin_csf_weight(labels: np.ndarray, spacing_mm: float, thickness_mm: float) -> np.ndarray:
    """In [0, 1]: 1 where CSF is a thin sheet (sulcus), 0 inside thick CSF pools."""
    csf = (labels == L.CSF).astype(np.float32)
    frac = ndimage.gaussian_filter(csf, thickness_mm / spacing_mm)
    return (np.clip((0.85 - frac) / 0.45, 0.0, 1.0) * csf).astype(np.float32)


def cavity_rim(labels: np.ndarray, spacing_mm: float, rim_mm: float) -> np.ndarray:
    """Boolean shell of thickness ``rim_mm`` just outside the resection cavity."""
    cav = labels == L.CAVITY
    if not cav.any():
        return np.zeros_like(cav)
    it = max(1, round(rim_mm / spacing_mm))
    return ndimage.binary_dilation(cav, iterations=it) & ~cav


def t1_texture(t1: np.ndarray, spacing_mm: float, highpass_mm: float) -> np.ndarray:
    """High-pass T1 normalised to unit sd (float32): the only, weak, use of the T1."""
    t = t1.astype(np.float32)
    hp = t - ndimage.gaussian_filter(t, highpass_mm / spacing_mm)
    sd = float(hp.std())
    return hp / sd if sd > 0 else np.zeros_like(hp)


def white_matter_t1(t1: np.ndarray, labels: np.ndarray) -> float:
    """Typical white-matter T1 (median over WM labels; else the 85th percentile in the brain)."""
    wm = labels == L.WHITE_MATTER
    if wm.sum() > 100:
        return max(float(np.median(t1[wm])), 1e-6)
    brain = labels != L.BACKGROUND
    return max(float(np.percentile(t1[brain], 85)) if brain.any() else 1.0, 1e-6)


def _monotone_t1_echo(amp: np.ndarray, labels: np.ndarray, t1: np.ndarray, params: UltrasoundParams):
    """Blend the label echo with ``(T1 / T1_wm)^power`` inside the brain (``t1_echo_mix``)."""
    brain = np.isin(labels, (L.CSF, L.GREY_MATTER, L.WHITE_MATTER, L.VENTRICLE, L.TUMOUR, L.FALX))
    mono = np.power(np.clip(t1 / np.float32(white_matter_t1(t1, labels)), 0.0, 2.0), params.t1_echo_power)
    mix = np.float32(params.t1_echo_mix)
    return np.where(brain, (1 - mix) * amp + mix * mono.astype(np.float32), amp)


def _patchy(mask: np.ndarray, coverage: float, scale_vox: float, rng: np.random.Generator) -> np.ndarray:
    """``mask`` where a smooth random field lies in its top ``coverage`` share (patches)."""
    if coverage >= 1.0 or not mask.any():
        return mask
    field = smooth_noise(mask.shape, (scale_vox,) * 3, rng)
    return mask & (field >= np.quantile(field[mask], 1.0 - coverage))


def echo_map(
    labels: np.ndarray,
    t1: np.ndarray,
    spacing_mm: float,
    params: UltrasoundParams,
    table: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Mean scattering amplitude per voxel (float32) before speckle and beam effects.

    ``rng`` is drawn from only by the features that need it (patchy rim, cavity texture).
    """
    amp = table[labels]
    if params.t1_echo_mix > 0:
        amp = _monotone_t1_echo(amp, labels, t1.astype(np.float32), params)
    thin = thin_csf_weight(labels, spacing_mm, params.sulcus_thickness_mm)
    amp = amp * (1 - thin) + params.sulcus_echo * thin
    rim = cavity_rim(labels, spacing_mm, params.rim_mm)
    rim = _patchy(rim, params.rim_coverage, 2.0 / spacing_mm, rng)
    amp = np.where(rim, np.maximum(amp, params.rim_echo), amp)
    tissue = np.isin(labels, (L.GREY_MATTER, L.WHITE_MATTER, L.TUMOUR))
    tex = t1_texture(t1, spacing_mm, params.t1_highpass_mm)
    amp = np.where(tissue, amp * np.exp(params.t1_weight * tex), amp)
    if params.cavity_texture > 0 and (labels == L.CAVITY).any():
        noise = smooth_noise(labels.shape, (params.cavity_texture_mm / spacing_mm,) * 3, rng)
        amp = np.where(labels == L.CAVITY, amp * np.exp(params.cavity_texture * noise), amp)
    return amp.astype(np.float32)


def _ray_unit(index: tuple[np.ndarray, ...], bbox: tuple[slice, ...], sector: Sector) -> np.ndarray:
    """Unit ray directions ``(N, 3)`` (voxel frame) from the apex to crop voxels ``index``."""
    v = np.stack([i + s.start - c for i, s, c in zip(index, bbox, sector.apex_vox, strict=True)], 1)
    return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6)).astype(np.float32)


def _sheet_profile(
    centres: tuple[np.ndarray, ...], values: np.ndarray, shape, sigma_vox: float
) -> np.ndarray:
    """Values at sheet centre voxels spread by a Gaussian, normalised so that a flat sheet
    keeps its value at the centre (float32, clipped to [0, 1])."""
    sheet = np.zeros(shape, dtype=np.float32)
    sheet[centres] = values
    n = int(4 * sigma_vox) + 2
    delta = np.zeros(2 * n + 1)
    delta[n] = 1.0
    peak = float(ndimage.gaussian_filter1d(delta, sigma_vox)[n])
    return np.clip(ndimage.gaussian_filter(sheet, sigma_vox) / np.float32(peak), 0.0, 1.0)


def sheet_lines(
    labels: np.ndarray,
    t1: np.ndarray,
    spacing_mm: float,
    sector: Sector,
    bbox: tuple[slice, ...],
    params: UltrasoundParams,
) -> tuple[np.ndarray, np.ndarray]:
    """(diffuse, specular) weights in [0, 1] (float32, crop shape) of thin reflecting sheets.

    The sheets are the centre surfaces of the T1 valleys (multi-scale Hessian, non-maximum
    suppression across the valley; :func:`synthesis.hessian.ridge_centres`) inside thin CSF,
    grey matter and falx: the pia-arachnoid and vessels of sulci and the falx, which the iUS
    shows as thin bright lines whatever the CSF width in the MR. The weight ramps from 0 at
    ``line_threshold`` to 1 at twice that valley depth; the specular weight also carries
    ``cos^2`` of the angle between the beam and the sheet normal. Profile sd ``line_sigma_mm``.
    """
    t1n = t1.astype(np.float32) / np.float32(white_matter_t1(t1, labels))
    thin = thin_csf_weight(labels, spacing_mm, params.sulcus_thickness_mm) > 0.2
    candidates = thin | np.isin(labels, (L.GREY_MATTER, L.FALX))
    sigmas = tuple(s / spacing_mm for s in params.line_scales_mm)
    centres, strength, normal, _ = ridge_centres(t1n, sigmas, candidates, bright=False)
    thr = params.line_threshold
    keep = strength >= thr
    centres, normal = tuple(c[keep] for c in centres), normal[keep]
    weight = np.clip(strength[keep] / max(thr, 1e-6) - 1.0, 0.0, 1.0).astype(np.float32)
    cos2 = np.sum(normal * _ray_unit(centres, bbox, sector), axis=1) ** 2
    sigma = params.line_sigma_mm / spacing_mm
    return (
        _sheet_profile(centres, weight, labels.shape, sigma),
        _sheet_profile(centres, weight * cos2.astype(np.float32), labels.shape, sigma),
    )


def vessel_segments(
    labels: np.ndarray,
    spacing_mm: float,
    sector: Sector,
    bbox: tuple[slice, ...],
    params: UltrasoundParams,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(diffuse, specular) weights in [0, 1] of short, gently curved thin segments in the
    parenchyma (grey/white matter, tumour): the walls of penetrating vessels, bright in iUS
    and invisible in the MR. A Poisson number of segments (``vessel_density_per_ml`` per ml of
    parenchyma), uniform centres, random directions, length drawn from ``vessel_length_mm``,
    a random bend of up to a quarter of the length; the specular weight is ``1 - (t.d)^2``
    for the segment direction ``t`` and the ray ``d``. Profile sd ``line_sigma_mm``."""
    tissue = np.isin(labels, (L.GREY_MATTER, L.WHITE_MATTER, L.TUMOUR))
    volume_ml = float(tissue.sum()) * spacing_mm**3 / 1000.0
    n = int(rng.poisson(params.vessel_density_per_ml * volume_ml))
    empty = np.zeros(labels.shape, dtype=np.float32)
    if n == 0:
        return empty, empty.copy()
    cand = np.argwhere(tissue)
    centre = cand[rng.integers(len(cand), size=n)].astype(np.float32)
    tangent = rng.standard_normal((n, 3)).astype(np.float32)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    bend = np.cross(tangent, rng.standard_normal((n, 3)).astype(np.float32))
    length = rng.uniform(*params.vessel_length_mm, size=n).astype(np.float32) / spacing_mm
    bend *= (rng.uniform(0.0, 0.25, size=n) * length / np.maximum(np.linalg.norm(bend, axis=1), 1e-6))[
        :, None
    ]
    s = np.linspace(-0.5, 0.5, max(2, int(np.ceil(float(length.max()) * 2)) + 1), dtype=np.float32)
    pts = centre[:, None] + s[None, :, None] * length[:, None, None] * tangent[:, None]
    pts += (1.0 - 4.0 * s[None, :, None] ** 2) * bend[:, None]  # a parabola through the centre
    idx = np.rint(pts.reshape(-1, 3)).astype(np.intp)
    ok = np.all((idx >= 0) & (idx < np.asarray(labels.shape)), axis=1)
    idx = tuple(idx[ok].T)
    keep = tissue[idx]
    idx = tuple(i[keep] for i in idx)
    t = np.repeat(tangent, len(s), axis=0)[ok][keep]
    across = 1.0 - np.sum(t * _ray_unit(idx, bbox, sector), axis=1) ** 2
    sigma = params.line_sigma_mm / spacing_mm
    ones = np.ones(len(idx[0]), dtype=np.float32)
    return (
        _sheet_profile(idx, ones, labels.shape, sigma),
        _sheet_profile(idx, across.astype(np.float32), labels.shape, sigma),
    )


def reflectivity_map(
    labels: np.ndarray, spacing_mm: float, sector: Sector, bbox: tuple[slice, ...], params: UltrasoundParams
) -> np.ndarray:
    """Specular reflectivity ``(grad Z . d)^2 / |grad Z|`` (1/mm), d = unit ray direction.

    It is maximal where the boundary normal is parallel to the beam and vanishes where the
    beam grazes the boundary.
    """
    z = np.asarray(params.impedance, dtype=np.float32)[labels]
    z = ndimage.gaussian_filter(z, params.interface_sigma_mm / spacing_mm)
    g = np.gradient(z, spacing_mm)
    axes = [
        np.arange(s.start, s.stop, dtype=np.float32) - np.float32(c)
        for s, c in zip(bbox, sector.apex_vox, strict=True)
    ]
    vi, vj, vk = np.meshgrid(*axes, indexing="ij", sparse=True)
    norm = np.sqrt(vi**2 + vj**2 + vk**2) + np.float32(1e-6)
    dot = (g[0] * vi + g[1] * vj + g[2] * vk) / norm
    mag = np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2)
    return (dot**2 / (mag + np.float32(1e-6))).astype(np.float32)


# Partial volume of the outermost voxel layer: coverage = clip(EDGE_SLOPE * d / spacing -
# EDGE_OFFSET, EDGE_FLOOR, 1) for a voxel centre at distance d inside the sector. Calibrated on
# the outermost voxel layer of the 16 RESECT volumes: median 0.64 x the sector median, 16 %
# of it below 10 % of the median (deeper layers: 0.89-0.93, no near-zero voxels).
EDGE_SLOPE, EDGE_OFFSET, EDGE_FLOOR = 1.25, 0.15, 0.02


def edge_coverage(
    r: np.ndarray, theta: np.ndarray, phi: np.ndarray, sector: Sector, spacing_mm: float
) -> np.ndarray:
    """Share in [EDGE_FLOOR, 1] of a voxel inside the sector, from the distance ``d`` (mm) of
    its centre inside the nearest sector face (near and far caps, the two pairs of side
    planes through the apex); see :data:`EDGE_SLOPE`. Only the outermost voxel layer gets less
    than 1: resampling a scan-converted sector onto a voxel grid does that to its edge."""
    half = np.radians(np.asarray(sector.opening_deg, dtype=np.float64)) / 2
    tt, tp = np.tan(theta), np.tan(phi)
    along = r / np.sqrt(1 + tt**2 + tp**2)  # component along the beam axis
    d_theta = along * np.sqrt(1 + tt**2) * np.sin(half[0] - np.abs(theta))
    d_phi = along * np.sqrt(1 + tp**2) * np.sin(half[1] - np.abs(phi))
    d = np.minimum(np.minimum(r - sector.near_mm, sector.depth_mm - r), np.minimum(d_theta, d_phi))
    return np.clip(EDGE_SLOPE * d / spacing_mm - EDGE_OFFSET, EDGE_FLOOR, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Beam-space image formation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BeamGrid:
    """Regular (r, theta, phi) sampling of a sector."""

    r: np.ndarray  # mm
    theta: np.ndarray  # rad
    phi: np.ndarray  # rad

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.r), len(self.theta), len(self.phi))


def beam_grid(sector: Sector, spacing_mm: float, step_mm: float, arc_voxels: float = 0.7) -> BeamGrid:
    """Beam grid: ``step_mm`` along rays; angular steps giving ``arc_voxels`` voxel arcs at
    the far cap."""
    half = np.radians(np.asarray(sector.opening_deg)) / 2
    nr = int(np.ceil((sector.depth_mm - sector.near_mm) / step_mm)) + 1
    arc = arc_voxels * spacing_mm / sector.depth_mm
    nt, npp = (int(np.ceil(2 * h / arc)) + 1 for h in half)
    return BeamGrid(
        r=np.linspace(sector.near_mm, sector.depth_mm, nr),
        theta=np.linspace(-half[0], half[0], nt),
        phi=np.linspace(-half[1], half[1], npp),
    )


def _beam_points_vox(grid: BeamGrid, sector: Sector, spacing_mm: float, offset: np.ndarray) -> np.ndarray:
    """(3, nr, nt, np) voxel coordinates (relative to a crop ``offset``) of beam samples."""
    th, ph = np.meshgrid(grid.theta, grid.phi, indexing="ij")
    d = _ray_directions(sector, th, ph).astype(np.float32)  # (nt, np, 3)
    apex = (np.asarray(sector.apex_vox) - offset).astype(np.float32)
    rr = (grid.r / spacing_mm).astype(np.float32)
    return np.stack([apex[c] + rr[:, None, None] * d[None, :, :, c] for c in range(3)], axis=0)


def to_beam(vol: np.ndarray, points: np.ndarray, order: int = 1) -> np.ndarray:
    """Sample a crop volume at beam points (float32, nearest-edge outside)."""
    return ndimage.map_coordinates(vol, points, order=order, mode="nearest").astype(np.float32)


def _gauss_kernel_energy(sigma: float) -> float:
    """Sum of squared weights of scipy's 1D Gaussian kernel (white-noise variance gain)."""
    if sigma <= 0:
        return 1.0
    n = int(8 * sigma) + 3
    delta = np.zeros(2 * n + 1)
    delta[n] = 1.0
    return float(np.sum(ndimage.gaussian_filter1d(delta, sigma) ** 2))


def grid_steps_mm(grid: BeamGrid) -> tuple[float, float, float]:
    """Sample spacing (mm) of a beam grid along r, theta and phi (arcs at mid depth)."""
    mid = float(np.mean(grid.r))
    dr = float(grid.r[1] - grid.r[0]) if len(grid.r) > 1 else 1.0
    dt = float(grid.theta[1] - grid.theta[0]) * mid if len(grid.theta) > 1 else 1.0
    dp = float(grid.phi[1] - grid.phi[0]) * mid if len(grid.phi) > 1 else 1.0
    return dr, dt, dp


def psf_sigmas(grid: BeamGrid, params: UltrasoundParams, scale: float = 1.0) -> tuple[float, float, float]:
    """PSF sd in beam-grid samples (lateral sizes taken at mid depth), times ``scale``."""
    dr, dt, dp = grid_steps_mm(grid)
    mm = (params.psf_axial_mm, params.psf_lateral_mm, params.psf_elevational_mm)
    return tuple(scale * m / st for m, st in zip(mm, (dr, dt, dp), strict=True))


def speckle_field(
    amplitude: np.ndarray, sigmas: tuple[float, float, float], rng: np.random.Generator
) -> np.ndarray:
    """Complex RF: ``amplitude`` times unit complex Gaussian scatterers, PSF-filtered.

    Normalised so that E|field|^2 equals amplitude^2 in a homogeneous region.
    """
    gain = np.sqrt(np.prod([_gauss_kernel_energy(s) for s in sigmas]))
    out = []
    for _ in range(2):  # real and imaginary parts
        n = rng.standard_normal(amplitude.shape, dtype=np.float32) * amplitude
        out.append(ndimage.gaussian_filter(n, sigmas) / np.float32(gain * np.sqrt(2.0)))
    return out[0] + 1j * out[1]


def smooth_noise(shape: tuple[int, ...], sigmas: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit sd (float32)."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigmas)
    return n / max(float(n.std()), 1e-6)


def _db_to_np(db: np.ndarray | float) -> np.ndarray | float:
    """Amplitude factor exponent (nepers) for an attenuation in dB."""
    return np.asarray(db) * (np.log(10.0) / 20.0)


def depth_gain(alpha_beam: np.ndarray, grid: BeamGrid, params: UltrasoundParams, tgc: float) -> np.ndarray:
    """Round-trip attenuation along rays times TGC (amplitude factor, float32).

    ``alpha_beam``: dB/cm/MHz per beam sample. TGC undoes ``tgc`` of a uniform brain
    attenuation ``tgc_reference_db`` measured from the first sample.
    """
    dr_cm = float(grid.r[1] - grid.r[0]) / 10.0 if len(grid.r) > 1 else 0.0
    path_db = 2 * params.frequency_mhz * (np.cumsum(alpha_beam, axis=0) - alpha_beam) * dr_cm
    depth_cm = (grid.r - grid.r[0]) / 10.0
    tgc_db = 2 * params.frequency_mhz * params.tgc_reference_db * tgc * depth_cm
    return np.exp(_db_to_np(tgc_db[:, None, None] - path_db)).astype(np.float32)


def shadow_transmission(
    refl_beam: np.ndarray, grid: BeamGrid, strength: float, threshold: float = 0.0
) -> np.ndarray:
    """Transmission ``exp(-strength * integral of max(reflectivity - threshold, 0))``.

    The integral runs along each ray up to (excluding) the sample: only strong reflectors
    (falx, dense rims) shadow what lies behind them.
    """
    dr = float(grid.r[1] - grid.r[0]) if len(grid.r) > 1 else 0.0
    excess = np.maximum(refl_beam - np.float32(threshold), 0)
    acc = (np.cumsum(excess, axis=0) - excess) * dr
    return np.exp(-strength * acc).astype(np.float32)


def compress(
    img: np.ndarray, gamma: float, median: float, out_max: float, saturation: float | None = None
) -> np.ndarray:
    """Power-law compression ``median * (img / median(img))^gamma``, then (``saturation``
    given) the soft display saturation ``S tanh(x / S)`` with ``S = saturation * median``,
    clipped to ``out_max``."""
    ref = float(np.median(img[img > 0])) if np.any(img > 0) else 1.0
    out = median * np.power(np.maximum(img, 0) / ref, gamma)
    if saturation is not None:
        top = np.float32(saturation * median)
        out = top * np.tanh(out / top)
    return np.clip(out, 0, out_max).astype(np.float32)


def from_beam(
    beam_img: np.ndarray, grid: BeamGrid, r: np.ndarray, theta: np.ndarray, phi: np.ndarray
) -> np.ndarray:
    """Resample a beam-grid image onto voxels with beam coordinates (r, theta, phi)."""

    def idx(x: np.ndarray, axis: np.ndarray) -> np.ndarray:
        step = axis[1] - axis[0] if len(axis) > 1 else 1.0
        return ((x - axis[0]) / step).astype(np.float32)

    ri, ti, pi = np.broadcast_arrays(idx(r, grid.r), idx(theta, grid.theta), idx(phi, grid.phi))
    coords = np.stack([ri, ti, pi])
    return ndimage.map_coordinates(beam_img, coords, order=1, mode="nearest").astype(np.float32)


# --------------------------------------------------------------------------------------------
# Main entry point
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseDraws:
    """The per-case random settings of one render (drawn from the ranges of the params)."""

    table: np.ndarray  # per-label echogenicity
    tgc: float
    gamma: float
    median: float
    psf_scale: float
    saturation: float | None

    @classmethod
    def draw(cls, params: UltrasoundParams, rng: np.random.Generator) -> CaseDraws:
        return cls(
            table=case_echo_table(params, rng),
            tgc=float(rng.uniform(*params.tgc_compensation)),
            gamma=float(rng.uniform(*params.gamma)),
            median=float(rng.uniform(*params.out_median)),
            psf_scale=float(rng.uniform(*params.psf_scale)),
            saturation=float(rng.uniform(*params.saturation_ratio)) if params.saturation_ratio else None,
        )


def _voxel_maps(
    lab: np.ndarray,
    t1: np.ndarray,
    spacing_mm: float,
    sector: Sector,
    bbox: tuple[slice, ...],
    params: UltrasoundParams,
    draws: CaseDraws,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Crop maps (amplitude, specular reflectivity, attenuation, coherent sheet echo or None)."""
    amp = echo_map(lab, t1, spacing_mm, params, draws.table, rng)
    sheet = None
    reflectors = []
    if params.line_echo > 0:
        reflectors.append((params.line_echo, *sheet_lines(lab, t1, spacing_mm, sector, bbox, params)))
    if params.vessel_density_per_ml > 0:
        reflectors.append((params.vessel_echo, *vessel_segments(lab, spacing_mm, sector, bbox, params, rng)))
    for echo, diffuse, specular in reflectors:
        extra = np.float32(echo * (1 - params.line_specular)) * diffuse
        amp = np.sqrt(amp**2 + extra**2)  # independent scatterers add in power
        coherent = np.float32(echo * params.line_specular) * specular
        sheet = coherent if sheet is None else sheet + coherent
    refl = reflectivity_map(lab, spacing_mm, sector, bbox, params)
    alpha = np.asarray(params.attenuation, dtype=np.float32)[lab]
    return amp, refl, alpha, sheet


def _beam_image(
    maps: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None],
    grid: BeamGrid,
    pts: np.ndarray,
    params: UltrasoundParams,
    draws: CaseDraws,
    rng: np.random.Generator,
) -> np.ndarray:
    """The compressed image on the beam grid: speckle + specular echoes, near field,
    attenuation with TGC, shadowing, power-law compression."""
    amp, refl, alpha = (to_beam(m, pts) for m in maps[:3])
    sig = psf_sigmas(grid, params, draws.psf_scale)
    het_sig = tuple(params.hetero_mm / st for st in grid_steps_mm(grid))
    amp *= np.exp(params.hetero_amp * smooth_noise(grid.shape, het_sig, rng))
    spec = ndimage.gaussian_filter(refl, sig) * np.float32(params.interface_gain)
    if maps[3] is not None:
        spec += ndimage.gaussian_filter(to_beam(maps[3], pts), sig)
    env = np.zeros(grid.shape, dtype=np.float32)
    for _ in range(max(1, params.compounding)):
        env += np.abs(speckle_field(amp, sig, rng) + spec).astype(np.float32)
    env /= np.float32(max(1, params.compounding))
    del spec, amp
    near = 1 + params.near_field_gain * np.exp(-(grid.r - grid.r[0]) / params.near_field_mm)
    env *= near[:, None, None].astype(np.float32)
    env *= depth_gain(alpha, grid, params, draws.tgc)
    env *= shadow_transmission(refl, grid, params.shadow_strength, params.shadow_threshold)
    return compress(env, draws.gamma, draws.median, params.out_max, draws.saturation)


def render_ultrasound(
    labels: np.ndarray,
    t1: np.ndarray,
    spacing_mm: float,
    sector: Sector,
    rng: np.random.Generator,
    params: UltrasoundParams | None = None,
) -> np.ndarray:
    """Render an iUS volume (float32, shape of ``labels``, 0 outside the sector).

    ``labels`` are :mod:`synthesis.labels` codes and ``t1`` the pre-operative T1 on the same
    grid (a weak high-pass texture; with ``t1_echo_mix`` a monotone echo map; with
    ``line_echo`` the source of the sulcal sheets). Work is limited to the sector's bounding
    box. Deterministic for a given ``rng`` state. ``params`` default: the legacy renderer.
    """
    params = params if params is not None else UltrasoundParams()
    if labels.shape != t1.shape:
        raise ValueError(f"labels {labels.shape} and t1 {t1.shape} differ")
    out = np.zeros(labels.shape, dtype=np.float32)
    bbox = sector_bbox(labels.shape, spacing_mm, sector)
    if any(s.stop - s.start < 2 for s in bbox):
        return out
    offset = np.array([s.start for s in bbox], dtype=np.float64)
    lab = np.clip(labels[bbox], 0, N_LABELS - 1).astype(np.intp)
    draws = CaseDraws.draw(params, rng)
    maps = _voxel_maps(lab, t1[bbox], spacing_mm, sector, bbox, params, draws, rng)
    grid = beam_grid(sector, spacing_mm, params.beam_step_mm, params.beam_arc_voxels)
    pts = _beam_points_vox(grid, sector, spacing_mm, offset)
    img = _beam_image(maps, grid, pts, params, draws, rng)
    del maps, pts

    r, theta, phi = _polar_coords(bbox, spacing_mm, sector)
    inside = _mask_from_polar(r, theta, phi, sector)
    vox = from_beam(img, grid, r, theta, phi)
    if params.edge_partial_volume:
        vox *= edge_coverage(r, theta, phi, sector, spacing_mm)
    out[bbox] = np.where(inside, vox, 0.0)
    return out


__all__ = [
    "SECTOR_RANGES",
    "CaseDraws",
    "Sector",
    "UltrasoundParams",
    "beam_depth_mm",
    "compress",
    "edge_coverage",
    "random_sector",
    "render_ultrasound",
    "sector_bbox",
    "sector_mask",
    "sheet_lines",
    "smooth_noise",
    "vessel_segments",
]
