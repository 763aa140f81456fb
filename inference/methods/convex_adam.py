"""MIND-SSC + multilevel coupled convex optimisation + Adam (the ConvexAdam / MCBO family).

Stages of one case (:meth:`ConvexAdamMethod.__call__`):

1. ``sector``: the US field of view (non-zero voxels, holes filled) and a crop box around it;
2. ``features``: images averaged down to the working grid inside the crop; MIND-SSC of the US
   (masked by the sector) and of each MR;
3. ``affine`` (optional, ``config.affine``): a global rigid/affine transform by MIND block
   matching or ``reg_aladin``; the MR images are pre-warped by it;
4. ``convex``: coarse-to-fine levels of dense correlation + coupled convex optimisation;
5. ``adam``: instance optimisation of a stationary velocity field (fold-free);
6. ``guard``: the result must raise the US/MR NMI over the input alignment;
7. ``embed``: the working-grid field mapped back to the full fixed grid (challenge format),
   extended beyond the crop by its border values, then composed with the affine:
   ``x + u(x) = A (x + d(x))`` (:func:`inference.geometry.compose_affine_displacement`).

Working grid: working voxel ``w`` is the block of ``factor^3`` full voxels starting at
``lo + factor * w``, whose centre is full voxel ``lo + factor * w + (factor - 1) / 2``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from remind2reg.inference.affine.blockmatch import block_match
from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.core.sector import sector_mask
from remind2reg.inference.deformable.convex import cost_volume, coupled_convex, inverse_consistent, pool
from remind2reg.inference.deformable.fields import (
    affine_after_field,
    affine_field,
    compose,
    identity_voxels,
    sample,
    upsample_cells,
    warp,
)
from remind2reg.inference.deformable.guard import check_against_identity
from remind2reg.inference.deformable.instance import instance_optimise
from remind2reg.inference.errors import InputError
from remind2reg.inference.features.mind import mind_ssc
from remind2reg.inference.geometry import compose_affine_displacement
from remind2reg.inference.io.nifti import Image
from remind2reg.inference.methods.base import MethodResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkingGrid:
    """A crop of the full fixed grid, averaged by ``factor`` along each axis."""

    lo: tuple[int, int, int]  # first full voxel of the crop
    factor: int  # full voxels per working voxel
    shape: tuple[int, int, int]  # working grid shape
    full_shape: tuple[int, int, int]

    @property
    def hi(self) -> tuple[int, int, int]:
        return tuple(lo + self.factor * n for lo, n in zip(self.lo, self.shape, strict=True))  # type: ignore[return-value]

    def crop(self, array: NDArray) -> NDArray:
        """The crop of a full-grid array, zero-padded where the crop leaves the grid."""
        out = np.zeros(tuple(self.factor * n for n in self.shape), dtype=np.float32)
        src = tuple(
            slice(max(lo, 0), min(hi, n)) for lo, hi, n in zip(self.lo, self.hi, self.full_shape, strict=True)
        )
        dst = tuple(slice(s.start - lo, s.stop - lo) for s, lo in zip(src, self.lo, strict=True))
        out[dst] = array[src]
        return out

    def vox2world(self, fixed_vox2world: NDArray) -> NDArray[np.float64]:
        """Working voxel -> world: working voxel ``w`` is centred on full voxel
        ``lo + factor * w + (factor - 1) / 2``."""
        full = np.eye(4)
        full[:3, :3] *= self.factor
        full[:3, 3] = np.asarray(self.lo) + (self.factor - 1) / 2.0
        return np.asarray(fixed_vox2world, dtype=np.float64) @ full

    def to_working(self, array: NDArray, device: torch.device) -> torch.Tensor:
        """``(1, 1, *shape)`` tensor: the crop averaged over factor^3 blocks."""
        t = torch.from_numpy(self.crop(array))[None, None].to(device)
        return F.avg_pool3d(t, self.factor) if self.factor > 1 else t


def working_grid(mask: NDArray[np.bool_], spacing_mm: float, config: RegistrationConfig) -> WorkingGrid:
    """Crop box around the sector (plus margin) on a grid of ``working_spacing_mm``."""
    factor = max(1, round(config.working_spacing_mm / spacing_mm))
    margin = round(config.crop_margin_mm / spacing_mm)
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, mask.shape)
    shape = np.maximum(-(-(hi - lo) // factor), 8)  # at least 8 working voxels per side
    return WorkingGrid(tuple(int(v) for v in lo), factor, tuple(int(v) for v in shape), tuple(mask.shape))  # type: ignore[arg-type]


def embed(disp: torch.Tensor, grid: WorkingGrid, chunk: int = 16) -> NDArray[np.float32]:
    """The full-grid challenge field ``(I, J, K, 3)`` (full voxels) of a working field.

    Full voxel ``x`` reads the working field at ``w = (x - lo - (factor - 1) / 2) / factor``
    (trilinear, border-extended beyond the crop) and scales it by ``factor``. Computed in
    slabs along the first axis to bound memory.
    """
    full = grid.full_shape
    out = np.empty((*full, 3), dtype=np.float32)
    lo = torch.tensor(grid.lo, dtype=torch.float32, device=disp.device).view(1, 3, 1, 1, 1)
    offset = (grid.factor - 1) / 2.0
    for start in range(0, full[0], chunk):
        stop = min(start + chunk, full[0])
        coords = identity_voxels((stop - start, full[1], full[2]), disp.device).clone()
        coords[:, 0] += start
        w = (coords - lo - offset) / grid.factor
        values = sample(disp.float(), w) * grid.factor  # (1, 3, slab, J, K)
        out[start:stop] = values[0].permute(1, 2, 3, 0).cpu().numpy()  # channels last
    return out


@dataclass
class WorkingImages:
    """Everything on the working grid: images ``(1, 1, ...)``, sector mask, MIND features.

    ``mr`` holds the MR images as given (input alignment); ``mr_features`` are those the
    deformable stage sees: of the MR pre-warped by the affine stage when there is one, i.e.
    ``prewarped(x) = mr(vox2vox[mod] @ x)`` in working voxels.
    """

    us: torch.Tensor
    mr: dict[str, torch.Tensor]
    mask: torch.Tensor
    us_features: torch.Tensor
    mr_features: dict[str, torch.Tensor]
    vox2vox: dict[str, NDArray[np.float64]] = field(default_factory=dict)  # affine stage, working voxels
    aligned: dict[str, torch.Tensor] = field(default_factory=dict)  # MR pre-warped by the affine stage

    def joint_features(self, mods: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(US, MR)`` features for one cost over several sequences: the MR features of
        ``mods`` concatenated along channels, the US features repeated to match."""
        moving = torch.cat([self.mr_features[m] for m in mods], 1)
        return self.us_features.repeat(1, len(mods), 1, 1, 1), moving

    def mr_aligned(self, mod: str) -> torch.Tensor:
        """The MR image the deformable stage registers: pre-warped by the affine, if any."""
        return self.aligned.get(mod, self.mr[mod])


