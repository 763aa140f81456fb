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

An absolute margin does not carry over between image contents (how much NMI a correct
alignment can gain depends on the images), so the margin can also be relative (the default):
``relative_margin = k`` asks a candidate to raise the criterion by more than ``k`` times the
pair's *jitter*, the mean absolute change of the criterion when the input alignment is shifted
by ``jitter_voxels`` working voxels along each array axis (6 shifts). A gain that is not
clearly larger than what nudging the MR by about a millimetre changes is not evidence. The
jitter is taken at the input, not at each candidate: near a sharp, confident peak the criterion
changes most, so a jitter at the candidate would count a clear optimum against itself (an
image and its shifted copy: the NMI peaks in a spike and every correct result was refused).

``confidence`` is the chosen candidate's criterion gain over the input alignment (0 when the
input alignment is kept); ``evidence`` is that gain in units of the jitter
(0 when the input alignment is kept). Both are written to ``timings.json`` and the QC report.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
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
    evidence: dict[str, float] = field(default_factory=dict)  # by sequence: gain / jitter
    # by sequence: the whole result's own gain and gain / jitter, kept or not (what a refusal
    # weighed: the QC report shows it next to the verdict)
    result_gain: dict[str, float] = field(default_factory=dict)
    result_evidence: dict[str, float] = field(default_factory=dict)

    def notes(self) -> dict[str, object]:
        notes: dict[str, object] = {f"nmi_{mod}": value for mod, value in self.nmi.items()}
        notes.update({f"fallback_{mod}": True for mod in self.fallbacks})
        for mod, decision in self.decisions.items():
            notes[f"decision_{mod}"] = decision
            notes[f"confidence_{mod}"] = round(self.confidence[mod], 6)
            if mod in self.evidence:
                notes[f"evidence_{mod}"] = round(self.evidence[mod], 3)
            if mod in self.result_gain:
                notes[f"result_gain_{mod}"] = round(self.result_gain[mod], 6)
            if mod in self.result_evidence:
                notes[f"result_evidence_{mod}"] = round(self.result_evidence[mod], 3)
        if self.confidence:
            notes["confidence"] = round(min(self.confidence.values()), 6)
        if self.evidence:
            notes["evidence"] = round(min(self.evidence.values()), 3)
        return notes


def criterion(images: WorkingImages, mod: str, total: torch.Tensor | None, settings: GuardSettings) -> float:
    """The guard's score of sequence ``mod`` warped by the working field ``total`` (None: as given)."""
    mr = images.mr[mod] if total is None else warp(images.mr[mod], total)
    if settings.criterion == "lc2":
        return lc2(images.us, mr, images.mask, settings.lc2_radius)
    return normalised_mutual_information(images.us, mr, images.mask)


def jitter_shifts(voxels: float) -> list[tuple[float, float, float]]:
    """The 6 constant shifts (working voxels) of the jitter: +-``voxels`` along each array axis."""
    out = []
    for axis in range(3):
        for sign in (1.0, -1.0):
            shift = [0.0, 0.0, 0.0]
            shift[axis] = sign * voxels
            out.append((shift[0], shift[1], shift[2]))
    return out


def jitter(
    images: WorkingImages, mods: Sequence[str], total: torch.Tensor | None, settings: GuardSettings
) -> float:
    """Mean absolute change of the criterion (summed over ``mods``) when the field ``total``
    (None: the zero field) is shifted by ``settings.jitter_voxels`` along each array axis:
    the criterion's own scale near this candidate, for this image content."""
    base = torch.zeros_like(images.us).repeat(1, 3, 1, 1, 1) if total is None else total
    score = sum(criterion(images, m, total, settings) for m in mods)
    changes = []
    for shift in jitter_shifts(settings.jitter_voxels):
        moved = base + torch.tensor(shift, dtype=base.dtype, device=base.device).view(1, 3, 1, 1, 1)
        changes.append(abs(sum(criterion(images, m, moved, settings) for m in mods) - score))
    return float(sum(changes) / len(changes))


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


