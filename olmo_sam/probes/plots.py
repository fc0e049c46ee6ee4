"""Figures of the probe results (matplotlib, Agg), in the layout of the paper's figures.

Checkpoint labels of the form ``ARM@ANYTHING`` (e.g. ``adamw@12B``, ``sam@24B``) are grouped
into one line per ``ARM`` against the checkpoints' training tokens, as in [SAM-PT] Figs 8 and 12;
other labels are plotted one point per checkpoint along a categorical axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from .common import save_figure

__all__ = ["plot_quantize", "plot_noise", "plot_hessian"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _arm(label: str) -> str:
    return label.split("@", 1)[0] if "@" in label else label


def _series(records: Sequence[Dict[str, Any]]) -> Tuple[bool, Dict[str, List[Dict[str, Any]]]]:
    """Group records by arm; x is tokens when every record has them and labels use ARM@..."""
    by_arm: Dict[str, List[Dict[str, Any]]] = {}
    for r in records:
        by_arm.setdefault(_arm(r["label"]), []).append(r)
    use_tokens = all("@" in r["label"] and r.get("tokens") for r in records) and any(
        len(v) > 1 for v in by_arm.values()
    )
    if use_tokens:
        for v in by_arm.values():
            v.sort(key=lambda r: r["tokens"])
    return use_tokens, by_arm


def _xy(records, use_tokens, order):
    if use_tokens:
        return [r["tokens"] for r in records]
    return [order.index(r["label"]) for r in records]


def _finish_x(ax, use_tokens, order):
    if use_tokens:
        ax.set_xscale("log")
        ax.set_xlabel("pretraining tokens")
    else:
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(order, rotation=30, ha="right")


def plot_quantize(result: Dict[str, Any], path: str | Path) -> Path:
    """Quantized and full-precision L_PT per checkpoint, one panel per setting ([SAM-PT] Fig 8a)."""
    plt = _plt()
    recs = result["records"]
    settings = [q["name"] for q in result["settings"]["quant"]]
    base = [r for r in recs if r["quant"] == "none"]
    order = list(dict.fromkeys(r["label"] for r in recs))
    fig, axes = plt.subplots(2, len(settings), figsize=(4.2 * len(settings), 6.6), squeeze=False, layout="constrained")
    for col, name in enumerate(settings):
        ax = axes[0][col]
        q = [r for r in recs if r["quant"] == name]
        use_tokens, arms = _series(q)
        _, base_arms = _series(base)
        for i, (arm, rs) in enumerate(arms.items()):
            color = f"C{i}"
            ax.plot(_xy(rs, use_tokens, order), [r["loss"] for r in rs], "o-", color=color, label=f"{arm} + {name}")
            b = base_arms.get(arm, [])
            if b:
                ax.plot(
                    _xy(b, use_tokens, order),
                    [r["loss"] for r in b],
                    "x--",
                    color=color,
                    alpha=0.6,
                    label=f"{arm} (fp32)",
                )
        _finish_x(ax, use_tokens, order)
        ax.set_ylabel("pretraining validation loss")
        ax.set_title(f"{name} quantization")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        ax = axes[1][col]
        for i, (arm, rs) in enumerate(arms.items()):
            ax.plot(_xy(rs, use_tokens, order), [r["degradation"] for r in rs], "o-", color=f"C{i}", label=arm)
        ax.axhline(0.0, color="k", lw=0.6)
        _finish_x(ax, use_tokens, order)
        ax.set_ylabel(f"loss increase from {name}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_noise(result: Dict[str, Any], path: str | Path) -> Path:
    """The PT-loss increase over the clean model vs gamma, mean +- std over noise draws per
    checkpoint ([SAM-PT] Fig 6d; the increase, since 1e-4 changes are flat lines on the absolute
    loss); with ARM@ labels also the increase at the largest gamma vs tokens (Fig 8b)."""
    plt = _plt()
    summary = result["summary"]
    labels = list(dict.fromkeys(s["label"] for s in summary))
    gmax = max(s["gamma"] for s in summary)
    top = [s for s in summary if s["gamma"] == gmax]
    use_tokens, arms = _series(top)
    ncols = 2 if use_tokens else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.8), squeeze=False, layout="constrained")
    ax = axes[0][0]
    for i, label in enumerate(labels):
        rows = sorted((s for s in summary if s["label"] == label), key=lambda s: s["gamma"])
        inc = [s["increase"] for s in rows]
        sd = [s["std"] or 0.0 for s in rows]
        ax.plot([s["gamma"] for s in rows], inc, marker="o", label=label, color=f"C{i % 10}")
        ax.fill_between(
            [s["gamma"] for s in rows],
            [m - e for m, e in zip(inc, sd)],
            [m + e for m, e in zip(inc, sd)],
            color=f"C{i % 10}",
            alpha=0.2,
            linewidth=0,
        )
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xlabel(r"perturbation magnitude $\gamma$")
    ax.set_ylabel("PT-loss increase over clean")
    ax.set_title("band: +- std over noise draws", fontsize=9)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if use_tokens:
        ax = axes[0][1]
        for i, (arm, rs) in enumerate(arms.items()):
            ax.errorbar(
                [r["tokens"] for r in rs],
                [r["increase"] for r in rs],
                yerr=[r["std"] for r in rs],
                marker="o",
                capsize=3,
                label=arm,
                color=f"C{i}",
            )
        _finish_x(ax, True, [])
        ax.set_title(rf"$\gamma$ = {gmax}")
        ax.set_ylabel("PT-loss increase over clean")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_hessian(result: Dict[str, Any], path: str | Path) -> Path:
    """tr(H) +- stderr and lambda_max per checkpoint; directional sharpness per (base, FT) pair
    ([SAM-PT] Fig 12); predicted vs observed L_PT(theta_FT) ([SAM-PT] Figs 10-11)."""
    plt = _plt()
    sharp = [r for r in result["records"] if "trace" in r]
    pairs = [r for r in result["records"] if "directional_sharpness" in r]
    panels = (2 if sharp else 0) + (2 if pairs else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4.8 * panels, 3.8), squeeze=False, layout="constrained")
    k = 0
    if sharp:
        order = list(dict.fromkeys(r["label"] for r in sharp))
        use_tokens, arms = _series(sharp)
        ax = axes[0][k]
        for i, (arm, rs) in enumerate(arms.items()):
            ax.errorbar(
                _xy(rs, use_tokens, order),
                [r["trace"]["trace"] for r in rs],
                yerr=[r["trace"]["stderr"] or 0 for r in rs],
                marker="o",
                capsize=3,
                label=arm,
                color=f"C{i}",
            )
        _finish_x(ax, use_tokens, order)
        ax.set_ylabel("tr(H) (Hutchinson)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        ax = axes[0][k + 1]
        for i, (arm, rs) in enumerate(arms.items()):
            rs = [r for r in rs if "top_eigenvalue" in r]
            ax.plot(
                _xy(rs, use_tokens, order),
                [r["top_eigenvalue"]["value"] for r in rs],
                "o-",
                label=rf"{arm} $\lambda_{{max}}$",
                color=f"C{i}",
            )
            eos = [r.get("edge_of_stability") for r in rs]
            if rs and all(eos):
                ax.plot(_xy(rs, use_tokens, order), eos, ":", color=f"C{i}", label=f"{arm} 2/lr")
        _finish_x(ax, use_tokens, order)
        lams = [r["top_eigenvalue"]["value"] for r in sharp if "top_eigenvalue" in r]
        ax.set_yscale("log" if lams and min(lams) > 0 else "symlog")
        ax.set_ylabel(r"top Hessian eigenvalue")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        k += 2
    if pairs:
        order = [p["label"] for p in pairs]
        ax = axes[0][k]
        ax.bar(range(len(pairs)), [p["directional_sharpness"] for p in pairs], color="C2")
        ax.set_xticks(range(len(pairs)))
        ax.set_xticklabels(order, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(r"$\Delta^\top H \Delta / \|\Delta\|^2$")
        ax.set_title("directional sharpness along the FT update")
        ax.grid(alpha=0.3, axis="y")
        ax = axes[0][k + 1]
        obs = [p["val_loss_finetuned"] for p in pairs]
        pred = [p["val_predicted"] for p in pairs]
        ax.scatter(obs, pred, color="C3")
        for o, q, name in zip(obs, pred, order):
            ax.annotate(name, (o, q), fontsize=6)
        lo, hi = min(obs + pred), max(obs + pred)
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="prediction = observed")
        ax.set_xlabel(r"observed $L_{PT}(\theta_{FT})$")
        ax.set_ylabel(r"$L_{PT}(\theta_{PT}) + \frac{1}{2}\Delta^\top H \Delta$")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)
