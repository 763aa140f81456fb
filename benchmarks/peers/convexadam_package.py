"""Peer method: the PyPI package ``convexAdam`` (0.2.0) run on every pair of a ReMIND2Reg folder.

Writes ``disp_<case>_0000_<case>_<mod>.nii.gz`` and ``timings.json`` exactly like
``remind2reg register``, so ``evaluation.evaluate`` and ``benchmarks/registration_benchmark.py``
score it like our own methods::

    python benchmarks/peers/convexadam_package.py --input DIR --output DIR --preset baseline

Presets
-------
``defaults``
    ``convexAdam.convex_adam_MIND.convex_adam_pt`` with the package's own defaults
    (MIND-SSC r=1 d=2, grid_sp 6, disp_hw 4, inverse consistency, Adam: 80 iterations,
    lambda 1.25, grid_sp_adam 2, no mask), on the CPU in float32 (the package switches
    float16 to float32 on the CPU itself; we ask for float32 so it does not print a warning).
``baseline-rigid``
    The baseline's field projected onto a rigid transform by least trimmed squares inside the
    US sector (best 50 %, 15 iterations, world mm): the organisers' ConvexAdam-Rigid, which
    is MCPO's mechanism (REFERENCE sections 5, 6).
``baseline``
    The organisers' ReMIND2Reg baseline (``ReubenDo/ReMIND2Reg``, ``convexAdam/run_convexadam.py``).
    That script does NOT call the package's entry point: it carries its own copy of the
    package's functions and chains them with settings the entry point cannot express. We
    rebuild the same chain from the package's own building blocks
    (``convexAdam.convex_adam_utils``: ``MINDSSC``, ``correlate``, ``coupled_convex``,
    ``inverse_consistency``):

    * MIND-SSC radius 3, dilation 3 on the full-resolution images (raw intensities);
    * features average-pooled by grid_sp 6, SSD cost volume over disp_hw 6 (+-36 voxels, 18 mm);
    * forward cost multiplied by the US mask (``fixed > 0`` pooled by 6, > 0.5), backward
      cost by the MR mask (``moving > 0``): outside the sector only the coupling term acts
      (the argmin that starts the coupled convex stage is the unmasked one, as there);
    * coupled convex optimisation, inverse consistency with 5 iterations;
    * NO Adam instance optimisation (their written field ``disp_def`` is the convex + IC one);
    * float32 on the CPU where they used float16 on the GPU.

Output convention (checked in ``tests/test_benchmark_peers.py`` on a volume shifted by a known
integer vector): the package returns an array ``(H, W, D, 3)`` on the fixed grid whose
component ``k`` is the displacement in voxels along array axis ``k``, from fixed to moving
(``warped = moving(x + u(x))``). That IS the challenge convention, so :func:`to_challenge`
only casts to float32 and checks the shape. Both presets floor the grid to a multiple of
grid_sp (256 -> 252 voxels at grid_sp 6) and stretch the coarse field back over 256 voxels;
that is the package's behaviour and is kept.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from remind2reg.inference.core.pointfit import lts_fit
from remind2reg.inference.core.sector import sector_mask
from remind2reg.inference.geometry import affine_displacement, apply_affine, resample_to_grid, same_grid
from remind2reg.inference.io.dataset import RegistrationPair, find_pairs
from remind2reg.inference.io.displacement import read_displacement, write_displacement
from remind2reg.inference.io.nifti import Image, read_image
from remind2reg.inference.io.timings import write_timings

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("convexadam_package")

PACKAGE_VERSION = "0.2.0"
REUSE_ENV = "REMIND2REG_BASELINE_FIELDS"  # where baseline-rigid finds baseline fields to project
MODALITY_CHOICES = {"both": ("0001", "0002"), "ceT1": ("0001",), "T2": ("0002",)}

# The package's own defaults of convex_adam_pt (0.2.0), written out so the record is explicit.
DEFAULTS = {
    "mind_r": 1,
    "mind_d": 2,
    "lambda_weight": 1.25,
    "grid_sp": 6,
    "disp_hw": 4,
    "selected_niter": 80,
    "selected_smooth": 0,
    "grid_sp_adam": 2,
    "ic": True,
    "use_mask": False,
}
# The organisers' ReMIND2Reg baseline (run_convexadam.py).
BASELINE = {
    "mind_r": 3,
    "mind_d": 3,
    "grid_sp": 6,
    "disp_hw": 6,
    "ic_iter": 5,
    "cost_mask": "fixed>0 (forward), moving>0 (backward)",
    "adam": False,
}
# The organisers' ConvexAdam-Rigid / MCPO's mechanism: the baseline's dense field projected onto a
# rigid transform by least trimmed squares inside the US sector (best 50 %, 15 iterations).
BASELINE_RIGID = {**BASELINE, "projection": "LTS rigid, 50 % inliers, 15 iterations, points in the US sector"}
PRESETS = {"defaults": DEFAULTS, "baseline": BASELINE, "baseline-rigid": BASELINE_RIGID}


def package_available() -> bool:
    try:
        import convexAdam.convex_adam_MIND  # noqa: F401
    except ImportError:
        return False
    return True


def run_defaults(fixed: NDArray, moving: NDArray, **overrides) -> NDArray:
    """The package's entry point ``convex_adam_pt`` with its defaults (overridable, e.g. in tests)."""
    import torch
    from convexAdam.convex_adam_MIND import convex_adam_pt

    params = {k: v for k, v in DEFAULTS.items()} | overrides
    return convex_adam_pt(
        img_fixed=np.ascontiguousarray(fixed, dtype=np.float32),
        img_moving=np.ascontiguousarray(moving, dtype=np.float32),
        dtype=torch.float32,
        device=torch.device("cpu"),
        **params,
    )


