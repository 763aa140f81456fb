"""The standard benchmark set: one seeded command, the same cases for everyone.

The layout below (18 cases, 31 pairs) drawn ``repeats`` times (default 2: 36 cases, 62 pairs)
at 256^3 / 0.5 mm across the four realistic families
(:data:`synthesis.families.REALISTIC_FAMILIES`), each case with a ceT1 and 13 of them with a
T2 (ReMIND2Reg: 62 of 99 patients have a T2). Each family has cases in both halves of the
split (``tuning``: choose settings there; ``held-out``: report there):

=============== ============================================ ==============================
family          tuning                                       held-out
=============== ============================================ ==============================
pre-resection   BraTS (T2), MNI, MNI nearly aligned (T2)     AURORA (T2), MNI (T2), MNI
                                                             nearly aligned
post-resection  BraTS (T2), MNI                              AURORA (T2), MNI (T2)
tissue-echo     BraTS (T2), MNI                              AURORA (T2), MNI (T2)
weak-contrast   BraTS (T2), MNI                              AURORA (T2), MNI (T2)
=============== ============================================ ==============================

Each repeat draws new cases (its case indices continue the numbering, so every random
stream is new); with 9 cases a half, one case decided three choices in a row, hence two
repeats. The default seed is 2: seed 0 (``--seed 0 --repeats 1``, the set of earlier rounds)
and seed 1 were consulted for decisions and are no longer clean held-out data.

BraTS and AURORA are the real glioma and metastasis MRIs of ``shared/data/mri``; without
them those slots use the MNI brain (with another random tumour). The real subjects are
split by half (BraTS only in tuning, AURORA only in held-out) so that no real anatomy is in
both. The split goes to ``split.json`` and to each ``groundtruth/case_<id>.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from remind2reg.inference.io.atomic import write_text_atomic
from remind2reg.synthesis.config import SynthConfig
from remind2reg.synthesis.families import POST_RESECTION, PRE_RESECTION, TISSUE_ECHO, WEAK_CONTRAST
from remind2reg.synthesis.generate import CaseRecord, CaseSpec, generate_cases, resolve_shared
from remind2reg.synthesis.sources import SHARED_SUBJECTS

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
TUNING, HELD_OUT = "tuning", "held-out"
BRATS, AURORA = "BraTS-GLI-00001-000", "AURORA"


@dataclass(frozen=True)
class Slot:
    """One case of the layout: split, real subject (None: MNI), T2, nearly aligned."""

    split: str
    subject: str | None
    has_t2: bool
    nearly_aligned: bool | None = None


_FOUR = (
    Slot(TUNING, BRATS, True),
    Slot(TUNING, None, False),
    Slot(HELD_OUT, AURORA, True),
    Slot(HELD_OUT, None, True),
)
LAYOUT: dict[str, tuple[Slot, ...]] = {
    PRE_RESECTION: (
        Slot(TUNING, BRATS, True, False),
        Slot(TUNING, None, False, False),
        Slot(TUNING, None, True, True),
        Slot(HELD_OUT, AURORA, True, False),
        Slot(HELD_OUT, None, True, False),
        Slot(HELD_OUT, None, False, True),
    ),
    POST_RESECTION: _FOUR,
    TISSUE_ECHO: _FOUR,
    WEAK_CONTRAST: _FOUR,
}


DEFAULT_SEED = 2
DEFAULT_REPEATS = 2


def standard_specs(shared_mri: bool, repeats: int = DEFAULT_REPEATS) -> list[CaseSpec]:
    """The cases of the standard set, numbered from 0001 in the order of :data:`LAYOUT`,
    ``repeats`` times; ``shared_mri`` False puts the MNI brain in the slots of the real
    subjects. The first repeat is the same whatever ``repeats`` is."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    specs = []
    for family, slots in [item for _ in range(repeats) for item in LAYOUT.items()]:
        for slot in slots:
            index = len(specs)
            real = shared_mri and slot.subject in SHARED_SUBJECTS
            specs.append(
                CaseSpec(
                    case=f"{index + 1:04d}",
                    index=index,
                    source="shared" if real else "mni",
                    family=family,
                    subject=slot.subject if real else None,
                    has_t2=slot.has_t2,
                    nearly_aligned=slot.nearly_aligned,
                    split=slot.split,
                )
            )
    return specs


def write_split(out: Path, records: list[CaseRecord], seed: int, grid: int) -> dict:
    """``split.json``: the case ids of each half and, per case, its family, split and source."""
    split = {
        "seed": seed,
        "grid": grid,
        TUNING: [r.case for r in records if r.split == TUNING],
        HELD_OUT: [r.case for r in records if r.split == HELD_OUT],
        "cases": {
            r.case: {
                "family": r.family,
                "split": r.split,
                "source": r.source,
                "has_t2": r.has_t2,
                "nearly_aligned": bool(r.extras.get("nearly_aligned", False)),
            }
            for r in records
        },
    }
    write_text_atomic(out / SPLIT_FILE, json.dumps(split, indent=2))
    return split


def generate_standard_set(
    out: str | Path,
    seed: int = DEFAULT_SEED,
    shared_data: str | Path | None = None,
    grid: int = 256,
    repeats: int = DEFAULT_REPEATS,
) -> list[CaseRecord]:
    """Generate the standard set into ``out`` (see the module docstring); returns the records.

    ``shared_data``: the shared data folder (default :func:`synthesis.sources.default_shared_data`);
    its real MRIs are used when present. ``grid``: voxels per side of the 128 mm cube;
    ``repeats``: how many times the layout is drawn.
    """
    out = Path(out)
    shared = resolve_shared(shared_data, "mni")
    shared_mri = shared is not None and all(
        (shared / "mri" / s.t1).is_file() for s in SHARED_SUBJECTS.values()
    )
    if not shared_mri:
        log.warning("No shared MRI found: the standard set uses the MNI brain in every case")
    records = generate_cases(out, standard_specs(shared_mri, repeats), seed, SynthConfig(grid=grid), shared)
    write_split(out, records, seed, grid)
    return records


__all__ = [
    "DEFAULT_REPEATS",
    "DEFAULT_SEED",
    "HELD_OUT",
    "LAYOUT",
    "SPLIT_FILE",
    "TUNING",
    "generate_standard_set",
    "standard_specs",
    "write_split",
]
