"""The SynthMorph training loop of the refinement network, on synthetic pairs only.

A pair (:func:`make_pair`): one random label map (:mod:`training.labels`), two independent
random deformations of it (:mod:`training.deform`), an image of each (fixed: ultrasound-like
with probability ``p_us``, else MR-like; moving: MR-like; :mod:`training.intensity`), each
normalised by :func:`inference.refinement.model.normalise`.

Loss: ``1 - Dice(G * onehot_fixed, warp(G * onehot_moving, u)) + lam * grad(u)``, the soft Dice
averaged over the labels present, inside the fixed sector (the whole volume for an MR-like fixed
image), of the one-hot label maps smoothed by a Gaussian ``G`` of sd ``label_sigma`` voxels;
``grad`` is :func:`inference.deformable.fields.diffusion_penalty` of the full-resolution field
``u`` (voxels, fixed -> moving: ``warped(x) = moving(x + u(x))``). The smoothing matters: the
Dice of hard one-hot maps has a gradient only within one voxel of a boundary, and with it the
network never moved off the identity (``benchmarks/refiner_overfit.py``; numbers in
``weights/MODEL_CARD.md``). The reported Dice (``dice``, validation) is that of the unsmoothed
one-hot maps: the moving one is warped with linear interpolation (so it is slightly soft), the
identity's is exact, which if anything favours the identity.

The pair of step ``s`` is drawn from its own generator seeded by ``(seed, s)``
(:func:`pair_generator`), so pairs can be made ahead by ``workers`` processes and a resumed run
sees exactly the pairs an uninterrupted one would. Runs are resumable: ``<out>/checkpoint.pt``
holds the model, the optimiser, the step, the cumulative step time (pair wait, forward and
backward; not validation or checkpointing) and the torch RNG states;
``<out>/log.csv`` one row per step (loss, Dice, seconds) and the validation Dice on fixed
held-out pairs (``val_seed``) every ``val_every`` steps. CUDA runs use bf16 autocast for the
network; the field integration and the loss stay in float32.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from remind2reg.inference.deformable.fields import diffusion_penalty, warp
from remind2reg.inference.refinement.model import (
    NetConfig,
    RefinerNet,
    count_parameters,
    load_weights,
    normalise,
    save_weights,
)
from remind2reg.training.deform import random_deformation
from remind2reg.training.intensity import MRRecipe, USRecipe, gaussian_blur, mr_image, us_image
from remind2reg.training.labels import one_hot, random_label_maps
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
LOG_CSV = "log.csv"
SMALL_CPU_NET = NetConfig((12, 24, 24, 24, 24), (24, 24, 24), 12)  # about 0.27 M parameters
NETS = {"small": SMALL_CPU_NET, "base": NetConfig()}  # base: about 0.5 M parameters, for GPUs
LOG_FIELDS = ("step", "loss", "dice", "grad", "seconds", "elapsed_s", "val_dice", "val_dice_identity")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint)."""

    size: int = 64  # voxels per side of the synthetic volumes
    batch: int = 1
    steps: int = 2000  # total optimiser steps (a resumed run continues up to this)
    lr: float = 1e-4  # SynthMorph's; 1e-3 diverged within 150-1000 steps (GPU 64^3 and CPU 32^3)
    clip_grad: float = 1.0  # max global gradient norm per step
    lam: float = 0.1  # weight of the gradient penalty
    label_sigma: float = 1.5  # sd (voxels) of the Gaussian smoothing of the labels in the loss
    n_labels: int = 16
    label_scale: tuple[float, float] = (4.0, 16.0)  # smoothness of the label noise (voxels)
    label_warp_std: float = 6.0
    deform_std: float = 3.0  # max sd (voxels) of each image's random deformation
    p_us: float = 0.8  # probability that the fixed image is ultrasound-like
    val_pairs: int = 8
    val_seed: int = 987654
    val_every: int = 250
    save_every: int = 50
    seed: int = 0
    net: NetConfig = field(default_factory=lambda: SMALL_CPU_NET)
    init: str | None = None  # the weight file a run started from (provenance; set by train())

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        data["net"] = NetConfig.from_dict(data["net"])
        data["label_scale"] = tuple(data["label_scale"])
        return cls(**data)


