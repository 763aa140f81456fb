"""How well does each similarity pin one block of the image when the MR is aligned by the truth?

    python benchmarks/block_localisation.py --data data/standard --cases 0001 0007 [--block 16] [--range 3]

The deformable stage's field moves on the scale of about 16 mm (Adam's 4 mm control points,
three box smoothings), so the drift it settles at (docs/benchmark.md, "where the drift from
the truth comes from") is bounded below by how well the images fix the alignment of one such
block. For each case the ceT1 is warped by the ground-truth field (``deformable_from_truth.py``),
so the truth is the zero shift. The working-grid images (1 mm) and their MIND-SSC features
(default settings) are cut into blocks of ``--block`` voxels; a block counts when at least
``--min-inside`` of it lies in the US sector. Each similarity is evaluated per block for every
INTEGER shift up to ``--range`` voxels along each axis (``(2 range + 1)^3`` shifts; nothing is
interpolated, so the interpolation artefact plays no part), and the block's best shift is noted:

* ``mind``: the mean MIND-SSC SSD over the block's sector voxels (the Adam stage's cost);
* ``lc2``: the block's LC2 (:func:`remind2reg.inference.core.losses.lc2_maps`, 7 mm patches);
* ``mind-log``: Locor's aggregation (Honkamaa et al., MICCAI 2025) applied to the MIND SSD: the
  SSD averaged over 5 mm windows, then the block's mean of ``log(window SSD + eps)`` (``eps``:
  1e-3 of the mean window SSD at the truth), so that windows nothing explains weigh little.

Printed per case and over all blocks: how far the best shift lies from the truth (mm), the
share within 1 mm and the share exactly at the truth. A similarity that pins a block well has
its optimum at 0 on most blocks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from deformable_from_truth import warped_by_truth

from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.core.correlation import displacement_offsets
from remind2reg.inference.core.losses import lc2_maps
from remind2reg.inference.core.mind import box_filter
from remind2reg.inference.io.dataset import find_pairs
from remind2reg.inference.io.displacement import read_displacement
from remind2reg.inference.io.nifti import read_image
from remind2reg.inference.stages.features import extract_features
from remind2reg.inference.stages.sector import find_sector

REPO = Path(__file__).resolve().parents[1]
SIMILARITIES = ("mind", "lc2", "mind-log")
LOG_WINDOW_RADIUS = 2  # 5 mm windows of the log aggregation


def shifted(image: torch.Tensor, shift: tuple[int, int, int], largest: int) -> torch.Tensor:
    """``image(x + shift)`` on the same grid, ``image`` ``(1, C, I, J, K)``, edge-replicated;
    ``shift`` in voxels along the array axes, each component at most ``largest`` in size (the
    direction of :func:`remind2reg.inference.core.fields.warp`: the content moves by ``-shift``)."""
    h = largest
    padded = F.pad(image, (h, h, h, h, h, h), mode="replicate")
    n_i, n_j, n_k = image.shape[-3:]
    a, b, c = (h + s for s in shift)
    return padded[..., a : a + n_i, b : b + n_j, c : c + n_k]


def block_costs(
    us: torch.Tensor,
    mr: torch.Tensor,
    us_features: torch.Tensor,
    mr_features: torch.Tensor,
    mask: torch.Tensor,
    block: int,
    largest: int,
    min_inside: float = 0.75,
) -> dict[str, torch.Tensor]:
    """Per similarity, the cost ``(S, B)`` of each shift of :func:`~remind2reg.inference.core.correlation.displacement_offsets` (rows) for each
    block (columns: the blocks with at least ``min_inside`` of their voxels in ``mask``, in array
    order), lower is better; LC2 enters as ``-LC2``.

    ``us``/``mr`` images ``(1, 1, I, J, K)`` and their features ``(1, C, I, J, K)`` on one grid,
    ``mask`` ``(1, 1, I, J, K)`` the sector. A block is ``block^3`` voxels (the grid is cut from
    its first voxel; a last partial block is dropped).
    """
    inside = (mask > 0).float()
    share = F.avg_pool3d(inside, block, block)[0, 0]
    used = share >= min_inside

    def voxel_ssd(shift: tuple[int, int, int]) -> torch.Tensor:
        moved = shifted(mr_features.float(), shift, largest)
        return ((us_features.float() - moved) ** 2).mean(1, keepdim=True)

    def block_mean(voxels: torch.Tensor) -> torch.Tensor:  # over each used block's sector voxels
        return (F.avg_pool3d(voxels * inside, block, block)[0, 0] / share.clamp_min(1e-6))[used]

    at_truth = box_filter(voxel_ssd((0, 0, 0)), LOG_WINDOW_RADIUS)
    eps = 1e-3 * float((at_truth * inside).sum() / inside.sum().clamp_min(1.0))
    out: dict[str, list[torch.Tensor]] = {name: [] for name in SIMILARITIES}
    for shift in displacement_offsets(largest).long().tolist():  # integer shifts, (i, j, k)
        ssd = voxel_ssd(shift)
        out["mind"].append(block_mean(ssd))
        out["mind-log"].append(block_mean(torch.log(box_filter(ssd, LOG_WINDOW_RADIUS) + eps)))
        explained, var_us = lc2_maps(us, shifted(mr, shift, largest))
        score = F.avg_pool3d(explained * inside, block, block) / F.avg_pool3d(
            var_us * inside, block, block
        ).clamp_min(1e-12)
        out["lc2"].append(-score[0, 0][used])
    return {name: torch.stack(costs) for name, costs in out.items()}


def best_shift_mm(costs: torch.Tensor, largest: int, spacing_mm: float) -> np.ndarray:
    """Distance (mm) of each block's best shift from the truth (the zero shift), ``(B,)``."""
    shifts = displacement_offsets(largest).double()
    return (shifts[costs.argmin(0)].norm(dim=1) * spacing_mm).numpy()


