"""Statistics of 3D intra-operative ultrasound volumes, for real (RESECT) and simulated data.

The same measurements are applied to real and simulated volumes so that the simulator can be
calibrated and checked (see ``benchmarks/simulator_realism.py``).

Conventions
-----------
* A volume is a 3D array on an isotropic grid of spacing ``spacing_mm``; array axis order
  (i, j, k). Everything geometric is measured in voxel coordinates and converted to mm with
  ``spacing_mm``.
* The sector (field of view) is the set of non-zero voxels, closed and hole-filled, so that
  anechoic voxels (exact zeros) inside the fan still count as inside.
* Beam axis, apex and opening angles are *estimated from the mask shape alone* (the mask's
  principal axis along which its cross-section grows fastest), so real and simulated volumes
  are treated identically.
* Structure (:func:`structure_statistics`): bright ridges (thin lines and sheets) are found
  by a multi-scale Hessian filter (:mod:`synthesis.hessian`) and their width measured as the
  FWHM of the intensity profile across them; speckle contrast as the local mean/std in 3 mm
  windows; the fall-off with depth below the near-field line. Cavity shape
  (:func:`cavity_statistics`) needs a label map, so it exists for simulated volumes only.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage, stats
from scipy.spatial import ConvexHull, Delaunay, QhullError

from remind2reg.inference.core.sector import sector_mask
from remind2reg.synthesis import labels as L
from remind2reg.synthesis.hessian import ridge_centres

QUANTILES: tuple[float, ...] = (5.0, 25.0, 50.0, 75.0, 95.0)
N_DEPTH_BINS = 10


@dataclass
class UsStatistics:
    """Summary statistics of one ultrasound volume, measured inside its sector.

    Quantiles are given raw (``q_raw``, volume units) and divided by the median (``q_norm``).
    ``speckle_fwhm_mm`` is the full width at half maximum of the normalised autocorrelation of
    the local-mean-removed intensity along the array axes (i, j, k).
    ``depth_profile`` holds the mean intensity in ``N_DEPTH_BINS`` equal bins of depth along
    the estimated beam axis, divided by the mean of the first two bins.
    """

    name: str
    shape: tuple[int, int, int]
    q_raw: tuple[float, ...]
    q_norm: tuple[float, ...]
    max_value: float
    snr: float  # mean / std inside the sector
    near_zero_fraction: float  # fraction of sector voxels below 10 % of the median
    speckle_fwhm_mm: tuple[float, float, float]
    nakagami_m: float
    skewness: float
    kurtosis: float  # excess kurtosis
    depth_profile: tuple[float, ...]
    depth_extent_mm: float  # extent of the sector along the estimated beam axis
    opening_deg: tuple[float, float]  # estimated full opening angles (two lateral axes)
    bbox_fill: float  # sector voxels / voxels of its axis-aligned bounding box
    extra: dict[str, float] = field(default_factory=dict)
    structure: StructureStatistics | None = None
    cavity: CavityStatistics | None = None


def _principal_axes(coords: np.ndarray) -> np.ndarray:
    """Rows: unit principal axes (largest variance first) of an (N, 3) point cloud."""
    centred = coords - coords.mean(axis=0)
    cov = centred.T @ centred / max(len(coords) - 1, 1)
    _, vecs = np.linalg.eigh(cov)
    return vecs[:, ::-1].T


def estimate_beam_axis(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Estimate the beam axis of a sector mask.

    The beam axis is taken as the principal axis of least extent (on RESECT the sector is
    about 40-50 mm deep and 55-95 mm wide), oriented so that sqrt(cross-section area) grows
    along it (a pyramid's width grows linearly with depth). Returns ``(axis, frame)`` with
    ``frame`` a (3, 3) array whose rows are (axis, lateral_wide, lateral_narrow).
    """
    coords = np.argwhere(mask).astype(np.float64)
    if len(coords) > 400_000:
        coords = coords[:: len(coords) // 400_000 + 1]
    axes = _principal_axes(coords)
    axis = axes[2]
    t = coords @ axis
    edges = np.linspace(t.min(), t.max(), 21)
    counts, _ = np.histogram(t, bins=edges)
    centres = 0.5 * (edges[1:] + edges[:-1])
    slope = np.polyfit(centres[2:-2], np.sqrt(counts[2:-2].astype(np.float64)), 1)[0]
    if slope < 0:
        axis = -axis
    return axis, np.stack([axis, axes[0], axes[1]])


def frame_from_axis(mask: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """(3, 3) frame (axis, lateral_wide, lateral_narrow) for a KNOWN beam axis (array axes):
    the lateral directions are the principal axes of the mask projected across the beam."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    coords = np.argwhere(mask).astype(np.float64)
    if len(coords) > 400_000:
        coords = coords[:: len(coords) // 400_000 + 1]
    across = coords - np.outer(coords @ a, a)
    lateral = _principal_axes(across)
    return np.stack([a, lateral[0], lateral[1]])


def _opening_angles(coords: np.ndarray, frame: np.ndarray, spacing_mm: float) -> tuple:
    """Depth extent (mm) and full opening angles (deg) of a mask in the estimated frame.

    Lateral widths (1-99 % extent) are measured in two thin slabs, at 10-20 % and 60-75 % of
    the depth range (away from the curved far cap); opening = ``2 atan(dW / 2 / dDepth)``.
    """
    t = coords @ frame[0]
    t0, t1 = np.percentile(t, [0.5, 99.5])
    depth = (t1 - t0) * spacing_mm
    slabs = ((0.10, 0.20), (0.60, 0.75))
    sel = [(t >= t0 + a * (t1 - t0)) & (t < t0 + b * (t1 - t0)) for a, b in slabs]
    dz = (np.mean(slabs[1]) - np.mean(slabs[0])) * (t1 - t0)
    angles = []
    for row in (1, 2):
        u = coords @ frame[row]
        w = [np.subtract(*np.percentile(u[m], [99, 1])) if m.sum() > 10 else 0.0 for m in sel]
        angles.append(float(np.degrees(2 * np.arctan(max(w[1] - w[0], 0.0) / 2 / dz))))
    angles.sort(reverse=True)
    return float(depth), (angles[0], angles[1])


def _depth_profile(values: np.ndarray, coords: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Mean intensity in N_DEPTH_BINS bins of depth along ``axis``, relative to bins 0-1."""
    t = coords @ axis
    edges = np.linspace(t.min(), t.max() + 1e-6, N_DEPTH_BINS + 1)
    idx = np.clip(np.digitize(t, edges) - 1, 0, N_DEPTH_BINS - 1)
    sums = np.bincount(idx, weights=values, minlength=N_DEPTH_BINS)
    counts = np.bincount(idx, minlength=N_DEPTH_BINS)
    means = sums / np.maximum(counts, 1)
    ref = means[:2].mean()
    return means / ref if ref > 0 else means


def autocorrelation_fwhm(
    volume: np.ndarray,
    mask: np.ndarray,
    spacing_mm: float,
    patch: int = 24,
    max_patches: int = 24,
    detrend_sigma_mm: float = 4.0,
    stride: int | None = None,
) -> tuple[float, float, float]:
    """Speckle size: FWHM (mm) of the normalised autocorrelation along each array axis.

    The local mean (masked Gaussian average, sigma ``detrend_sigma_mm``) is subtracted; cubic
    patches of ``patch`` voxels lying entirely inside the eroded mask are taken on a regular
    grid (step ``stride`` voxels, default ``patch // 2``); their (zero-padded FFT) autocorrelations are averaged and normalised at zero lag.
    Returns NaNs when no patch fits.
    """
    vol = np.asarray(volume, dtype=np.float32)
    m = mask.astype(np.float32)
    sig = detrend_sigma_mm / spacing_mm
    local = ndimage.gaussian_filter(vol * m, sig) / np.maximum(ndimage.gaussian_filter(m, sig), 1e-6)
    resid = (vol - local) * m
    inner = ndimage.binary_erosion(mask, iterations=2)
    # a patch fits where the box-filtered inner mask is 1
    fits = ndimage.uniform_filter(inner.astype(np.float32), size=patch) > 0.999
    step = max(1, stride or patch // 2)
    starts = np.argwhere(fits[::step, ::step, ::step]) * step - patch // 2
    ok = np.all((starts >= 0) & (starts + patch <= np.array(vol.shape)), axis=1)
    starts = starts[ok]
    if len(starts) == 0:
        return (float("nan"),) * 3
    if len(starts) > max_patches:
        sel = np.linspace(0, len(starts) - 1, max_patches).round().astype(int)
        starts = starts[sel]
    acf = np.zeros((2 * patch,) * 3, dtype=np.float64)
    for s in starts:
        p = resid[s[0] : s[0] + patch, s[1] : s[1] + patch, s[2] : s[2] + patch]
        p = p - p.mean()
        f = np.fft.rfftn(p, s=(2 * patch,) * 3, axes=(0, 1, 2))
        acf += np.fft.irfftn(np.abs(f) ** 2, s=(2 * patch,) * 3, axes=(0, 1, 2))
    acf /= acf[0, 0, 0]
    out = []
    lines = (acf[:patch, 0, 0], acf[0, :patch, 0], acf[0, 0, :patch])
    for line in lines:
        out.append(_half_width(np.asarray(line)) * 2 * spacing_mm)
    return tuple(out)


def _half_width(profile: np.ndarray) -> float:
    """Lag (voxels, linear interpolation) where a profile normalised at lag 0 falls to 0.5."""
    below = np.nonzero(profile < 0.5)[0]
    if len(below) == 0:
        return float(len(profile))
    k = below[0]
    a, b = profile[k - 1], profile[k]
    return float(k - 1 + (a - 0.5) / (a - b))


RIDGE_SCALES_MM: tuple[float, ...] = (0.5, 1.0, 1.5)
RIDGE_PROFILE_MM = 4.0  # half-length of the profile sampled across each ridge
RIDGE_MIN_STRENGTH = 0.5  # scale-normalised curvature, in units of the sector median
LOCAL_WINDOW_MM = 3.0


@dataclass
class StructureStatistics:
    """Structure of one ultrasound volume inside its (inner) sector.

    ``ridge_fwhm_mm``: median (and quartiles) over bright ridge centres of the FWHM of the
    profile across the ridge (baseline: mean of the profile minima on each side within
    4 mm). ``ridge_density``: ridge centre voxels (strength >= :data:`RIDGE_MIN_STRENGTH`)
    per inner-sector voxel. ``ridge_contrast``: median peak / baseline. ``local_snr``:
    median of mean/std in 3 mm cubes (speckle contrast; Rayleigh speckle gives 1.91).
    ``near_field_ratio``: mean intensity of the first depth bin / bins 2-3 (the bright line at
    the top of the sector); ``depth_falloff``: bins 7-9 / bins 2-3 (below the near field).
    """

    ridge_fwhm_mm: float
    ridge_fwhm_q25_mm: float
    ridge_fwhm_q75_mm: float
    ridge_density: float
    ridge_contrast: float
    local_snr: float
    near_field_ratio: float
    depth_falloff: float


def _profile_fwhm(profile: NDArray, step_mm: float) -> tuple[float, float]:
    """(FWHM mm, peak / baseline) of a profile whose centre sample is the ridge; NaN when a
    side never falls below half height."""
    c = len(profile) // 2
    peak = float(profile[c - 1 : c + 2].max())
    left, right = profile[:c][::-1], profile[c + 1 :]
    base = 0.5 * (float(left.min()) + float(right.min()))
    half = 0.5 * (peak + base)
    widths = []
    for side in (left, right):
        below = np.nonzero(side < half)[0]
        if len(below) == 0:
            return float("nan"), float("nan")
        k = below[0]
        prev = side[k - 1] if k > 0 else peak
        widths.append(k + (prev - half) / max(prev - side[k], 1e-9))
    return float(sum(widths) * step_mm), peak / max(base, 1e-6)


def ridge_statistics(
    vol: NDArray, inner: NDArray[np.bool_], spacing_mm: float, max_profiles: int = 600
) -> tuple[float, float, float, float, float]:
    """(median FWHM, q25, q75, density, contrast) of the bright ridges of ``vol`` (already
    divided by its median) inside ``inner``; see :class:`StructureStatistics`."""
    n_inner = int(inner.sum())
    if n_inner < 1000:
        return (float("nan"),) * 5
    candidates = inner & (vol > np.percentile(vol[inner], 85))
    sigmas = tuple(s / spacing_mm for s in RIDGE_SCALES_MM)
    centres, strength, normal, _ = ridge_centres(vol, sigmas, candidates, bright=True)
    strong = strength >= RIDGE_MIN_STRENGTH
    density = float(strong.sum() / n_inner)
    pick = np.nonzero(strong)[0]
    if len(pick) == 0:
        return float("nan"), float("nan"), float("nan"), density, float("nan")
    if len(pick) > max_profiles:
        pick = pick[np.linspace(0, len(pick) - 1, max_profiles).round().astype(int)]
    step = 0.25  # mm between profile samples
    t = np.arange(-RIDGE_PROFILE_MM, RIDGE_PROFILE_MM + 1e-6, step) / spacing_mm  # voxels
    pts = np.stack(centres, 0)[:, pick].astype(np.float32)  # (3, P)
    coords = pts[:, :, None] + normal[pick].T[:, :, None] * t[None, None, :]  # (3, P, T)
    profiles = ndimage.map_coordinates(vol, coords.reshape(3, -1), order=1, mode="nearest")
    res = np.array([_profile_fwhm(p, step) for p in profiles.reshape(len(pick), len(t))])
    ok = ~np.isnan(res[:, 0])
    if not ok.any():
        return float("nan"), float("nan"), float("nan"), density, float("nan")
    q25, q50, q75 = np.percentile(res[ok, 0], [25, 50, 75])
    return float(q50), float(q25), float(q75), density, float(np.median(res[ok, 1]))


def local_snr(vol: NDArray, mask: NDArray[np.bool_], spacing_mm: float) -> float:
    """Median over the sector of mean/std in cubes of :data:`LOCAL_WINDOW_MM`."""
    size = max(3, round(LOCAL_WINDOW_MM / spacing_mm))
    inner = ndimage.binary_erosion(mask, iterations=size // 2 + 1)
    if not inner.any():
        return float("nan")
    v = np.asarray(vol, dtype=np.float64)
    mean = ndimage.uniform_filter(v, size)
    var = np.maximum(ndimage.uniform_filter(v * v, size) - mean**2, 1e-12)
    return float(np.median(mean[inner] / np.sqrt(var[inner])))


def structure_statistics(
    vol: NDArray, mask: NDArray[np.bool_], spacing_mm: float, depth_profile: tuple[float, ...]
) -> StructureStatistics:
    """:class:`StructureStatistics` of ``vol`` inside ``mask`` (the sector, a cavity already
    removed by the caller); ridges are sought 2 mm or more inside the mask."""
    med = float(np.median(vol[mask])) if mask.any() else 1.0
    norm = np.asarray(vol, dtype=np.float32) / np.float32(max(med, 1e-6))
    inner = ndimage.binary_erosion(mask, iterations=max(1, round(2.0 / spacing_mm)))
    fwhm, q25, q75, density, contrast = ridge_statistics(norm, inner, spacing_mm)
    prof = np.asarray(depth_profile, dtype=np.float64)
    ref = prof[2:4].mean() if len(prof) >= 10 else np.nan
    return StructureStatistics(
        ridge_fwhm_mm=fwhm,
        ridge_fwhm_q25_mm=q25,
        ridge_fwhm_q75_mm=q75,
        ridge_density=density,
        ridge_contrast=contrast,
        local_snr=local_snr(norm, mask, spacing_mm),
        near_field_ratio=float(prof[0] / ref) if ref > 0 else float("nan"),
        depth_falloff=float(prof[7:10].mean() / ref) if ref > 0 else float("nan"),
    )


@dataclass
class CavityStatistics:
    """Resection cavity of a simulated case (label :data:`synthesis.labels.CAVITY`).

    ``sector_fraction``: cavity voxels inside the sector / sector voxels. ``sphericity``:
    ``pi^(1/3) (6 V)^(2/3) / A`` of the largest connected piece (1 for a ball, 0.81 for a
    cube, lower for irregular or flattened shapes), with the area ``A`` from the co-area
    formula on the indicator smoothed by 1 voxel. ``solidity``: its volume / the volume of its
    convex hull (1 for convex shapes; lower for folds, collapsed walls and corridors).
    """

    sector_fraction: float
    volume_ml: float
    sphericity: float
    solidity: float


def cavity_statistics(
    labels: NDArray, sector: NDArray[np.bool_], spacing_mm: float
) -> CavityStatistics | None:
    """:class:`CavityStatistics` of a label map, or None without a cavity."""
    cav = np.asarray(labels) == L.CAVITY
    if not cav.any():
        return None
    fraction = float((cav & sector).sum() / max(int(sector.sum()), 1))
    lab, _ = ndimage.label(cav)
    sizes = np.bincount(lab.ravel())[1:]
    piece = lab == (int(np.argmax(sizes)) + 1)
    box = tuple(
        slice(max(s.start - 3, 0), s.stop + 3) for s in ndimage.find_objects(piece.astype(np.uint8))[0]
    )
    smooth = ndimage.gaussian_filter(piece[box].astype(np.float32), 1.0)
    grads = np.gradient(smooth)
    area = float(np.sqrt(sum(g.astype(np.float64) ** 2 for g in grads)).sum()) * spacing_mm**2
    volume = float(piece.sum()) * spacing_mm**3
    return CavityStatistics(
        sector_fraction=fraction,
        volume_ml=float(cav.sum()) * spacing_mm**3 / 1000.0,
        sphericity=float(np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / max(area, 1e-9)),
        solidity=_solidity(piece[box]),
    )


def _solidity(piece: NDArray[np.bool_]) -> float:
    """Voxels of ``piece`` / voxels whose centres lie in the convex hull of its voxel centres
    (both counted on the same lattice, so that a voxelised convex shape gives 1); NaN for a
    flat or tiny piece."""
    surface = np.argwhere(piece & ~ndimage.binary_erosion(piece)).astype(np.float64)
    try:
        hull = Delaunay(surface[ConvexHull(surface).vertices])
    except QhullError:
        return float("nan")
    grid = np.argwhere(np.ones(piece.shape, dtype=bool)).astype(np.float64)
    inside = int((hull.find_simplex(grid) >= 0).sum())
    return float(piece.sum() / inside) if inside else float("nan")


def posterior_enhancement_ratio(
    volume: NDArray, labels: NDArray, apex_vox: tuple[float, float, float], spacing_mm: float
) -> float:
    """Brightness below the cavity: median intensity of tissue 1-10 mm beyond a cavity
    along the rays from ``apex_vox`` / median of tissue at the same distances from the apex
    whose rays miss the cavity (more than 3 mm from it). NaN without a cavity."""
    cav = np.asarray(labels) == L.CAVITY
    vol = np.asarray(volume, dtype=np.float32)
    tissue = (vol > 0) & np.isin(labels, (L.GREY_MATTER, L.WHITE_MATTER, L.TUMOUR, L.CSF))
    if not cav.any() or not tissue.any():
        return float("nan")
    idx = np.argwhere(tissue).astype(np.float32)
    ray = idx - np.asarray(apex_vox, dtype=np.float32)
    r = np.linalg.norm(ray, axis=1)
    unit = ray / np.maximum(r, 1e-6)[:, None]
    behind = np.zeros(len(idx), dtype=bool)
    for k in np.arange(1.0, 10.01, 0.5) / spacing_mm:  # look back towards the probe
        back = (idx - k * unit).T
        behind |= ndimage.map_coordinates(cav.astype(np.uint8), back, order=0, cval=0).astype(bool)
    near = ndimage.distance_transform_edt(~cav) * spacing_mm <= 3.0
    beside = ~behind & ~near[tuple(idx.astype(int).T)]
    if behind.sum() < 50 or beside.sum() < 50:
        return float("nan")
    lo, hi = np.percentile(r[behind], [5, 95])
    beside &= (r >= lo) & (r <= hi)
    values = vol[tuple(idx.astype(int).T)]
    return float(np.median(values[behind]) / max(float(np.median(values[beside])), 1e-6))


def _speckle_fwhm(vol: np.ndarray, mask: np.ndarray, spacing_mm: float) -> tuple[float, float, float]:
    """:func:`autocorrelation_fwhm`; where no patch fits on the default grid (a fragmented
    mask, e.g. with a cavity excluded), the same 24-voxel patches on a finer 4-voxel grid,
    then 16-voxel patches (these read about 0-30 % smaller on RESECT)."""
    for patch, stride in ((24, None), (24, 4), (16, 4)):
        out = autocorrelation_fwhm(vol, mask, spacing_mm, patch=patch, stride=stride)
        if not np.isnan(out[0]):
            break
    return out


def us_statistics(
    volume: np.ndarray,
    spacing_mm: float,
    name: str = "",
    exclude: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    structure: bool = True,
    beam_axis: np.ndarray | None = None,
) -> UsStatistics:
    """Measure :class:`UsStatistics` of a volume that is zero outside its sector.

    ``exclude`` (boolean, shape of ``volume``), if given, removes voxels from the intensity and
    speckle statistics (quantiles, max, SNR, near-zero fraction, speckle, Nakagami, moments,
    depth profile) while the sector-shape statistics (depth extent, opening, bbox fill) still
    use the full sector. Used to leave out a simulated resection cavity, which the real
    (pre-resection) RESECT volumes do not have. ``extra["excluded fraction"]`` records the
    share of the sector that was left out. ``labels`` (a simulated case's fixed label map)
    adds :func:`cavity_statistics`; ``structure`` adds :func:`structure_statistics`.
    ``beam_axis`` (array axes, into the tissue), when known (simulated volumes), replaces the
    estimate of :func:`estimate_beam_axis` (which fails on narrow fans and block-like
    freehand reconstructions).
    """
    vol = np.asarray(volume, dtype=np.float32)
    mask = sector_mask(vol)
    coords = np.argwhere(mask).astype(np.float64)
    if beam_axis is None:
        axis, frame = estimate_beam_axis(mask)
    else:
        frame = frame_from_axis(mask, beam_axis)
        axis = frame[0]
    depth, opening = _opening_angles(coords, frame, spacing_mm)
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    bbox_fill = float(mask.sum() / np.prod(hi - lo + 1))
    extra: dict[str, float] = {}
    full_count = int(mask.sum())
    if exclude is not None:
        keep = mask & ~np.asarray(exclude, dtype=bool)
        if keep.sum() > 0.05 * full_count:
            extra["excluded fraction"] = float(1.0 - keep.sum() / max(full_count, 1))
            mask = keep
    values = vol[mask].astype(np.float64)
    icoords = np.argwhere(mask).astype(np.float64)
    q = np.percentile(values, QUANTILES)
    med = q[2] if q[2] > 0 else max(values.mean(), 1e-6)
    sq = values**2
    profile = tuple(float(x) for x in _depth_profile(values, icoords, axis))
    return UsStatistics(
        name=name,
        shape=tuple(int(s) for s in vol.shape),
        q_raw=tuple(float(x) for x in q),
        q_norm=tuple(float(x / med) for x in q),
        max_value=float(values.max()),
        snr=float(values.mean() / max(values.std(), 1e-9)),
        near_zero_fraction=float(np.mean(values < 0.1 * med)),
        speckle_fwhm_mm=_speckle_fwhm(vol, mask, spacing_mm),
        nakagami_m=float(sq.mean() ** 2 / max(sq.var(), 1e-12)),
        skewness=float(stats.skew(values)),
        kurtosis=float(stats.kurtosis(values)),
        depth_profile=profile,
        depth_extent_mm=depth,
        opening_deg=opening,
        bbox_fill=bbox_fill,
        extra=extra,
        structure=structure_statistics(vol, mask, spacing_mm, profile) if structure else None,
        cavity=cavity_statistics(labels, sector_mask(vol), spacing_mm) if labels is not None else None,
    )


def load_volume(path: str) -> tuple[np.ndarray, float]:
    """Read a NIfTI volume (float32) and its mean voxel spacing in mm."""
    import nibabel as nib

    img = nib.load(path)
    spacing = float(np.mean(img.header.get_zooms()[:3]))
    return np.asarray(img.dataobj, dtype=np.float32), spacing


def resect_statistics(resect_dir: str) -> list[UsStatistics]:
    """:func:`us_statistics` of every ``*.nii.gz`` in ``resect_dir`` (sorted by name)."""
    out = []
    for path in sorted(glob.glob(os.path.join(resect_dir, "*.nii.gz"))):
        vol, spacing = load_volume(path)
        out.append(us_statistics(vol, spacing, name=os.path.basename(path).split(".")[0]))
    return out


def resect_rigid_table(tags_dir: str | os.PathLike) -> list[tuple[str, float, float, float]]:
    """Best rigid fit of each RESECT ``.tag`` file, fixed = US, moving = MRI, sorted by case
    number: (case, rotation in degrees, translation in mm at the US landmark centroid, mean
    landmark distance left after the fit in mm). The source of ``families.RESECT_RIGID``."""
    from scipy.spatial.transform import Rotation

    from remind2reg.inference.core.pointfit import fit_rigid, rigid_fit_residual
    from remind2reg.inference.geometry import apply_affine
    from remind2reg.inference.io.landmarks import read_tag_file

    paths = sorted(glob.glob(os.path.join(str(tags_dir), "*.tag")))
    paths.sort(key=lambda p: int(os.path.basename(p).split("-")[0][4:]))
    rows = []
    for path in paths:
        mri, us = read_tag_file(path)
        us2mri = fit_rigid(us, mri)
        centre = us.mean(axis=0)
        shift = float(np.linalg.norm(apply_affine(us2mri, centre[None])[0] - centre))
        angle = float(np.degrees(Rotation.from_matrix(us2mri[:3, :3]).magnitude()))
        rows.append((os.path.basename(path).split("-")[0], angle, shift, rigid_fit_residual(us, mri)))
    return rows


def statistic_rows(s: UsStatistics) -> dict[str, float]:
    """Flatten one statistics record into named scalars (the table's rows)."""
    rows: dict[str, float] = {}
    for q, v in zip(QUANTILES, s.q_raw, strict=True):
        rows[f"q{q:g} raw"] = v
    for q, v in zip(QUANTILES, s.q_norm, strict=True):
        if q != 50.0:
            rows[f"q{q:g} / median"] = v
    rows["max"] = s.max_value
    rows["mean/std (SNR)"] = s.snr
    rows["near-zero fraction"] = s.near_zero_fraction
    for ax, v in zip("ijk", s.speckle_fwhm_mm, strict=True):
        rows[f"speckle FWHM {ax} (mm)"] = v
    rows["speckle FWHM mean (mm)"] = float(np.mean(s.speckle_fwhm_mm))
    rows["Nakagami m"] = s.nakagami_m
    rows["skewness"] = s.skewness
    rows["excess kurtosis"] = s.kurtosis
    n = len(s.depth_profile)
    rows["depth profile mid/top"] = float(np.mean(s.depth_profile[n // 2 - 1 : n // 2 + 1]))
    rows["depth profile bottom/top"] = float(np.mean(s.depth_profile[-2:]))
    rows["depth extent (mm)"] = s.depth_extent_mm
    rows["opening wide (deg)"] = s.opening_deg[0]
    rows["opening narrow (deg)"] = s.opening_deg[1]
    rows["bbox fill"] = s.bbox_fill
    if s.structure is not None:
        st = s.structure
        rows["ridge FWHM median (mm)"] = st.ridge_fwhm_mm
        rows["ridge FWHM q25 (mm)"] = st.ridge_fwhm_q25_mm
        rows["ridge FWHM q75 (mm)"] = st.ridge_fwhm_q75_mm
        rows["ridge density"] = st.ridge_density
        rows["ridge contrast (peak/base)"] = st.ridge_contrast
        rows["local SNR (3 mm)"] = st.local_snr
        rows["near-field line (bin 0 / bins 2-3)"] = st.near_field_ratio
        rows["depth fall-off (bins 7-9 / bins 2-3)"] = st.depth_falloff
    if s.cavity is not None:
        rows["cavity: sector fraction"] = s.cavity.sector_fraction
        rows["cavity: volume (ml)"] = s.cavity.volume_ml
        rows["cavity: sphericity"] = s.cavity.sphericity
        rows["cavity: solidity (volume/hull)"] = s.cavity.solidity
    rows.update(s.extra)
    return rows


def statistics_table(real: list[UsStatistics], simulated: list[UsStatistics]) -> str:
    """Markdown table per statistic: mean ± sd and min..max of real and of simulated volumes.

    "in real range" is "yes" when every simulated value lies within the real min..max.
    Rows present on one side only (e.g. ``excluded fraction``) get "-"; NaN values (no
    speckle patch fits) are left out of that row.
    """
    real_rows = [statistic_rows(s) for s in real]
    sim_rows = [statistic_rows(s) for s in simulated]
    keys = list((real_rows or sim_rows or [{}])[0].keys())
    for r in sim_rows:
        keys += [k for k in r if k not in keys]
    lines = [
        f"| statistic | real (n={len(real)}) mean ± sd | real min..max "
        f"| simulated (n={len(simulated)}) mean ± sd | simulated min..max | in real range |",
        "|---|---|---|---|---|---|",
    ]

    def fmt(rows: list[dict[str, float]], key: str) -> tuple[str, float, float]:
        vals = np.array([r[key] for r in rows if key in r], dtype=np.float64)
        vals = vals[~np.isnan(vals)]  # e.g. no speckle patch fits a fragmented mask
        if len(vals) == 0:
            return "-", np.nan, np.nan
        return f"{vals.mean():.3g} ± {vals.std():.2g}", vals.min(), vals.max()

    def span(lo: float, hi: float) -> str:
        return "-" if np.isnan(lo) else f"{lo:.3g}..{hi:.3g}"

    for key in keys:
        r_txt, r_lo, r_hi = fmt(real_rows, key)
        s_txt, s_lo, s_hi = fmt(sim_rows, key)
        if np.isnan(r_lo) or np.isnan(s_lo):
            verdict = "-"
        else:
            verdict = "yes" if (s_lo >= r_lo and s_hi <= r_hi) else "NO"
        lines.append(f"| {key} | {r_txt} | {span(r_lo, r_hi)} | {s_txt} | {span(s_lo, s_hi)} | {verdict} |")
    return "\n".join(lines)


__all__ = [
    "CavityStatistics",
    "StructureStatistics",
    "UsStatistics",
    "autocorrelation_fwhm",
    "cavity_statistics",
    "estimate_beam_axis",
    "posterior_enhancement_ratio",
    "resect_rigid_table",
    "resect_statistics",
    "statistic_rows",
    "statistics_table",
    "structure_statistics",
    "us_statistics",
]