def make_pair(
    batch: int, shape: tuple[int, int, int], generator: torch.Generator, cfg: TrainConfig
) -> dict[str, torch.Tensor]:
    """A batch of synthetic pairs on the CPU.

    Returns ``fixed``/``moving`` ``(B, 1, ...)`` normalised images, ``fixed_labels``/
    ``moving_labels`` ``(B, n_labels, ...)`` one-hot, ``mask`` ``(B, 1, ...)`` (the fixed
    sector, or ones), and ``us`` ``(B,)`` bool (fixed image ultrasound-like).
    """
    base = one_hot(
        random_label_maps(batch, shape, generator, cfg.n_labels, cfg.label_scale, cfg.label_warp_std),
        cfg.n_labels,
    )
    phi_f = random_deformation(batch, shape, generator, max_std=cfg.deform_std)
    phi_m = random_deformation(batch, shape, generator, max_std=cfg.deform_std)
    lab_f = warp(base, phi_f).argmax(1)
    lab_m = warp(base, phi_m).argmax(1)
    moving = mr_image(lab_m, generator, MRRecipe())
    is_us = torch.rand(batch, generator=generator) < cfg.p_us
    fixed, mask = [], []
    for b in range(batch):
        if is_us[b]:
            img, m = us_image(lab_f[b : b + 1], generator, USRecipe())
        else:
            img, m = mr_image(lab_f[b : b + 1], generator, MRRecipe()), torch.ones_like(moving[:1])
        fixed.append(img)
        mask.append(m)
    mask = torch.cat(mask, 0)
    return {  # normalise() scales each sample on its own
        "fixed": normalise(torch.cat(fixed, 0), mask),
        "moving": normalise(moving),
        "fixed_labels": one_hot(lab_f, cfg.n_labels),
        "moving_labels": one_hot(lab_m, cfg.n_labels),
        "mask": mask,
        "us": is_us,
    }


def pair_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of pair ``index`` of a run seeded ``seed`` (independent of the others)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63))


class PairStream(Dataset):
    """``stream[s]`` is the batch of training step ``s`` (0-based): :func:`make_pair` drawn from
    :func:`pair_generator` ``(cfg.seed, s)``. Lets a :class:`DataLoader` make pairs ahead."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def __len__(self) -> int:
        return self.cfg.steps

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        return make_pair(cfg.batch, (cfg.size,) * 3, pair_generator(cfg.seed, step), cfg)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # one pair per worker process; the workers are the parallelism


def soft_dice(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean Dice over the labels present (in ``a`` or ``b`` inside ``mask``), per sample ``(B,)``."""
    dims = (2, 3, 4)
    inter = (a * b * mask).sum(dims)
    total = (a * mask).sum(dims) + (b * mask).sum(dims)
    present = (total > 1.0).float()
    dice = 2 * inter / total.clamp_min(1e-6)
    return (dice * present).sum(1) / present.sum(1).clamp_min(1.0)


