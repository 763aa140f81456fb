"""Where does the MIND-SSC cost put its optimum when the images are exactly aligned?

    python benchmarks/similarity_scan.py --data data/synth_shared --cases 0001 0002 [--rims 0 3 6] [--range 6]

For each case the ceT1 is warped by the ground-truth field (as in ``deformable_from_truth.py``),
so the truth is the zero displacement. Both images go through the method's own working-grid
resampling and MIND-SSC features (:meth:`ConvexAdamMethod.features`, default settings); the
mean SSD of the features inside the sector is then evaluated for global translations of
``-range .. +range`` working voxels (1 mm) along each array axis. An unbiased similarity has
its minimum at 0 on every axis. The printed numbers are the shift of the minimum per axis (mm)
and the cost ratio ``cost(0) / cost(min)``.

``--step`` below 1 scans sub-voxel shifts, where the moving features are interpolated
(trilinear, as in the Adam stage); ``--pool k`` first averages the features over k^3 blocks as
the Adam stage does (``[adam] feature_pool``; shifts and ``--range`` are then in pooled voxels,
printed in mm), and ``--smoothing s`` applies that stage's ``[adam] feature_smoothing``. Integer
shifts involve no interpolation; at sub-voxel shifts interpolation lowers the moving features'
energy, and on the simulated iUS the SSD drops below its value at the truth, with minima near
half-voxel shifts: the interpolation artefact (docs/benchmark.md). ``--jitter N`` averages
each cost over N random sub-voxel sampling offsets with both sides interpolated, as
``[adam] jitter_sampling`` does.

``--guard`` scans the guard's criterion instead (``[guard] criterion``, NMI by default, on the
working-grid images, the MR warped as the guard warps it; ``--pool``, ``--smoothing`` and
``--jitter`` do not apply): its maximum, printed with ``crit(max) - crit(0)``, should be at 0 too,
and a dip at half-voxel shifts would be an interpolation artefact of the guard itself.

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
from remind2reg.inference.core.losses import masked_ssd
from remind2reg.inference.deformable.instance import compared_features, sample_pair
from remind2reg.inference.io.dataset import find_pairs
from remind2reg.inference.io.displacement import read_displacement
from remind2reg.inference.io.nifti import read_image
from remind2reg.inference.settings import AdamSettings, GuardSettings
from remind2reg.inference.stages.features import WorkingImages, extract_features
from remind2reg.inference.stages.guard import criterion
from remind2reg.inference.stages.sector import find_sector

REPO = Path(__file__).resolve().parents[1]


def axis_shift(like: torch.Tensor, axis: int, voxels: float) -> torch.Tensor:
    """The constant field ``(1, 3, D, H, W)`` on ``like``'s grid that moves by ``voxels`` along
    array ``axis``: warped by it, an image reads ``img(x + voxels e_axis)``."""
    field = torch.zeros(1, 3, *like.shape[-3:], dtype=like.dtype)
    field[:, axis] = voxels
    return field


def translation_costs(
    us: torch.Tensor, mr: torch.Tensor, mask: torch.Tensor, axis: int, shifts: np.ndarray, jitter: int = 0
) -> np.ndarray:
    """Mean feature SSD in ``mask`` for ``mr`` translated by each of ``shifts`` voxels along ``axis``.

    ``us``/``mr`` are ``(1, C, D, H, W)`` features on one grid, ``mask`` ``(1, 1, D, H, W)``
    (or the pooled weight); a shift ``s`` compares ``us(x)`` with ``mr(x + s e_axis)`` (the
    field convention of :func:`remind2reg.inference.core.fields.warp`; trilinear between voxels).
    ``jitter > 0``: the mean over that many random sub-voxel sampling offsets, both sides
    interpolated, as ``[adam] jitter_sampling`` compares them (the same offsets for every shift).
    """
    settings = AdamSettings(jitter_sampling=jitter > 0)
    costs = []
    for shift in shifts:
        disp = axis_shift(us, axis, float(shift))
        generator = torch.Generator().manual_seed(0)
        draws = []
        for _ in range(max(jitter, 1)):
            fixed, weight, moved = sample_pair(us, mask, mr, disp, settings, generator)
            draws.append(float(masked_ssd(fixed, moved, weight)))
        costs.append(float(np.mean(draws)))
    return np.array(costs)


def guard_scores(images: WorkingImages, mask: torch.Tensor, axis: int, shifts: np.ndarray) -> np.ndarray:
    """The guard's criterion of the ceT1 (``"0001"``) translated by each of ``shifts`` working
    voxels along ``axis`` (the field convention of ``translation_costs``), inside ``mask``."""
    images = WorkingImages(us=images.us, mr=images.mr, mask=mask)
    settings = GuardSettings()
    return np.asarray(
        [criterion(images, "0001", axis_shift(images.us, axis, float(s)), settings) for s in shifts]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "standard")
    parser.add_argument("--cases", nargs="+", required=True)
    parser.add_argument("--rims", nargs="+", type=float, default=[-1.0], help="cavity rims (mm); -1: keep it")
    parser.add_argument("--range", type=float, default=6, help="largest shift (voxels of the scanned grid)")
    parser.add_argument("--step", type=float, default=1.0, help="shift step (voxels; < 1: sub-voxel)")
    parser.add_argument("--pool", type=int, default=1, help="average the features over k^3 blocks first")
    parser.add_argument(
        "--smoothing", type=float, default=0.0, help="Gaussian sd (pooled voxels) after pooling"
    )
    parser.add_argument(
        "--jitter",
        type=int,
        default=0,
        help="mean over N random sub-voxel sampling offsets ([adam] jitter_sampling)",
    )
    parser.add_argument("--guard", action="store_true", help="scan the guard's criterion (a maximum)")
    args = parser.parse_args()
    if args.guard and (args.pool != 1 or args.smoothing or args.jitter):
        parser.error("--guard scans the working-grid images: --pool, --smoothing and --jitter do not apply")
    n = round(args.range / args.step)
    shifts = np.arange(-n, n + 1) * args.step
    zero = n  # index of the zero shift
    config = RegistrationConfig()
    device = torch.device("cpu")
    extremum = (
        "max at (mm, axes 0 1 2) | crit(max) - crit(0)"
        if args.guard
        else "min at (mm, axes 0 1 2) | cost(0) / cost(min)"
    )
    print(f"| case | cavity removed | {extremum} per axis |")
    print("|---|---|---|---|")
    mm = config.working_spacing_mm * args.pool  # one scanned voxel in mm
    for case in args.cases:
        pair = next(p for p in find_pairs(args.data, ("0001",)) if p.case == case)
        fixed = read_image(pair.fixed, case)
        truth = read_displacement(args.data / "groundtruth" / pair.output_name)
        moving = {"0001": warped_by_truth(read_image(pair.moving, case), truth)}
        sector = find_sector(fixed, config.working_spacing_mm, config.crop_margin_mm)
        case_features = extract_features(fixed, moving, sector, config.mind, device)
        images, features = case_features.images, case_features.features
        labels = read_image(args.data / "groundtruth" / f"labels_{case}_0000.nii.gz", case).array
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
            best_mm, gaps = [], []  # per axis: where the optimum is, and how much better than at 0
            if args.guard:  # a score to maximise, on the working-grid images
                for axis in range(3):
                    scores = guard_scores(images, keep, axis, shifts)
                    best_mm.append(float(shifts[int(np.argmax(scores))]) * mm)
                    gaps.append(f"{scores.max() - scores[zero]:.4f}")
            else:  # a cost to minimise, on the features as the Adam stage compares them
                adam = AdamSettings(feature_pool=args.pool, feature_smoothing=args.smoothing)
                us_f, mr_f, weight = compared_features(features.us, features.mr["0001"], keep, adam)
                for axis in range(3):
                    costs = translation_costs(us_f, mr_f, weight, axis, shifts, args.jitter)
                    best_mm.append(float(shifts[int(np.argmin(costs))]) * mm)
                    gaps.append(f"{costs[zero] / costs.min():.3f}")
            removed = (
                "no" if rim < 0 else f"cavity + {rim:g} mm" if (labels == 6).any() else "no cavity in case"
            )
            where = " ".join(f"{m:+.2f}" for m in best_mm)
            print(f"| {case} | {removed} | {where} | {' '.join(gaps)} |", flush=True)


if __name__ == "__main__":
    main()
