"""Compare simulated intra-operative ultrasound with real RESECT iUS.

Prints a markdown table of ultrasound statistics (real vs simulated, see
``synthesis/calibration.py``) and writes a figure with three orthogonal slices of a real RESECT
volume next to three slices of a simulated one (same grey scale).

Simulated volumes come from ``--synth DIR`` (``DIR/imagesTr/*_0000.nii.gz``) or, without it,
are rendered here from a development phantom built from the MNI152 2009 GM/WM/T1 maps shipped
with nilearn (resampled to 0.5 mm, with a tumour blob, a resection cavity and a falx).

Fair comparison: the RESECT volumes are PRE-resection iUS (no cavity) while the simulated
ones are POST-resection. The intensity and speckle statistics of a simulated volume therefore
leave out the resection cavity (label 6) and a ``CAVITY_MARGIN_MM`` margin around it, taken
from ``DIR/groundtruth/labels_<case>_0000.nii.gz`` (or from the phantom's labels); the
sector-shape statistics (depth extent, opening angles, bbox fill) use the full sector. The
row ``excluded fraction`` gives the share of the simulated sector left out.

Usage::

    python benchmarks/simulator_realism.py [--resect DIR] [--synth DIR] [--figure PNG]
        [--table MD] [--n-sim 4] [--size 256]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np
from remind2reg.synthesis import labels as L
from remind2reg.synthesis.calibration import (
    UsStatistics,
    load_volume,
    resect_statistics,
    statistics_table,
    us_statistics,
)
from remind2reg.synthesis.ultrasound import Sector, random_sector, render_ultrasound
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESECT = ROOT.parent / "shared" / "data" / "resect_us"
DEFAULT_FIGURE = ROOT / "docs" / "images" / "simulated_vs_real_us.png"
CAVITY_MARGIN_MM = 2.0
TABLE_NOTE = (
    "Intensity/speckle rows of simulated volumes exclude the resection cavity (label 6) and a "
    f"{CAVITY_MARGIN_MM:g} mm margin (RESECT volumes are pre-resection); sector-shape rows "
    "(depth extent, opening, bbox fill) use the full sector. 'in real range': every simulated "
    "value lies within the real min..max."
)


def cavity_exclusion(
    labels: np.ndarray, spacing_mm: float, margin_mm: float = CAVITY_MARGIN_MM
) -> np.ndarray:
    """Cavity voxels dilated by ``margin_mm`` (boolean); all False without a cavity."""
    cav = np.asarray(labels) == L.CAVITY
    if not cav.any():
        return cav
    return ndimage.distance_transform_edt(~cav, sampling=spacing_mm) <= margin_mm


def _synth_labels_path(synth_dir: Path, image_path: str) -> Path:
    """``groundtruth/labels_<case>_0000.nii.gz`` for ``imagesTr/<prefix>_<case>_0000.nii.gz``."""
    case = Path(image_path).name.replace(".nii.gz", "").split("_")[-2]
    return Path(synth_dir) / "groundtruth" / f"labels_{case}_0000.nii.gz"


# --------------------------------------------------------------------------------------------
# Development phantom (MNI152 from nilearn); not a module API
# --------------------------------------------------------------------------------------------


def _mni_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNI152 2009 (t1, gm, wm) at 1 mm from the nilearn package, plus the affine."""
    import nibabel as nib
    import nilearn

    base = Path(nilearn.__file__).parent / "datasets" / "data"
    imgs = [nib.load(base / f"mni_icbm152_{n}_tal_nlin_sym_09a_converted.nii.gz") for n in ("t1", "gm", "wm")]
    arrs = [np.asarray(i.dataobj, dtype=np.float32) for i in imgs]
    arrs = [a / max(float(a.max()), 1e-6) for a in arrs]  # shipped as 0..255
    return arrs[0], arrs[1], arrs[2], imgs[0].affine