def pair_loss(
    model: RefinerNet,
    pair: dict[str, torch.Tensor],
    lam: float,
    device: torch.device,
    label_sigma: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, hard-label Dice, gradient penalty) of a batch; bf16 autocast for the network on CUDA.

    The loss uses the labels smoothed by a Gaussian of sd ``label_sigma`` voxels (none at 0);
    the returned Dice is that of the hard one-hot labels (no gradient).
    """
    p = {k: v.to(device, non_blocking=True) for k, v in pair.items()}
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        disp = model(p["fixed"], p["moving"])
    disp = disp.float()
    fixed, moving = p["fixed_labels"], p["moving_labels"]
    if label_sigma > 0:
        hard = soft_dice(warp(moving, disp.detach()), fixed, p["mask"]).mean()
        sigmas = (label_sigma,) * 3
        fixed, moving = gaussian_blur(fixed, sigmas), gaussian_blur(moving, sigmas)
    dice = soft_dice(warp(moving, disp), fixed, p["mask"]).mean()
    if label_sigma <= 0:
        hard = dice.detach()  # the loss's Dice is already the hard-label one
    grad = diffusion_penalty(disp)
    return 1.0 - dice + lam * grad, hard, grad


def validation_pairs(cfg: TrainConfig) -> list[dict[str, torch.Tensor]]:
    """The fixed held-out pairs (seed ``cfg.val_seed``, never used for training)."""
    shape = (cfg.size,) * 3
    return [make_pair(1, shape, pair_generator(cfg.val_seed, i), cfg) for i in range(cfg.val_pairs)]


@torch.no_grad()
def validate(
    model: RefinerNet, pairs: list[dict[str, torch.Tensor]], device: torch.device
) -> tuple[float, float]:
    """(mean Dice after registration, mean Dice of the identity) over ``pairs``."""
    model.eval()
    after, before = [], []
    for pair in pairs:
        after.append(float(pair_loss(model, pair, 0.0, device)[1]))
        before.append(float(soft_dice(pair["moving_labels"], pair["fixed_labels"], pair["mask"]).mean()))
    model.train()
    return sum(after) / len(after), sum(before) / len(before)


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(out: Path) -> dict:
    return torch.load(out / CHECKPOINT, map_location="cpu", weights_only=False)


def _read_log(path: Path, upto: int) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= upto]


def train(
    out: str | Path,
    cfg: TrainConfig = TrainConfig(),
    resume: bool = False,
    device: str = "cpu",
    max_minutes: float | None = None,
    export: str | Path | None = None,
    progress: bool = True,
    workers: int = 0,
    init: str | Path | None = None,
) -> dict:
    """Train (or continue) a run in ``out``; returns a summary dict.

    With ``resume`` and an existing ``out/checkpoint.pt`` the run continues from it (its
    stored :class:`TrainConfig` wins, except ``steps``, taken from ``cfg``). ``max_minutes``
    stops this session early (after a checkpoint) so that long trainings run in slices.
    ``export`` writes the final weights with :func:`inference.refinement.model.save_weights`.
    ``workers`` processes make the pairs ahead (0: in this process); the pairs, and so the
    result, do not depend on it. ``init`` (a weight file, e.g. the shipped one) starts a new
    run from those weights, with their architecture and a fresh optimiser; a run resumed from
    its checkpoint ignores it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    ckpt_path = out / CHECKPOINT
    state = load_checkpoint(out) if resume and ckpt_path.is_file() else None
    if state is not None:
        stored = TrainConfig.from_dict({**state["config"], "steps": cfg.steps})
        if replace(cfg, init=stored.init) != stored:
            log.warning(
                "Resuming %s with its stored settings; those given now (except steps) are ignored", out
            )
        cfg = stored
        if int(state["step"]) >= cfg.steps:
            log.warning(
                "%s is already at step %d >= steps %d: nothing to train (raise --steps)",
                out, int(state["step"]), cfg.steps,
            )  # fmt: skip
    torch.manual_seed(cfg.seed)
    if state is None and init is not None:
        model = load_weights(init, dev).train()
        cfg = replace(cfg, net=model.config, init=str(init))
        source = (
            torch.load(init, map_location="cpu", weights_only=True).get("meta", {}).get("train_config", {})
        )
        if source.get("seed") == cfg.seed:
            log.warning(
                "--init %s with the seed of its own run (%d) replays its pairs: pass another --seed",
                init,
                cfg.seed,
            )
        log.info("Starting from the weights %s", init)
    else:
        model = RefinerNet(cfg.net).to(dev)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step, elapsed = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        torch.set_rng_state(state["torch_rng"])
        if dev.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        step, elapsed = int(state["step"]), float(state["elapsed_s"])
        log.info("Resuming %s at step %d (%.1f min so far)", out, step, elapsed / 60)
    rows = _read_log(out / LOG_CSV, step)
    log.info(
        "Refiner %s, %d parameters, %d^3 pairs, batch %d, device %s, %d torch threads",
        cfg.net.encoder, count_parameters(model), cfg.size, cfg.batch, dev, torch.get_num_threads(),
    )  # fmt: skip
    val = validation_pairs(cfg)
    loader = DataLoader(
        PairStream(cfg),
        batch_size=None,  # a PairStream item is already a batch
        sampler=range(step, cfg.steps),
        num_workers=workers,
        worker_init_fn=_worker_init if workers > 0 else None,
        pin_memory=dev.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )

    def checkpoint() -> None:
        _save_checkpoint(
            ckpt_path,
            {
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if dev.type == "cuda" else None,
                "step": step,
                "elapsed_s": elapsed,
                "config": asdict(cfg),
            },
        )
        with (out / LOG_CSV).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    session_start = time.perf_counter()
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="train-refiner", dynamic_ncols=True)
    stopped_early = False
    validated_at = -1  # the step of the last validation (the final one reuses it)
    t0 = time.perf_counter()
    for pair in loader:  # the batches of steps step, step + 1, ..., cfg.steps - 1
        optimiser.zero_grad(set_to_none=True)
        loss, dice, grad = pair_loss(model, pair, cfg.lam, dev, cfg.label_sigma)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        if torch.isfinite(norm):
            optimiser.step()
        else:  # a non-finite gradient would poison Adam's moments: skip the step
            log.warning("step %d: non-finite gradient, update skipped", step + 1)
        step += 1
        dt = time.perf_counter() - t0
        elapsed += dt
        loss, dice, grad = float(loss.detach()), float(dice.detach()), float(grad.detach())
        row = {
            "step": step,
            "loss": f"{loss:.5f}",
            "dice": f"{dice:.5f}",
            "grad": f"{grad:.6f}",
            "seconds": f"{dt:.3f}",
            "elapsed_s": f"{elapsed:.1f}",
            "val_dice": "",
            "val_dice_identity": "",
        }
        if step % cfg.val_every == 0 or step == cfg.steps:
            after, before = validate(model, val, dev)
            validated_at = step
            row["val_dice"], row["val_dice_identity"] = f"{after:.5f}", f"{before:.5f}"
            log.info("step %d: validation Dice %.4f (identity %.4f)", step, after, before)
        rows.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", dice=f"{dice:.3f}")
        if step % cfg.save_every == 0:
            checkpoint()
        if max_minutes is not None and time.perf_counter() - session_start > 60 * max_minutes:
            stopped_early = step < cfg.steps
            log.info("Stopping after %.1f min at step %d (resume with --resume)", max_minutes, step)
            break
        t0 = time.perf_counter()  # the next step's time includes waiting for its pair
    bar.close()
    if validated_at != step:  # the final state is always validated, and logged
        after, before = validate(model, val, dev)
        if rows and int(rows[-1]["step"]) == step:
            rows[-1]["val_dice"], rows[-1]["val_dice_identity"] = f"{after:.5f}", f"{before:.5f}"
    checkpoint()  # every exit: the last step, an early stop, or nothing left to do
    summary = {
        "step": step,
        "elapsed_s": elapsed,
        "val_dice": after,
        "val_dice_identity": before,
        "parameters": count_parameters(model),
        "finished": not stopped_early and step >= cfg.steps,
    }
    if export is not None:
        meta = {
            **summary,
            "train_config": asdict(cfg),
            "device": str(dev),
            "threads": torch.get_num_threads(),
        }
        save_weights(model, export, meta=meta)
        log.info("Exported weights to %s", export)
    return summary


def plot_log(csv_path: str | Path, png_path: str | Path) -> Path:
    """Training loss/Dice (running mean over 200 steps) and validation Dice curves as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with Path(csv_path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    step = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    dice = np.array([float(r["dice"]) for r in rows])
    k = min(200, len(rows))
    kernel = np.ones(k) / k
    val = [
        (int(r["step"]), float(r["val_dice"]), float(r["val_dice_identity"])) for r in rows if r["val_dice"]
    ]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(step[k - 1 :], np.convolve(loss, kernel, "valid"), label="loss (running mean)")
    ax[0].set_xlabel("step")
    ax[0].legend()
    ax[1].plot(step[k - 1 :], np.convolve(dice, kernel, "valid"), label="train Dice (running mean)")
    if val:
        v = np.array(val)
        ax[1].plot(v[:, 0], v[:, 1], "o-", label="validation Dice")
        ax[1].plot(v[:, 0], v[:, 2], "--", label="validation, identity")
    ax[1].set_xlabel("step")
    ax[1].legend()
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return png_path
