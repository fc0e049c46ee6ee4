"""Tables (Markdown/CSV rows) and JSON payloads of the forgetting analyses, and writing them.

Each ``*_report`` returns a :class:`Report`: table columns, one row per line of the table, and a
JSON payload holding everything (including runs that are not in the table: dominated and
diverged ones). :meth:`Report.write` puts ``{stem}.md``, ``{stem}.csv`` and ``{stem}.json`` in a
folder atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

from ..output import atomic_write_text, csv_text, markdown_table, write_json
from .forgetting import (
    Comparison,
    Curve,
    FrontierPoint,
    MatchedPTView,
    MatchedRow,
    MatchedSet,
)

__all__ = ["Report", "frontier_report", "compare_report", "matched_pt_report"]


@dataclass
class Report:
    stem: str
    columns: List[str]
    rows: List[Dict[str, Any]]
    payload: Dict[str, Any]
    notes: List[str] = field(default_factory=list)
    #: paragraphs printed under the table and written under it in ``{stem}.md`` (what the numbers
    #: are not evidence of); the payload carries them as ``caveats``
    caveats: List[str] = field(default_factory=list)

    def markdown(self) -> str:
        text = markdown_table(self.columns, self.rows)
        for c in self.caveats:
            text += f"\n{c}\n"
        return text

    def write(self, out_dir: str | Path) -> List[Path]:
        out_dir = Path(out_dir)
        notes = "".join(f"\n- {n}" for n in self.notes) + ("\n" if self.notes else "")  # (what is left out, why)
        paths = [
            atomic_write_text(out_dir / f"{self.stem}.md", self.markdown() + notes),
            atomic_write_text(out_dir / f"{self.stem}.csv", csv_text(self.columns, self.rows)),
        ]
        paths.append(write_json(out_dir / f"{self.stem}.json", {**self.payload, "notes": self.notes}))
        return paths


def _lrs(points: Sequence[FrontierPoint]) -> str:
    return ";".join(f"{lr:g}" for p in points for lr in p.lrs)


def _run_ids(points: Sequence[FrontierPoint]) -> str:
    return ";".join(rid for p in points for rid in p.run_ids)


def _point(p: FrontierPoint, base_l_pt: float) -> Dict[str, Any]:
    return {
        "l_pt": p.l_pt,
        "l_ft": p.l_ft,
        "forgetting": p.l_pt - base_l_pt,
        "lrs": p.lrs,
        "run_ids": p.run_ids,
    }


def _curve_meta(c: Curve) -> Dict[str, Any]:
    return {
        "label": c.label,
        "arm": c.arm,
        "base": c.key.base,
        "base_label": c.base_label,
        "method": c.key.method,
        "split": dict(c.key.split),
        "base_l_pt": c.base_l_pt,
    }


def _non_finite_notes(curves: Mapping[str, Sequence[Curve]]) -> List[str]:
    notes = []
    for ds, cs in curves.items():
        for c in cs:
            bad = c.frontier.non_finite
            if bad:
                notes.append(
                    f"{ds}/{c.label}: {len(bad)} run(s) with non-finite loss left out "
                    f"(diverged): {', '.join(r.run_id for r in bad)}"
                )
    return notes


def frontier_report(curves: Mapping[str, Sequence[Curve]]) -> Report:
    """One table row per frontier point; the JSON also lists dominated and diverged runs."""
    columns = ["dataset", "curve", "method", "base_l_pt", "l_ft", "l_pt", "forgetting", "lr", "run_ids"]
    rows: List[Dict[str, Any]] = []
    datasets: Dict[str, Any] = {}
    for ds, cs in curves.items():
        entries = []
        for c in cs:
            f = c.frontier
            for p in f.points:
                rows.append(
                    {
                        "dataset": ds,
                        "curve": c.label,
                        "method": c.key.method or "*",
                        "base_l_pt": c.base_l_pt,
                        "l_ft": p.l_ft,
                        "l_pt": p.l_pt,
                        "forgetting": p.l_pt - c.base_l_pt,
                        "lr": _lrs([p]),
                        "run_ids": _run_ids([p]),
                    }
                )
            entries.append(
                {
                    **_curve_meta(c),
                    "n_runs": len(c.records),
                    "l_min": f.points[0].l_ft if f.points else None,
                    "frontier": [_point(p, c.base_l_pt) for p in f.points],
                    "dominated": [r.run_id for r in f.dominated],
                    "non_finite": [r.run_id for r in f.non_finite],
                }
            )
        datasets[ds] = entries
    payload = {
        "analysis": "frontier",
        "definition": "[SAM-PT] Sec 2.1 / App C.4 Eq. 8: Pareto frontier of (L_PT, L_FT), both minimised",
        "datasets": datasets,
    }
    return Report("frontier", columns, rows, payload, _non_finite_notes(curves))


def _matched_row(m: MatchedSet, row: MatchedRow) -> Dict[str, Any]:
    r = row.retained
    return {
        "dataset": m.dataset,
        "tau": m.tau,
        "curve": row.curve.label,
        "base_l_pt": row.curve.base_l_pt,
        "l_min": row.l_min,
        "l_ft": r.l_ft,
        "l_pt": r.l_pt,
        "forgetting": row.forgetting,
        "interpolated": r.interpolated,
        "grid_edge": r.grid_edge,
        "lr": _lrs(r.points),
        "run_ids": _run_ids(r.points),
    }


def _matched_meta(m: MatchedSet) -> Dict[str, Any]:
    return {
        "tau": m.tau,
        "tau_source": m.tau_source,
        "rule": "L_FT < tau" if m.strict else "L_FT <= tau",
        "interpolate": m.interpolate,
    }


#: the ``interval`` cell of a compared curve: every curve is one base checkpoint (one run)
SINGLE_RUN = "none: single run per side"


def single_run_caveat(n_curves: int) -> str:
    """What a curve-vs-curve "% less forgetting" is not: each curve is one base checkpoint (one
    pretraining run, no seeds to form an interval); the study pipeline pools seeds into arms."""
    return (
        f"**Single-run comparison, no interval.** Each of the {n_curves} curves is one base checkpoint, "
        f"so every forgetting value and less_forgetting_pct here compares one run with one run: there are "
        f"no seeds to form an interval, and a single-run comparison with no interval is not evidence of a "
        f"difference (seed-to-seed gaps can exceed the gap between optimizers, and the sign can change "
        f"with the matching rule, e.g. --interpolate). For arms pooled over pretraining seeds with "
        f"intervals and tests, run the study pipeline: `olmo-sam study run` (docs/study.md)."
    )


def compare_report(comparisons: Mapping[str, Comparison], curves: Mapping[str, Sequence[Curve]]) -> Report:
    """[SAM-PT] App C.4: per dataset, tau, each checkpoint's matched PT loss and forgetting, and
    its % less forgetting than the reference -- single runs without an interval, which the table,
    ``{stem}.md`` and the JSON say (:func:`single_run_caveat`)."""
    columns = [
        "dataset",
        "tau",
        "curve",
        "reference",
        "base_l_pt",
        "l_min",
        "l_ft",
        "l_pt",
        "forgetting",
        "less_forgetting_pct",
        "interval",
        "grid_edge",
        "lr",
        "run_ids",
    ]
    rows, datasets, notes = [], {}, _non_finite_notes(curves)
    for ds, comp in comparisons.items():
        m = comp.matched
        entries = []
        for row in m.rows:
            frac = comp.less[row.curve.label]
            d = _matched_row(m, row)
            d["reference"] = "yes" if row.curve.label == comp.reference else ""
            d["less_forgetting_pct"] = None if frac is None else 100.0 * frac
            d["interval"] = "" if row.curve.label == comp.reference else SINGLE_RUN
            rows.append(d)
            entries.append(
                {
                    **_curve_meta(row.curve),
                    "l_min": row.l_min,
                    "l_ft": row.retained.l_ft,
                    "l_pt": row.retained.l_pt,
                    "forgetting": row.forgetting,
                    "less_forgetting": frac,
                    "runs_per_side": 1,
                    "interval": None,
                    "interpolated": row.retained.interpolated,
                    "grid_edge": row.grid_edge,
                    "points": [_point(p, row.curve.base_l_pt) for p in row.retained.points],
                }
            )
        datasets[ds] = {**_matched_meta(m), "reference": comp.reference, "notes": list(comp.notes), "curves": entries}
        notes += [f"{ds}: {n}" for n in comp.notes]
    payload = {
        "analysis": "compare",
        "definition": (
            "[SAM-PT] App C.4 Eqs. 9-10: tau = max_i min L_FT(i); per checkpoint min L_PT over runs "
            "with L_FT <= tau; forgetting = L_PT(theta_FT) - L_PT(theta_PT); less_forgetting = "
            "1 - forgetting / forgetting(reference)"
        ),
        "datasets": datasets,
    }
    caveat = single_run_caveat(sum(len(c.matched.rows) for c in comparisons.values()))
    payload["caveats"] = [caveat]
    return Report("compare", columns, rows, payload, notes, caveats=[caveat])


def matched_pt_report(views: Mapping[str, MatchedPTView], curves: Mapping[str, Sequence[Curve]]) -> Report:
    """[SAM-PT] Fig 5: per dataset and arm, each checkpoint's own PT loss against the minimum PT
    loss it retains at the fine-tuning-loss threshold."""
    columns = [
        "dataset",
        "tau",
        "arm",
        "curve",
        "base_l_pt",
        "l_ft",
        "l_pt",
        "forgetting",
        "grid_edge",
        "lr",
        "run_ids",
    ]
    rows, datasets = [], {}
    for ds, v in views.items():
        arms = {}
        for arm, arm_rows in v.arms.items():
            for row in arm_rows:
                rows.append({**_matched_row(v.matched, row), "arm": arm})
            arms[arm] = [
                {
                    "curve": r.curve.label,
                    "base": r.curve.key.base,
                    "base_l_pt": r.curve.base_l_pt,
                    "l_min": r.l_min,
                    "l_ft": r.retained.l_ft,
                    "l_pt": r.retained.l_pt,
                    "forgetting": r.forgetting,
                    "interpolated": r.retained.interpolated,
                    "grid_edge": r.grid_edge,
                    "run_ids": [rid for p in r.retained.points for rid in p.run_ids],
                }
                for r in arm_rows
            ]
        datasets[ds] = {**_matched_meta(v.matched), "arms": arms}
    payload = {
        "analysis": "matched-pt",
        "definition": (
            "[SAM-PT] Sec 3.2 footnote 1, Fig 5: min L_PT(theta_FT) subject to the L_FT threshold, "
            "against the base model's L_PT(theta_PT)"
        ),
        "datasets": datasets,
    }
    return Report("matched_pt", columns, rows, payload, _non_finite_notes(curves))
