"""Realism of the simulator families against the 16 real RESECT iUS volumes.

Prints (and with ``--table`` writes) a markdown report: a summary of the key statistics per
family next to the real range, then the full table of every statistic per family
(``synthesis.calibration``: first-order, speckle, sector shape, structure, cavity), and writes
one figure per family (``--figures``, default docs/images/family_<name>.png): slices of real
RESECT volumes (top row) above slices of simulated ones (bottom row), same grey scale and
millimetre scale, probe at the top.

Simulated volumes come from ``--synth DIR`` (any dataset made by ``remind2reg synth`` or
``benchmarks/make_standard_set.py``; the family of a case is read from its
``groundtruth/case_<id>.json``) or, without it, are generated here: ``--cases-per-family`` cases
of each of ``--families`` on a ``--grid`` grid from ``--source`` into ``--work``.

The beam axis of a simulated case is the known one; that of a real volume is estimated from
its mask (``synthesis.calibration.estimate_beam_axis``), which fails on a few block-like
freehand reconstructions: depth-profile and sector-shape rows are less reliable for real.

Fair comparison: RESECT is PRE-resection. The intensity, speckle and structure statistics of a
simulated case leave out its resection cavity (label 6) and a ``CAVITY_MARGIN_MM`` margin; the
cavity rows (share of the sector, sphericity, solidity, posterior enhancement) have no real
counterpart here ("-" in the real columns).

Usage::

    python benchmarks/simulator_realism.py --synth data/standard --table docs/realism.md
    python benchmarks/simulator_realism.py --families pre-resection,weak-contrast --cases-per-family 2 --grid 256
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from remind2reg.synthesis import labels as L
from remind2reg.synthesis.calibration import (
    UsStatistics,
    estimate_beam_axis,
    load_volume,
    posterior_enhancement_ratio,
    resect_statistics,
    statistic_rows,
    statistics_table,
    us_statistics,
)
from remind2reg.synthesis.config import SynthConfig
from remind2reg.synthesis.families import REALISTIC_FAMILIES
from remind2reg.synthesis.generate import generate_dataset
from remind2reg.synthesis.sources import default_shared_data
from remind2reg.synthesis.ultrasound import Sector

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FIGURES = ROOT / "docs" / "images"
CAVITY_MARGIN_MM = 2.0
FIGURE_REAL_CASES = ("Case14", "Case16", "Case2")  # fans whose beam axis the estimator finds
KEY_ROWS = (
    "q5 / median",
    "q95 / median",
    "mean/std (SNR)",
    "near-zero fraction",
    "skewness",
    "excess kurtosis",
    "Nakagami m",
    "speckle FWHM mean (mm)",
    "local SNR (3 mm)",
    "ridge FWHM median (mm)",
    "ridge density",
    "ridge contrast (peak/base)",
    "near-field line (bin 0 / bins 2-3)",
    "depth fall-off (bins 7-9 / bins 2-3)",
    "depth extent (mm)",
    "opening wide (deg)",
    "opening narrow (deg)",
    "cavity: sector fraction",
    "cavity: sphericity",
    "cavity: solidity (volume/hull)",
    "posterior enhancement (below cavity / beside)",
)
NOTE = (
    f"Simulated intensity/speckle/structure rows leave out the cavity and a {CAVITY_MARGIN_MM:g} mm "
    "margin (RESECT is pre-resection); sector-shape rows use the full sector. 'in real range': "
    "every simulated value lies within the real min..max. Cavity rows have no real reference here."
)


@dataclass
class SimCase:
    """A simulated case: its iUS, fixed labels, spacing and record (case json)."""

    name: str
    family: str
    us: np.ndarray
    labels: np.ndarray | None
    spacing_mm: float
    record: dict


# --------------------------------------------------------------------------------------------
# Simulated cases
# --------------------------------------------------------------------------------------------


def load_cases(synth_dir: Path) -> list[SimCase]:
    """Every case of a dataset with a ``groundtruth/case_<id>.json`` record."""
    cases = []
    for meta_path in sorted((synth_dir / "groundtruth").glob("case_*.json")):
        record = json.loads(meta_path.read_text(encoding="utf-8"))
        case = record["case"]
        us, spacing = load_volume(str(synth_dir / "imagesTr" / f"ReMIND2Reg_{case}_0000.nii.gz"))
        lab_path = synth_dir / "groundtruth" / f"labels_{case}_0000.nii.gz"
        labels = np.rint(load_volume(str(lab_path))[0]).astype(np.uint8) if lab_path.exists() else None
        family = record.get("family", "legacy")
        cases.append(SimCase(f"{case} ({family})", family, us, labels, spacing, record))
    return cases


def generate_cases(
    work: Path, families: list[str], n: int, grid: int, source: str, seed: int
) -> list[SimCase]:
    """``n`` cases per family generated into ``work/<family>``, then loaded."""
    out = []
    for family in families:
        folder = work / family
        generate_dataset(
            folder, n_cases=n, source=source, seed=seed, config=SynthConfig(grid=grid), family=family
        )
        out += load_cases(folder)
    return out


def case_statistics(case: SimCase) -> UsStatistics:
    """:func:`us_statistics` of a simulated case, cavity left out, cavity rows added."""
    exclude = None
    if case.labels is not None and (case.labels == L.CAVITY).any():
        exclude = ndimage.distance_transform_edt(case.labels != L.CAVITY, sampling=case.spacing_mm)
        exclude = exclude <= CAVITY_MARGIN_MM
    axis = np.asarray(case.record["sector"]["axis"], dtype=np.float64)  # the true beam, array axes
    stats = us_statistics(
        case.us, case.spacing_mm, name=case.name, exclude=exclude, labels=case.labels, beam_axis=axis
    )
    if exclude is not None:
        apex = tuple(case.record["sector"]["apex_vox"])
        ratio = posterior_enhancement_ratio(case.us, case.labels, apex, case.spacing_mm)
        stats.extra["posterior enhancement (below cavity / beside)"] = ratio
    return stats


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _span(values: list[float]) -> tuple[float, float, float]:
    v = np.asarray([x for x in values if not np.isnan(x)], dtype=np.float64)
    return (np.nan, np.nan, np.nan) if len(v) == 0 else (float(v.mean()), float(v.min()), float(v.max()))


def summary_table(real: list[UsStatistics], sims: dict[str, list[UsStatistics]]) -> str:
    """Key rows: real mean (min..max), then per family mean (min..max) and whether every
    simulated value lies in the real range (ok / OUT; - without a real reference)."""
    real_rows = [statistic_rows(s) for s in real]
    head = f"| statistic | real RESECT (n={len(real)}) |" + "".join(
        f" {f} (n={len(v)}) |" for f, v in sims.items()
    )
    lines = [head, "|---|---|" + "---|" * len(sims)]
    for key in KEY_ROWS:
        r_mean, r_lo, r_hi = _span([r.get(key, np.nan) for r in real_rows])
        cells = [key, "-" if np.isnan(r_mean) else f"{r_mean:.3g} ({r_lo:.3g}..{r_hi:.3g})"]
        for stats in sims.values():
            m, lo, hi = _span([statistic_rows(s).get(key, np.nan) for s in stats])
            if np.isnan(m):
                cells.append("-")
                continue
            verdict = "" if np.isnan(r_mean) else (" ok" if r_lo <= lo and hi <= r_hi else " **OUT**")
            cells.append(f"{m:.3g} ({lo:.3g}..{hi:.3g}){verdict}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(real: list[UsStatistics], sims: dict[str, list[UsStatistics]]) -> str:
    parts = ["## Key statistics per family", "", summary_table(real, sims), "", NOTE]
    for family, stats in sims.items():
        parts += ["", f"## {family}", "", statistics_table(real, stats)]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def beam_plane(
    volume: np.ndarray, centre: np.ndarray, axis: np.ndarray, lateral: np.ndarray, spacing_mm: float
):
    """The plane through ``centre`` spanned by the beam ``axis`` (rows, downwards: the probe at
    the top) and ``lateral`` (columns), sampled every 0.5 mm over 100 mm, cropped to the
    non-zero part."""
    t = np.arange(-100, 100) * (0.5 / spacing_mm)  # voxels
    # rows follow the beam (depth grows downwards), columns the lateral direction
    pts = (
        centre[:, None, None]
        + axis[:, None, None] * t[None, :, None]
        + lateral[:, None, None] * t[None, None, :]
    )
    img = ndimage.map_coordinates(volume, pts, order=1, cval=0.0)
    nz = np.argwhere(img > 0)
    if len(nz) == 0:
        return img
    lo, hi = nz.min(axis=0), nz.max(axis=0) + 1
    return img[lo[0] : hi[0], lo[1] : hi[1]]


def real_plane(volume: np.ndarray, spacing_mm: float) -> np.ndarray:
    """A beam plane of a real volume (beam axis and widest direction estimated from its mask)."""
    mask = volume > 0
    _, frame = estimate_beam_axis(mask)
    return beam_plane(volume, np.argwhere(mask).mean(axis=0), frame[0], frame[1], spacing_mm)


def sim_planes(cases: list[SimCase], n: int = 3) -> list[tuple[str, np.ndarray]]:
    """``n`` beam planes: per case the plane of the wide (lateral) opening; with fewer cases
    than ``n``, the narrow (elevational) plane of the first cases too."""
    planes = []
    for k in range(n):
        case = cases[k % len(cases)]
        sec = case.record["sector"]
        sector = Sector(
            tuple(sec["apex_vox"]), tuple(sec["axis"]), sec["depth_mm"], tuple(sec["opening_deg"]),
            sec["near_mm"], sec["roll_deg"],
        )  # fmt: skip
        axis, lateral, elevational = sector.frame()  # rows: beam, lateral, elevational (array axes)
        across = lateral if (k // len(cases)) % 2 == 0 else elevational
        centre = np.argwhere(case.us > 0).mean(axis=0)
        planes.append((case.name, beam_plane(case.us, centre, axis, across, case.spacing_mm)))
    return planes


def family_figure(
    real: list[tuple[str, np.ndarray]], sims: list[tuple[str, np.ndarray]], family: str, path: Path
):
    """Real planes (top) above simulated planes (bottom), one grey scale, 0.5 mm pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vmax = float(np.percentile(np.concatenate([p[p > 0] for _, p in real]), 99.5))
    fig, axes = plt.subplots(2, 3, figsize=(11, 7.2))
    for row, planes in enumerate((real, sims)):
        for col, (name, img) in enumerate(planes[:3]):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", vmin=0, vmax=vmax, extent=(0, img.shape[1] / 2, img.shape[0] / 2, 0))
            ax.set_title(name, fontsize=9)
            ax.tick_params(labelsize=7)
    fig.suptitle(
        f"{family}: real RESECT iUS (top) vs simulated (bottom); grey 0..{vmax:.0f}, axes in mm, probe at top"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resect", type=Path, default=None, help="RESECT iUS folder (default: shared data)")
    ap.add_argument("--synth", type=Path, default=None, help="a synthetic dataset to measure")
    ap.add_argument("--families", default=",".join(REALISTIC_FAMILIES), help="families to generate")
    ap.add_argument("--cases-per-family", type=int, default=2)
    ap.add_argument("--grid", type=int, default=256)
    ap.add_argument("--source", default="mni", choices=["mni", "shared"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=ROOT / "data" / "realism", help="where generated cases go")
    ap.add_argument("--figures", type=Path, default=DEFAULT_FIGURES, help="folder of the family figures")
    ap.add_argument("--no-figures", action="store_true")
    ap.add_argument("--table", type=Path, default=None, help="also write the report here")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    shared = default_shared_data()
    resect = args.resect or (shared / "resect_us" if shared is not None else None)
    if resect is None or not resect.is_dir():
        print(f"no RESECT volumes at {resect} (set --resect)", file=sys.stderr)
        return 1
    if args.synth is not None:
        cases = load_cases(args.synth)
    else:
        families = [f for f in args.families.split(",") if f]
        cases = generate_cases(args.work, families, args.cases_per_family, args.grid, args.source, args.seed)
    if not cases:
        print("no simulated cases found", file=sys.stderr)
        return 1
    real = resect_statistics(str(resect))
    by_family: dict[str, list[SimCase]] = {}
    for case in cases:
        by_family.setdefault(case.family, []).append(case)
    sims = {family: [case_statistics(c) for c in group] for family, group in by_family.items()}
    text = report(real, sims)
    print(text)
    if args.table is not None:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text, encoding="utf-8")
    if not args.no_figures:
        real_planes = [
            (f"real {n}", real_plane(*load_volume(str(resect / f"{n}.nii.gz")))) for n in FIGURE_REAL_CASES
        ]
        for family, group in by_family.items():
            path = args.figures / f"family_{family}.png"
            family_figure(real_planes, sim_planes(group), family, path)
            print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
