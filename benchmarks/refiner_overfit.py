"""Can the refinement network learn at all? Overfit 8 fixed synthetic pairs and print a table.

    python benchmarks/refiner_overfit.py [--steps 300] [--size 32] [--threads 1]

The diagnostic behind the fixes of ``refiner_v2`` (``weights/MODEL_CARD.md``). Both images of a
pair show the same label map under two random deformations with the same contrast (one random
intensity per label, applied to both), so a network that learns anything must raise the Dice.
Variants (rows), each from the same seed, Adam on the 8 pairs in turn:

* ``v1``: torch's default convolution initialisation, hard one-hot Dice, lr 5e-4 (the old recipe);
* ``he``: He initialisation (the model's default now), hard one-hot Dice, lr 5e-4;
* ``he lr1e-3``: the same at lr 1e-3 (so the loss and the learning rate are not confounded);
* ``he+mse``: He initialisation, image MSE (a control for the size of the learning signal), lr 1e-3;
* ``he+smooth lr5e-4``: He initialisation, Dice of labels smoothed by sd 1.5 voxels, lr 5e-4;
* ``he+smooth``: the same at lr 1e-3.

The Dice losses use the training default ``lam`` (:class:`TrainConfig`).

Prints the mean hard-label Dice over the 8 pairs (and the identity's) and the largest
displacement of the first pair, every 50 steps.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from remind2reg.inference.core.losses import soft_dice
from remind2reg.inference.deformable.fields import warp
from remind2reg.inference.refinement.model import RefinerNet
from remind2reg.inference.settings import SMALL_CPU_NET
from remind2reg.training.train import TrainConfig, make_pair, pair_loss

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (initialisation, loss, learning rate)
    "v1": ("torch", "dice", 5e-4),
    "he": ("he", "dice", 5e-4),
    "he lr1e-3": ("he", "dice", 1e-3),
    "he+mse": ("he", "mse", 1e-3),
    "he+smooth lr5e-4": ("he", "smooth", 5e-4),
    "he+smooth": ("he", "smooth", 1e-3),
}
LAM = TrainConfig.lam  # the training default


def same_contrast_pairs(n: int, size: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` pairs of :func:`make_pair`, images replaced by one random intensity per label."""
    cfg = TrainConfig(size=size, p_us=0.0)
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        p = make_pair(1, (size,) * 3, g, cfg)
        lut = torch.rand(cfg.n_labels, generator=g).view(1, -1, 1, 1, 1)
        p["fixed"] = (p["fixed_labels"] * lut).sum(1, keepdim=True)
        p["moving"] = (p["moving_labels"] * lut).sum(1, keepdim=True)
        pairs.append(p)
    return pairs


def network(init: str) -> RefinerNet:
    torch.manual_seed(0)
    net = RefinerNet(SMALL_CPU_NET)
    if init == "torch":  # undo the He initialisation: torch's default, head back at N(0, 1e-5)
        for module in net.modules():
            if isinstance(module, torch.nn.Conv3d):
                module.reset_parameters()
        torch.nn.init.normal_(net.head.weight, std=1e-5)
        torch.nn.init.zeros_(net.head.bias)
    return net


def run(name: str, pairs: list[dict[str, torch.Tensor]], steps: int) -> list[tuple[int, float, float, float]]:
    """(step, mean hard Dice, max displacement of pair 0, seconds so far) every 50 steps."""
    init, loss_kind, lr = VARIANTS[name]
    t0 = time.perf_counter()
    net = network(init)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    cpu = torch.device("cpu")
    rows = []
    for s in range(steps):
        p = pairs[s % len(pairs)]
        opt.zero_grad()
        if loss_kind == "mse":
            loss = 100 * ((warp(p["moving"], net(p["fixed"], p["moving"])) - p["fixed"]) ** 2).mean()
        else:
            loss = pair_loss(net, p, LAM, cpu, label_sigma=1.5 if loss_kind == "smooth" else 0.0)[0]
        loss.backward()
        opt.step()
        if (s + 1) % 50 == 0:
            with torch.no_grad():
                dice = sum(float(pair_loss(net, q, 0.0, cpu)[1]) for q in pairs) / len(pairs)
                reach = float(net(pairs[0]["fixed"], pairs[0]["moving"]).norm(dim=1).max())
            rows.append((s + 1, dice, reach, time.perf_counter() - t0))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pairs = same_contrast_pairs(8, args.size, seed=1)
    identity = sum(float(soft_dice(p["moving_labels"], p["fixed_labels"], p["mask"]).mean()) for p in pairs)
    print(f"identity Dice {identity / len(pairs):.4f}")
    print("| variant | step | Dice | max displacement (voxels) | s |")
    print("|---|---|---|---|---|")
    for name in VARIANTS:
        for step, dice, reach, seconds in run(name, pairs, args.steps):
            print(f"| {name} | {step} | {dice:.4f} | {reach:.3f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