class ConvexAdamMethod:
    """The deformable core; see the module docstring for its stages."""

    name = "convex-adam"

    def __init__(self, config: RegistrationConfig | None = None, device: str = "cpu"):
        self.config = config or RegistrationConfig()
        self.device = torch.device(device)
        self.feature_dtype = torch.float16 if self.device.type == "cuda" else torch.float32

    # -- stages ----------------------------------------------------------------------------

    def sector(self, fixed: Image) -> NDArray[np.bool_]:
        """The voxels of the US field of view that the costs and the guard use."""
        return sector_mask(fixed.array)

    def features(
        self, fixed: Image, moving: dict[str, Image], grid: WorkingGrid, mask: NDArray
    ) -> WorkingImages:
        """Working-grid images and their MIND-SSC features (the US features masked by the sector)."""
        cfg = self.config.mind
        us = grid.to_working(fixed.array, self.device)
        mask_w = (grid.to_working(mask.astype(np.float32), self.device) > 0.5).float()
        mr = {mod: grid.to_working(img.array, self.device) for mod, img in moving.items()}
        fixed_feat = mind_ssc(
            us, cfg.radius, cfg.dilation, mask_w if cfg.use_sector_mask else None, self.feature_dtype
        )
        moving_feat = {
            mod: mind_ssc(a, cfg.radius, cfg.dilation, None, self.feature_dtype) for mod, a in mr.items()
        }
        return WorkingImages(us, mr, mask_w, fixed_feat, moving_feat)

    def convex(self, fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Coarse-to-fine coupled convex levels; returns a working-grid field ``(1, 3, ...)``."""
        cfg = self.config.convex
        shape = tuple(fixed.shape[-3:])
        disp = torch.zeros((1, 3, *shape), device=fixed.device)
        totals, weights = [], []
        for level in cfg.levels:
            fixed_c, weight = pool(fixed, mask, level.grid_sp)
            moving_c, _ = pool(warp(moving.float(), disp), None, level.grid_sp)
            cost = cost_volume(fixed_c, moving_c, level.disp_hw, weight)
            residual_c = coupled_convex(cost, level.disp_hw, cfg.coefficients, cfg.average_iterates)
            if cfg.inverse_consistent:
                backward = coupled_convex(
                    cost_volume(moving_c, fixed_c, level.disp_hw, weight),
                    level.disp_hw,
                    cfg.coefficients,
                    cfg.average_iterates,
                )
                residual_c = inverse_consistent(residual_c, backward, cfg.inverse_iterations)
            residual = upsample_cells(residual_c, level.grid_sp, shape)
            disp = compose(residual, disp)  # x -> x + r(x) -> moving via the previous field
            totals.append(disp)
            weights.append(level.weight)
        if cfg.combine == "weighted":
            w = torch.tensor(weights, device=disp.device)
            return (torch.stack(totals) * (w / w.sum()).view(-1, 1, 1, 1, 1, 1)).sum(0)
        return disp

    def register_features(
        self, fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor, stages: dict
    ) -> torch.Tensor:
        t0 = time.perf_counter()
        disp = self.convex(fixed, moving, mask)
        t1 = time.perf_counter()
        if self.config.adam.iterations > 0:
            disp, _ = instance_optimise(fixed, moving, disp, mask, self.config.adam)
        stages["convex"] = stages.get("convex", 0.0) + t1 - t0
        stages["adam"] = stages.get("adam", 0.0) + time.perf_counter() - t1
        return disp

    def affine(
        self, fixed: Image, moving: dict[str, Image], images: WorkingImages, grid: WorkingGrid, mask: NDArray
    ) -> dict[str, NDArray[np.float64]]:
        """``fixed2moving_world`` per moving sequence (one shared matrix unless fusion is "none")."""
        cfg = self.config.affine
        shared = self.config.fusion != "none" and len(moving) > 1
        groups = [list(moving)] if shared else [[m] for m in moving]
        out: dict[str, NDArray[np.float64]] = {}
        for mods in groups:
            if cfg.method == "blockmatch":
                us, mr = images.joint_features(mods)
                result = block_match(
                    us, mr, images.mask, grid.vox2world(fixed.vox2world), cfg.transform, cfg.blockmatch
                )
                matrix = result.fixed2moving_world
            else:  # niftyreg: reg_aladin on the first sequence of the group
                from remind2reg.inference.affine.niftyreg import AladinSettings, run_aladin

                settings = AladinSettings(rigid_only=cfg.transform == "rigid")
                matrix = run_aladin(fixed, moving[mods[0]], mask, settings).fixed2moving_world
            for m in mods:
                out[m] = matrix
        return out

    def prewarp(self, images: WorkingImages, fixed2moving_world: dict, working_vox2world: NDArray) -> None:
        """Replace the MR features by those of the MR warped by the affine stage (in place)."""
        cfg = self.config.mind
        w_inv = np.linalg.inv(working_vox2world)
        shape = tuple(images.us.shape[-3:])
        for mod, matrix in fixed2moving_world.items():
            vox2vox = w_inv @ matrix @ working_vox2world
            warped = warp(images.mr[mod], affine_field(vox2vox, shape, images.us.device))
            images.aligned[mod] = warped
            images.mr_features[mod] = mind_ssc(warped, cfg.radius, cfg.dilation, None, self.feature_dtype)
            images.vox2vox[mod] = vox2vox

    def deformable(self, images: WorkingImages, stages: dict) -> dict[str, torch.Tensor]:
        """Working-grid fields by moving sequence; one shared tensor when the sequences are fused."""
        fixed_feat, moving_feat, mask_w = images.us_features, images.mr_features, images.mask
        fusion = self.config.fusion if len(moving_feat) > 1 else "none"
        if not self.config.deformable:
            zero = torch.zeros((1, 3, *images.us.shape[-3:]), device=images.us.device)
            return dict.fromkeys(moving_feat, zero)
        if fusion == "joint":
            mods = list(moving_feat)
            disp = self.register_features(*images.joint_features(mods), mask_w, stages)
            return dict.fromkeys(mods, disp)
        working = {m: self.register_features(fixed_feat, f, mask_w, stages) for m, f in moving_feat.items()}
        if fusion in ("mean", "max"):
            stacked = torch.stack(list(working.values()))
            fused = stacked.mean(0) if fusion == "mean" else stacked.max(0).values
            working = dict.fromkeys(working, fused)
        return working

    def refine(self, images: WorkingImages, working: dict, notes: dict) -> dict[str, torch.Tensor]:
        """Learned refinement of each working field (a shared field: on the first sequence,
        ceT1 when present, and shared again)."""
        from remind2reg.inference.refinement.stage import refine

        out: dict[int, torch.Tensor] = {}
        for mod, disp in working.items():
            if id(disp) not in out:
                out[id(disp)], info = refine(
                    images.us, images.mr_aligned(mod), images.mask, disp, self.config.refine
                )
                notes[f"refine_{mod}"] = {k: v for k, v in info.items() if k != "tto_losses"}
        return {mod: out[id(disp)] for mod, disp in working.items()}

    # -- a case ----------------------------------------------------------------------------

    def __call__(self, fixed: Image, moving: dict[str, Image]) -> MethodResult:
        stages: dict[str, float] = {}
        t = time.perf_counter()
        mask = self.sector(fixed)
        if mask.sum() < 1000:
            raise InputError("the ultrasound has (almost) no non-zero sector", path=fixed.path)
        spacing = float(np.mean(fixed.spacing))
        grid = working_grid(mask, spacing, self.config)
        log.debug("Working grid %s (factor %d) from %s", grid.shape, grid.factor, grid.lo)
        stages["sector"] = time.perf_counter() - t

        t = time.perf_counter()
        with torch.no_grad():
            images = self.features(fixed, moving, grid, mask)
        stages["features"] = time.perf_counter() - t

        notes: dict[str, object] = {"working_shape": grid.shape, "fusion": self.config.fusion}
        affine: dict[str, NDArray[np.float64]] = {}
        if self.config.affine.method != "none":
            t = time.perf_counter()
            with torch.no_grad():
                affine = self.affine(fixed, moving, images, grid, mask)
                self.prewarp(images, affine, grid.vox2world(fixed.vox2world))
            for mod, matrix in affine.items():
                notes[f"fixed2moving_world_{mod}"] = np.round(matrix, 6).tolist()
            stages["affine"] = time.perf_counter() - t

        working = self.deformable(images, stages)
        if self.config.refine.enabled:
            t = time.perf_counter()
            working = self.refine(images, working, notes)
            stages["refine"] = time.perf_counter() - t

        t = time.perf_counter()
        if self.config.guard:
            working, affine = self.guard(
                images, working, affine, notes, case=fixed.path.name if fixed.path else "?"
            )
        stages["guard"] = time.perf_counter() - t

        t = time.perf_counter()
        cache: dict[tuple[int, int], NDArray[np.float32]] = {}
        fields = {}
        for mod, disp in working.items():
            key = (id(disp), id(affine.get(mod)))
            if key not in cache:
                full = embed(disp, grid)
                if mod in affine:
                    full = compose_affine_displacement(full, affine[mod], fixed.vox2world)
                cache[key] = full
            fields[mod] = cache[key]
        stages["embed"] = time.perf_counter() - t
        return MethodResult(fields=fields, stages=stages, notes=notes)

    def guard(
        self, images: WorkingImages, working: dict, affine: dict, notes: dict, case: str = "?"
    ) -> tuple[dict, dict]:
        """Keep the input alignment for any result (affine + field) that does not raise the US/MR NMI.

        The NMI is measured on the MR as given, warped by the whole result. With a shared
        (fused) field, the NMI gains of all moving images are summed.
        """
        gains: dict[tuple[int, int], float] = {}
        keys = {}
        for mod, disp in working.items():
            total = affine_after_field(images.vox2vox[mod], disp) if mod in affine else disp
            before, after = check_against_identity(images.us, images.mr[mod], images.mask, total)
            notes[f"nmi_{mod}"] = (before, after)
            keys[mod] = (id(disp), id(affine.get(mod)))
            gains[keys[mod]] = gains.get(keys[mod], 0.0) + (after - before)
        out, kept_affine = {}, {}
        for mod, disp in working.items():
            if gains[keys[mod]] <= 0:
                log.warning(
                    "Case %s: registering %s did not raise the NMI with the ultrasound (%.4f -> %.4f); keeping the input alignment",
                    case,
                    mod,
                    *notes[f"nmi_{mod}"],
                )
                notes[f"fallback_{mod}"] = True
                out[mod] = torch.zeros_like(disp)
            else:
                out[mod] = disp
                if mod in affine:
                    kept_affine[mod] = affine[mod]
        return out, kept_affine
