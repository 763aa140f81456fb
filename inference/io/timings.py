"""``timings.json``, written beside the fields by ``remind2reg register``: the one module that
reads and writes it.

Layout::

    {"method": ..., "device": ..., "host": ..., "peak_memory_mb": ..., <other run metadata>,
     "pairs": {"disp_0001_0000_0001_0001.nii.gz": {
         "total_s": 6.1,            # the case's seconds divided by the fields it produced
         "case_total_s": 12.2,
         "stages": {"load": ..., "sector": ..., ..., "write": ...},
         "device": "cpu", "fallback": "identity", "error": "...",   # when they apply
         "resumed": true}}}         # an entry kept by --resume without its earlier data

Readers never fail on a missing or unreadable file: they log a warning and return nothing,
since timings are metadata, never needed to use the fields.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remind2reg.inference.io.atomic import write_text_atomic

log = logging.getLogger(__name__)

TIMINGS_FILE = "timings.json"


@dataclass
class PairRecord:
    """One output file's entry: seconds per stage, its share of its case's time, how it was made."""

    output: str
    stages: dict[str, float] = field(default_factory=dict)
    case_total_s: float = 0.0
    pairs_in_case: int = 1
    device: str | None = None  # where the method ran ("cpu" after a CUDA out-of-memory retry)
    fallback: str | None = None  # "identity" when the case failed and the zero field was written
    error: str | None = None  # the failure behind a fallback
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. confidence, notes of the method

    @property
    def total_s(self) -> float:
        """The case's time divided by the number of fields it produced (amortised)."""
        return self.case_total_s / self.pairs_in_case

    def to_json(self) -> dict:
        entry: dict = {"total_s": self.total_s, "case_total_s": self.case_total_s, "stages": self.stages}
        for key in ("device", "fallback", "error"):
            if getattr(self, key) is not None:
                entry[key] = getattr(self, key)
        entry.update(self.extra)
        return entry


def write_timings(folder: Path, meta: dict[str, Any], pairs: dict[str, dict]) -> None:
    """Write ``folder/timings.json`` atomically: ``meta`` plus the ``pairs`` entries by output name."""
    write_text_atomic(Path(folder) / TIMINGS_FILE, json.dumps({**meta, "pairs": pairs}, indent=2))


def read_timings(folder: Path) -> tuple[dict[str, Any], dict[str, dict]]:
    """``(meta, pairs)`` of ``folder/timings.json``; both empty when it is absent or unreadable."""
    path = Path(folder) / TIMINGS_FILE
    if not path.is_file():
        return {}, {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        log.warning("Ignoring the unreadable %s (%s)", path, exc)
        return {}, {}
    pairs = data.pop("pairs", {})
    if not isinstance(pairs, dict):
        log.warning("Ignoring the malformed 'pairs' of %s", path)
        pairs = {}
    return data, {name: e for name, e in pairs.items() if isinstance(e, dict)}


def pair_entries(folder: Path) -> dict[str, dict]:
    """The per-output entries of ``folder/timings.json`` (empty when absent or unreadable)."""
    return read_timings(folder)[1]


def runtimes(folder: Path) -> dict[str, float]:
    """Seconds per output file; entries without a number (e.g. the ``{"resumed": true}`` of a
    pair kept by ``--resume``) have none."""
    out = {}
    for name, entry in pair_entries(folder).items():
        try:
            out[name] = float(entry["total_s"])
        except (KeyError, TypeError, ValueError):
            log.debug("%s: no runtime in %s", name, TIMINGS_FILE)
    return out


def fallbacks(folder: Path) -> dict[str, str]:
    """``{output name: fallback}`` (e.g. the identity field of a failed case)."""
    return {name: str(e["fallback"]) for name, e in pair_entries(folder).items() if e.get("fallback")}


def init_transforms(folder: Path) -> dict[str, str]:
    """``{output name: the initial transform file it started from}`` (``register --init-transforms``)."""
    return {
        name: str(e["init_transform"]) for name, e in pair_entries(folder).items() if e.get("init_transform")
    }


# the guard's per-pair verdict and what the whole result scored, kept or not (stages/guard.py)
GUARD_NOTES = ("decision", "confidence", "evidence", "result_gain", "result_evidence")


def guard_notes(folder: Path) -> dict[str, dict[str, Any]]:
    """``{output name: {note: value}}`` of :data:`GUARD_NOTES` for the pairs whose entry has any."""
    out = {}
    for name, entry in pair_entries(folder).items():
        notes = {k: entry[k] for k in GUARD_NOTES if k in entry}
        if notes:
            out[name] = notes
    return out


def merge_timings(target: Path, source: Path, names: list[str]) -> None:
    """Copy the entries ``names`` (and the run metadata) of ``source``'s timings into ``target``'s."""
    meta, pairs = read_timings(target)
    new_meta, new_pairs = read_timings(source)
    meta.update(new_meta)
    pairs.update({n: new_pairs[n] for n in names if n in new_pairs})
    write_timings(target, meta, pairs)