def run_baseline(
    fixed: NDArray,
    moving: NDArray,
    mind_r: int = 3,
    mind_d: int = 3,
    grid_sp: int = 6,
    disp_hw: int = 6,
    ic_iter: int = 5,
) -> NDArray:
    """The organisers' baseline chain, built from the package's functions (see module docstring)."""
    import torch
    import torch.nn.functional as F
    from convexAdam.convex_adam_utils import MINDSSC, correlate, coupled_convex, inverse_consistency

    H, W, D = fixed.shape
    shape = (H, W, D)
    img_fix = torch.from_numpy(np.ascontiguousarray(fixed, dtype=np.float32))[None, None]
    img_mov = torch.from_numpy(np.ascontiguousarray(moving, dtype=np.float32))[None, None]
    with torch.no_grad():
        mind_fix = F.avg_pool3d(MINDSSC(img_fix, mind_r, mind_d, device="cpu"), grid_sp, stride=grid_sp)
        mind_mov = F.avg_pool3d(MINDSSC(img_mov, mind_r, mind_d, device="cpu"), grid_sp, stride=grid_sp)
        mask_fix = F.avg_pool3d((img_fix > 0).float(), grid_sp, stride=grid_sp) > 0.5
        mask_mov = F.avg_pool3d((img_mov > 0).float(), grid_sp, stride=grid_sp) > 0.5
        del img_fix, img_mov
        scale = torch.tensor([H // grid_sp - 1, W // grid_sp - 1, D // grid_sp - 1]).view(1, 3, 1, 1, 1) / 2
        n = disp_hw * 2 + 1
        disp_mesh_t = (
            F.affine_grid(disp_hw * torch.eye(3, 4).unsqueeze(0), (1, 1, n, n, n), align_corners=True)
            .permute(0, 4, 1, 2, 3)
            .reshape(3, -1, 1)
        )
        ssd, ssd_argmin = correlate(mind_fix, mind_mov, disp_hw, grid_sp, shape)
        ssd *= mask_fix.squeeze(1)
        disp_soft = coupled_convex(ssd, ssd_argmin, disp_mesh_t, grid_sp, shape)
        del ssd
        ssd_, ssd_argmin_ = correlate(mind_mov, mind_fix, disp_hw, grid_sp, shape)
        ssd_ *= mask_mov.squeeze(1)
        disp_soft_ = coupled_convex(ssd_, ssd_argmin_, disp_mesh_t, grid_sp, shape)
        del ssd_
        disp_ice, _ = inverse_consistency(
            (disp_soft / scale).flip(1), (disp_soft_ / scale).flip(1), iter=ic_iter
        )
        disp_hr = F.interpolate(
            disp_ice.flip(1) * scale * grid_sp, size=shape, mode="trilinear", align_corners=False
        )
    return disp_hr[0].permute(1, 2, 3, 0).numpy()


def to_challenge(package_disp: NDArray, fixed_shape: tuple[int, ...]) -> NDArray[np.float32]:
    """Package output -> challenge field. Verified identical conventions: cast and check only."""
    disp = np.asarray(package_disp, dtype=np.float32)
    expected = (*tuple(fixed_shape[:3]), 3)
    if disp.shape != expected:
        raise ValueError(f"convexAdam returned shape {disp.shape}, expected {expected}")
    return disp


def project_to_rigid(disp: NDArray, fixed: NDArray, vox2world: NDArray) -> NDArray[np.float32]:
    """The field of the LTS rigid fit of ``x -> x + disp(x)`` over the US sector (world mm)."""
    inside = np.argwhere(sector_mask(fixed))
    points = inside[:: max(1, len(inside) // 20_000)].astype(np.float64)
    moved = points + disp[tuple(inside[:: max(1, len(inside) // 20_000)].T)]
    fit = lts_fit(apply_affine(vox2world, points), apply_affine(vox2world, moved), "rigid", 0.5, 15)
    return affine_displacement(fit.matrix, vox2world, fixed.shape)


def register_arrays(
    fixed: NDArray, moving: NDArray, preset: str, vox2world: NDArray | None = None
) -> NDArray[np.float32]:
    """Register one pair of arrays on the same grid with a preset; challenge-convention field."""
    if preset == "defaults":
        raw = run_defaults(fixed, moving)
    elif preset in ("baseline", "baseline-rigid"):
        raw = run_baseline(fixed, moving)
    else:
        raise ValueError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    disp = to_challenge(raw, fixed.shape)
    if preset == "baseline-rigid":
        disp = project_to_rigid(disp, fixed, np.eye(4) if vox2world is None else vox2world)
    return disp


def load_pair(pair: RegistrationPair) -> tuple[Image, Image]:
    """Both images; the moving one resampled onto the fixed grid (world coordinates) if needed."""
    fixed = read_image(pair.fixed, pair.case)
    moving = read_image(pair.moving, pair.case)
    if not same_grid(fixed.shape, fixed.vox2world, moving.shape, moving.vox2world):
        log.warning("Case %s: resampling %s onto the fixed grid", pair.case, pair.moving.name)
        array = resample_to_grid(moving.array, moving.vox2world, fixed.shape, fixed.vox2world, order=1)
        moving = Image(array=array, vox2world=fixed.vox2world, path=moving.path)
    return fixed, moving


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


@dataclass
class Record:
    output: str
    stages: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = float("nan")


def _write_timings(output_dir: Path, records: list[Record], preset: str, threads: int) -> None:
    meta = {
        "method": f"peer:convexadam-{preset}",
        "package": f"convexAdam=={PACKAGE_VERSION}",
        "preset": preset,
        "params": PRESETS[preset],
        "device": "cpu",
        "threads": threads,
        "host": platform.node(),
    }
    pairs = {
        r.output: {
            "total_s": float(sum(r.stages.values())),
            "stages": r.stages,
            "peak_rss_mb_so_far": r.peak_rss_mb,
        }
        for r in records
    }
    write_timings(output_dir, meta, pairs)


def register_folder(
    input_dir: Path,
    output_dir: Path,
    preset: str,
    modalities: tuple[str, ...],
    threads: int = 2,
    reuse_dir: Path | None = None,
) -> list[Record]:
    """Register every pair; ``baseline-rigid`` projects the ``baseline`` field found in
    ``reuse_dir`` (the baseline's results) instead of recomputing it (the same field: 5 minutes
    a pair saved)."""
    import torch

    torch.set_num_threads(threads)
    pairs = find_pairs(input_dir, modalities)
    output_dir.mkdir(parents=True, exist_ok=True)
    records: list[Record] = []
    for pair in pairs:
        rec = Record(output=pair.output_name)
        t0 = time.perf_counter()
        fixed, moving = load_pair(pair)
        t1 = time.perf_counter()
        cached = reuse_dir / pair.output_name if reuse_dir is not None else None
        if preset == "baseline-rigid" and cached is not None and cached.is_file():
            log.info("%s: projecting the baseline field %s (not recomputed)", pair.label, cached)
            baseline = read_displacement(cached, fixed.shape).astype(np.float32)
            disp = project_to_rigid(baseline, fixed.array, fixed.vox2world)
        else:
            disp = register_arrays(fixed.array, moving.array, preset, fixed.vox2world)
        t2 = time.perf_counter()
        write_displacement(output_dir / pair.output_name, disp, fixed.vox2world, fixed.shape)
        t3 = time.perf_counter()
        rec.stages = {"load": t1 - t0, "register": t2 - t1, "write": t3 - t2}
        rec.peak_rss_mb = _peak_rss_mb()
        records.append(rec)
        _write_timings(output_dir, records, preset, threads)
        log.info("%s -> %s in %.1f s (peak RSS %.0f MB)", pair.label, rec.output, t3 - t0, rec.peak_rss_mb)
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, type=Path, help="ReMIND2Reg folder (dataset root or flat)")
    p.add_argument("--output", required=True, type=Path, help="folder for disp_*.nii.gz and timings.json")
    p.add_argument("--preset", default="baseline", choices=sorted(PRESETS))
    p.add_argument("--modalities", default="both", choices=sorted(MODALITY_CHOICES))
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--reuse",
        type=Path,
        default=os.environ.get(REUSE_ENV),
        help=f"baseline-rigid: a folder of baseline fields to project instead of recomputing (default ${REUSE_ENV})",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if not package_available():
        log.error("convexAdam is not importable: pip install convexAdam==%s", PACKAGE_VERSION)
        return 1
    register_folder(
        args.input, args.output, args.preset, MODALITY_CHOICES[args.modalities], args.threads, args.reuse
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
