"""The SynthMorph training loop of the refinement network, on synthetic pairs only.

A pair (:func:`make_pair`): one random label map (:mod:`remind2reg.training.labels`), two independent
random deformations of it (:mod:`remind2reg.training.deform`), an image of each (fixed: ultrasound-like
with probability ``p_us``, else MR-like; moving: MR-like; :mod:`remind2reg.training.intensity`), each
normalised by :func:`remind2reg.inference.refinement.model.normalise`.

Loss: ``1 - Dice(G * onehot_fixed, warp(G * onehot_moving, u)) + lam * grad(u)``, the soft Dice
averaged over the labels present, inside the fixed sector (the whole volume for an MR-like fixed
image), of the one-hot label maps smoothed by a Gaussian ``G`` of sd ``label_sigma`` voxels;
``grad`` is :func:`remind2reg.inference.core.losses.diffusion_penalty` of the full-resolution field
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
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from remind2reg.inference.core.fields import warp
from remind2reg.inference.core.losses import diffusion_penalty, soft_dice
from remind2reg.inference.refinement.model import (
    RefinerNet,
    count_parameters,
    load_weights,
    normalise,
    save_weights,
)
from remind2reg.inference.settings import SMALL_CPU_NET, NetConfig
from remind2reg.training.deform import random_deformation
from remind2reg.training.intensity import MRRecipe, USRecipe, gaussian_blur, mr_image, us_image
from remind2reg.training.labels import one_hot, random_label_maps

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
LOG_CSV = "log.csv"
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


@dataclass
class TrainingRun:
    """The mutable state of one run: model, optimiser, step, step time, log rows, and where they go."""

    out: Path
    cfg: TrainConfig
    device: torch.device
    model: RefinerNet
    optimiser: torch.optim.Optimizer
    step: int = 0
    elapsed: float = 0.0  # cumulative step seconds (pair wait, forward, backward)
    rows: list[dict[str, str]] = field(default_factory=list)
    validation: tuple[int, float, float] | None = None  # (step, Dice after, Dice of the identity), last

    def validate(self, pairs: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
        """Validate the current model and remember it (:func:`validate`)."""
        after, before = validate(self.model, pairs, self.device)
        self.validation = (self.step, after, before)
        return after, before

    def checkpoint(self) -> None:
        """Write ``checkpoint.pt`` (model, optimiser, RNG states, step, config) and ``log.csv``."""
        _save_checkpoint(
            self.out / CHECKPOINT,
            {
                "model": self.model.state_dict(),
                "optimiser": self.optimiser.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if self.device.type == "cuda" else None,
                "step": self.step,
                "elapsed_s": self.elapsed,
                "config": asdict(self.cfg),
            },
        )
        with (self.out / LOG_CSV).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)

    def train_step(self, pair: dict[str, torch.Tensor]) -> tuple[float, float, float]:
        """One optimiser step on ``pair``; returns (loss, hard-label Dice, gradient penalty)."""
        cfg = self.cfg
        self.optimiser.zero_grad(set_to_none=True)
        loss, dice, grad = pair_loss(self.model, pair, cfg.lam, self.device, cfg.label_sigma)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        if torch.isfinite(norm):
            self.optimiser.step()
        else:  # a non-finite gradient would poison Adam's moments: skip the step
            log.warning("step %d: non-finite gradient, update skipped", self.step + 1)
        self.step += 1
        return float(loss.detach()), float(dice.detach()), float(grad.detach())


def _resumed_config(out: Path, cfg: TrainConfig, state: dict) -> TrainConfig:
    """The stored config of a checkpoint (``steps`` from ``cfg``), with warnings where they differ."""
    stored = TrainConfig.from_dict({**state["config"], "steps": cfg.steps})
    if replace(cfg, init=stored.init) != stored:
        log.warning("Resuming %s with its stored settings; those given now (except steps) are ignored", out)
    if int(state["step"]) >= stored.steps:
        log.warning(
            "%s is already at step %d >= steps %d: nothing to train (raise --steps)",
            out, int(state["step"]), stored.steps,
        )  # fmt: skip
    return stored


def _initial_model(
    cfg: TrainConfig, dev: torch.device, init: str | Path | None
) -> tuple[RefinerNet, TrainConfig]:
    """A new network (seeded), or the weights of ``init`` with their architecture."""
    if init is None:
        return RefinerNet(cfg.net).to(dev), cfg
    model = load_weights(init, dev).train()
    cfg = replace(cfg, net=model.config, init=str(init))
    source = torch.load(init, map_location="cpu", weights_only=True).get("meta", {}).get("train_config", {})
    if source.get("seed") == cfg.seed:
        log.warning(
            "--init %s with the seed of its own run (%d) replays its pairs: pass another --seed",
            init,
            cfg.seed,
        )
    log.info("Starting from the weights %s", init)
    return model, cfg


def setup_run(
    out: Path, cfg: TrainConfig, resume: bool, dev: torch.device, init: str | Path | None
) -> TrainingRun:
    """A new run in ``out``, or the one its checkpoint holds (``resume``)."""
    out.mkdir(parents=True, exist_ok=True)
    state = load_checkpoint(out) if resume and (out / CHECKPOINT).is_file() else None
    if state is not None:
        cfg = _resumed_config(out, cfg, state)
    torch.manual_seed(cfg.seed)
    model, cfg = _initial_model(cfg, dev, init if state is None else None)
    run = TrainingRun(out, cfg, dev, model, torch.optim.Adam(model.parameters(), lr=cfg.lr))
    if state is not None:
        model.load_state_dict(state["model"])
        run.optimiser.load_state_dict(state["optimiser"])
        torch.set_rng_state(state["torch_rng"])
        if dev.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        run.step, run.elapsed = int(state["step"]), float(state["elapsed_s"])
        log.info("Resuming %s at step %d (%.1f min so far)", out, run.step, run.elapsed / 60)
    run.rows = _read_log(out / LOG_CSV, run.step)
    log.info(
        "Refiner %s, %d parameters, %d^3 pairs, batch %d, device %s, %d torch threads",
        cfg.net.encoder, count_parameters(model), cfg.size, cfg.batch, dev, torch.get_num_threads(),
    )  # fmt: skip
    return run


def _pair_loader(run: TrainingRun, workers: int) -> DataLoader:
    """The batches of steps ``run.step .. steps - 1``, made ahead by ``workers`` processes."""
    return DataLoader(
        PairStream(run.cfg),
        batch_size=None,  # a PairStream item is already a batch
        sampler=range(run.step, run.cfg.steps),
        num_workers=workers,
        worker_init_fn=_worker_init if workers > 0 else None,
        pin_memory=run.device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )


def run_loop(
    run: TrainingRun,
    val: list[dict[str, torch.Tensor]],
    workers: int,
    max_minutes: float | None,
    progress: bool,
) -> bool:
    """Train until ``steps`` or ``max_minutes``; returns whether it stopped early."""
    cfg = run.cfg
    session_start = time.perf_counter()
    run.model.train()
    bar = tqdm(
        total=cfg.steps, initial=run.step, disable=not progress, desc="train-refiner", dynamic_ncols=True
    )
    stopped_early = False
    t0 = time.perf_counter()
    for pair in _pair_loader(run, workers):  # the batches of steps step, step + 1, ..., cfg.steps - 1
        loss, dice, grad = run.train_step(pair)
        dt = time.perf_counter() - t0
        run.elapsed += dt
        row = {
            "step": run.step, "loss": f"{loss:.5f}", "dice": f"{dice:.5f}", "grad": f"{grad:.6f}",
            "seconds": f"{dt:.3f}", "elapsed_s": f"{run.elapsed:.1f}", "val_dice": "", "val_dice_identity": "",
        }  # fmt: skip
        if run.step % cfg.val_every == 0 or run.step == cfg.steps:
            after, before = run.validate(val)
            row["val_dice"], row["val_dice_identity"] = f"{after:.5f}", f"{before:.5f}"
            log.info("step %d: validation Dice %.4f (identity %.4f)", run.step, after, before)
        run.rows.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", dice=f"{dice:.3f}")
        if run.step % cfg.save_every == 0:
            run.checkpoint()
        if max_minutes is not None and time.perf_counter() - session_start > 60 * max_minutes:
            stopped_early = run.step < cfg.steps
            log.info("Stopping after %.1f min at step %d (resume with --resume)", max_minutes, run.step)
            break
        t0 = time.perf_counter()  # the next step's time includes waiting for its pair
    bar.close()
    return stopped_early


def finish_run(
    run: TrainingRun, val: list[dict[str, torch.Tensor]], stopped_early: bool, export: str | Path | None
) -> dict:
    """Validate the final state (unless just done), checkpoint, export; returns the summary."""
    if run.validation is not None and run.validation[0] == run.step:
        after, before = run.validation[1:]
    else:  # the final state is always validated, and logged
        after, before = run.validate(val)
        if run.rows and int(run.rows[-1]["step"]) == run.step:
            run.rows[-1]["val_dice"], run.rows[-1]["val_dice_identity"] = f"{after:.5f}", f"{before:.5f}"
    run.checkpoint()  # every exit: the last step, an early stop, or nothing left to do
    summary = {
        "step": run.step,
        "elapsed_s": run.elapsed,
        "val_dice": after,
        "val_dice_identity": before,
        "parameters": count_parameters(run.model),
        "finished": not stopped_early and run.step >= run.cfg.steps,
    }
    if export is not None:
        meta = {
            **summary,
            "train_config": asdict(run.cfg),
            "device": str(run.device),
            "threads": torch.get_num_threads(),
        }
        save_weights(run.model, export, meta=meta)
        log.info("Exported weights to %s", export)
    return summary


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
    ``export`` writes the final weights with :func:`~remind2reg.inference.refinement.model.save_weights`.
    ``workers`` processes make the pairs ahead (0: in this process); the pairs, and so the
    result, do not depend on it. ``init`` (a weight file, e.g. the shipped one) starts a new
    run from those weights, with their architecture and a fresh optimiser; a run resumed from
    its checkpoint ignores it.
    """
    run = setup_run(Path(out), cfg, resume, torch.device(device), init)
    val = validation_pairs(run.cfg)
    stopped_early = run_loop(run, val, workers, max_minutes, progress)
    return finish_run(run, val, stopped_early, export)
