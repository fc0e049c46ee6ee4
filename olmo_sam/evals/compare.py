"""Forgetting tables: per-task scores, averages, drops, and "% less forgetting" between arms.

[SAM-PT] Sec 3.5.1 measures forgetting of the 1B models as the drop of the OLMES benchmark
average after post-training or 4-bit quantization, reports it "relative to 43.2" (the AdamW
base, :data:`olmo_sam.paper.BENCH_REFERENCE_AVG`) for every arm, and summarizes two arms by
"X% less forgetting" (:func:`percent_less_forgetting`). Table 8 (App D.1) is the per-task view.

The average drop of an arm is the mean of its per-task drops, so the difference of two arms'
average drops is the mean of their per-task differences. A pair is reported with that difference,
its Student-t interval and p-value over the n tasks (paired by task,
:func:`olmo_sam.analysis.stats.compare_seeds` with tasks in place of seeds: tasks are the unit, so
the interval holds the task-to-task variation of the difference, not seed-to-seed or instance
noise). As in a study's findings, "forgets X% less" is written only when that interval excludes
zero; otherwise the pair says that no difference is resolved and gives the percentage as a point
estimate.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from olmo_core.exceptions import OLMoConfigurationError

from .. import paper
from ..analysis.forgetting import less_forgetting
from ..analysis.stats import IntervalSpec, compare_seeds, ratio_interval
from ..output import atomic_write_text, save_figure
from .records import BenchRecord

__all__ = [
    "percent_less_forgetting",
    "Comparison",
    "compare",
    "paper_table8_records",
]


def percent_less_forgetting(drop_baseline: float, drop_arm: float) -> float:
    """How much less the arm forgets than the baseline, in percent ([SAM-PT] Sec 3.5.1, Table 8):
    ``100 *`` :func:`olmo_sam.analysis.forgetting.less_forgetting` of the benchmark-average drops
    (4-bit: (4.31 - 2.60) / 4.31 = 40% against the 43.2 reference)."""
    return 100.0 * less_forgetting(drop_baseline, drop_arm)


@dataclass
class ModelRow:
    model: str
    base: Optional[str]
    scores: Dict[str, float]
    average: float
    #: per-task and average drop from the model's base (positive = forgot); None for a base
    drop_from_base: Optional[Dict[str, float]] = None
    average_drop_from_base: Optional[float] = None
    average_drop_from_reference: Optional[float] = None


@dataclass
class ArmPair:
    baseline: str
    arm: str
    basis: str
    drop_baseline: float
    drop_arm: float
    #: the paper's "% less forgetting" (a point estimate; see ``resolved``)
    less_forgetting_pct: float
    #: drop_arm - drop_baseline in score points (negative: the arm forgets less): the mean of the
    #: per-task differences of the drops
    difference: float = 0.0
    #: tasks the difference is paired over
    n_tasks: int = 0
    #: two-sided interval of ``difference`` over tasks (None with one task)
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    confidence: float = 0.95
    #: paired t-test of "no difference" over tasks (None without an interval or when identical)
    p_value: Optional[float] = None
    #: the per-task differences are all equal: zero variance, no test
    identical: bool = False
    #: the interval excludes zero: only then is "X% less/more" a claim
    resolved: bool = False
    #: Fieller interval of ``less_forgetting_pct`` over the same tasks (the ratio of the two
    #: average drops, paired by task); None when unbounded (the baseline's drop is not resolved
    #: from zero) or with one task
    pct_ci_low: Optional[float] = None
    pct_ci_high: Optional[float] = None
    interval: str = ""
    #: the sentence written to the terminal and compare.md
    text: str = ""


@dataclass
class Comparison:
    tasks: List[str]
    rows: List[ModelRow]
    reference: Optional[float]
    pairs: List[ArmPair] = field(default_factory=list)

    def row(self, model: str) -> ModelRow:
        for r in self.rows:
            if r.model == model:
                return r
        raise KeyError(model)

    # -- outputs ---------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["model", "base", *self.tasks, "average", "drop_from_base", "drop_from_reference"])
        for r in self.rows:
            w.writerow(
                [
                    r.model,
                    r.base or "",
                    *(f"{r.scores[t]:.4f}" for t in self.tasks),
                    f"{r.average:.4f}",
                    _fmt(r.average_drop_from_base, 4),
                    _fmt(r.average_drop_from_reference, 4),
                ]
            )
        return buf.getvalue()

    def to_markdown(self) -> str:
        head = ["model", *self.tasks, "avg", "drop vs base"]
        if self.reference is not None:
            head.append(f"drop vs {self.reference:g}")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r.model, *(f"{r.scores[t]:.2f}" for t in self.tasks), f"{r.average:.2f}"]
            cells.append(_fmt(r.average_drop_from_base, 2) if r.base else "(base)")
            if self.reference is not None:
                cells.append(_fmt(r.average_drop_from_reference, 2))
            lines.append("| " + " | ".join(cells) + " |")
        for p in self.pairs:
            lines.append("")
            lines.append(p.text)
        if self.pairs:
            lines.append("")
            lines.append(f"Interval: {self.pairs[0].interval}.")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        cols = [*self.tasks, "avg"]
        x = np.arange(len(cols))
        width = 0.8 / max(len(self.rows), 1)
        fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(cols)), 4.5))
        for i, r in enumerate(self.rows):
            vals = [r.scores[t] for t in self.tasks] + [r.average]
            ax.bar(x + (i - (len(self.rows) - 1) / 2) * width, vals, width, label=r.model)
        if self.reference is not None:
            ax.axhline(self.reference, color="k", ls="--", lw=0.8, label=f"reference {self.reference:g}")
        ax.set_xticks(x)
        ax.set_xticklabels(cols, rotation=30, ha="right")
        ax.set_ylabel("score (%)")
        title = "Benchmark scores"
        if self.pairs:
            title += " — " + "; ".join(_short(p) for p in self.pairs)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        try:
            return save_figure(fig, path, dpi=120)
        finally:
            plt.close(fig)

    def write(self, out_dir: str | Path, stem: str = "compare") -> Dict[str, Path]:
        out = Path(out_dir)
        return {
            "md": atomic_write_text(out / f"{stem}.md", self.to_markdown()),
            "csv": atomic_write_text(out / f"{stem}.csv", self.to_csv()),
            "json": atomic_write_text(out / f"{stem}.json", self.to_json()),
            "png": self.plot(out / f"{stem}.png"),
        }


def _signed(x: float) -> str:
    return f"{x:+.2f}"


def _short(p: ArmPair) -> str:
    """The plot-title form of a pair's statement."""
    if p.resolved:
        word = "less" if p.difference < 0 else "more"
        return (
            f"{p.arm}: {abs(p.less_forgetting_pct):.0f}% {word} forgetting than {p.baseline} "
            f"({100 * p.confidence:g}% CI of the drop difference {_signed(p.ci_low)} to {_signed(p.ci_high)}, "
            f"n = {p.n_tasks} tasks)"
        )
    ci = (
        f"{100 * p.confidence:g}% CI {_signed(p.ci_low)} to {_signed(p.ci_high)}"
        if p.ci_low is not None and p.ci_high is not None
        else "no interval"
    )
    return f"{p.arm} vs {p.baseline}: no difference resolved ({ci}, n = {p.n_tasks} tasks)"