def summary(distances: np.ndarray) -> str:
    if len(distances) == 0:
        return "no block inside the sector"
    return (
        f"{len(distances)} blocks: mean {distances.mean():.2f} mm, median {np.median(distances):.2f} mm, "
        f"within 1 mm {np.mean(distances <= 1.0 + 1e-9):.0%}, at the truth {np.mean(distances == 0):.0%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "standard")
    parser.add_argument("--cases", nargs="+", required=True)
    parser.add_argument("--block", type=int, default=16, help="block side (working voxels, 1 mm)")
    parser.add_argument("--range", type=int, default=3, help="largest shift per axis (working voxels)")
    parser.add_argument("--min-inside", type=float, default=0.75, help="share of a block inside the sector")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = RegistrationConfig()
    everything: dict[str, list[np.ndarray]] = {name: [] for name in SIMILARITIES}
    for case in args.cases:
        pair = next((p for p in find_pairs(args.data, ("0001",)) if p.case == case), None)
        if pair is None:
            raise SystemExit(f"case {case}: no ceT1 pair in {args.data}")
        fixed = read_image(pair.fixed, case)
        truth = read_displacement(args.data / "groundtruth" / pair.output_name)
        moving = {"0001": warped_by_truth(read_image(pair.moving, case), truth)}
        sector = find_sector(fixed, config.working_spacing_mm, config.crop_margin_mm)
        working = extract_features(fixed, moving, sector, config.mind, torch.device("cpu"))
        images, features = working.images, working.features
        costs = block_costs(
            images.us, images.mr["0001"], features.us, features.mr["0001"], images.mask,
            args.block, args.range, args.min_inside,
        )  # fmt: skip
        for name, cost in costs.items():
            distances = best_shift_mm(cost, args.range, config.working_spacing_mm)
            everything[name].append(distances)
            print(f"{case}  {name:5s} {summary(distances)}", flush=True)
    for name, parts in everything.items():
        print(f"all   {name:5s} {summary(np.concatenate(parts))}")


if __name__ == "__main__":
    main()