def mni_phantom(
    size: int = 256, spacing_mm: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, Sector]:
    """Label map, T1 and probe sector of a post-resection phantom on a ``size``^3 grid.

    The grid (``spacing_mm``) is centred near a right fronto-parietal cavity; CSF is the
    intracranial space that is neither GM nor WM, ventricles are CSF deeper than 12 mm from
    the brain surface, the falx is a 1 mm mid-sagittal sheet of CSF above the ventricles.
    """
    rng = np.random.default_rng(seed)
    t1, gm, wm, aff = _mni_maps()
    inv = np.linalg.inv(aff)
    cav_mm = np.array([30.0, 5.0, 45.0]) + rng.normal(0, 4, 3)
    centre_vox = (inv @ np.append(cav_mm + [-12.0, 0.0, -18.0], 1))[:3]
    half = size * spacing_mm / 2  # mm; MNI voxels are 1 mm
    start = np.round(centre_vox - half).astype(int)
    n1 = int(np.ceil(size * spacing_mm)) + 2
    sl = tuple(slice(s, s + n1) for s in start)

    def crop(a: np.ndarray) -> np.ndarray:
        pad = np.pad(a, n1, mode="constant")
        return pad[tuple(slice(s.start + n1, s.stop + n1) for s in sl)]

    zoom = 1.0 / spacing_mm

    def up(a: np.ndarray) -> np.ndarray:
        return ndimage.zoom(crop(a), zoom, order=1)[:size, :size, :size]

    t1z, gmz, wmz = up(t1), up(gm), up(wm)
    envelope = ndimage.binary_fill_holes(ndimage.binary_closing(gmz + wmz > 0.3, iterations=6)) & (t1z > 0.02)
    lab = np.zeros(t1z.shape, dtype=np.uint8)
    lab[envelope] = L.CSF
    tissue = envelope & (gmz + wmz >= 0.65)
    lab[tissue & (gmz >= wmz)] = L.GREY_MATTER
    lab[tissue & (wmz > gmz)] = L.WHITE_MATTER
    # the template's sulci are closed: mark the dark T1 valleys inside grey matter as CSF
    t1_hp = t1z - ndimage.gaussian_filter(t1z, 1.5 / spacing_mm)
    lab[(lab == L.GREY_MATTER) & (t1_hp < -0.035)] = L.CSF
    depth = ndimage.distance_transform_edt(envelope) * spacing_mm
    thick = ndimage.gaussian_filter((lab == L.CSF).astype(np.float32), 2.0 / spacing_mm) > 0.6
    lab[(lab == L.CSF) & (depth > 15) & thick] = L.VENTRICLE
    # mid-sagittal falx (MNI x = 0)
    x_vox = (np.arange(size) * spacing_mm + start[0]) * aff[0, 0] + aff[0, 3]
    mid = np.abs(x_vox) < 0.6
    falx = np.zeros_like(envelope)
    falx[mid] = True
    lab[falx & envelope & (gmz + wmz < 0.9) & (lab != L.VENTRICLE) & (depth > 1.0)] = L.FALX
    # tumour blob and cavity (grid voxel coordinates)
    grid_origin_mm = (aff @ np.append(start, 1))[:3]
    cav_vox = (cav_mm - grid_origin_mm) / spacing_mm
    ii, jj, kk = np.meshgrid(*(np.arange(size, dtype=np.float32),) * 3, indexing="ij", sparse=True)
    bumps = ndimage.gaussian_filter(rng.standard_normal((size // 8,) * 3), 1.5)
    bumps = ndimage.zoom(bumps / bumps.std(), 8, order=1)[:size, :size, :size]
    dist = np.sqrt((ii - cav_vox[0]) ** 2 + (jj - cav_vox[1]) ** 2 + (kk - cav_vox[2]) ** 2)
    dist_mm = dist * spacing_mm + 1.5 * bumps
    tum_vox = cav_vox + np.array([-5.0, 4.0, -7.0]) / spacing_mm
    dist_t = np.sqrt((ii - tum_vox[0]) ** 2 + (jj - tum_vox[1]) ** 2 + (kk - tum_vox[2]) ** 2)
    dist_t_mm = dist_t * spacing_mm + 2.0 * bumps
    inside = np.isin(lab, (L.GREY_MATTER, L.WHITE_MATTER, L.CSF))
    lab[(dist_t_mm < 12.0) & inside] = L.TUMOUR
    lab[(dist_mm < 10.0) & envelope] = L.CAVITY
    t1z = t1z.copy()
    t1z[lab == L.TUMOUR] *= 0.75
    t1z[lab == L.CAVITY] = 0.15 * np.median(t1z[envelope])
    # probe: beam from outside the cortex, oblique, through the cavity
    axis = np.array([-0.55, -0.1, -0.83]) + rng.normal(0, 0.1, 3)
    axis /= np.linalg.norm(axis)
    sec = random_sector((0.0, 0.0, 0.0), tuple(axis), rng)
    # the probe touches the cortex: first imaged sample at the brain surface above the cavity
    steps = np.arange(0.0, 60.0, 0.5)[:, None] / spacing_mm
    ray = np.round(cav_vox[None, :] - steps * axis[None, :]).astype(int)
    ok = np.all((ray >= 0) & (ray < size), axis=1)
    ray = ray[ok]
    out_idx = np.nonzero(~envelope[ray[:, 0], ray[:, 1], ray[:, 2]])[0]
    surf = ray[out_idx[0]] if len(out_idx) else ray[-1]
    apex = surf - axis * (sec.near_mm - 1.0) / spacing_mm
    sec = Sector(
        tuple(float(x) for x in apex),
        tuple(float(x) for x in axis),
        sec.depth_mm,
        sec.opening_deg,
        sec.near_mm,
        sec.roll_deg,
    )
    return lab, t1z.astype(np.float32), sec


# --------------------------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------------------------


def _centre_slices(vol: np.ndarray) -> list[np.ndarray]:
    """Three orthogonal slices through the centroid of the non-zero region."""
    c = np.round(np.argwhere(vol > 0).mean(axis=0)).astype(int)
    return [vol[c[0]], vol[:, c[1]], vol[:, :, c[2]]]


def _crop2d(s: np.ndarray) -> np.ndarray:
    nz = np.argwhere(s > 0)
    if len(nz) == 0:
        return s
    lo, hi = nz.min(axis=0), nz.max(axis=0) + 1
    return s[lo[0] : hi[0], lo[1] : hi[1]]


def write_figure(real: np.ndarray, real_name: str, sim: np.ndarray, sim_name: str, path: Path) -> None:
    """Two rows of three orthogonal slices (real, simulated), identical grey scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vmax = float(np.percentile(real[real > 0], 99.5))
    fig, axes = plt.subplots(2, 3, figsize=(12, 8.4))
    for row, (vol, name) in enumerate(((real, real_name), (sim, sim_name))):
        for col, (sl, ax_name) in enumerate(zip(_centre_slices(vol), ("i", "j", "k"), strict=True)):
            ax = axes[row, col]
            ax.imshow(_crop2d(sl).T, cmap="gray", vmin=0, vmax=vmax, origin="lower")
            ax.set_title(f"{name}: slice normal to {ax_name}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"Real RESECT iUS (top) vs simulated iUS (bottom), grey scale 0..{vmax:.0f}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def simulate(n: int, size: int) -> tuple[list[UsStatistics], np.ndarray, list[float]]:
    """Render ``n`` phantom cases (different seeds); statistics, first volume, render times."""
    out, first, times = [], None, []
    for seed in range(n):
        lab, t1, sec = mni_phantom(size=size, seed=seed)
        t0 = time.perf_counter()
        us = render_ultrasound(lab, t1, 0.5, sec, np.random.default_rng(seed))
        times.append(time.perf_counter() - t0)
        out.append(us_statistics(us, 0.5, name=f"phantom{seed}", exclude=cavity_exclusion(lab, 0.5)))
        if first is None:
            first = us
    return out, first, times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resect", type=Path, default=DEFAULT_RESECT, help="RESECT iUS folder")
    ap.add_argument("--synth", type=Path, default=None, help="synthetic dataset (imagesTr/)")
    ap.add_argument("--figure", type=Path, default=DEFAULT_FIGURE)
    ap.add_argument("--table", type=Path, default=None, help="write the markdown table here")
    ap.add_argument("--n-sim", type=int, default=4, help="phantom renders without --synth")
    ap.add_argument("--size", type=int, default=256, help="phantom grid size without --synth")
    ap.add_argument("--real-case", default="Case14", help="RESECT case shown in the figure")
    args = ap.parse_args(argv)

    real = resect_statistics(str(args.resect))
    if not real:
        print(f"no RESECT volumes in {args.resect}", file=sys.stderr)
        return 1
    if args.synth is not None:
        paths = sorted(glob.glob(os.path.join(args.synth, "imagesTr", "*_0000.nii.gz")))
        if not paths:
            print(f"no imagesTr/*_0000.nii.gz in {args.synth}", file=sys.stderr)
            return 1
        sim, sim_vol, n_excl = [], None, 0
        for p in paths:
            vol, sp = load_volume(p)
            lab_path = _synth_labels_path(args.synth, p)
            exclude = None
            if lab_path.exists():
                lab, _ = load_volume(str(lab_path))
                if lab.shape == vol.shape:
                    exclude = cavity_exclusion(np.rint(lab).astype(np.uint8), sp)
                    n_excl += 1
            sim.append(us_statistics(vol, sp, name=Path(p).name, exclude=exclude))
            sim_vol = vol if sim_vol is None else sim_vol
        print(f"cavity excluded from intensity statistics in {n_excl}/{len(paths)} simulated cases")
        sim_name = Path(paths[0]).name.replace(".nii.gz", "")
    else:
        sim, sim_vol, times = simulate(args.n_sim, args.size)
        sim_name = "simulated phantom0"
        print(f"render time per {args.size}^3 volume: " + ", ".join(f"{t:.1f}s" for t in times))
    table = statistics_table(real, sim) + "\n\n" + TABLE_NOTE
    print(table)
    if args.table is not None:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table + "\n")
    real_path = args.resect / f"{args.real_case}.nii.gz"
    if not real_path.exists():
        real_path = Path(sorted(glob.glob(str(args.resect / "*.nii.gz")))[0])
    real_vol, _ = load_volume(str(real_path))
    write_figure(real_vol, f"real {real_path.name.split('.')[0]}", sim_vol, sim_name, args.figure)
    print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
