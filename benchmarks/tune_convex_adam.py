"""Compare settings of the convex-Adam method on TUNING cases of a synthetic dataset.

Honesty rule: choose settings on a tuning subset (default cases 0001-0004) and report the
chosen default on all cases with benchmarks/registration_benchmark.py.

    python benchmarks/tune_convex_adam.py --data data/synth_shared --cases 0001 0002 0003 0004 \
        --variant base '{}' --variant one-level '{"convex": {"levels": [{"grid_sp": 4, "disp_hw": 4}]}}'

Each variant is a JSON object merged into the default RegistrationConfig. Prints mean TRE,
SDlogJ, folding and seconds per case for every variant.
"""

from __future__ import annotations

import argparse
import json
import time
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
from remind2reg.inference.io.landmarks import read_landmarks_csv
from remind2reg.inference.io.nifti import read_image
from remind2reg.inference.methods.convex_adam import ConvexAdamMethod

REPO = Path(__file__).resolve().parents[1]


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "synth_shared")
    parser.add_argument("--cases", nargs="+", default=["0001", "0002", "0003", "0004"])
    parser.add_argument("--modalities", nargs="+", default=["0001"], help="0001 ceT1, 0002 T2, or 'joint'")
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = RegistrationConfig().to_dict()
    rows = []
    for name, override in args.variant:
        config = RegistrationConfig.from_dict(merge(base, json.loads(override)))
        method = ConvexAdamMethod(config)
        tres, tre0s, sds, folds, secs = [], [], [], [], []
        for case in args.cases:
            fixed = read_image(args.data / "imagesTr" / f"ReMIND2Reg_{case}_0000.nii.gz")
            fix_lms = read_landmarks_csv(args.data / "landmarksTr" / f"ReMIND2Reg_{case}_0000.csv")
            mods = ["0001", "0002"] if args.modalities == ["joint"] else args.modalities
            moving = {m: read_image(args.data / "imagesTr" / f"ReMIND2Reg_{case}_{m}.nii.gz") for m in mods}
            t = time.perf_counter()
            result = method(fixed, moving)
            secs.append(time.perf_counter() - t)
            disp = result.fields[mods[0]]
            mov_lms = read_landmarks_csv(args.data / "landmarksTr" / f"ReMIND2Reg_{case}_{mods[0]}.csv")
            tres.append(target_registration_error(fix_lms, mov_lms, disp, fixed.spacing).mean())
            tre0s.append(target_registration_error(fix_lms, mov_lms, 0 * disp, fixed.spacing).mean())
            jac = jacobian_determinant(disp)
            sds.append(sdlogj(jac))
            folds.append(folding_percent(jac))
            print(
                f"  {name} case {case}: TRE {tres[-1]:.2f} (initial {tre0s[-1]:.2f}) {secs[-1]:.1f} s",
                flush=True,
            )
        rows.append((name, np.mean(tre0s), np.mean(tres), np.mean(sds), np.mean(folds), np.mean(secs), tres))
    print(
        "\n| variant | initial TRE | TRE | SDlogJ | fold % | s/case | per case |\n|---|---|---|---|---|---|---|"
    )
    for name, t0, t, sd, fo, s, per in rows:
        print(
            f"| {name} | {t0:.2f} | {t:.2f} | {sd:.4f} | {fo:.3f} | {s:.1f} | {' '.join(f'{v:.2f}' for v in per)} |"
        )


if __name__ == "__main__":
    main()