def choose(
    totals: Sequence[tuple[str, float]],
    min_gain: float,
    jitters: Mapping[str, float] | None = None,
    relative_margin: float = 0.0,
) -> str:
    """The guard's rule on each candidate's criterion (summed over its sequences), simplest
    first: a candidate replaces the one chosen so far when it raises the criterion by more than
    ``max(min_gain, relative_margin * jitters[candidate])``. A NaN gain (too few voxels to
    judge) keeps the more complex candidate: the guard only overrules the optimiser on evidence.
    """
    if relative_margin > 0 and jitters is None:
        raise ValueError("choose: relative_margin > 0 needs each candidate's jitter")
    chosen, chosen_total = totals[0]
    for name, total in totals[1:]:
        margin = min_gain
        if relative_margin > 0:
            margin = max(margin, relative_margin * jitters[name])  # type: ignore[index]
        if not (total - chosen_total) <= margin:
            chosen, chosen_total = name, total
    return chosen


def _decide(
    images: WorkingImages, t: GroupTransform, settings: GuardSettings
) -> tuple[str, GroupTransform, dict[str, list[float]], dict[str, float]]:
    """The candidate kept for one group, every candidate's score by sequence, and the jitter of
    the candidates that needed it (empty without a relative margin)."""
    options = candidates(t)
    fields = {name: None if name == IDENTITY else c.total_field() for name, c in options}
    scores = {
        name: [criterion(images, mod, fields[name], settings) for mod in t.modalities] for name in fields
    }
    jitters = {}
    if settings.relative_margin > 0:
        # One scale for every candidate, measured at the input alignment: at a candidate's own
        # field a sharp (confident) peak would count against it.
        at_input = jitter(images, t.modalities, None, settings)
        jitters = {name: at_input for name in fields if name != IDENTITY}
    totals = [(n, sum(v, 0.0)) for n, v in scores.items()]
    name = choose(totals, settings.min_gain, jitters, settings.relative_margin)
    return name, dict(options)[name], scores, jitters


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
    out, before_after, fallbacks, decisions, confidence, evidence = [], {}, [], {}, {}, {}
    result_gain, result_evidence = {}, {}
    for t in transforms:
        name, kept, scores, jitters = _decide(images, t, settings)
        out.append(kept)
        gain = sum(scores[name]) - sum(scores[IDENTITY])
        full_gain = sum(scores[FULL]) - sum(scores[IDENTITY])
        for i, mod in enumerate(t.modalities):
            before_after[mod] = (scores[IDENTITY][i], scores[FULL][i])
            decisions[mod], confidence[mod] = name, gain
            result_gain[mod] = full_gain
            if FULL in jitters:
                result_evidence[mod] = full_gain / max(jitters[FULL], 1e-12)
            if name == IDENTITY:
                evidence[mod] = 0.0
            elif name in jitters:
                evidence[mod] = gain / max(jitters[name], 1e-12)
        if name == FULL:
            continue
        # The full result was judged against the candidate kept (the input, or the global stage
        # when that one had beaten the input): report its gain over that one.
        over_kept = sum(scores[FULL]) - sum(scores[name])
        why = ""
        if FULL in jitters:
            why = (
                f"; the gain is {over_kept / max(jitters[FULL], 1e-12):.2f} times the change under "
                f"{settings.jitter_voxels:g}-voxel shifts, more than {settings.relative_margin:g} is needed"
            )
        elif settings.min_gain > 0:
            why = f"; the gain is {over_kept:.4f}, more than {settings.min_gain:g} is needed"
        for i, mod in enumerate(t.modalities):
            log.warning(
                "Case %s: registering %s did not raise the %s with the ultrasound enough over the %s "
                "(%.4f -> %.4f%s); keeping the %s",
                case, mod, settings.criterion.upper(), name, scores[name][i], scores[FULL][i], why, name,
            )  # fmt: skip
            if name == IDENTITY:
                fallbacks.append(mod)
    return GuardResult(
        tuple(out),
        before_after,
        tuple(fallbacks),
        decisions,
        confidence,
        evidence,
        result_gain,
        result_evidence,
    )
