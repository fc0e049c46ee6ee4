"""Plots of the learning-forgetting analysis, after [SAM-PT] Fig 2 and Fig 5 (matplotlib, Agg).

Figures are built with :class:`matplotlib.figure.Figure` on an Agg canvas (no pyplot, no global
backend state) and saved atomically (:func:`olmo_sam.output.save_figure`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..output import save_figure
from .forgetting import Curve, MatchedPTView, MatchedSet

__all__ = ["plot_frontiers", "plot_matched_pt", "Panel", "plot_bands", "plot_bars", "arm_colors"]

#: one point of a line with its band: (x, mean, low, high); low/high None: no band at that point
BandPoint = Tuple[float, float, Optional[float], Optional[float]]

_MARKERS = "osD^v<>ph*"


def _figure(n_panels: int, panel_w: float = 3.6, panel_h: float = 3.2, ncols: Optional[int] = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(n_panels, ncols or 5)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(panel_w * ncols, panel_h * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _colors(names: Sequence[str]) -> Dict[str, object]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def arm_colors(arms: Sequence[str]) -> Dict[str, object]:
    """One hue per arm, in the arms' order (the same arm has the same colour in every figure)."""
    return _colors(list(arms))


def _legend(fig, axes, extra=(), max_cols: int = 6) -> None:
    """One figure legend for all panels (first handle per label), plus ``extra`` proxy handles,
    below the panels and never wider than the figure (so the panels keep the figure's width)."""
    handles, labels = {}, []
    pairs = [p for ax in axes for p in zip(*ax.get_legend_handles_labels())]
    for h, lab in pairs + [(h, h.get_label()) for h in extra]:
        if lab and not lab.startswith("_") and lab not in handles:
            handles[lab] = h
            labels.append(lab)
    if handles:
        longest = max(len(lab) for lab in labels)
        fits = max(1, int(fig.get_figwidth() / (0.5 + 0.065 * longest)))
        fig.legend(
            [handles[lab] for lab in labels],
            labels,
            loc="outside lower center",
            ncols=min(len(labels), max_cols, fits),
            frameon=False,
            fontsize=8,
        )


def _clip_to_frontiers(ax, curves: Sequence[Curve]) -> None:
    """Axes around the frontiers (and the bases' PT losses), not around every run: a dominated run
    far off (a fine-tuning that diverged to a finite but huge loss) would squeeze every frontier
    into a dot. Runs left off the axes are counted in the panel."""
    pts = [(p.l_pt, p.l_ft) for c in curves for p in c.frontier.points]
    if not pts:
        return
    xs, ys = [x for x, _ in pts] + [c.base_l_pt for c in curves], [y for _, y in pts]
    pad_x, pad_y = 0.15 * max(max(xs) - min(xs), 1e-3), 0.15 * max(max(ys) - min(ys), 1e-3)
    x0, x1, y0, y1 = min(xs) - pad_x, max(xs) + pad_x, min(ys) - pad_y, max(ys) + pad_y
    off = [
        r
        for c in curves
        for r in c.records
        if math.isfinite(r.l_pt) and math.isfinite(r.l_ft) and not (x0 <= r.l_pt <= x1 and y0 <= r.l_ft <= y1)
    ]
    if off:
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        worst = max(max(r.l_pt, r.l_ft) for r in off)
        ax.text(0.01, 0.01, f"{len(off)} dominated run(s) off the axes (loss up to {worst:.3g})",
                transform=ax.transAxes, fontsize=6, color="0.3", va="bottom")  # fmt: skip


