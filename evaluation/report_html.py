"""The report's index page and machine-readable QC (``index.html``, ``qc.json``)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from remind2reg.evaluation.evaluate import EvaluationReport
from remind2reg.evaluation.figures import LANDMARK_SLAB_MM, TRE_RANGE_MM
from remind2reg.evaluation.qc import PMM_PATCH, PMM_SPACING_MM, PMM_STRIDE, PairQC


def qc_json(pairs: list[PairQC]) -> dict:
    """Machine-readable QC: per pair, the PMM means, metrics and any error."""
    return {
        qc.pair.key: {
            "pmm_before": qc.pmm_before,
            "pmm_after": qc.pmm_after,
            "tre_initial": qc.metrics.tre_initial if qc.metrics else None,
            "tre": qc.metrics.tre if qc.metrics else None,
            "fallback": qc.fallback,
            "guard": qc.guard or None,
            "init_transform": qc.init_transform,
            "error": qc.error,
            "png": qc.png.name if qc.png else None,
        }
        for qc in pairs
    }


def _cell(value: float | None, fmt: str, css: str = "") -> str:
    if value is None or not np.isfinite(value):
        return "<td>-</td>"
    return f'<td class="{css}">{value:{fmt}}</td>' if css else f"<td>{value:{fmt}}</td>"


def guard_cell(guard: dict, given: bool = False) -> str:
    """The guard's verdict: the candidate kept, its NMI gain over the input alignment and, when
    the relative margin measured it, that gain in units of the pair's jitter; for a refused
    result, what that result itself gained (the evidence the guard found too weak). ``given``:
    the pair started from a given transform, which the guard judged as a global stage."""
    if not guard.get("decision"):
        return "<td>-</td>"
    decision = str(guard["decision"])
    text = html.escape("given transform" if given and decision == "global stage" else decision)
    refused = guard["decision"] != "full" and "result_gain" in guard
    if refused:
        text += f" (result refused: {float(guard['result_gain']):+.4f}"
        text += f", {float(guard['result_evidence']):.1f}x jitter)" if "result_evidence" in guard else ")"
    elif "confidence" in guard:
        text += f" ({float(guard['confidence']):+.4f}"
        text += f", {float(guard['evidence']):.1f}x jitter)" if "evidence" in guard else ")"
    css = ' class="bad"' if guard["decision"] != "full" else ""
    return f"<td{css}>{text}</td>"


HEAD = (
    "<tr><th>pair</th><th>MR</th><th>n</th><th>TRE0 mm</th><th>TRE mm</th><th>SDlogJ</th>"
    "<th>fold %</th><th>s</th><th>PMM before</th><th>PMM after</th><th>guard (NMI gain)</th>"
    "<th>note</th></tr>"
)
STYLE = """body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
td:first-child, td:last-child { text-align: left; }
.good { background: #d9f2d9; } .bad { background: #f8d7d7; } .agg { font-weight: bold; }
img { max-width: 100%; }"""


def pair_row(qc: PairQC) -> str:
    """The table row of one pair: the evaluator's numbers, the PMM, and any error or fallback."""
    m = qc.metrics
    better = "" if m is None else ("good" if m.tre < m.tre_initial else "bad")
    pmm_css = "good" if qc.pmm_after > qc.pmm_before else "bad" if qc.pmm_after < qc.pmm_before else ""
    note = (
        html.escape(qc.error) if qc.error else f"fallback: {html.escape(qc.fallback)}" if qc.fallback else ""
    )
    if qc.init_transform:
        started = f"started from {html.escape(Path(qc.init_transform).name)}"
        note = f"{note}; {started}" if note else started
    key = html.escape(qc.pair.key)
    name = f'<a href="#{key}">{key}</a>' if qc.png else key
    return (
        f"<tr><td>{name}</td><td>{qc.modality}</td><td>{m.n_landmarks if m else '-'}</td>"
        + _cell(m.tre_initial if m else None, ".3f")
        + _cell(m.tre if m else None, ".3f", better)
        + _cell(m.sdlogj if m else None, ".4f")
        + _cell(m.folding_percent if m else None, ".3f")
        + _cell(m.runtime_s if m else None, ".1f")
        + _cell(qc.pmm_before, ".3f")
        + _cell(qc.pmm_after, ".3f", pmm_css)
        + guard_cell(qc.guard, given=qc.init_transform is not None)
        + f'<td class="{"bad" if qc.error or qc.fallback else ""}">{note}</td></tr>'
    )


def aggregate_rows(pairs: list[PairQC]) -> list[str]:
    """The mean and TRE30 rows over the pairs with landmarks (none without)."""
    evaluated = [qc.metrics for qc in pairs if qc.metrics is not None]
    if not evaluated:
        return []
    agg = EvaluationReport(evaluated).aggregates()
    pmm_b = float(np.nanmean([q.pmm_before for q in pairs]))
    pmm_a = float(np.nanmean([q.pmm_after for q in pairs]))
    mean = (
        f"<tr class='agg'><td>mean ({len(evaluated)} with landmarks)</td><td></td><td></td>"
        + _cell(agg["TRE_initial"]["mean"], ".3f")
        + _cell(agg["TRE_lm"]["mean"], ".3f")
        + _cell(agg["LogJacDetStd"]["mean"], ".4f")
        + _cell(agg["folding_percent"]["mean"], ".3f")
        + _cell(agg.get("runtime_s", {}).get("mean"), ".1f")
        + _cell(pmm_b, ".3f")
        + _cell(pmm_a, ".3f")
        + "<td></td><td></td></tr>"
    )
    tre30 = (
        "<tr class='agg'><td>TRE30 (0.3 quantile)</td><td></td><td></td>"
        + _cell(agg["TRE_initial"]["30"], ".3f")
        + _cell(agg["TRE_lm"]["30"], ".3f")
        + "<td></td>" * 7
        + "</tr>"
    )
    return [mean, tre30]


def index_html(pairs: list[PairQC], data_dir: Path, pred_dir: Path) -> str:
    """The index page: the metrics table (evaluator's numbers plus PMM) and one figure per pair."""
    rows = [pair_row(qc) for qc in pairs] + aggregate_rows(pairs)
    figures = "\n".join(
        f'<h2 id="{html.escape(qc.pair.key)}">{html.escape(qc.pair.key)} ({qc.modality})</h2>'
        f'<a href="{qc.png.name}"><img src="{qc.png.name}" alt="QC of {html.escape(qc.pair.key)}"></a>'
        for qc in pairs
        if qc.png is not None
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>remind2reg QC</title>
<style>
{STYLE}
</style></head><body>
<h1>Registration QC</h1>
<p>Data <code>{html.escape(str(data_dir))}</code>, fields <code>{html.escape(str(pred_dir))}</code>.
TRE as the challenge computes it (TRE0: zero field); SDlogJ with the official +3; fold %: det J &le; 0.
PMM: mean patch-wise NMI (2 MI / (H(US) + H(MR)), {PMM_PATCH}^3 patches every {PMM_STRIDE} voxels at about
{PMM_SPACING_MM:g} mm, inside the US sector): a landmark-free score, higher is better.</p>
<p>Figures: rows are planes through the US sector centroid; columns: checkerboard before/after,
MR edges (red) on the US before/after with landmarks within {LANDMARK_SLAB_MM:g} mm (disc: error in mm,
green 0 to red {TRE_RANGE_MM:g}+; arrow: to the moving landmark), det J (blue &lt; 1 &lt; red), PMM before/after.</p>
<table>{HEAD}
{"".join(rows)}
</table>
{figures}
</body></html>
"""
