"""Batch registration of a ReMIND2Reg folder: the ``remind2reg register`` command's engine.

Pairs are grouped by case (one US image, one or two MR sequences) so that a method can use
ceT1 and T2 together; one displacement file is still written per pair.
"""

from __future__ import annotations

import json
import logging
import platform
import resource
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from inference.config import RegistrationConfig
from inference.geometry import resample_to_grid, same_grid
from inference.io.atomic import atomic_path, write_text_atomic
from inference.io.dataset import RegistrationPair, find_pairs
from inference.io.displacement import TIMINGS_FILE, write_displacement
from inference.io.nifti import Image, read_image
from inference.methods.base import Method
from inference.methods.convex_adam import ConvexAdamMethod
from inference.methods.identity import IdentityMethod

log = logging.getLogger(__name__)

METHODS = ("convex-adam", "identity", "niftyreg-rigid", "niftyreg-affine")


def make_method(name: str, config: RegistrationConfig | None = None, device: str = "cpu") -> Method:
    """The registration method called ``name``."""
    if name == "identity":
        return IdentityMethod()
    if name == "convex-adam":
        return ConvexAdamMethod(config, device)
    if name in ("niftyreg-rigid", "niftyreg-affine"):
        from inference.methods.niftyreg import NiftyRegMethod

        return NiftyRegMethod(rigid_only=name == "niftyreg-rigid")
    raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}")


@dataclass
class PairRecord:
    """One output file: seconds per stage, its share of its case's time."""

    output: str
    stages: dict[str, float] = field(default_factory=dict)
    case_total_s: float = 0.0
    pairs_in_case: int = 1

    @property
    def total_s(self) -> float:
        """The case's time divided by the number of fields it produced (amortised)."""
        return self.case_total_s / self.pairs_in_case


def load_moving(pair: RegistrationPair, fixed: Image) -> Image:
    """Read a moving image; resample it onto the fixed grid if their grids differ."""
    moving = read_image(pair.moving, pair.case)
    if not same_grid(fixed.shape, fixed.vox2world, moving.shape, moving.vox2world):
        log.warning(
            "Case %s: %s is not on the grid of %s; resampling it onto the fixed grid (world coordinates)",
            pair.case,
            pair.moving.name,
            pair.fixed.name,
        )
        array = resample_to_grid(moving.array, moving.vox2world, fixed.shape, fixed.vox2world, order=1)
        moving = Image(array=array, vox2world=fixed.vox2world, path=moving.path)
    return moving


def register_case(pairs: list[RegistrationPair], output_dir: Path, method: Method) -> list[PairRecord]:
    """Register the pairs sharing one fixed image; write one field per pair (atomically)."""
    t0 = time.perf_counter()
    fixed = read_image(pairs[0].fixed, pairs[0].case)
    moving = {p.moving_name.modality: load_moving(p, fixed) for p in pairs}
    load_s = time.perf_counter() - t0
    result = method(fixed, moving)
    t1 = time.perf_counter()
    written: dict[int, Path] = {}  # a field shared by both sequences is compressed once
    for p in pairs:
        disp = result.fields[p.moving_name.modality]
        target = output_dir / p.output_name
        if id(disp) in written:
            with atomic_path(target) as tmp:
                shutil.copyfile(written[id(disp)], tmp)
        else:
            write_displacement(target, disp, fixed.vox2world)
            written[id(disp)] = target
    stages = {"load": load_s, **result.stages, "write": time.perf_counter() - t1}
    total = time.perf_counter() - t0
    return [PairRecord(p.output_name, stages, total, len(pairs)) for p in pairs]


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_timings(output_dir: Path, records: list[PairRecord], method: str, device: str) -> None:
    meta = {
        "method": method,
        "device": device,
        "host": platform.node(),
        "peak_memory_mb": peak_memory_mb(),
        "pairs": {
            r.output: {"total_s": r.total_s, "case_total_s": r.case_total_s, "stages": r.stages}
            for r in records
        },
    }
    write_text_atomic(output_dir / TIMINGS_FILE, json.dumps(meta, indent=2))


def group_by_case(pairs: list[RegistrationPair]) -> list[list[RegistrationPair]]:
    groups: dict[Path, list[RegistrationPair]] = defaultdict(list)
    for p in pairs:
        groups[p.fixed].append(p)
    return list(groups.values())


def register_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    method: str = "convex-adam",
    modalities: tuple[str, ...] = ("0001", "0002"),
    device: str = "cpu",
    config: RegistrationConfig | None = None,
    progress: bool = True,
) -> list[PairRecord]:
    """Register every pair found in ``input_dir``; one displacement file per pair in ``output_dir``."""
    engine = make_method(method, config, device)
    if method == "identity":
        log.warning(
            "Method 'identity': the output fields are zero (the initial alignment), not a registration."
        )
    pairs = find_pairs(input_dir, modalities)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cases = group_by_case(pairs)
    log.info(
        "Registering %d pairs (%d cases) from %s into %s with %s on %s",
        len(pairs),
        len(cases),
        input_dir,
        output_dir,
        method,
        device,
    )
    records: list[PairRecord] = []
    for group in tqdm(cases, desc="register", unit="case", disable=not progress):
        new = register_case(group, output_dir, engine)
        stages = ", ".join(f"{k} {v:.1f}" for k, v in new[0].stages.items())
        log.info(
            "Case %s (%s): %.1f s [%s]",
            group[0].case,
            ", ".join(p.label.split()[1] for p in group),
            new[0].case_total_s,
            stages,
        )
        records += new
        write_timings(output_dir, records, method, device)
    log.info("Peak memory %.0f MB", peak_memory_mb())
    return records