def plot_frontiers(
    curves: Mapping[str, Sequence[Curve]],
    path: str | Path,
    *,
    matched: Optional[Mapping[str, MatchedSet]] = None,
    annotate_lr: bool = False,
    title: str = "Learning-forgetting frontier",
    arm_of: Optional[Mapping[str, Tuple[str, str]]] = None,
) -> Path:
    """[SAM-PT] Fig 2: one panel per dataset, x = L_PT(theta_FT) (forgetting), y = L_FT(theta_FT)
    (learning). Each curve (base checkpoint/arm) shows all its runs faintly, its Pareto frontier as
    a line, and its base model's own PT loss as a dotted vertical line. With ``matched`` the
    threshold tau is a dashed horizontal line and each curve's matched point a star (App C.4).
    ``annotate_lr`` writes each frontier run's learning rate next to it.

    ``arm_of`` (base label -> (arm, budget)) colours by arm instead of by curve: each base (a seed)
    is a thin line in its arm's hue, its budget is the marker, and the legend names arms and budgets
    (not every base)."""
    datasets = list(curves)
    if not datasets:
        raise ValueError("nothing to plot: no dataset")
    labels = sorted({c.label for cs in curves.values() for c in cs})
    if arm_of:
        arms = list(
            dict.fromkeys(arm_of[c.base_label][0] for cs in curves.values() for c in cs if c.base_label in arm_of)
        )
        budgets = list(dict.fromkeys(v[1] for v in arm_of.values()))
        hue = _colors(arms)
        color = {
            c.label: hue[arm_of[c.base_label][0]] if c.base_label in arm_of else "0.5"
            for cs in curves.values()
            for c in cs
        }
        marker = {
            c.label: _MARKERS[budgets.index(arm_of[c.base_label][1]) % len(_MARKERS)] if c.base_label in arm_of else "x"
            for cs in curves.values()
            for c in cs
        }
    else:
        color = _colors(labels)
        marker = {lab: "o" for lab in labels}
    fig, axes = _figure(len(datasets), panel_w=5.0 if arm_of else 3.6, panel_h=4.0 if arm_of else 3.2)
    for ax, ds in zip(axes, datasets):
        for c in curves[ds]:
            col = color[c.label]
            fin = [r for r in c.records if math.isfinite(r.l_pt) and math.isfinite(r.l_ft)]
            ax.scatter([r.l_pt for r in fin], [r.l_ft for r in fin], s=10, color=col, alpha=0.3, linewidths=0)
            pts = c.frontier.points
            ax.plot(
                [p.l_pt for p in pts],
                [p.l_ft for p in pts],
                "-",
                marker=marker[c.label],
                ms=3.5,
                color=col,
                lw=0.8 if arm_of else 1.5,
                alpha=0.7 if arm_of else 1.0,
                label=None if arm_of else c.label,
            )
            ax.axvline(c.base_l_pt, color=col, ls=":", lw=0.6 if arm_of else 1, alpha=0.5 if arm_of else 1.0)
            if annotate_lr:
                for p in pts:
                    ax.annotate(
                        ",".join(f"{lr:.2g}" for lr in p.lrs),
                        (p.l_pt, p.l_ft),
                        fontsize=6,
                        color=col,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
        _clip_to_frontiers(ax, curves[ds])
        if matched and ds in matched:
            m = matched[ds]
            op = "<" if m.strict else "≤"
            ax.axhline(m.tau, color="0.4", ls="--", lw=1, label=None)
            ax.text(
                0.99,
                m.tau,
                f"τ={m.tau:.3g}",
                transform=ax.get_yaxis_transform(),
                ha="right",
                va="bottom",
                fontsize=7,
                color="0.3",
            )
            for row in m.rows:
                ax.plot(
                    [row.retained.l_pt], [row.retained.l_ft], "*", ms=11, color=color[row.curve.label], mec="k", mew=0.5
                )
            ax.set_title(f"{ds}  (L_FT {op} τ)", fontsize=10)
        else:
            ax.set_title(ds, fontsize=10)
        ax.set_xlabel("PT loss after fine-tuning  L_PT(θ_FT)")
        ax.set_ylabel("FT loss  L_FT(θ_FT)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    from matplotlib.lines import Line2D

    extra = []
    if arm_of:
        extra += [Line2D([], [], color=hue[a], lw=2, label=a) for a in arms]
        extra.append(Line2D([], [], color="0.5", lw=0.8, label="thin line: one base (seed)"))
        extra += [
            Line2D([], [], color="0.3", ls="", marker=_MARKERS[i % len(_MARKERS)], label=b)
            for i, b in enumerate(budgets)
        ]
    extra.append(Line2D([], [], color="0.4", ls=":", label="base model L_PT(θ_PT)"))
    if matched:
        extra.append(Line2D([], [], color="0.4", ls="", marker="*", ms=10, label="matched at τ"))
    _legend(fig, axes, extra)
    return save_figure(fig, path, dpi=150, bbox_inches="tight")


def plot_matched_pt(
    views: Mapping[str, MatchedPTView],
    path: str | Path,
    *,
    title: str = "Minimum PT loss at matched fine-tuning loss",
) -> Path:
    """[SAM-PT] Fig 5: one panel per dataset, x = the base model's own PT loss L_PT(theta_PT),
    y = the minimum L_PT(theta_FT) achievable with L_FT at or below tau; one line per arm through
    its checkpoints."""
    datasets = list(views)
    if not datasets:
        raise ValueError("nothing to plot: no dataset")
    arms = sorted({a for v in views.values() for a in v.arms})
    color = _colors(arms)
    fig, axes = _figure(len(datasets))
    for ax, ds in zip(axes, datasets):
        v = views[ds]
        for arm, rows in v.arms.items():
            xs = [r.curve.base_l_pt for r in rows]
            ys = [r.retained.l_pt for r in rows]
            ax.plot(xs, ys, "-", marker=_MARKERS[arms.index(arm) % len(_MARKERS)], ms=5, color=color[arm], label=arm)
        op = "<" if v.matched.strict else "≤"
        ax.set_title(f"{ds}  (L_FT {op} {v.matched.tau:.3g})", fontsize=10)
        ax.set_xlabel("base model PT loss  L_PT(θ_PT)")
        ax.set_ylabel("min PT loss after FT")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    _legend(fig, axes)
    return save_figure(fig, path, dpi=150, bbox_inches="tight")


@dataclass
class Panel:
    """One panel of :func:`plot_bands` / :func:`plot_bars`.

    For bands, ``series`` maps a line's name to its :data:`BandPoint` s; for bars, ``groups``
    names the x positions and ``series`` maps a bar's name to one :data:`BandPoint` per group
    (x ignored; ``None`` for a missing bar). ``hatched`` names (series, group index) bars drawn
    hatched, explained by ``hatch_label`` in the legend."""

    title: str
    ylabel: str
    xlabel: str = ""
    series: Dict[str, List[Optional[BandPoint]]] = field(default_factory=dict)
    groups: List[str] = field(default_factory=list)
    xlog: bool = False
    zero_line: bool = False
    hatched: List[Tuple[str, int]] = field(default_factory=list)
    hatch_label: str = ""
    #: bands only: per series, one thin (x, y) line per seed in the series' hue
    seeds: Dict[str, List[List[Tuple[float, float]]]] = field(default_factory=dict)
    #: bands only: (x, y, series) points drawn hollow (e.g. matched at the grid's edge)
    hollow: List[Tuple[float, float, str]] = field(default_factory=list)


def _names(panels: Sequence[Panel]) -> List[str]:
    return list(dict.fromkeys(n for p in panels for n in p.series))


def plot_bands(
    panels: Sequence[Panel],
    path: str | Path,
    *,
    title: str,
    band_label: str = "",
    ncols: Optional[int] = None,
    colors: Optional[Mapping[str, object]] = None,
) -> Path:
    """Lines with shaded interval bands, one panel per :class:`Panel` (constrained layout, so no
    axis label is clipped). A point without a band is drawn with its marker only; a panel's
    ``seeds`` are thin lines in the series' hue, its ``hollow`` points open markers. ``colors``
    fixes a series' hue (e.g. :func:`arm_colors`)."""
    if not panels:
        raise ValueError("nothing to plot: no panel")
    names = _names(panels)
    color = {**_colors(names), **(colors or {})}
    fig, axes = _figure(len(panels), panel_w=4.2, panel_h=3.4, ncols=ncols)
    hollow_used = seeds_used = False
    for ax, p in zip(axes, panels):
        for name, lines in p.seeds.items():
            for line in lines:
                seeds_used = True
                ax.plot([q[0] for q in line], [q[1] for q in line], "-", lw=0.6, alpha=0.5, color=color[name])
        for x, y, name in p.hollow:
            hollow_used = True
            ax.plot([x], [y], "o", ms=6, mfc="none", mec=color.get(name, "0.3"), mew=1.0)
        for name, pts in p.series.items():
            pts = sorted((q for q in pts if q is not None), key=lambda q: q[0])
            if not pts:
                continue
            xs = [q[0] for q in pts]
            ax.plot(
                xs,
                [q[1] for q in pts],
                "-",
                marker=_MARKERS[names.index(name) % len(_MARKERS)],
                ms=4,
                color=color[name],
                label=name,
            )
            banded = [q for q in pts if q[2] is not None and q[3] is not None]
            if len(banded) > 1:
                ax.fill_between(
                    [q[0] for q in banded],
                    [q[2] for q in banded],
                    [q[3] for q in banded],
                    color=color[name],
                    alpha=0.2,
                    linewidth=0,
                )
            elif banded:
                q = banded[0]
                ax.errorbar([q[0]], [q[1]], yerr=[[q[1] - q[2]], [q[3] - q[1]]], color=color[name], capsize=3)
        if p.zero_line:
            ax.axhline(0.0, color="k", lw=0.6)
        if p.xlog:  # ticks at the measured x values (e.g. the budgets), written plainly
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            xs = sorted({q[0] for pts in p.series.values() for q in pts if q is not None})
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(p.title, fontsize=10)
        ax.set_xlabel(p.xlabel)
        ax.set_ylabel(p.ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    extra = [Patch(color="0.6", alpha=0.4, label=band_label)] if band_label else []
    if seeds_used:
        extra.append(Line2D([], [], color="0.5", lw=0.6, label="one seed"))
    if hollow_used:
        extra.append(
            Line2D(
                [], [], color="0.3", ls="", marker="o", mfc="none", label="matched at the grid's lowest LR (left out)"
            )
        )
    _legend(fig, axes, extra)
    return save_figure(fig, path, dpi=130, bbox_inches="tight")


def plot_bars(panels: Sequence[Panel], path: str | Path, *, title: str, band_label: str = "") -> Path:
    """Grouped bars with interval error bars, one panel per :class:`Panel`."""
    if not panels:
        raise ValueError("nothing to plot: no panel")
    names = _names(panels)
    color = _colors(names)
    fig, axes = _figure(
        len(panels), panel_w=max(3.6, 1.2 + 0.9 * max(len(p.groups) for p in panels) * len(names) ** 0.5), panel_h=3.4
    )
    hatch_used = False
    for ax, p in zip(axes, panels):
        k = max(len(p.series), 1)
        width = 0.8 / k
        for i, (name, pts) in enumerate(p.series.items()):
            for j, q in enumerate(pts):
                if q is None:
                    continue
                x = j - 0.4 + width * (i + 0.5)
                hatched = (name, j) in p.hatched
                hatch_used |= hatched
                ax.bar(
                    [x],
                    [q[1]],
                    width,
                    color=color[name],
                    label=name,
                    hatch="//" if hatched else None,
                    edgecolor="0.2" if hatched else None,
                    alpha=0.85,
                )
                if q[2] is not None and q[3] is not None:
                    ax.errorbar([x], [q[1]], yerr=[[q[1] - q[2]], [q[3] - q[1]]], color="k", capsize=3, lw=1)
        ax.set_xticks(range(len(p.groups)), p.groups, fontsize=8)
        if p.zero_line:
            ax.axhline(0.0, color="k", lw=0.6)
        ax.set_title(p.title, fontsize=10)
        ax.set_xlabel(p.xlabel)
        ax.set_ylabel(p.ylabel)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    extra = [Line2D([], [], color="k", marker="|", ls="", ms=10, label=band_label)] if band_label else []
    if hatch_used:
        extra.append(
            Patch(
                facecolor="white", edgecolor="0.2", hatch="//", label=next(p.hatch_label for p in panels if p.hatched)
            )
        )
    _legend(fig, axes, extra, max_cols=3)
    return save_figure(fig, path, dpi=130, bbox_inches="tight")