def _pct_ci(p: ArmPair) -> str:
    """The percentage's own interval (signed: positive = the arm forgets less)."""
    conf = f"{100 * p.confidence:g}% CI"
    if p.pct_ci_low is None or p.pct_ci_high is None:
        why = (
            "one task" if p.n_tasks < 2 else "zero variance" if p.identical else "baseline drop not resolved from zero"
        )
        return f"{conf} of the % unbounded: {why}"
    return f"{conf} of the % {p.pct_ci_low:+.1f}% to {p.pct_ci_high:+.1f}%"


def _pair_text(p: ArmPair) -> str:
    """The sentence of one pair: a comparative word only when the interval excludes zero."""
    conf = f"{100 * p.confidence:g}% CI"
    drops = f"average drop {p.drop_arm:.2f} vs {p.drop_baseline:.2f}, {p.basis}"
    tasks = f"{p.n_tasks} task{'s' if p.n_tasks != 1 else ''}"
    pct = f"{p.less_forgetting_pct:+.1f}% ({_pct_ci(p)})"
    if p.ci_low is None or p.ci_high is None:
        return (
            f"{p.arm} vs {p.baseline}: no difference resolved ({tasks}: no interval; difference in average "
            f"drop {_signed(p.difference)} points; {drops}). '% less forgetting' point estimate {pct}, "
            f"not evidence of a difference."
        )
    if p.identical:
        return (
            f"{p.arm} vs {p.baseline}: the drop differs by {_signed(p.difference)} points on every one of the "
            f"{tasks}: zero variance, no interval and no test; no difference resolved ({drops}). "
            f"'% less forgetting' point estimate {pct}."
        )
    stats = (
        f"difference in average drop {_signed(p.difference)} points, {conf} {_signed(p.ci_low)} to "
        f"{_signed(p.ci_high)}, paired over {tasks}, p = {p.p_value:.2g}"
    )
    if p.resolved:
        word = "less" if p.difference < 0 else "more"
        return (
            f"**{p.arm}** forgets **{abs(p.less_forgetting_pct):.1f}% {word}** than **{p.baseline}** "
            f"({_pct_ci(p)}; {drops}; {stats})."
        )
    return (
        f"{p.arm} vs {p.baseline}: no difference in forgetting resolved ({stats}; {drops}). "
        f"'% less forgetting' point estimate {pct}, not resolved: the interval includes zero."
    )


