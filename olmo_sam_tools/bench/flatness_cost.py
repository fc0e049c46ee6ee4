"""``olmo-sam bench flatness-cost``: how much of SAM's flatness each cheaper variant keeps, per cost.

One command pretrains the same micro model (:func:`olmo_sam.models.model_config` ``"micro"``) on
the same data, in the overtrained regime (``--tokens-per-param``, default 100), with

=================  ===========================================================================
``adamw``          the base optimizer alone
``sam``            full SAM every step (two forward/backward passes)
``sam-anneal``     AdamW, then SAM from the LR decay phase on (the annealing switch)
``sam-interval``   one SAM step every ``k`` steps (``interval: k``)
``msam``           Momentum-SAM (one pass; ascent along AdamW's first moment)
``looksam``        LookSAM (full SAM every ``k`` steps, its ``g_v`` reused in between)
=================  ===========================================================================

for ``--n-seeds`` initialisations each (the data and its order are the same for every run; seed
``s`` gives every variant the same initial weights, so comparisons are paired by seed). All runs
share one WSD-alpha schedule (warmup, stable, linear decay over the last ``--decay-fraction``), so
the annealing switch has a decay phase to switch at. The variants' math is
:mod:`olmo_sam.optim.sam`; every run is the real OLMo-core trainer with the SAM train module.

Per variant it reports

* the **cost ratio** to AdamW: training time of the run / that of the AdamW run of the same
  seed, measured in this invocation. The headline uses the process CPU time (single-threaded
  runs: the compute time, even when other jobs share the cores); the wall-clock ratio is
  reported beside it.
* **tr(H)** (Hutchinson, :func:`olmo_sam.probes.hessian.hutchinson_trace`) and **lambda_max**
  (power iteration) of the training loss on one fixed held-out batch, at the final weights,
* the **fraction of SAM's flatness gain kept** ``(trH_adamw - trH_v) / (trH_adamw - trH_sam)``,

each as a mean over seeds with a 95% interval: Student-t over seeds for means and per-seed cost
ratios (:func:`bench_seed_interval`, from :mod:`olmo_sam.analysis.stats`), for the gain kept
(:func:`bench_gain_kept_interval`) Fieller's t-based interval below 10 seeds and a paired bootstrap
over seeds from 10 on (the percentile bootstrap is refused below 10 seeds). It prints a table and writes ``flatness_cost.json`` (atomic),
``flatness_cost.md`` and ``flatness_cost.png`` (cost ratio vs gain kept with error bars) to
``--out``. Finished runs are kept under ``--out/runs`` and reused by a re-run with the same
settings, so an interrupted benchmark resumes.

The data are synthetic: the project's fixed random sparse Markov chain
(:func:`olmo_sam.data.synthetic.markov_tokens`) over ``--vocab`` tokens (four likely successors per
token, so the loss can fall well below ``ln V``). A small vocabulary keeps the
micro model at tens of thousands of parameters, which is what makes >= 100 tokens per parameter
for 6 variants x 3 seeds fit in minutes on 2 CPU cores (5 measured; the issue's bound is 45);
the demo's BPE corpus (2048 tokens) would put 130k parameters in the embeddings alone.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import click
import numpy as np

from olmo_sam.data.synthetic import markov_tokens
from olmo_sam.output import atomic_write, atomic_write_text, markdown_table, read_json_or_none, write_json
from olmo_sam.preflight import POSITIVE_FLOAT, POSITIVE_INT, out_dir_callback

__all__ = [
    "VARIANTS",
    "FlatnessCostSettings",
    "flatness_cost",
    "flatness_cost_command",
    "bench_seed_interval",
    "bench_gain_kept_interval",
]

VARIANTS = ("adamw", "sam", "sam-anneal", "sam-interval", "msam", "looksam")
#: the issue's target: a variant keeping >= 80% of SAM's tr(H) reduction at <= 1.2x AdamW's cost
TARGET_GAIN_KEPT = 0.8
TARGET_COST_RATIO = 1.2
REPORT = "flatness_cost.json"


@dataclass
class FlatnessCostSettings:
    vocab: int = 64
    seq_len: int = 64
    batch: int = 32
    tokens_per_param: float = 100.0
    seeds: int = 3
    lr: float = 3e-3
    warmup_fraction: float = 0.02
    decay_fraction: float = 0.1
    rho: float = 0.05
    msam_rho: Optional[float] = None
    interval: int = 5
    looksam_alpha: float = 0.7
    probes: int = 30
    power_iters: int = 30
    hessian_sequences: int = 32
    variants: Tuple[str, ...] = VARIANTS
    bootstrap: int = 4000

    def validate(self) -> None:
        from olmo_core.exceptions import OLMoConfigurationError

        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise OLMoConfigurationError(f"--variants: unknown {bad}; choose from {list(VARIANTS)}")
        for need in ("adamw", "sam"):
            if need not in self.variants:
                raise OLMoConfigurationError(
                    f"--variants must include '{need}': the cost ratio and the gain kept are "
                    "relative to AdamW and full SAM"
                )
        if self.seeds < 2:
            raise OLMoConfigurationError(f"--n-seeds must be >= 2 for intervals, got {self.seeds}")
        if self.tokens_per_param <= 0:
            raise OLMoConfigurationError(f"--tokens-per-param must be > 0, got {self.tokens_per_param}")
        if self.interval < 2:
            raise OLMoConfigurationError(f"--interval must be >= 2, got {self.interval}")
        for name in ("probes", "power_iters", "hessian_sequences", "batch", "seq_len"):
            if getattr(self, name) < 1:
                flag = "--batch-size" if name == "batch" else f"--{name.replace('_', '-')}"  # the spelling typed
                raise OLMoConfigurationError(f"{flag} must be >= 1, got {getattr(self, name)}")
        if self.vocab < 8:
            raise OLMoConfigurationError(f"--vocab must be >= 8, got {self.vocab}")

    def run_key(self) -> str:
        """What a run's result depends on (not the variant list, bootstrap size or jobs)."""
        d = asdict(self)
        for k in ("variants", "bootstrap", "seeds"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------------------------
# Data and model
# -------------------------------------------------------------------------------------------------


def _model(settings: FlatnessCostSettings):
    from olmo_sam.models import model_config

    return model_config("micro", vocab_size=settings.vocab)


def plan(settings: FlatnessCostSettings) -> Dict[str, int]:
    params = _model(settings).num_params
    tokens_per_step = settings.batch * settings.seq_len
    steps = max(math.ceil(settings.tokens_per_param * params / tokens_per_step), 10)
    return {"params": params, "steps": steps, "tokens": steps * tokens_per_step, "tokens_per_step": tokens_per_step}


def _optim(variant: str, s: FlatnessCostSettings):
    from olmo_core.optim import AdamWConfig

    from olmo_sam.optim import SAMConfig
    from olmo_sam.train import SAMSwitchCallback

    base = AdamWConfig(lr=s.lr, betas=(0.9, 0.95), weight_decay=0.1)
    if variant == "adamw":
        return base, None
    if variant == "sam":
        return SAMConfig(base=base, rho=s.rho), None
    if variant == "sam-anneal":
        return SAMConfig(base=base, rho=s.rho), {"sam_switch": SAMSwitchCallback()}
    if variant == "sam-interval":
        return SAMConfig(base=base, rho=s.rho, interval=s.interval), None
    if variant == "msam":
        rho = s.rho if s.msam_rho is None else s.msam_rho
        return SAMConfig(base=base, rho=rho, variant="msam"), None
    if variant == "looksam":
        return SAMConfig(
            base=base, rho=s.rho, variant="looksam", interval=s.interval, looksam_alpha=s.looksam_alpha
        ), None
    raise ValueError(variant)


# -------------------------------------------------------------------------------------------------
# One run: train, time, measure flatness
# -------------------------------------------------------------------------------------------------


def _run_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


def run_one(
    settings: FlatnessCostSettings, variant: str, seed: int, out: Path, data: Path, hessian_batch: Path
) -> Dict[str, Any]:
    """Train ``variant`` from initialisation ``seed``; record its cost and flatness."""
    import olmo_core.distributed.parallel as parallel
    import torch
    from olmo_core.data import TokenizerConfig

    from olmo_sam.optim import WSDAlpha
    from olmo_sam.probes.hessian import (
        HessianVectorProduct,
        hutchinson_trace,
        lm_batch_loss,
        to_hvp_model,
        top_eigenvalue,
    )
    from olmo_sam.train import build_experiment, build_trainer, read_metrics, setup_environment

    setup_environment()
    parallel._WORLD_MESH = None  # OLMo-core keeps one world mesh per process
    p = plan(settings)
    optim, callbacks = _optim(variant, settings)
    folder = out / "runs" / _run_name(variant, seed)
    if folder.exists():
        shutil.rmtree(folder)  # a run is only reused once its record exists: start clean
    model_cfg = _model(settings)
    # OLMo-core 3 initialises the weights from the model config's own seed (not the experiment's
    # init_seed): set it, so that each seed is a different initialisation, shared by all variants
    model_cfg.init_seed = 1000 + seed
    cfg = build_experiment(
        model=model_cfg,
        tokenizer=TokenizerConfig(vocab_size=settings.vocab, eos_token_id=0, pad_token_id=1),
        train_paths=[str(data)],
        save_folder=str(folder),
        optim=optim,
        sequence_length=settings.seq_len,
        global_batch_size=settings.batch,
        max_steps=p["steps"],
        callbacks=callbacks,
        seed=1000 + seed,
    )
    cfg.train_module.scheduler = WSDAlpha(
        warmup=max(int(settings.warmup_fraction * p["steps"]), 1),
        decay_fraction=settings.decay_fraction,
    )
    cfg.train_module.max_grad_norm = 1.0
    cfg.trainer.metrics_collect_interval = max(p["steps"] // 20, 1)
    trainer = build_trainer(cfg, setup=False)
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    trainer.fit()
    wall, cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
    tm = trainer.train_module
    metrics = read_metrics(folder)
    last = max((s for s in metrics if "train/CE loss" in metrics[s]), default=None)

    model = to_hvp_model(tm.model, model_cfg).eval()
    batch = torch.from_numpy(np.load(hessian_batch).astype(np.int64))
    params = [q for q in model.parameters() if q.requires_grad]
    op = HessianVectorProduct(functools.partial(lm_batch_loss, model, batch), params, model=model)
    with torch.no_grad():
        held_out_loss = float(lm_batch_loss(model, batch))
    tr = hutchinson_trace(op, n_probes=settings.probes, seed=seed)
    eig = top_eigenvalue(op, iters=settings.power_iters, seed=seed)
    rec = {
        "variant": variant,
        "seed": seed,
        "run_key": settings.run_key(),
        "steps": p["steps"],
        "tokens": p["tokens"],
        "params": p["params"],
        "train_wall_s": wall,
        "train_cpu_s": cpu,
        "final_train_loss": metrics[last]["train/CE loss"] if last is not None else None,
        "held_out_loss": held_out_loss,
        "trace": tr.trace,
        "trace_stderr": tr.stderr,
        "lambda_max": eig.value,
        "lambda_max_converged": eig.converged,
        "ascents": getattr(tm, "sam_ascents", 0),
    }
    write_json(out / "runs" / f"{_run_name(variant, seed)}.json", rec)
    del trainer, tm, model, op
    return rec


def _job(args) -> Dict[str, Any]:
    settings, variant, seed, out, data, hbatch = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with _log_below_errors_off():  # one line per run from the parent, not OLMo-core's log
        return run_one(settings, variant, seed, Path(out), Path(data), Path(hbatch))


@contextlib.contextmanager
def _log_below_errors_off() -> Iterator[None]:
    """OLMo-core's per-step console log off inside the block (the progress bar reports instead),
    and logging as it was after it: the command also runs in-process (``CliRunner``, a caller's
    script), where a process-wide ``logging.disable`` left behind hid every later warning."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


# -------------------------------------------------------------------------------------------------
# Intervals over seeds (means: the project's interval module; the gain kept: Fieller or a bootstrap)
# -------------------------------------------------------------------------------------------------


def bench_seed_interval(values: Sequence[float]) -> Dict[str, float]:
    """Mean over seeds with its 95% Student-t interval: :func:`olmo_sam.analysis.stats.mean_interval`
    (the project's one interval module), as a dict; non-finite values are left out."""
    from olmo_sam.analysis.stats import mean_interval

    x = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not x:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    mean, lo, hi = mean_interval(x)
    nan = float("nan")
    return {"mean": mean, "lo": nan if lo is None else lo, "hi": nan if hi is None else hi, "n": len(x)}


def bench_gain_kept_interval(
    adamw: Sequence[float],
    variant: Sequence[float],
    sam: Sequence[float],
    *,
    n_boot: int = 4000,
    level: float = 0.95,
    seed: int = 0,
) -> Dict[str, float]:
    """``(mean A - mean V) / (mean A - mean S)`` with an interval over seeds, paired by seed.

    Below :data:`~olmo_sam.analysis.stats.MIN_BOOTSTRAP_SEEDS` seeds the percentile bootstrap is
    refused (at 3 seeds it is the range of the resampled ratios, far too narrow): Fieller's t-based
    interval of the ratio of the paired means (:func:`olmo_sam.analysis.stats.ratio_interval`);
    ``lo``/``hi`` are NaN when SAM's gain is not resolved from zero (the ratio is unbounded). From
    10 seeds on, a percentile bootstrap: each resample draws seed indices with replacement and uses
    the same seeds for all three; resamples where SAM's gain ``mean A - mean S`` is 0 are undefined
    and counted, not used. ``method`` says which was used, ``note`` why.
    """
    from olmo_sam.analysis.stats import MIN_BOOTSTRAP_SEEDS, ratio_interval

    a, v, s = (np.asarray(x, dtype=float) for x in (adamw, variant, sam))
    n = len(a)
    point = float((a.mean() - v.mean()) / (a.mean() - s.mean())) if a.mean() != s.mean() else float("nan")
    if n < MIN_BOOTSTRAP_SEEDS:
        _, lo, hi = ratio_interval(a - v, a - s, level)
        nan = float("nan")
        return {
            "mean": point,
            "lo": nan if lo is None else lo,
            "hi": nan if hi is None else hi,
            "undefined": 0,
            "method": "fieller",
            "note": f"percentile bootstrap refused at {n} seeds (it needs {MIN_BOOTSTRAP_SEEDS}): Fieller's "
            f"t-based interval" + ("" if lo is not None else "; unbounded: SAM's gain is not resolved from 0"),
        }
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    num = a[idx].mean(axis=1) - v[idx].mean(axis=1)
    den = a[idx].mean(axis=1) - s[idx].mean(axis=1)
    ok = den != 0
    ratios = num[ok] / den[ok]
    if len(ratios) == 0:
        return {
            "mean": point,
            "lo": float("nan"),
            "hi": float("nan"),
            "undefined": int((~ok).sum()),
            "method": "bootstrap",
            "note": None,
        }
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return {
        "mean": point,
        "lo": float(lo),
        "hi": float(hi),
        "undefined": int((~ok).sum()),
        "method": "bootstrap",
        "note": None,
    }


# -------------------------------------------------------------------------------------------------
# The report
# -------------------------------------------------------------------------------------------------


def _passes_per_step(variant: str, runs: List[Dict[str, Any]]) -> float:
    """Forward/backward passes per step, counted: each SAM ascent costs one more pass, except
    MSAM's, which moves the weights along the optimizer's momentum without a gradient."""
    extra = 0 if variant == "msam" else sum(r["ascents"] for r in runs)
    return (sum(r["steps"] for r in runs) + extra) / sum(r["steps"] for r in runs)


def summarize(settings: FlatnessCostSettings, records: List[Dict[str, Any]]) -> Dict[str, Any]:
    by = {(r["variant"], r["seed"]): r for r in records}
    seeds = list(range(settings.seeds))
    base = {s: by[("adamw", s)] for s in seeds}
    tr_a = [base[s]["trace"] for s in seeds]
    tr_s = [by[("sam", s)]["trace"] for s in seeds]
    rows = []
    for v in settings.variants:
        runs = [by[(v, s)] for s in seeds]
        cpu_ratio = [r["train_cpu_s"] / base[s]["train_cpu_s"] for s, r in zip(seeds, runs)]
        wall_ratio = [r["train_wall_s"] / base[s]["train_wall_s"] for s, r in zip(seeds, runs)]
        tr_v = [r["trace"] for r in runs]
        row = {
            "variant": v,
            # forward/backward passes per step, counted (the hardware-independent cost; the
            # measured ratios add the variants' vector work and this machine's timing noise)
            "passes_per_step": _passes_per_step(v, runs),
            "cost_ratio": bench_seed_interval(cpu_ratio),
            "wall_ratio": bench_seed_interval(wall_ratio),
            "trace": bench_seed_interval(tr_v),
            "lambda_max": bench_seed_interval([r["lambda_max"] for r in runs]),
            "held_out_loss": bench_seed_interval([r["held_out_loss"] for r in runs]),
            "trace_vs_adamw": bench_seed_interval([b - t for b, t in zip(tr_a, tr_v)]),
            "gain_kept": bench_gain_kept_interval(tr_a, tr_v, tr_s, n_boot=settings.bootstrap),
            "per_seed": runs,
        }
        g, c = row["gain_kept"], row["cost_ratio"]
        row["meets_target"] = bool(
            v not in ("adamw", "sam") and g["lo"] >= TARGET_GAIN_KEPT and c["hi"] <= TARGET_COST_RATIO
        )
        row["meets_target_by_means"] = bool(
            v not in ("adamw", "sam") and g["mean"] >= TARGET_GAIN_KEPT and c["mean"] <= TARGET_COST_RATIO
        )
        rows.append(row)
    sam_gain = bench_seed_interval([a - s for a, s in zip(tr_a, tr_s)])
    return {"rows": rows, "sam_trace_reduction": sam_gain}


def _fmt(iv: Dict[str, float], digits: int = 3) -> str:
    if not math.isfinite(iv.get("mean", float("nan"))):
        return "n/a"
    if not math.isfinite(iv.get("lo", float("nan"))):
        return f"{iv['mean']:.{digits}g}"
    return f"{iv['mean']:.{digits}g} [{iv['lo']:.{digits}g}, {iv['hi']:.{digits}g}]"


def table(report: Dict[str, Any]) -> str:
    cols = [
        "variant",
        "passes/step",
        "cost ratio (CPU)",
        "cost ratio (wall)",
        "tr(H)",
        "lambda_max",
        "held-out loss",
        "gain kept",
    ]
    rows = []
    for r in report["summary"]["rows"]:
        rows.append(
            {
                "variant": r["variant"],
                "passes/step": f"{r['passes_per_step']:.3g}",
                "cost ratio (CPU)": _fmt(r["cost_ratio"]),
                "cost ratio (wall)": _fmt(r["wall_ratio"]),
                "tr(H)": _fmt(r["trace"]),
                "lambda_max": _fmt(r["lambda_max"]),
                "held-out loss": _fmt(r["held_out_loss"], 4),
                "gain kept": _fmt(r["gain_kept"]),
            }
        )
    return markdown_table(cols, rows)


def verdict(report: Dict[str, Any]) -> str:
    rows = report["summary"]["rows"]
    red = report["summary"]["sam_trace_reduction"]
    lines = [
        f"SAM's tr(H) reduction vs AdamW: {_fmt(red)} (mean over seeds, 95% t-interval)"
        + ("" if red["lo"] > 0 else " -- the interval includes 0, so 'gain kept' is ill-defined"),
    ]
    notes = sorted({r["gain_kept"].get("note") for r in rows if r["gain_kept"].get("note")})
    lines += [f"Gain kept: {n}" for n in notes]
    hits = [r["variant"] for r in rows if r["meets_target"]]
    by_means = [r["variant"] for r in rows if r["meets_target_by_means"]]
    target = f">= {TARGET_GAIN_KEPT:.0%} of SAM's tr(H) reduction at <= {TARGET_COST_RATIO}x AdamW's cost"
    if not red["lo"] > 0:
        lines.append(
            f"Target ({target}) cannot be judged: SAM's own tr(H) reduction is not "
            "established at this size/number of seeds (more seeds or tokens)"
        )
    elif hits:
        lines.append(f"Target ({target}) met with 95% confidence by: {', '.join(hits)}")
    elif by_means:
        lines.append(
            f"Target ({target}) met by the means of {', '.join(by_means)}, but not with "
            "95% confidence (interval lower bound of the gain kept < target or upper bound "
            "of the cost > target)"
        )
    else:
        lines.append(f"Target ({target}) not met by any variant")
    return "\n".join(lines)


def plot(report: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in report["summary"]["rows"]:
        c, g = r["cost_ratio"], r["gain_kept"]
        if not (math.isfinite(c["mean"]) and math.isfinite(g["mean"])):
            continue

        def err(iv):
            if not math.isfinite(iv.get("lo", float("nan"))):
                return [[0], [0]]
            return [[max(iv["mean"] - iv["lo"], 0)], [max(iv["hi"] - iv["mean"], 0)]]

        ax.errorbar([c["mean"]], [g["mean"]], xerr=err(c), yerr=err(g), fmt="o", capsize=3)
        ax.annotate(r["variant"], (c["mean"], g["mean"]), textcoords="offset points", xytext=(5, 5))
    ax.axvline(TARGET_COST_RATIO, ls=":", c="grey")
    ax.axhline(TARGET_GAIN_KEPT, ls=":", c="grey")
    ax.set_xlabel("cost ratio to AdamW (CPU time per run)")
    ax.set_ylabel("fraction of SAM's tr(H) reduction kept")
    s = report["settings"]
    ax.set_title(f"micro model, {s['tokens_per_param']:g} tokens/param, {s['seeds']} seeds (95% intervals)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


# -------------------------------------------------------------------------------------------------
# Driver
# -------------------------------------------------------------------------------------------------


def flatness_cost(
    settings: FlatnessCostSettings, out: Path, *, jobs: int = 1, progress: bool = True, echo=print
) -> Dict[str, Any]:
    from olmo_core.exceptions import OLMoConfigurationError
    from tqdm.auto import tqdm

    settings.validate()
    if jobs < 1:
        raise OLMoConfigurationError(f"--jobs must be >= 1, got {jobs}")
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    p = plan(settings)
    data = out / "data" / f"markov-v{settings.vocab}-{p['tokens'] + settings.seq_len + 1}.npy"
    if not data.exists():
        tokens = markov_tokens(p["tokens"] + settings.seq_len + 1, 1, vocab=settings.vocab, doc_len=256)
        atomic_write(data, tokens.tofile)
    hbatch = out / "data" / f"hessian-v{settings.vocab}-{settings.hessian_sequences}x{settings.seq_len}.npy"
    if not hbatch.exists():
        n = settings.hessian_sequences * (settings.seq_len + 1)
        held = markov_tokens(n, 2, vocab=settings.vocab, doc_len=256).reshape(settings.hessian_sequences, -1)

        def save(tmp):
            with open(tmp, "wb") as f:
                np.save(f, held)

        atomic_write(hbatch, save)

    key = settings.run_key()
    todo, records = [], []
    for seed in range(settings.seeds):  # seed-major: concurrent jobs are different variants
        for v in settings.variants:
            rec = read_json_or_none(out / "runs" / f"{_run_name(v, seed)}.json")
            if rec is not None and rec.get("run_key") == key:
                records.append(rec)
            else:
                todo.append((v, seed))
    echo(
        f"flatness-cost: micro model {p['params']:,} params, {p['steps']:,} steps x "
        f"{p['tokens_per_step']:,} tokens = {p['tokens'] / p['params']:.0f} tokens/param; "
        f"{len(todo)} of {len(todo) + len(records)} runs to do, {jobs} at a time"
    )
    bar = tqdm(
        total=len(todo) + len(records),
        initial=len(records),
        desc="flatness-cost runs",
        disable=not progress,
        dynamic_ncols=True,
    )

    def done(rec):
        records.append(rec)
        bar.update(1)
        bar.write(
            f"  {rec['variant']:<13} seed {rec['seed']}: {rec['train_cpu_s']:.0f}s CPU, "
            f"tr(H) {rec['trace']:.4g}, lambda_max {rec['lambda_max']:.4g}"
        )

    args = [(settings, v, s, str(out), str(data), str(hbatch)) for v, s in todo]
    if jobs == 1:
        for a in args:
            done(run_one(a[0], a[1], a[2], out, data, hbatch))
    elif args:
        import multiprocessing as mp

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), max_tasks_per_child=1) as ex:
            futures = [ex.submit(_job, a) for a in args]
            for f in as_completed(futures):
                done(f.result())
    bar.close()
    runtime = time.perf_counter() - t0
    report = {
        "benchmark": "flatness-cost",
        "settings": {**asdict(settings), "variants": list(settings.variants)},
        "plan": p,
        "jobs": jobs,
        "cpu_count": os.cpu_count(),
        "runtime_s": runtime,
        "summary": summarize(settings, records),
        "targets": {"gain_kept": TARGET_GAIN_KEPT, "cost_ratio": TARGET_COST_RATIO},
    }
    write_json(out / REPORT, report)
    atomic_write_text(out / "flatness_cost.md", table(report) + "\n" + verdict(report) + "\n")
    plot(report, out / "flatness_cost.png")
    return report


@click.command("flatness-cost")
@click.option(
    "--out",
    callback=out_dir_callback,
    type=click.Path(file_okay=False),
    default="runs/flatness-cost",
    show_default=True,
    help="Output folder (report, plot, per-run records; a re-run reuses finished runs).",
)
@click.option(
    "--n-seeds",
    "seeds",
    type=POSITIVE_INT,
    default=3,
    show_default=True,
    help="Number of initialisations per variant (>= 2).",
)
@click.option(
    "--tokens-per-param",
    type=POSITIVE_FLOAT,
    default=100.0,
    show_default=True,
    help="Training tokens per model parameter (the overtrained regime: >= 100).",
)
@click.option("--vocab", type=POSITIVE_INT, default=64, show_default=True, help="Vocabulary of the synthetic data.")
@click.option("--seq-len", type=POSITIVE_INT, default=64, show_default=True, help="Sequence length (tokens).")
@click.option(
    "--batch-size", "batch", type=POSITIVE_INT, default=32, show_default=True, help="Global batch (sequences)."
)
@click.option("--lr", type=POSITIVE_FLOAT, default=3e-3, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--decay-fraction", default=0.1, show_default=True, help="LR decay phase (the switch point).")
@click.option("--rho", default=0.05, show_default=True, help="SAM radius (all SAM variants).")
@click.option("--msam-rho", type=float, default=None, help="MSAM radius (default: --rho).")
@click.option("--interval", type=POSITIVE_INT, default=5, show_default=True, help="k of sam-interval and LookSAM.")
@click.option("--looksam-alpha", default=0.7, show_default=True, help="LookSAM's scale of the reused component.")
@click.option("--probes", type=POSITIVE_INT, default=30, show_default=True, help="Hutchinson probes per run.")
@click.option(
    "--power-iters", type=POSITIVE_INT, default=30, show_default=True, help="Power iterations for lambda_max."
)
@click.option(
    "--variants",
    default=",".join(VARIANTS),
    show_default=True,
    help="Comma-separated subset (must include adamw and sam).",
)
@click.option("--jobs", type=POSITIVE_INT, default=2, show_default=True, help="Runs in parallel (one process each).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def flatness_cost_command(
    out,
    seeds,
    tokens_per_param,
    vocab,
    seq_len,
    batch,
    lr,
    decay_fraction,
    rho,
    msam_rho,
    interval,
    looksam_alpha,
    probes,
    power_iters,
    variants,
    jobs,
    as_json,
):
    """How much of SAM's flatness (tr(H)) each cheaper variant keeps, per unit of cost.

    \b
    Example (the full benchmark: 5 min measured on 2 idle CPU cores):
        olmo-sam bench flatness-cost --out runs/flatness-cost
    """
    from olmo_core.exceptions import OLMoConfigurationError

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    settings = FlatnessCostSettings(
        vocab=vocab,
        seq_len=seq_len,
        batch=batch,
        tokens_per_param=tokens_per_param,
        seeds=seeds,
        lr=lr,
        decay_fraction=decay_fraction,
        rho=rho,
        msam_rho=msam_rho,
        interval=interval,
        looksam_alpha=looksam_alpha,
        probes=probes,
        power_iters=power_iters,
        variants=tuple(v.strip() for v in variants.split(",") if v.strip()),
    )
    try:
        with _log_below_errors_off():  # OLMo-core's per-step console log: the bar reports instead
            report = flatness_cost(settings, Path(out), jobs=jobs, echo=click.echo)
    except OLMoConfigurationError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(table(report))
    click.echo(verdict(report))
    click.echo(
        f"runtime: {report['runtime_s'] / 60:.1f} min ({jobs} parallel runs, "
        f"{report['cpu_count']} CPUs); report: {Path(out) / REPORT}"
    )
