"""Batch registration of a ReMIND2Reg folder: the ``remind2reg register`` command's engine."""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from inference.geometry import resample_to_grid, same_grid
from inference.io.atomic import write_text_atomic
from inference.io.dataset import RegistrationPair, find_pairs
from inference.io.displacement import write_displacement
from inference.io.nifti import Image, read_image
from inference.methods.identity import identity_displacement

log = logging.getLogger(__name__)

TIMINGS_FILE = "timings.json"

Method = Callable[[Image, Image], NDArray[np.float32]]

# Registration methods by name. Only the identity exists until the deformable core lands.
METHODS: dict[str, Method] = {"identity": identity_displacement}


@dataclass
class PairRecord:
    """What happened to one pair: output file and seconds per stage."""

    output: str
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return float(sum(self.stages.values()))


def load_pair(pair: RegistrationPair) -> tuple[Image, Image]:
    """Read both images; resample the moving image onto the fixed grid if their grids differ."""
    fixed = read_image(pair.fixed, pair.case)
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
    return fixed, moving


def register_pair(pair: RegistrationPair, output_dir: Path, method: Method) -> PairRecord:
    """Register one pair and write its displacement field atomically."""
    record = PairRecord(output=pair.output_name)
    t0 = time.perf_counter()
    fixed, moving = load_pair(pair)
    t1 = time.perf_counter()
    disp = method(fixed, moving)
    t2 = time.perf_counter()
    write_displacement(output_dir / pair.output_name, disp, fixed.vox2world)
    t3 = time.perf_counter()
    record.stages = {"load": t1 - t0, "register": t2 - t1, "write": t3 - t2}
    return record


def write_timings(output_dir: Path, records: list[PairRecord], method: str, device: str) -> None:
    meta = {
        "method": method,
        "device": device,
        "host": platform.node(),
        "pairs": {r.output: {"total_s": r.total_s, "stages": r.stages} for r in records},
    }
    write_text_atomic(output_dir / TIMINGS_FILE, json.dumps(meta, indent=2))


def register_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    method: str = "identity",
    modalities: tuple[str, ...] = ("0001", "0002"),
    device: str = "cpu",
    progress: bool = True,
) -> list[PairRecord]:
    """Register every pair found in ``input_dir``; one displacement file per pair in ``output_dir``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    if method == "identity":
        log.warning(
            "Method 'identity': only the identity is implemented so far; the output fields are zero "
            "(the initial alignment), not a registration."
        )
    pairs = find_pairs(input_dir, modalities)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log.info("Registering %d pairs from %s into %s", len(pairs), input_dir, output_dir)
    records = []
    for pair in tqdm(pairs, desc="register", unit="pair", disable=not progress):
        record = register_pair(pair, output_dir, METHODS[method])
        log.info("%s -> %s in %.1f s", pair.label, record.output, record.total_s)
        records.append(record)
        write_timings(output_dir, records, method, device)
    return records
