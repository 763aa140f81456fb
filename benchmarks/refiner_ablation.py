"""Refinement ablation: convex-Adam with and without the learned refinement and test-time optimisation.

    python benchmarks/refiner_ablation.py --data data/synth_shared [--max-cases 8] [--tto-steps 50]

For each case the convex-Adam stages run once (the default :class:`RegistrationConfig`: no affine
stage, one field shared by ceT1 and T2); every variant then starts from that same working-grid
field, goes through the NMI guard like the pipeline does, and is embedded on the full grid and
scored on the landmarks with the challenge's metrics (TRE mm, SDlogJ, folding %). The shared
field is refined with the ceT1 as the moving image (the T2 where there is no ceT1).

Variants (rows):
* ``convex-adam``: no refinement;
* ``+refine``: the network alone;
* ``+refine+tto-velocity``: test-time optimisation of the predicted velocity (MIND-SSC);
* ``+refine+tto-network``: test-time fine-tuning of the network weights (MIND-SSC).

Writes a JSON (per pair and aggregates) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from remind2reg.evaluation.metrics import (
    folding_percent,
    jacobian_determinant,
    sdlogj,
    target_registration_error,
)
from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.io.dataset import find_pairs, landmark_path
from remind2reg.inference.io.landmarks import read_landmarks_csv
from remind2reg.inference.io.nifti import read_image
from remind2reg.inference.refinement.tto import load_refiner
from remind2reg.inference.settings import RefineSettings
from remind2reg.inference.stages.deformable import adam_estimates, convex_estimates, fuse
from remind2reg.inference.stages.embedding import embed
from remind2reg.inference.stages.features import extract_features
from remind2reg.inference.stages.global_alignment import header_alignment
from remind2reg.inference.stages.guard import guard
from remind2reg.inference.stages.refinement import refine
from remind2reg.inference.stages.sector import find_sector
from remind2reg.inference.stages.transforms import primary_sequence, sequence_groups

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("refiner_ablation")


def variants(tto_steps: int) -> dict[str, RefineSettings | None]:
    return {
        "convex-adam": None,
        "+refine": RefineSettings(enabled=True),
        "+refine+tto-velocity": RefineSettings(enabled=True, tto_steps=tto_steps, tto_target="velocity"),
        "+refine+tto-network": RefineSettings(
            enabled=True, tto_steps=tto_steps, tto_target="network", tto_lr=1e-4
        ),
    }


def run_case(config: RegistrationConfig, case_pairs: list, data: Path, tto_steps: int) -> list[dict]:
    fixed = read_image(case_pairs[0].fixed)
    moving = {p.moving_name.modality: read_image(p.moving) for p in case_pairs}
    sector = find_sector(fixed, config.working_spacing_mm, config.crop_margin_mm)
    t0 = time.perf_counter()
    case = extract_features(fixed, moving, sector, config.mind, torch.device("cpu"))
    aligned = header_alignment(case, sequence_groups(tuple(moving), config.fusion))
    mask = case.images.mask
    estimates = convex_estimates(case.features, mask, aligned.alignments, config.fusion, config.convex)
    estimates = adam_estimates(case.features, mask, estimates, config.adam)
    (base,) = fuse(aligned.alignments, estimates, config.fusion)  # one field shared by the case
    base_s = time.perf_counter() - t0
    ref_mod = primary_sequence(base.modalities)  # ceT1 when present, as in the pipeline
    # Landmarks (voxels of each image) and the initial TRE do not depend on the variant.
    landmarks = []
    for pair in case_pairs:
        fix_lms = read_landmarks_csv(landmark_path(pair.fixed, data), pair.case)
        mov_lms = read_landmarks_csv(landmark_path(pair.moving, data), pair.case)
        spacing = moving[pair.moving_name.modality].spacing
        tre_initial = float(np.linalg.norm((fix_lms - mov_lms) * spacing, axis=1).mean())
        landmarks.append((pair, fix_lms, mov_lms, spacing, tre_initial))
    rows = []
    for name, settings in variants(tto_steps).items():
        t = time.perf_counter()
        info: dict = {}
        field = base.disp
        if settings is not None:
            field, info = refine(case.images.us, case.images.mr[ref_mod], mask, base.disp, settings)
        extra_s = time.perf_counter() - t
        checked = guard(case.images, (replace(base, disp=field),), case=case_pairs[0].case)
        notes = checked.notes()
        full = embed(
            checked.transforms[0].disp, sector.grid
        )  # (I, J, K, 3), full fixed-grid voxels, US -> MR
        jac = jacobian_determinant(full)  # one field for every pair of the case
        for pair, fix_lms, mov_lms, spacing, tre_initial in landmarks:
            tre = target_registration_error(fix_lms, mov_lms, full, spacing)
            rows.append(
                {
                    "variant": name,
                    "case": pair.case,
                    "modality": pair.moving_name.modality,
                    "tre_initial": tre_initial,
                    "tre": float(tre.mean()),
                    "sdlogj": sdlogj(jac),
                    "folding_percent": folding_percent(jac),
                    "fallback": bool(notes.get(f"fallback_{pair.moving_name.modality}", False)),
                    "seconds_convex_adam": base_s,
                    "seconds_refine": extra_s,
                    "residual_mean_vox": info.get("residual_mean_vox"),
                    "tto_first_last": (info["tto_losses"][0], info["tto_losses"][-1])
                    if info.get("tto_losses")
                    else None,
                }
            )
            log.info("%s %s %s: TRE %.2f mm", name, pair.case, pair.moving_name.modality, tre.mean())
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| variant | pairs | TRE initial (mm) | TRE (mm) | TRE ceT1 | TRE T2 | SDlogJ | folding % | refine s/case | fallbacks |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == name]

        def mean(key: str, rs: list[dict] = sel) -> float:
            return float(np.mean([r[key] for r in rs])) if rs else float("nan")

        ce = [r for r in sel if r["modality"] == "0001"]
        t2 = [r for r in sel if r["modality"] == "0002"]
        lines.append(
            f"| {name} | {len(sel)} | {mean('tre_initial'):.2f} | {mean('tre'):.2f} | {mean('tre', ce):.2f} | "
            f"{mean('tre', t2):.2f} | {mean('sdlogj'):.3f} | {mean('folding_percent'):.4f} | "
            f"{mean('seconds_refine'):.1f} | {sum(r['fallback'] for r in sel)} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "synth_shared")
    parser.add_argument("--max-cases", type=int, default=None)
    parser.add_argument("--tto-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--json", type=Path, default=REPO / "benchmarks" / "results" / "refiner_ablation.json"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    load_refiner(None, "cpu")  # fail early when the weights are missing
    config = RegistrationConfig()
    if config.affine.method != "none":
        raise SystemExit("this ablation assumes the default config (no affine stage)")
    by_case: dict[str, list] = {}
    for pair in find_pairs(args.data):
        by_case.setdefault(pair.case, []).append(pair)
    cases = sorted(by_case)[: args.max_cases]
    rows: list[dict] = []
    for case in cases:
        rows += run_case(config, by_case[case], args.data, args.tto_steps)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