def _pair(
    baseline: str,
    arm: str,
    basis: str,
    drop_baseline: float,
    drop_arm: float,
    task_drops_baseline: Sequence[float],
    task_drops_arm: Sequence[float],
) -> ArmPair:
    """A pair with its paired interval over tasks and its sentence."""
    spec = IntervalSpec()
    diff = compare_seeds(dict(enumerate(task_drops_arm)), dict(enumerate(task_drops_baseline)), spec)
    # % less = 100 (1 - da/db), da/db the ratio of the mean per-task drops: Fieller's interval
    _, r_low, r_high = ratio_interval(task_drops_arm, task_drops_baseline, spec.confidence)
    bounded = r_low is not None and r_high is not None and not diff.identical
    p = ArmPair(
        baseline,
        arm,
        basis,
        drop_baseline,
        drop_arm,
        percent_less_forgetting(drop_baseline, drop_arm),
        difference=drop_arm - drop_baseline,
        n_tasks=len(task_drops_arm),
        ci_low=diff.ci_low,
        ci_high=diff.ci_high,
        confidence=diff.confidence,
        p_value=diff.p_value,
        identical=diff.identical,
        resolved=diff.significant,
        pct_ci_low=float(100.0 * (1.0 - r_high)) if bounded else None,
        pct_ci_high=float(100.0 * (1.0 - r_low)) if bounded else None,
        interval=(
            f"{100 * spec.confidence:g}% Student-t interval and paired t-test of the difference in drop over "
            f"the tasks (paired by task; tasks are the unit, so it holds task-to-task variation, not "
            f"seed-to-seed or instance noise); 'X% less' is written only when the interval excludes zero; "
            f"the percentage's own interval is Fieller's for the ratio of the average drops over the same tasks"
        ),
    )
    p.text = _pair_text(p)
    return p


