"""Stage 6, guard: keep the input alignment (or the global stage alone) unless the evidence for
more is clear.

The optimised criterion (MIND SSD) cannot judge its own result. The guard measures another
one on the MR as given, warped by each candidate, inside the US sector: normalised mutual
information of the raw intensities (``nmi``, Studholme) or LC2 (``lc2``, a local regression of
the US on the MR and its gradient, Wein et al.). The candidates, simplest first: the input
alignment, the global transform alone (when a global stage ran), the whole result. A candidate
replaces the simpler one chosen so far only when it raises the criterion by more than
``min_gain``. For a group (sequences sharing one transform) the criterion is summed over its
sequences, and the group is decided as a whole.

``confidence`` is the chosen candidate's criterion gain over the input alignment (0 when the
input alignment is kept): it is written to ``timings.json`` and the QC report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from remind2reg.inference.core.fields import warp
from remind2reg.inference.core.losses import lc2, normalised_mutual_information
from remind2reg.inference.settings import GuardSettings
from remind2reg.inference.stages.features import WorkingImages
from remind2reg.inference.stages.transforms import GroupTransform

log = logging.getLogger(__name__)

IDENTITY, GLOBAL, FULL = "input alignment", "global stage", "full"


@dataclass(frozen=True)
class GuardResult:
    transforms: tuple[GroupTransform, ...]  # dropped parts replaced by the input alignment
    nmi: dict[
        str, tuple[float, float]
    ]  # by sequence: (criterion at the input alignment, after the whole result)
    fallbacks: tuple[str, ...]  # the sequences whose result was dropped (input alignment kept)
    decisions: dict[str, str] = field(default_factory=dict)  # by sequence: the candidate kept
    confidence: dict[str, float] = field(default_factory=dict)  # by sequence: its group's gain

    def notes(self) -> dict[str, object]:
        notes: dict[str, object] = {f"nmi_{mod}": value for mod, value in self.nmi.items()}
        notes.update({f"fallback_{mod}": True for mod in self.fallbacks})
        for mod, decision in self.decisions.items():
            notes[f"decision_{mod}"] = decision
            notes[f"confidence_{mod}"] = round(self.confidence[mod], 6)
        if self.confidence:
            notes["confidence"] = round(min(self.confidence.values()), 6)
        return notes


def criterion(images: WorkingImages, mod: str, total: torch.Tensor | None, settings: GuardSettings) -> float:
    """The guard's score of sequence ``mod`` warped by the working field ``total`` (None: as given)."""
    mr = images.mr[mod] if total is None else warp(images.mr[mod], total)
    if settings.criterion == "lc2":
        return lc2(images.us, mr, images.mask, settings.lc2_radius)
    return normalised_mutual_information(images.us, mr, images.mask)


def nmi_before_after(
    us: torch.Tensor, mr: torch.Tensor, mask: torch.Tensor, total: torch.Tensor
) -> tuple[float, float]:
    """(NMI with the zero field, NMI with the field ``total``) of the US and one MR image."""
    before = normalised_mutual_information(us, mr, mask)
    after = normalised_mutual_information(us, warp(mr, total), mask)
    return before, after


def candidates(t: GroupTransform) -> list[tuple[str, GroupTransform]]:
    """The simpler alternatives of ``t`` and ``t`` itself, simplest first."""
    out = [(IDENTITY, t.identity())]
    if t.alignment.vox2vox is not None:
        out.append((GLOBAL, GroupTransform(t.alignment, torch.zeros_like(t.disp))))
    out.append((FULL, t))
    return out


def choose(totals: Sequence[tuple[str, float]], min_gain: float) -> str:
    """The guard's rule on each candidate's criterion (summed over its sequences), simplest
    first: a candidate replaces the one chosen so far when it raises the criterion by more than
    ``min_gain``. A NaN gain (too few voxels to judge) keeps the more complex candidate: the
    guard only overrules the optimiser on evidence."""
    chosen, chosen_total = totals[0]
    for name, total in totals[1:]:
        if not (total - chosen_total) <= min_gain:
            chosen, chosen_total = name, total
    return chosen


def _decide(
    images: WorkingImages, t: GroupTransform, settings: GuardSettings
) -> tuple[str, GroupTransform, dict[str, list[float]]]:
    """The candidate kept for one group, and every candidate's score by sequence."""
    options = candidates(t)
    scores = {
        name: [
            criterion(images, mod, None if name == IDENTITY else c.total_field(), settings)
            for mod in t.modalities
        ]
        for name, c in options
    }
    name = choose([(n, sum(v, 0.0)) for n, v in scores.items()], settings.min_gain)
    return name, dict(options)[name], scores


@torch.no_grad()
def guard(
    images: WorkingImages,
    transforms: tuple[GroupTransform, ...],
    settings: GuardSettings | bool = True,
    case: str = "?",
) -> GuardResult:
    """Judge each group on ``images.mr``, the MR as given (not pre-warped)."""
    if isinstance(settings, bool):
        settings = GuardSettings(enabled=settings)
    if not settings.enabled:
        return GuardResult(transforms, {}, ())
    out, before_after, fallbacks, decisions, confidence = [], {}, [], {}, {}
    for t in transforms:
        name, kept, scores = _decide(images, t, settings)
        out.append(kept)
        gain = sum(scores[name]) - sum(scores[IDENTITY])
        for i, mod in enumerate(t.modalities):
            before_after[mod] = (scores[IDENTITY][i], scores[FULL][i])
            decisions[mod], confidence[mod] = name, gain
        if name == FULL:
            continue
        for mod in t.modalities:
            log.warning(
                "Case %s: registering %s did not raise the %s with the ultrasound enough (%.4f -> %.4f); "
                "keeping the %s",
                case, mod, settings.criterion.upper(), *before_after[mod], name,
            )  # fmt: skip
            if name == IDENTITY:
                fallbacks.append(mod)
    return GuardResult(tuple(out), before_after, tuple(fallbacks), decisions, confidence)
