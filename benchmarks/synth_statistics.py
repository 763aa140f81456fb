"""Landmark statistics of a synthetic dataset next to the real RESECT MR/US landmark pairs.

Checks what REFERENCE.md section 3 asks of a trustworthy benchmark: initial TRE (mean per
case 3.5-5 mm as in ReMIND2Reg, landmarks 1-10 mm) and a non-rigid residual after the best
rigid fit that is a large share of the initial error (post-resection), or a mostly rigid
shift with about 1 mm left (pre-resection, as the RESECT tags). Cases are summarised per
simulator family (read from ``groundtruth/case_<id>.json``).

    python benchmarks/synth_statistics.py --synth DATA_DIR [--resect-tags DIR] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from remind2reg.inference.core.pointfit import rigid_fit_residual
from remind2reg.inference.io.landmarks import read_tag_file
from remind2reg.synthesis.sources import default_shared_data


def case_rows_synthetic(root: Path) -> list[dict]:
    rows = []
    for meta_path in sorted((root / "groundtruth").glob("case_*.json")):
        meta = json.loads(meta_path.read_text())
        case = meta["case"]
        vox2world = np.asarray(meta["vox2world"])
        fix = np.loadtxt(root / "landmarksTr" / f"ReMIND2Reg_{case}_0000.csv", delimiter=",", ndmin=2)
        mov = np.loadtxt(root / "landmarksTr" / f"ReMIND2Reg_{case}_0001.csv", delimiter=",", ndmin=2)
        fix_mm = fix @ vox2world[:3, :3].T + vox2world[:3, 3]
        mov_mm = mov @ vox2world[:3, :3].T + vox2world[:3, 3]
        row = _row(f"{case} ({meta.get('family', 'legacy')}, {meta['source']})", fix_mm, mov_mm)
        row["family"] = meta.get("family", "legacy")
        rows.append(row)
    return rows


def case_rows_resect(tags: Path) -> list[dict]:
    rows = []
    for path in sorted(tags.glob("*.tag"), key=lambda p: int(p.name.split("-")[0][4:])):
        mri, us = read_tag_file(path)
        rows.append(_row(path.name.split("-")[0], us, mri))  # fixed = US, moving = MRI
    return rows


def _row(name: str, fixed_mm: np.ndarray, moving_mm: np.ndarray) -> dict:
    err = np.linalg.norm(moving_mm - fixed_mm, axis=1)
    residual = rigid_fit_residual(fixed_mm, moving_mm)
    return {
        "case": name,
        "n": len(err),
        "tre_mean": float(err.mean()),
        "tre_min": float(err.min()),
        "tre_max": float(err.max()),
        "rigid_residual": residual,
        "residual_share": residual / float(err.mean()),
    }


def table(rows: list[dict], title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| case | n | initial TRE mean | min | max | after best rigid fit | share |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['n']} | {r['tre_mean']:.2f} | {r['tre_min']:.2f} | {r['tre_max']:.2f} | "
            f"{r['rigid_residual']:.2f} | {100 * r['residual_share']:.0f} % |"
        )
    return "\n".join(lines)


def summary(synth: list[dict], real: list[dict]) -> str:
    def ms(rows, key, scale=1.0):
        v = np.array([r[key] for r in rows]) * scale
        return f"{v.mean():.2f} ± {v.std():.2f} ({v.min():.2f}-{v.max():.2f})" if len(v) else "-"

    lines = [
        "### Summary (mm; mean ± sd (min-max) over cases)",
        "",
        "| statistic | synthetic | RESECT (real, pre-resection) | target |",
        "|---|---|---|---|",
    ]
    lines.append(
        f"| initial TRE, case mean | {ms(synth, 'tre_mean')} | {ms(real, 'tre_mean')} | 3.5-5 (ReMIND2Reg: 3.7-5.1) |"
    )
    lines.append(
        f"| initial TRE, smallest landmark | {ms(synth, 'tre_min')} | {ms(real, 'tre_min')} | about 1 |"
    )
    lines.append(
        f"| initial TRE, largest landmark | {ms(synth, 'tre_max')} | {ms(real, 'tre_max')} | about 10 |"
    )
    lines.append(
        f"| left after best rigid fit | {ms(synth, 'rigid_residual')} | {ms(real, 'rigid_residual')} | a large share (post-resection) |"
    )
    lines.append(
        f"| share left after rigid fit (%) | {ms(synth, 'residual_share', 100)} | {ms(real, 'residual_share', 100)} | |"
    )
    if synth:
        means = np.array([r["tre_mean"] for r in synth])
        ok = (means >= 3.5) & (means <= 5.0)
        lines += ["", f"Cases with a mean initial TRE in 3.5-5 mm: {ok.sum()} of {len(ok)}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synth", type=Path, required=True, help="synthetic dataset folder")
    parser.add_argument(
        "--resect-tags", type=Path, default=None, help="RESECT .tag folder (default: shared data)"
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args()
    shared = default_shared_data()
    tags = args.resect_tags or (shared / "resect_tags" if shared is not None else None)
    synth = case_rows_synthetic(args.synth)
    real = case_rows_resect(tags) if tags is not None and tags.is_dir() else []
    parts = [table(synth, f"Synthetic cases ({args.synth})")]
    if real:
        parts.append(table(real, "RESECT landmark pairs (real MR/US, before resection)"))
    for family in sorted({r["family"] for r in synth}):
        rows = [r for r in synth if r["family"] == family]
        parts.append(summary(rows, real).replace("### Summary", f"### Summary: {family}", 1))
    text = "\n\n".join(parts) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