def _fmt(v: Optional[float], digits: int) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _scores(label: str, records: Sequence[BenchRecord]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for r in records:
        if r.task in out:
            raise OLMoConfigurationError(f"model {label!r} has two results for task {r.task!r}")
        out[r.task] = float(r.score)
    return out


def compare(
    results: Mapping[str, Sequence[BenchRecord]],
    base: str,
    *,
    base_of: Optional[Mapping[str, str]] = None,
    reference: Optional[float] = None,
    pairs: Sequence[Tuple[str, str]] = (),
    tasks: Optional[Sequence[str]] = None,
) -> Comparison:
    """Build the forgetting table.

    :param results: records by model label (insertion order is the table order).
    :param base: the label every model is compared to unless ``base_of`` names another.
    :param base_of: ``{model: its base}`` overrides (e.g. ``{"sam-4bit": "sam"}``).
    :param reference: a fixed average every drop is also measured from (the paper's 43.2).
    :param pairs: ``(baseline, arm)`` label pairs for "% less forgetting"; drops from
        ``reference`` when given (as the paper), else from each model's own base.
    :param tasks: restrict to these tasks; by default all models must cover the same tasks.
    """
    if base not in results:
        raise OLMoConfigurationError(f"base model {base!r} is not among {list(results)}")
    base_of = dict(base_of or {})
    for m, b in base_of.items():
        if m not in results or b not in results:
            raise OLMoConfigurationError(f"--base-of {m}={b}: both must be among {list(results)}")
    scores = {m: _scores(m, recs) for m, recs in results.items()}
    if tasks is None:
        task_sets = {m: set(s) for m, s in scores.items()}
        common = set.intersection(*task_sets.values())
        for m, ts in task_sets.items():
            if ts != common:
                raise OLMoConfigurationError(
                    f"model {m!r} has tasks {sorted(ts - common)} that others lack (or lacks "
                    f"{sorted(set.union(*task_sets.values()) - ts)}); pass tasks= / --tasks to "
                    f"compare on a common set"
                )
        order = [t for t in paper.BENCH_TABLE_COLUMNS if t in common] + sorted(common - set(paper.BENCH_TABLE_COLUMNS))
    else:
        order = list(tasks)
        for m, s in scores.items():
            missing = [t for t in order if t not in s]
            if missing:
                raise OLMoConfigurationError(f"model {m!r} has no result for task(s) {missing}")
    if not order:
        raise OLMoConfigurationError("no tasks to compare")

    def avg(m: str) -> float:
        return sum(scores[m][t] for t in order) / len(order)

    rows: List[ModelRow] = []
    for m in results:
        b = None if m == base and m not in base_of else base_of.get(m, base)
        row = ModelRow(model=m, base=b, scores={t: scores[m][t] for t in order}, average=avg(m))
        if b is not None:
            row.drop_from_base = {t: scores[b][t] - scores[m][t] for t in order}
            row.average_drop_from_base = avg(b) - avg(m)
        if reference is not None:
            row.average_drop_from_reference = reference - avg(m)
        rows.append(row)
    comp = Comparison(tasks=order, rows=rows, reference=reference)
    for baseline, arm in pairs:
        rb, ra = comp.row(_known(baseline, results)), comp.row(_known(arm, results))
        if reference is not None:
            db, da, basis = rb.average_drop_from_reference, ra.average_drop_from_reference, f"drops from {reference:g}"
            # per task, the drop from the common reference average: the mean over tasks is the
            # average drop, so the mean per-task difference is da - db
            tb = [reference - rb.scores[t] for t in order]
            ta = [reference - ra.scores[t] for t in order]
        else:
            if rb.base is None or ra.base is None:
                raise OLMoConfigurationError(
                    f"pair {baseline},{arm}: without a reference both need a base to drop from"
                )
            db, da, basis = rb.average_drop_from_base, ra.average_drop_from_base, "drops from each model's base"
            assert rb.drop_from_base is not None and ra.drop_from_base is not None
            tb = [rb.drop_from_base[t] for t in order]
            ta = [ra.drop_from_base[t] for t in order]
        assert db is not None and da is not None
        comp.pairs.append(_pair(baseline, arm, basis, db, da, tb, ta))
    return comp


def _known(label: str, results: Mapping) -> str:
    if label not in results:
        raise OLMoConfigurationError(f"unknown model {label!r}; known: {list(results)}")
    return label


def paper_table8_records() -> Dict[str, List[BenchRecord]]:
    """The paper's Table 8 (App D.1) as records, by row label."""
    return {
        label: [
            BenchRecord(
                model=label,
                task=t,
                score=s,
                metric="primary_score",
                num_instances=0,
                config_hash="",
                source="paper:SAM-PT Table 8",
            )
            for t, s in row.items()
        ]
        for label, row in paper.BENCH_TABLE8.items()
    }
