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
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

import numpy as np
from remind2reg.inference.core.sector import sector_mask
from scipy import ndimage, stats

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
    volume: np.ndarray, spacing_mm: float, name: str = "", exclude: np.ndarray | None = None
) -> UsStatistics:
    """Measure :class:`UsStatistics` of a volume that is zero outside its sector.

    ``exclude`` (boolean, shape of ``volume``), if given, removes voxels from the intensity and
    speckle statistics (quantiles, max, SNR, near-zero fraction, speckle, Nakagami, moments,
    depth profile) while the sector-shape statistics (depth extent, opening, bbox fill) still
    use the full sector. Used to leave out a simulated resection cavity, which the real
    (pre-resection) RESECT volumes do not have. ``extra["excluded fraction"]`` records the
    share of the sector that was left out.
    """
    vol = np.asarray(volume, dtype=np.float32)
    mask = sector_mask(vol)
    coords = np.argwhere(mask).astype(np.float64)
    axis, frame = estimate_beam_axis(mask)
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
        depth_profile=tuple(float(x) for x in _depth_profile(values, icoords, axis)),
        depth_extent_mm=depth,
        opening_deg=opening,
        bbox_fill=bbox_fill,
        extra=extra,
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


def _rows(s: UsStatistics) -> dict[str, float]:
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
    rows.update(s.extra)
    return rows


def statistics_table(real: list[UsStatistics], simulated: list[UsStatistics]) -> str:
    """Markdown table per statistic: mean ± sd and min..max of real and of simulated volumes.

    "in real range" is "yes" when every simulated value lies within the real min..max.
    Rows present on one side only (e.g. ``excluded fraction``) get "-"; NaN values (no
    speckle patch fits) are left out of that row.
    """
    real_rows = [_rows(s) for s in real]
    sim_rows = [_rows(s) for s in simulated]
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
    "UsStatistics",
    "autocorrelation_fwhm",
    "estimate_beam_axis",
    "resect_statistics",
    "statistics_table",
    "us_statistics",
]
