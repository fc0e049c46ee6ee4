"""Controlled pretraining runs of [SAM-PT] App C.1 (Tables 4, 5, 6), on OLMo-core.

* Model sizes 20M / 60M / 150M exactly as Table 4 (:data:`olmo_sam.paper.PRETRAIN_SHAPES`; 8/8/12
  layers, 8/8/12 heads, d_model 256/528/768, SwiGLU, context 1024, no dropout, dolma2 vocabulary
  100278 in a 100352-row embedding), plus ``tiny`` and ``micro`` for CPU.
* Token budgets of Table 5 (``--tokens 192B`` or ``--tokens-per-param 3200``). Tokens per
  parameter count the paper sizes' nominal parameters (Table 6's key) and the CPU sizes' total
  parameters, embeddings included (:func:`budget_params`).
* Peak LR from Table 6, chosen by tokens per (nominal) parameter, unless ``--lr`` is given.
* AdamW with betas (0.9, 0.95), weight decay 0.1, batch 256 sequences, warmup 1000/2000/3000
  steps (Table 4), gradient clipping 1.0 (the public reference code).
* ``--optimizer adamw | sam | sam-anneal`` (SAM rho 0.05, Sec 3.1; sam-anneal = AdamW until the LR
  decay phase, then SAM, Sec 3.5) and ``--schedule cosine | wsd | wso | linear`` with ``--alpha``
  (final LR / peak: cosine and WSD decay to 10% in the paper) and ``--decay-fraction`` (WSD; the
  Sec 3.3 anneal sweep tries 5-20%).
* Sweep presets: ``lr-tuning`` (App C.1.2 grid, AdamW + cosine), ``peak-lr`` (App E.2: 60M / 192B,
  cosine and WSD 10%), ``anneal-fraction`` (Sec 3.3: WSD decay 5-20%).

Data are token files (DCLM-Baseline in the paper), prepared datasets or mix files; a held-out
validation set drives OLMo-core's in-loop LM evaluator.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.nn.transformer import TransformerConfig
from olmo_core.optim import AdamWConfig, OptimConfig
from olmo_core.optim.scheduler import Scheduler
from olmo_core.script_utils import ExperimentConfig
from olmo_core.train import Duration

from .. import paper
from ..config import ConfigError, setting
from ..models import CPU_SIZES, dolma2_tokenizer, model_config, param_counts
from ..optim import WSO, CosineAlpha, LinearAlpha, SAMConfig, WSDAlpha
from ..preflight import FLOAT, NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, SEED
from ..seeds import DATA_SEED, INIT_SEED, MAX_SEED
from ..train import SAMSwitchCallback, build_experiment
from .common import (
    RunSpec,
    apply_overrides,
    check_micro_batch,
    check_resolved,
    common_options,
    flag_error,
    format_tokens,
    launch,
    parse_tokens,
    print_dry_run,
    resolve_data,
    resolve_dp,
    run_summary,
    world_size,
)

__all__ = ["PretrainSpec", "build_pretrain", "table6_lr", "SWEEPS", "sweep_members", "main"]

log = logging.getLogger(__name__)

SIZES = (*CPU_SIZES, *paper.PRETRAIN_SHAPES)
OPTIMIZERS = ("adamw", "sam", "sam-anneal")
SCHEDULES = ("cosine", "wsd", "wso", "linear")

#: CPU defaults for the ``tiny``/``micro`` sizes (project choices, not paper numbers).
TINY_SEQ_LEN = 128
TINY_BATCH = 16
TINY_WARMUP_FRACTION = 0.1
#: in-loop evaluation / checkpoint cadence of the paper-size runs (project choices)
EVAL_INTERVAL = 1000
CHECKPOINT_INTERVAL = 1000
DEFAULT_MICRO_BATCH_SIZE = 16


def table6_lr(size: str, tokens: int) -> Tuple[float, float]:
    """(peak LR, tokens per parameter) of Table 6 for ``size`` trained on ``tokens`` tokens."""
    tpp = tokens / paper.PRETRAIN_NOMINAL_PARAMS[size]
    table = paper.PEAK_LR_BY_TPP[size]
    for ratio, lr in table.items():
        if math.isclose(tpp, ratio, rel_tol=1e-9):
            return lr, float(ratio)
    budgets = ", ".join(
        f"{format_tokens(r * paper.PRETRAIN_NOMINAL_PARAMS[size])} ({r} tok/param)" for r in sorted(table)
    )
    raise OLMoConfigurationError(
        f"OLMo-{size} on {format_tokens(tokens)} tokens is {tpp:g} tokens per parameter, which is "
        f"not in Table 6 (peak LRs exist for {budgets}); give the peak LR with --lr"
    )


@dataclass(kw_only=True)
class PretrainSpec(RunSpec):
    """Everything a pretraining run is built from (the recipe's flags)."""

    size: str = setting(choices=SIZES)
    tokens: Optional[int] = setting(None, ge=1)
    tokens_per_param: Optional[float] = setting(None, gt=0)
    steps: Optional[int] = setting(None, ge=1)
    #: peak LR (0: a frozen run, the weights stay as loaded); default: Table 6
    lr: Optional[float] = setting(None, ge=0)
    optimizer: str = setting("adamw", choices=OPTIMIZERS)
    #: default: cosine, and wsd with sam-anneal (the paper's SAM annealing is WSD's decay phase)
    schedule: Optional[str] = setting(None, choices=SCHEDULES)
    alpha: Optional[float] = None
    #: the WSD schedule's decay phase, a fraction of the run ([SAM-PT] Sec 3.3)
    decay_fraction: float = setting(paper.SAM_ANNEAL_DECAY_FRACTION, gt=0, le=1)
    #: SAM radius of sam / sam-anneal (default: the paper's; checked with the optimizer's other
    #: options by olmo_sam.optim.sam.SAMOptions); an error with adamw, which has none
    rho: Optional[float] = None
    #: the sharpness-aware update of sam / sam-anneal: sam, msam or looksam (olmo_sam.optim.sam)
    variant: str = "sam"
    #: LookSAM: a full SAM step every ``interval`` steps (SAMConfig.interval)
    interval: int = 1
    sam_start_fraction: Optional[float] = None
    batch_size: Optional[int] = setting(None, ge=1)
    seq_len: Optional[int] = setting(None, ge=1)
    warmup: Optional[int] = setting(None, ge=0)
    save_folder: str = "runs/pretrain"
    seed: int = setting(INIT_SEED, ge=0, le=MAX_SEED)
    data_seed: int = setting(DATA_SEED, ge=0, le=MAX_SEED)

    def __post_init__(self):
        super().__post_init__()
        if self.schedule is None:  # [SAM-PT] Sec 3.5: SAM in the decay phase of a WSD run
            object.__setattr__(self, "schedule", "wsd" if self.optimizer == "sam-anneal" else "cosine")


def _scheduler(spec: PretrainSpec, warmup: int) -> Scheduler:
    if spec.schedule == "wso":
        if spec.alpha not in (None, 1.0):
            raise OLMoConfigurationError("--alpha does not apply to --schedule wso (it never decays)")
        return WSO(warmup=warmup)
    if spec.schedule == "cosine":
        return CosineAlpha(warmup=warmup, alpha_f=_alpha(spec, paper.COSINE_FINAL_LR_FRACTION))
    if spec.schedule == "wsd":
        return WSDAlpha(
            warmup=warmup,
            decay_fraction=spec.decay_fraction,
            alpha_f=_alpha(spec, paper.WSD_FINAL_LR_FRACTION),
        )
    return LinearAlpha(warmup=warmup, alpha_f=_alpha(spec, paper.WSD_FINAL_LR_FRACTION))  # (the last of SCHEDULES)


def _alpha(spec: PretrainSpec, default: float) -> float:
    return default if spec.alpha is None else spec.alpha


def _optim(spec: PretrainSpec, lr: float) -> OptimConfig:
    adamw = AdamWConfig(lr=lr, betas=paper.PRETRAIN_BETAS, weight_decay=paper.PRETRAIN_WEIGHT_DECAY)
    if spec.optimizer in ("sam", "sam-anneal"):
        rho = paper.SAM_RHO if spec.rho is None else spec.rho
        return SAMConfig(base=adamw, rho=rho, variant=spec.variant, interval=spec.interval)
    if spec.rho is not None or spec.variant != "sam" or spec.interval != 1:
        raise OLMoConfigurationError(
            f"rho/variant/interval choose the SAM update; they do not apply to --optimizer "
            f"{spec.optimizer} (use sam or sam-anneal)"
        )
    return adamw


def budget_params(size: str, model: TransformerConfig) -> int:
    """The parameter count a tokens-per-parameter budget multiplies: the nominal size for the
    paper sizes (Table 6's key, [SAM-PT] App C.1) and the total count, embeddings included, for
    the CPU sizes (whose vocabulary comes from their data)."""
    if size in paper.PRETRAIN_NOMINAL_PARAMS:
        return paper.PRETRAIN_NOMINAL_PARAMS[size]
    if size in CPU_SIZES:
        return param_counts(model).total
    raise OLMoConfigurationError(
        f"--tokens-per-param is defined for {sorted([*CPU_SIZES, *paper.PRETRAIN_NOMINAL_PARAMS])}, not {size!r}"
    )


def resolve_budget(
    spec: PretrainSpec, tokens_per_step: int, model: TransformerConfig
) -> Tuple[Optional[int], Optional[int]]:
    """(max_tokens, max_steps): exactly one is set. A tokens-per-parameter budget becomes whole
    steps' worth of tokens (:func:`budget_params` x ratio, rounded up to a step)."""
    given = [n for n in ("tokens", "tokens_per_param", "steps") if getattr(spec, n) is not None]
    if len(given) != 1:
        raise OLMoConfigurationError(
            f"give exactly one of --tokens, --tokens-per-param, --steps (got {given or 'none'})"
        )
    if spec.steps is not None:
        return None, spec.steps
    if spec.tokens_per_param is not None:
        if spec.size in paper.PRETRAIN_NOMINAL_PARAMS:
            return round(spec.tokens_per_param * paper.PRETRAIN_NOMINAL_PARAMS[spec.size]), None
        tokens = spec.tokens_per_param * budget_params(spec.size, model)
        return math.ceil(tokens / tokens_per_step) * tokens_per_step, None
    assert spec.tokens is not None
    if spec.tokens < tokens_per_step:
        raise OLMoConfigurationError(f"--tokens {spec.tokens} is less than one step ({tokens_per_step} tokens)")
    return spec.tokens, None


def _budget_record(
    spec: PretrainSpec,
    model: TransformerConfig,
    max_tokens: Optional[int],
    max_steps: Optional[int],
    tokens_per_step: int,
) -> Dict[str, Any]:
    """Tokens and parameters of the run, and tokens per parameter counted both ways (total and
    non-embedding parameters) next to the recipes' own count (:func:`budget_params`)."""
    counts = param_counts(model)
    tokens = max_tokens if max_tokens is not None else max_steps * tokens_per_step  # type: ignore[operator]
    rec: Dict[str, Any] = {
        "tokens": int(tokens),
        "steps": max_steps if max_steps is not None else math.ceil(tokens / tokens_per_step),
        "params_total": counts.total,
        "params_non_embedding": counts.non_embedding,
        "tpp_total": tokens / counts.total,
        "tpp_non_embedding": tokens / counts.non_embedding,
    }
    if spec.size in paper.PRETRAIN_NOMINAL_PARAMS or spec.size in CPU_SIZES:
        rec["budget_tpp"] = tokens / budget_params(spec.size, model)
    return rec


def build_pretrain(spec: PretrainSpec, overrides: Sequence[str] = ()) -> Tuple[ExperimentConfig, Dict[str, Any]]:
    """The OLMo-core experiment of ``spec`` (with dotted ``overrides`` applied) and what was
    resolved on the way (Table 6 LR lookup, tokens/param)."""
    paper_size = spec.size in paper.PRETRAIN_SHAPES
    shape = paper.PRETRAIN_SHAPES.get(spec.size)
    seq_len = spec.seq_len or (shape.context_length if shape else TINY_SEQ_LEN)
    batch = spec.batch_size or (paper.PRETRAIN_BATCH_SEQUENCES if paper_size else TINY_BATCH)
    tokenizer = spec.tokenizer or (dolma2_tokenizer() if paper_size else None)
    if tokenizer is None:
        raise OLMoConfigurationError(
            f"the {spec.size!r} model takes its vocabulary from the data: give a prepared dataset "
            "directory with --data (or --tokenizer DIR)"
        )
    model = model_config(spec.size, vocab_size=tokenizer.padded_vocab_size())
    max_tokens, max_steps = resolve_budget(spec, batch * seq_len, model)
    resolved: Dict[str, Any] = _budget_record(spec, model, max_tokens, max_steps, batch * seq_len)
    lr = spec.lr
    if lr is None:
        if not paper_size:
            raise OLMoConfigurationError(f"the {spec.size!r} size has no Table 6 entry: give the peak LR with --lr")
        if max_tokens is None:
            raise OLMoConfigurationError("with --steps the Table 6 LR cannot be looked up: give --lr")
        lr, tpp = table6_lr(spec.size, max_tokens)
        resolved["lr_source"] = f"Table 6: OLMo-{spec.size} at {tpp:g} tokens/param"
    else:
        resolved["lr_source"] = "--lr"
    n_steps = max_steps if max_steps is not None else math.ceil(max_tokens / (batch * seq_len))  # type: ignore[operator]
    if spec.warmup is not None:
        warmup = spec.warmup
    elif shape is not None:
        warmup = shape.warmup_steps
    else:
        warmup = max(1, round(TINY_WARMUP_FRACTION * n_steps))
    if warmup >= n_steps and spec.warmup is None:
        raise OLMoConfigurationError(
            f"the run is only {n_steps} step(s): {format_tokens(max_tokens or n_steps * batch * seq_len)} tokens in "
            f"batches of --batch-size {batch} x --seq-len {seq_len} tokens; give more tokens or smaller batches"
        )
    if warmup >= n_steps:
        raise OLMoConfigurationError(
            f"warmup ({warmup} steps) is not shorter than the run ({n_steps} steps): give more tokens "
            "or a shorter --warmup"
        )
    if lr == 0 and warmup > 0:  # OLMo-core's linear warmup rises from 0 to a peak above it
        raise OLMoConfigurationError(
            f"--lr 0 (a frozen run) cannot have a warmup ({warmup} steps): give --warmup 0 or a peak LR > 0"
        )
    scheduler = _scheduler(spec, warmup)
    callbacks = {}
    if spec.optimizer == "sam-anneal":
        try:
            callbacks["sam_switch"] = SAMSwitchCallback(start_fraction=spec.sam_start_fraction)
        except ConfigError as e:  # the callback's field is the recipe's sam_start_fraction
            raise ConfigError.at("sam_start_fraction", e.problem) from None
    elif spec.sam_start_fraction is not None:
        raise OLMoConfigurationError("--sam-start-fraction applies to --optimizer sam-anneal only")
    world = world_size()
    micro_batch_size = spec.micro_batch_size or min(batch // world, DEFAULT_MICRO_BATCH_SIZE if paper_size else batch)
    check_micro_batch(batch, world, micro_batch_size)
    cfg = build_experiment(
        model=model,
        tokenizer=tokenizer,
        train_paths=list(spec.train_paths),
        # eval_interval 0: no in-loop evaluation (a study's pt_eval stage measures L_PT; building the
        # evaluator's dataset costs seconds per run, which dominates micro runs)
        val_paths=(list(spec.val_paths) or None) if spec.eval_interval != 0 else None,
        save_folder=spec.save_folder,
        optim=_optim(spec, lr),
        sequence_length=seq_len,
        global_batch_size=batch,
        micro_batch_size=micro_batch_size,
        max_steps=max_steps,
        max_tokens=max_tokens,
        eval_interval=spec.eval_interval or (EVAL_INTERVAL if paper_size else max(1, n_steps // 4)),
        checkpoint_interval=spec.checkpoint_interval or (CHECKPOINT_INTERVAL if paper_size else None),
        dp=spec.dp,
        param_dtype=spec.param_dtype,
        callbacks=callbacks,
        seed=spec.seed,
        check_paths=spec.check_paths,
    )
    cfg.train_module.scheduler = scheduler
    cfg.train_module.max_grad_norm = paper.PRETRAIN_MAX_GRAD_NORM
    cfg.data_loader.seed = spec.data_seed
    if spec.stop_at_step is not None:
        cfg.trainer.hard_stop = Duration.steps(spec.stop_at_step)
    cfg = apply_overrides(cfg, overrides)
    check_resolved(cfg)
    if spec.optimizer == "sam-anneal":
        overridden = any(o.split("=", 1)[0].strip(" -").startswith("train_module.scheduler") for o in overrides)
        schedule = "the train_module.scheduler override" if overridden else f"--schedule {spec.schedule}"
        try:
            summary = run_summary(cfg)  # resolves the switch point now: a schedule without decay errors here
        except OLMoConfigurationError as e:
            raise OLMoConfigurationError(f"{schedule} with --optimizer sam-anneal: {e}") from None
        if summary["sam_steps"] > summary["steps"] / 2:
            log.warning(
                f"{schedule} with --optimizer sam-anneal: the LR decays from step {summary['steps'] - summary['sam_steps']}, "
                f"so SAM runs on {summary['sam_steps']:,d} of {summary['steps']:,d} steps; the paper's SAM annealing "
                "([SAM-PT] Sec 3.5) is SAM in the last 10% of a WSD run (--schedule wsd, the default with sam-anneal)"
            )
    if spec.schedule != "wsd" and spec.decay_fraction != paper.SAM_ANNEAL_DECAY_FRACTION:
        raise OLMoConfigurationError(
            f"--decay-fraction applies to --schedule wsd only (the {spec.schedule} schedule has no decay phase of its own)"
        )
    return cfg, resolved


# ---------------------------------------------------------------------------------------------
# sweep presets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    name: str
    doc: str
    #: fields every member sets (a conflicting flag is an error)
    fixed: Dict[str, Any]
    #: (member name, fields) per member
    members: Tuple[Tuple[str, Dict[str, Any]], ...]


def _lr_name(lr: float) -> str:
    return f"lr{lr:.0e}".replace("e-0", "e-")


SWEEPS: Dict[str, Sweep] = {
    "lr-tuning": Sweep(
        "lr-tuning",
        "App C.1.2: AdamW + cosine over the LR grid; the lowest held-out PT loss wins (larger "
        "budgets only need the smaller LRs).",
        {"optimizer": "adamw", "schedule": "cosine"},
        tuple((_lr_name(lr), {"lr": lr}) for lr in paper.LR_TUNING_GRID),
    ),
    "peak-lr": Sweep(
        "peak-lr",
        "App E.2: peak AdamW LR sweep at OLMo-60M / 192B tokens, cosine and WSD (10% decay).",
        {
            "optimizer": "adamw",
            "size": paper.PEAK_LR_SWEEP_SIZE,
            "tokens": int(paper.PEAK_LR_SWEEP_TOKENS_B * 1e9),
        },
        tuple(
            (
                f"{sched}-{_lr_name(lr)}",
                {"lr": lr, "schedule": sched, "decay_fraction": paper.SAM_ANNEAL_DECAY_FRACTION},
            )
            for sched in ("cosine", "wsd")
            for lr in paper.PEAK_LR_SWEEP
        ),
    ),
    "anneal-fraction": Sweep(
        "anneal-fraction",
        "Sec 3.3: WSD decaying to 10% of the peak over the last 5-20% of training.",
        {"schedule": "wsd"},
        tuple((f"decay{round(f * 100)}", {"decay_fraction": f}) for f in paper.ANNEAL_FRACTION_SWEEP),
    ),
}


def sweep_members(name: str, spec: PretrainSpec, explicit: Dict[str, Any]) -> List[Tuple[str, PretrainSpec]]:
    """The members of sweep ``name`` as specs derived from ``spec``; ``explicit`` holds the flags
    the user set, which must not contradict the preset."""
    if name not in SWEEPS:
        raise OLMoConfigurationError(f"unknown sweep {name!r}; choose one of {sorted(SWEEPS)}")
    sweep = SWEEPS[name]
    varied = {k for _, fields in sweep.members for k in fields}
    for key, value in explicit.items():
        if key in varied or (key in sweep.fixed and sweep.fixed[key] != value):
            raise OLMoConfigurationError(f"sweep {name!r} sets '{key}' itself; drop that flag")
    base = replace(spec, **sweep.fixed)
    if "tokens" in sweep.fixed:
        base = replace(base, tokens_per_param=None, steps=None)
    return [
        (member, replace(base, save_folder=f"{spec.save_folder}/{member}", **fields))
        for member, fields in sweep.members
    ]


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


@click.command("pretrain", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--size", type=click.Choice(SIZES), default=None, help="Model size (Table 4) or tiny/micro for CPU.")
@click.option("--tokens", type=str, default=None, help="Token budget, e.g. 192B (Table 5).")
@click.option(
    "--tokens-per-param",
    type=POSITIVE_FLOAT,
    default=None,
    help="Budget as tokens per parameter (nominal for paper sizes, total for tiny/micro).",
)
@click.option("--steps", type=POSITIVE_INT, default=None, help="Budget in steps (CPU runs).")
@click.option("--lr", type=NON_NEGATIVE_FLOAT, default=None, help="Peak LR [default: Table 6 by tokens/param].")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None, help="[default: adamw]")
@click.option(
    "--schedule", type=click.Choice(SCHEDULES), default=None, help="[default: cosine; wsd with --optimizer sam-anneal]"
)
@click.option("--alpha", type=FLOAT, default=None, help="Final LR / peak [default: 0.1].")
@click.option(
    "--decay-fraction", type=FLOAT, default=None, help="WSD decay length, fraction of the run [default: 0.1]."
)
@click.option("--rho", type=FLOAT, default=None, help=f"SAM radius [default: {paper.SAM_RHO}].")
@click.option(
    "--sam-start-fraction",
    type=FLOAT,
    default=None,
    help="sam-anneal: switch at this fraction instead of the decay start.",
)
@click.option(
    "--batch-size", type=POSITIVE_INT, default=None, help="Global batch in sequences [default: 256; tiny 16]."
)
@click.option("--seq-len", type=POSITIVE_INT, default=None, help="Context length [default: 1024; tiny 128].")
@click.option("--warmup", type=NON_NEGATIVE_INT, default=None, help="Warmup steps [default: Table 4].")
@click.option("--data", "data", multiple=True, help="Token file, prepared dataset dir, or mix file (repeatable).")
@click.option("--val", "val", multiple=True, help="Validation token file / dataset dir / mix file (repeatable).")
@click.option("--data-root", default=None, help="Root for relative paths in mix files.")
@click.option(
    "--tokenizer",
    "tokenizer_name",
    default=None,
    help="'dolma2' or a tokenizer dir [default: dolma2; tiny: the data's].",
)
@click.option("--seed", type=SEED, default=None, help="Model init seed.")
@click.option("--sweep", type=click.Choice(sorted(SWEEPS)), default=None, help="A named sweep preset.")
@click.option("--member", default=None, help="With --sweep: run this member (name or index).")
@common_options
def main(
    size,
    tokens,
    tokens_per_param,
    steps,
    lr,
    optimizer,
    schedule,
    alpha,
    decay_fraction,
    rho,
    sam_start_fraction,
    batch_size,
    seq_len,
    warmup,
    data,
    val,
    data_root,
    tokenizer_name,
    seed,
    sweep,
    member,
    dry_run,
    as_json,
    save_folder,
    dp,
    param_dtype,
    micro_batch_size,
    eval_interval,
    checkpoint_interval,
    stop_at_step,
    gpu_peak_tflops,
    mfu,
    overrides,
):
    """Controlled pretraining of [SAM-PT] App C.1 (Tables 4-6) on OLMo-core.

    Extra KEY=VALUE arguments override the resolved OLMo-core config
    (e.g. train_module.optim.rho=0.1).
    """
    import olmo_sam  # noqa: F401  (registrations)

    try:
        explicit = {
            k: v
            for k, v in dict(
                size=size, tokens=tokens, lr=lr, optimizer=optimizer, schedule=schedule, decay_fraction=decay_fraction
            ).items()
            if v is not None
        }
        if size is None and not (sweep and "size" in SWEEPS[sweep].fixed):
            raise click.UsageError("--size is required")
        if save_folder is None and not dry_run:
            raise click.UsageError("--out is required: the run directory (re-using it resumes the run)")
        if not data and not dry_run:
            raise click.UsageError("--data is required: token files, a prepared dataset dir or a mix file")
        if tokenizer_name is not None:
            from ..data.tokenizer import DOLMA2, load_tokenizer, tokenizer_config

            tokenizer = (
                dolma2_tokenizer() if tokenizer_name == DOLMA2 else tokenizer_config(load_tokenizer(tokenizer_name))
            )
        else:
            tokenizer = None
        ds = resolve_data(data, val, data_root=data_root, tokenizer_id=(tokenizer or dolma2_tokenizer()).identifier)
        if tokenizer is None:
            tokenizer = ds.tokenizer  # the data's own (tiny); paper sizes fall back to dolma2
        if ds.missing and tokenizer is None and (size or "") in CPU_SIZES:  # (its vocabulary is the data's)
            raise OLMoConfigurationError(f"--data/--val {', '.join(ds.missing)}: not found")
        for path in ds.missing if dry_run else ():
            click.echo(f"warning: --data/--val {path} is not found here (the run needs it)", err=True)
        if not ds.train:
            ds.train = ["<train token files>"]
        spec = PretrainSpec(
            size=size or SWEEPS[sweep].fixed["size"],  # (checked above: a sweep that sets it)
            tokens=parse_tokens(tokens) if tokens is not None else None,
            tokens_per_param=tokens_per_param,
            steps=steps,
            lr=lr,
            optimizer=optimizer or "adamw",
            schedule=schedule,
            alpha=alpha,
            decay_fraction=paper.SAM_ANNEAL_DECAY_FRACTION if decay_fraction is None else decay_fraction,
            rho=rho,
            sam_start_fraction=sam_start_fraction,
            batch_size=batch_size,
            seq_len=seq_len,
            warmup=warmup,
            train_paths=ds.train,
            val_paths=ds.val,
            tokenizer=tokenizer
            if (tokenizer is not None and (size in CPU_SIZES or tokenizer_name is not None))
            else None,
            save_folder=save_folder or "runs/pretrain",
            dp=resolve_dp(dp, "ddp"),
            param_dtype=param_dtype,
            micro_batch_size=micro_batch_size,
            eval_interval=eval_interval,
            checkpoint_interval=checkpoint_interval,
            stop_at_step=stop_at_step,
            seed=seed if seed is not None else INIT_SEED,
            check_paths=not dry_run,
        )
        if sweep is None:
            if member is not None:
                raise click.UsageError("--member needs --sweep")
            cfg, resolved = build_pretrain(spec, overrides)
            if dry_run:
                summary = run_summary(cfg, gpu_peak_tflops=gpu_peak_tflops, mfu=mfu)
                print_dry_run(cfg, summary, as_json=as_json, extra=resolved)
                return
            launch(cfg)
            return
        members = sweep_members(sweep, spec, explicit)
        if member is not None:
            names = [m for m, _ in members]
            idx = int(member) if member.isdigit() else (names.index(member) if member in names else -1)
            if not (0 <= idx < len(members)):
                raise click.UsageError(f"sweep {sweep!r} has no member {member!r}; members: {names}")
            members = [members[idx]]
        if not dry_run and len(members) != 1:
            raise click.UsageError(
                f"sweep {sweep!r} has {len(members)} members; launch one per job with --member NAME "
                f"(members: {[n for n, _ in members]})"
            )
        built = [(name, *build_pretrain(s, overrides)) for name, s in members]
        if dry_run:
            if len(built) == 1:
                name, cfg, resolved = built[0]
                print_dry_run(
                    cfg,
                    run_summary(cfg, gpu_peak_tflops=gpu_peak_tflops, mfu=mfu),
                    as_json=as_json,
                    extra={"sweep": sweep, "member": name, **resolved},
                )
                return
            _print_sweep(sweep, built, as_json, gpu_peak_tflops, mfu)
            return
        launch(built[0][1])
    except OLMoConfigurationError as e:
        raise click.ClickException(str(flag_error(e))) from e


def _print_sweep(name: str, built, as_json: bool, gpu_peak_tflops: float, mfu: float) -> None:
    import json

    rows = []
    for member, cfg, resolved in built:
        s = run_summary(cfg, gpu_peak_tflops=gpu_peak_tflops, mfu=mfu)
        rows.append(
            {
                "member": member,
                "save_folder": cfg.trainer.save_folder,
                "config": cfg.as_config_dict(),
                "summary": s,
                **resolved,
            }
        )
    if as_json:
        click.echo(json.dumps({"sweep": name, "doc": SWEEPS[name].doc, "members": rows}, indent=2))
        return
    click.echo(f"sweep {name}: {SWEEPS[name].doc}")
    click.echo("| member | schedule | optimizer | peak LR | tokens | steps | GPU-hours |")
    click.echo("|---|---|---|---|---|---|---|")
    for r in rows:
        tm = r["config"]["train_module"]
        click.echo(
            f"| {r['member']} | {tm['scheduler']['type']} | {tm['optim'].get('type', '?')} | "
            f"{r['summary']['lr']['peak']:.0e} | {format_tokens(r['summary']['tokens'])} | "
            f"{r['summary']['steps']:,d} | {r['summary']['gpu_hours']:,.1f} |"
        )
    click.echo("run one member per job: --sweep NAME --member MEMBER (run directory: --out/MEMBER)")


if __name__ == "__main__":  # python -m / torchrun -m olmo_sam.recipes.pretrain
    main()
