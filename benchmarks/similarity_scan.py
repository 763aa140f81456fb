"""Where does the MIND-SSC cost put its optimum when the images are exactly aligned?

    python benchmarks/similarity_scan.py --data data/synth_shared --cases 0001 0002 [--rims 0 3 6] [--range 6]

For each case the ceT1 is warped by the ground-truth field (as in ``deformable_from_truth.py``),
so the truth is the zero displacement. Both images go through the method's own working-grid
resampling and MIND-SSC features (:meth:`ConvexAdamMethod.features`, default settings); the
mean SSD of the features inside the sector is then evaluated for global translations of
``-range .. +range`` working voxels (1 mm) along each array axis. An unbiased similarity has
its minimum at 0 on every axis. The printed numbers are the shift of the minimum per axis (mm)
and the cost ratio ``cost(0) / cost(min)``.

``--rims`` repeats the scan with the true resection cavity (label 6 of
``groundtruth/labels_<case>_0000.nii.gz``) and a rim of that many mm removed from the sector (an
oracle diagnostic: the method never sees the labels; ``-1`` keeps the cavity).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from deformable_from_truth import warped_by_truth
from scipy import ndimage

from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.core.fields import warp
from remind2reg.inference.core.losses import masked_ssd
from remind2reg.inference.io.dataset import find_pairs
from remind2reg.inference.io.displacement import read_displacement
from remind2reg.inference.io.nifti import read_image
from remind2reg.inference.stages.features import extract_features
from remind2reg.inference.stages.sector import find_sector

REPO = Path(__file__).resolve().parents[1]


def translation_costs(
    us: torch.Tensor, mr: torch.Tensor, mask: torch.Tensor, axis: int, reach: int
) -> np.ndarray:
    """Mean feature SSD in ``mask`` for ``mr`` translated by ``-reach .. reach`` voxels along ``axis``.

    ``us``/``mr`` are ``(1, C, D, H, W)`` features on one grid, ``mask`` ``(1, 1, D, H, W)``;
    a shift ``s`` compares ``us(x)`` with ``mr(x + s e_axis)`` (the field convention of
    :func:`remind2reg.inference.core.fields.warp`).
    """
    costs = []
    for shift in range(-reach, reach + 1):
        disp = torch.zeros(1, 3, *us.shape[-3:])
        disp[:, axis] = shift
        costs.append(float(masked_ssd(us, warp(mr, disp), mask)))
    return np.array(costs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "standard")
    parser.add_argument("--cases", nargs="+", required=True)
    parser.add_argument("--rims", nargs="+", type=float, default=[-1.0], help="cavity rims (mm); -1: keep it")
    parser.add_argument("--range", type=int, default=6, help="largest shift (working voxels)")
    args = parser.parse_args()
    config = RegistrationConfig()
    device = torch.device("cpu")
    print("| case | cavity removed | min at (mm, axes 0 1 2) | cost(0) / cost(min) per axis |")
    print("|---|---|---|---|")
    for case in args.cases:
        pair = next(p for p in find_pairs(args.data, ("0001",)) if p.case == case)
        fixed = read_image(pair.fixed, case)
        truth = read_displacement(args.data / "groundtruth" / pair.output_name)
        moving = {"0001": warped_by_truth(read_image(pair.moving, case), truth)}
        sector = find_sector(fixed, config.working_spacing_mm, config.crop_margin_mm)
        case_features = extract_features(fixed, moving, sector, config.mind, device)
        images, features = case_features.images, case_features.features
        labels = read_image(args.data / "groundtruth" / f"labels_{case}_0000.nii.gz", case).array
        spacing = config.working_spacing_mm
        for rim in args.rims:
            keep = images.mask
            if rim >= 0 and (labels == 6).any():
                cavity = labels == 6
                if rim > 0:
                    cavity = ndimage.binary_dilation(
                        cavity, iterations=round(rim / float(np.mean(fixed.spacing)))
                    )
                # The cavity on the working grid, resampled like the sector mask in features().
                cav = sector.grid.to_working(cavity.astype(np.float32), device) > 0.5
                keep = keep * (~cav).float()
            mins, ratios = [], []
            for axis in range(3):
                costs = translation_costs(features.us, features.mr["0001"], keep, axis, args.range)
                mins.append((int(np.argmin(costs)) - args.range) * spacing)
                ratios.append(costs[args.range] / costs.min())
            removed = (
                "no" if rim < 0 else f"cavity + {rim:g} mm" if (labels == 6).any() else "no cavity in case"
            )
            where = " ".join(f"{m:+.0f}" for m in mins)
            print(f"| {case} | {removed} | {where} | {' '.join(f'{r:.3f}' for r in ratios)} |", flush=True)


if __name__ == "__main__":
    main()
