"""Pieces every recipe shares: token budgets, data paths and mix files, dotted overrides, the
dry-run report (config, parameter counts, steps, LRs, FLOPs, GPU-hours) and the launch.

Recipes build an OLMo-core ``ExperimentConfig`` with :func:`olmo_sam.train.build_experiment` and
train with :func:`olmo_sam.train.run_experiment`; nothing here trains.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click
import torch
import yaml
from olmo_core.data import TokenizerConfig
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.io import is_url
from olmo_core.script_utils import ExperimentConfig
from olmo_core.train import Duration
from olmo_core.train.common import DurationUnit

from ..config import Checked, ConfigError, setting
from ..files import check_overrides
from ..models import param_counts
from ..optim.sam import SAMConfig
from ..optim.schedules import decay_start
from ..output import logger_at_least
from ..preflight import NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, FiniteFloatRange, out_dir_callback
from ..train.callbacks import SAMSwitchCallback

__all__ = [
    "RunSpec",
    "parse_tokens",
    "format_tokens",
    "read_mix_file",
    "ResolvedData",
    "resolve_data",
    "apply_overrides",
    "run_summary",
    "print_dry_run",
    "world_size",
    "assumed_world_size",
    "resolve_dp",
    "check_dp_processes",
    "launch",
    "GPU_PEAK_TFLOPS",
    "GPU_MFU",
]

#: Assumed accelerator for the GPU-hour estimate: H100 SXM dense bf16 peak, and a model-FLOPs
#: utilisation typical of OLMo-core at these sizes. Both are flags of every recipe.
GPU_PEAK_TFLOPS = 989.0
GPU_MFU = 0.4


@dataclass(kw_only=True)
class RunSpec(Checked):
    """What every recipe run needs besides its model/optimizer/schedule choices. ``None``: the
    recipe's default; every number given is valid or an error naming it, never replaced."""

    train_paths: List[str] = field(default_factory=list)
    val_paths: List[str] = field(default_factory=list)
    tokenizer: Optional[TokenizerConfig] = None
    save_folder: str = "runs/run"
    dp: Optional[str] = None
    param_dtype: Optional[str] = None
    #: sequences per rank per forward/backward (flag --micro-batch-size)
    micro_batch_size: Optional[int] = setting(None, ge=1)
    #: in-loop evaluation every N steps (and at the end); 0 = none (pretraining)
    eval_interval: Optional[int] = setting(None, ge=0)
    checkpoint_interval: Optional[int] = setting(None, ge=1)
    stop_at_step: Optional[int] = setting(None, ge=1)
    #: local data paths must exist (off for dry runs)
    check_paths: bool = True


def flag_error(e: OLMoConfigurationError) -> OLMoConfigurationError:
    """A recipe spec's error as its command line says it: the field as its flag (``--seq-len``)."""
    if isinstance(e, ConfigError) and e.path:
        return ConfigError(f"--{e.path.replace('_', '-')}: {e.problem}")
    return e


def check_micro_batch(batch: int, world: int, micro_batch_size: int) -> None:
    """The run's batch splits into whole micro-batches on every process (else OLMo-core fails
    when training starts)."""
    if batch % world:
        raise OLMoConfigurationError(f"--batch-size {batch} is not divisible by the {world} processes")
    if (batch // world) % micro_batch_size:
        raise OLMoConfigurationError(
            f"--batch-size {batch} is not divisible by --micro-batch-size {micro_batch_size}"
            + (f" x {world} processes" if world > 1 else "")
        )


_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_tokens(text: str | int | float) -> int:
    """``'192B'`` -> 192_000_000_000; also ``'50e9'``, ``'1.5T'``, ``'10M'``, plain integers."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", str(text))
        if not m:
            raise OLMoConfigurationError(f"cannot read token count {text!r}; write e.g. 192B, 4B, 50e9, 10M")
        value = float(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if value <= 0 or value != int(value):
        raise OLMoConfigurationError(f"token count must be a positive whole number, got {text!r}")
    return int(value)


def format_tokens(n: float) -> str:
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:g}{suffix}"
    return f"{n:g}"


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def read_mix_file(
    path: str | Path,
    *,
    data_root: Optional[str] = None,
    tokenizer_id: Optional[str] = None,
    include: Sequence[str] = (),
) -> List[str]:
    """Token-file paths listed in a mix file (OLMo-core's format).

    One entry per line, ``path`` or ``label,path``; ``#`` starts a comment; ``{TOKENIZER}`` is
    replaced by ``tokenizer_id``. Relative paths are joined to ``data_root`` (default: the mix
    file's directory; may be a URL such as ``https://olmo-data.org``). ``include`` keeps only lines
    with those labels.
    """
    p = Path(path)
    if not p.is_file():
        raise OLMoConfigurationError(f"mix file not found: {p}")
    root = data_root if data_root is not None else str(p.resolve().parent)
    out: List[str] = []
    labels_seen = set()
    for lineno, raw in enumerate(p.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        label, _, entry = line.rpartition(",")
        label, entry = label.strip(), entry.strip()
        labels_seen.add(label)
        if include and label not in include:
            continue
        if "{TOKENIZER}" in entry:
            if tokenizer_id is None:
                raise OLMoConfigurationError(f"{p} line {lineno}: '{{TOKENIZER}}' needs a tokenizer id")
            entry = entry.replace("{TOKENIZER}", tokenizer_id)
        if not (is_url(entry) or os.path.isabs(entry)):
            entry = f"{root.rstrip('/')}/{entry}"
        out.append(entry)
    if include:
        unknown = sorted(set(include) - labels_seen)
        if unknown:
            raise OLMoConfigurationError(
                f"mix file {p} has no label(s) {unknown}; labels: {sorted(x for x in labels_seen if x)}"
            )
    if not out:
        raise OLMoConfigurationError(f"mix file {p} lists no token files")
    return out


@dataclass
class ResolvedData:
    """The token files (and tokenizer) that `--data`/`--val` entries name."""

    train: List[str]
    val: List[str]
    #: the tokenizer recorded by prepared datasets among the inputs (None: raw files only)
    tokenizer: Optional[TokenizerConfig]
    #: local entries that do not exist here (a dry run plans without them; a run refuses them)
    missing: List[str] = field(default_factory=list)


def resolve_data(
    entries: Sequence[str],
    val_entries: Sequence[str] = (),
    *,
    data_root: Optional[str] = None,
    tokenizer_id: Optional[str] = None,
    include: Sequence[str] = (),
) -> ResolvedData:
    """Expand ``--data``/``--val`` entries: token files (``.npy``, URLs), prepared dataset
    directories (their train files; their val files become the validation set unless ``--val`` is
    given) and mix files (``.txt``)."""
    from ..data.tokens import read_meta, split_files

    if include and not any(str(e).endswith(".txt") for e in entries):
        raise OLMoConfigurationError(
            "--mix-include selects lines of a mix file: give the mix file (.txt) with --data-mix"
        )
    tokenizers: Dict[str, TokenizerConfig] = {}
    missing: List[str] = []

    def expand(items: Sequence[str], split: str) -> Tuple[List[str], List[str]]:
        files: List[str] = []
        vals: List[str] = []
        for item in items:
            p = Path(item)
            if not is_url(item) and not p.exists():
                missing.append(str(item))
            if not is_url(item) and p.is_dir():
                meta = read_meta(p)
                tokenizers[str(p)] = meta.tokenizer_config(p)
                files += [str(f) for f in split_files(p, split)]
                if split == "train" and "val" in meta.splits:
                    vals += [str(f) for f in split_files(p, "val")]
            elif item.endswith(".txt"):
                files += read_mix_file(item, data_root=data_root, tokenizer_id=tokenizer_id, include=include)
            else:
                files.append(item)
        return files, vals

    train, implied_val = expand(entries, "train")
    val = expand(val_entries, "val")[0] if val_entries else implied_val
    distinct = {(t.vocab_size, t.eos_token_id) for t in tokenizers.values()}
    if len(distinct) > 1:
        raise OLMoConfigurationError(
            "the data directories were tokenized with different tokenizers: "
            + ", ".join(f"{k}: vocab {t.vocab_size}" for k, t in tokenizers.items())
        )
    return ResolvedData(train=train, val=val, tokenizer=next(iter(tokenizers.values()), None), missing=missing)


# ---------------------------------------------------------------------------------------------
# dotted overrides
# ---------------------------------------------------------------------------------------------


def apply_overrides(cfg: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """``cfg`` with dotted overrides (``train_module.optim.rho=0.1``), OLMo-core's ``merge``
    semantics (values parsed as YAML), after :func:`olmo_sam.files.check_overrides`."""
    if not overrides:
        return cfg
    check_overrides(cfg, overrides, class_fix="use the recipe's flags (--optimizer, --schedule) instead")
    return cfg.merge(list(overrides))


# ---------------------------------------------------------------------------------------------
# dry-run report
# ---------------------------------------------------------------------------------------------


def _steps_and_tokens(cfg: ExperimentConfig) -> Tuple[int, int]:
    tokens_per_step = cfg.data_loader.global_batch_size
    d: Duration = cfg.trainer.max_duration
    if d.unit == DurationUnit.tokens:
        return math.ceil(d.value / tokens_per_step), int(d.value)
    if d.unit == DurationUnit.steps:
        return int(d.value), int(d.value) * tokens_per_step
    raise OLMoConfigurationError(f"recipes describe runs in steps or tokens, not {d.unit}")


def _schedule_axis(cfg: ExperimentConfig) -> Tuple[str, int, int]:
    """What the LR schedule counts (OLMo-core's ``scheduler.units``): ``(units, run length, units
    per step)``; a token-unit schedule is evaluated at the tokens seen after each step."""
    steps, tokens = _steps_and_tokens(cfg)
    sched = cfg.train_module.scheduler
    if sched is not None and str(sched.units) == "tokens":
        return "tokens", tokens, cfg.data_loader.global_batch_size
    return "steps", steps, 1


def _sam_steps(cfg: ExperimentConfig, steps: int, tokens: int) -> int:
    """How many steps run the SAM two-pass step (the switch point as the training run resolves
    it: :meth:`SAMSwitchCallback.switch_step`)."""
    optim = cfg.train_module.optim
    switch = next((cb for cb in cfg.trainer.callbacks.values() if isinstance(cb, SAMSwitchCallback)), None)
    if not isinstance(optim, SAMConfig):
        if switch is not None and switch.enabled:  # (the run would stop at its start)
            raise OLMoConfigurationError(
                f"the AdamW -> SAM switch needs the SAM optimizer, but train_module.optim is {type(optim).__name__}"
            )
        return 0
    first = 1
    if switch is not None and switch.enabled:
        first = switch.switch_step(steps, cfg.data_loader.global_batch_size, cfg.train_module.scheduler, tokens)
    return math.ceil((steps - first + 1) / max(optim.interval, 1))


def _one_weight() -> torch.nn.Module:
    """A module with one zero weight, made without drawing from torch's random generator."""
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.zeros(1))
    return module


def check_resolved(cfg: ExperimentConfig) -> int:
    """Refuse what the resolved config (flags and overrides together) would fail on only once the
    run starts, or would run wrongly; returns the warmup in the schedule's units.

    * the peak LR: negative, or 0 with a warmup (OLMo-core's warmup asserts on it);
    * the batch: ``data_loader.global_batch_size`` and ``train_module.rank_microbatch_size`` count
      tokens, whole sequences of ``dataset.sequence_length`` (a smaller value was 0 sequences);
    * the optimizer: built on a one-weight module, so that torch's own checks of its settings
      (betas in [0, 1), eps and weight_decay >= 0, ...) run now."""
    tm = cfg.train_module
    peak, sched = float(tm.optim.lr), tm.scheduler
    units, t_max, _ = _schedule_axis(cfg)
    warmup = 0
    if sched is not None:
        warmup = int(getattr(sched, "warmup", None) or round(t_max * (getattr(sched, "warmup_fraction", None) or 0)))
    sam = isinstance(tm.optim, SAMConfig)
    key = "train_module.optim" + (".base" if sam else "")
    if peak < 0 or (peak == 0 and warmup > 0) or math.isnan(peak):
        raise OLMoConfigurationError(
            f"{key}.lr = {peak:g}: the peak LR must be > 0, or 0 (a frozen run) with no warmup ({warmup} {units} here)"
        )
    seq_len = cfg.dataset.sequence_length
    for name, value in (
        ("data_loader.global_batch_size", cfg.data_loader.global_batch_size),
        ("train_module.rank_microbatch_size", tm.rank_microbatch_size),
    ):
        if value < seq_len or value % seq_len:
            raise OLMoConfigurationError(
                f"{name} = {value} tokens is not a whole number of {seq_len}-token sequences; give a multiple of "
                f"{seq_len} (the recipes' --batch-size and --micro-batch-size count sequences)"
            )
    base = tm.optim.base if sam else tm.optim
    try:  # (OLMo-core's "Building ... optimizer" lines are for the run)
        with logger_at_least("olmo_core.optim.config", logging.WARNING):
            base.build(_one_weight(), strict=False)
    except (ValueError, TypeError) as e:
        raise OLMoConfigurationError(f"{key}: {e} (torch's optimizer refuses it when the run starts)") from None
    return warmup


def run_summary(
    cfg: ExperimentConfig,
    *,
    gpu_peak_tflops: float = GPU_PEAK_TFLOPS,
    mfu: float = GPU_MFU,
) -> Dict[str, Any]:
    """Numbers a person checks before launching: parameters, steps, tokens, LRs, FLOPs, GPU-hours.

    FLOPs are OLMo-core's idealised per-token count (``Transformer.num_flops_per_token``: 6 per
    parameter for forward+backward plus attention) times tokens, doubled on the steps that take two
    forward/backward passes (SAM's and LookSAM's full steps; MSAM's steps take one). The model is
    built on the meta device: no weights are allocated.
    """
    counts = param_counts(cfg.model)
    seq_len = cfg.dataset.sequence_length
    steps, tokens = _steps_and_tokens(cfg)
    tm = cfg.train_module
    peak = float(tm.optim.lr)
    sched = tm.scheduler
    lr: Dict[str, Any] = {"peak": peak}
    warmup = check_resolved(cfg)
    units, t_max, per_step = _schedule_axis(cfg)
    if sched is not None:
        start = decay_start(sched, t_max)
        lr.update(
            start=float(sched.get_lr(peak, per_step, t_max)),
            decay_start=start,
            decay_start_step=-(-start // per_step) if start is not None else None,
            at_decay_start=float(sched.get_lr(peak, start, t_max)) if start is not None else None,
            end=float(sched.get_lr(peak, steps * per_step, t_max)),
        )
    model = cfg.model.build(init_device="meta")
    flops_per_token = model.num_flops_per_token(seq_len)
    sam_steps = _sam_steps(cfg, steps, tokens)
    # MSAM's ascent follows the optimizer's momentum: its steps take one forward/backward, as AdamW's
    msam = isinstance(tm.optim, SAMConfig) and str(tm.optim.variant) == "msam"
    two_pass_steps = 0 if msam else sam_steps
    tokens_per_step = cfg.data_loader.global_batch_size
    total_flops = flops_per_token * (tokens + two_pass_steps * tokens_per_step)
    gpu_hours = total_flops / (gpu_peak_tflops * 1e12 * mfu) / 3600
    return {
        "params": {"total": counts.total, "embedding": counts.embedding, "non_embedding": counts.non_embedding},
        "sequence_length": seq_len,
        "world_size": world_size(),
        "data_parallel": tm.dp_config.name if tm.dp_config is not None else None,
        "rank_micro_batch_sequences": tm.rank_microbatch_size // seq_len,
        "batch_sequences": tokens_per_step // seq_len,
        "tokens_per_step": tokens_per_step,
        "steps": steps,
        "tokens": tokens,
        "schedule_units": units,
        "warmup": warmup,
        "warmup_steps": warmup // per_step,
        "lr": lr,
        "sam_steps": sam_steps,
        "two_pass_steps": two_pass_steps,
        "flops_per_token": flops_per_token,
        "total_flops": float(total_flops),
        "gpu_hours": gpu_hours,
        "gpu_assumption": {"peak_tflops": gpu_peak_tflops, "mfu": mfu},
    }


def print_dry_run(
    cfg: ExperimentConfig, summary: Dict[str, Any], *, as_json: bool, extra: Optional[Dict[str, Any]] = None
) -> None:
    config_dict = json.loads(json.dumps(cfg.as_config_dict()))  # plain types (StrEnum -> str)
    if as_json:
        click.echo(json.dumps({"config": config_dict, "summary": summary, **(extra or {})}, indent=2))
        return
    click.echo(yaml.safe_dump(config_dict, sort_keys=False, width=100).rstrip())
    # the estimates as YAML comments: the whole output loads as the run's config (files.load_config)
    for line in _summary_lines(summary, extra or {}):
        click.echo(f"# {line}")


def _summary_lines(summary: Dict[str, Any], extra: Dict[str, Any]) -> List[str]:
    p, lr = summary["params"], summary["lr"]
    lines = [f"{key}: {value}" for key, value in extra.items()]
    lines.append(
        f"parameters: {p['total']:,d} total = {p['embedding']:,d} embedding + {p['non_embedding']:,d} non-embedding"
    )
    lines.append(
        f"tokens: {summary['tokens']:,d} ({format_tokens(summary['tokens'])}) = {summary['steps']:,d} steps x "
        f"{summary['tokens_per_step']:,d} tokens ({summary['batch_sequences']} x {summary['sequence_length']})"
    )
    lines.append(
        f"processes: {summary['world_size']} (data parallel: {summary['data_parallel'] or 'none'}); "
        f"micro-batch {summary['rank_micro_batch_sequences']} sequences per rank"
    )
    units = summary["schedule_units"]
    if units == "steps":
        lines.append(f"warmup: {summary['warmup']:,d} steps")
    else:  # the schedule counts tokens: the LR of step s is its value at s x tokens per step
        lines.append(
            f"warmup: {summary['warmup']:,d} tokens = {summary['warmup_steps']:,d} steps (scheduler units: tokens)"
        )
    if "start" in lr:
        ds = lr["decay_start"]
        where = f"step {ds:,d}" if units == "steps" else f"token {ds:,d} (step {lr['decay_start_step']:,d})"
        at_ds = f"{lr['at_decay_start']:.4g} at {where}" if ds is not None else "none (no decay)"
        lines.append(f"lr: peak {lr['peak']:.4g}; start {lr['start']:.4g}; decay start {at_ds}; end {lr['end']:.4g}")
    else:
        lines.append(f"lr: {lr['peak']:.4g} (constant, no scheduler)")
    one_pass = " (one forward/backward each: MSAM)" if summary["sam_steps"] and not summary["two_pass_steps"] else ""
    lines.append(f"SAM steps: {summary['sam_steps']:,d} of {summary['steps']:,d}{one_pass}")
    g = summary["gpu_assumption"]
    lines.append(
        f"compute: {summary['total_flops']:.3e} FLOPs ({summary['flops_per_token']:,d} per token); "
        f"~{summary['gpu_hours']:,.1f} GPU-hours at {g['peak_tflops']:g} TFLOP/s peak x {g['mfu']:g} MFU"
    )
    return lines


# ---------------------------------------------------------------------------------------------
# launching
# ---------------------------------------------------------------------------------------------


#: set by ``--world-size`` for a dry run outside torchrun (see :func:`assumed_world_size`)
_ASSUMED_WORLD_SIZE: Optional[int] = None


def world_size() -> int:
    """Processes of this launch: torchrun's ``WORLD_SIZE``, or the ``--world-size`` a dry run
    assumes."""
    if _ASSUMED_WORLD_SIZE is not None:
        return _ASSUMED_WORLD_SIZE
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def assumed_world_size(n: Optional[int]):
    """Resolve configs as if launched with ``n`` processes (``None``: as launched)."""
    global _ASSUMED_WORLD_SIZE
    previous = _ASSUMED_WORLD_SIZE
    _ASSUMED_WORLD_SIZE = n
    try:
        yield
    finally:
        _ASSUMED_WORLD_SIZE = previous


def resolve_dp(flag: str, default_multi: str) -> Optional[str]:
    """``--dp`` value -> build_experiment's ``dp``: ``auto`` is none for one process and
    ``default_multi`` under torchrun; ddp/fsdp/hsdp need torchrun with more than one process."""
    n = world_size()
    if flag == "auto":
        return default_multi if n > 1 else None
    if flag == "none":
        if n > 1:
            raise OLMoConfigurationError(f"--dp none with {n} processes: pick --dp ddp or fsdp")
        return None
    check_dp_processes(flag, f"--dp {flag}")
    return flag


def check_dp_processes(dp: Optional[str], where: str) -> None:
    """Data parallelism (``dp`` ddp, fsdp or hsdp; ``None``: none) needs several processes: refused
    in a launch of one (the recipes' ``--dp`` and a fine-tuning run's ``dp``); ``where`` names
    the setting."""
    if dp is not None and world_size() == 1:
        raise OLMoConfigurationError(
            f"{where} needs several processes: launch with torchrun --nproc-per-node N (a recipe's dry run "
            "can assume them: --dry-run --world-size N), or leave it unset"
        )


def launch(cfg: ExperimentConfig):
    """Set up (distributed) training the way these machines need it and run ``cfg``."""
    from ..train.experiment import (
        run_experiment,
        setup_environment,
        validate_experiment,
    )

    validate_experiment(cfg)  # before touching the process group or any weights
    setup_environment()
    return run_experiment(cfg, setup=False)


def common_options(f):
    """Flags every recipe has. ``--world-size`` makes a dry run resolve the config for that many
    processes without torchrun (:func:`assumed_world_size`)."""
    options = [
        click.option("--dry-run", is_flag=True, help="Print the resolved config and estimates; train nothing."),
        click.option("--json", "as_json", is_flag=True, help="With --dry-run: print JSON instead of YAML."),
        click.option(
            "--out",
            "save_folder",
            callback=out_dir_callback,
            type=str,
            default=None,
            help="Run directory (re-using it resumes).",
        ),
        click.option(
            "--dp",
            type=click.Choice(["auto", "none", "ddp", "fsdp", "hsdp"]),
            default="auto",
            show_default=True,
            help="Data parallelism under torchrun.",
        ),
        click.option(
            "--param-dtype",
            type=click.Choice(["float32", "bfloat16"]),
            default=None,
            help="FSDP mixed-precision parameter dtype.",
        ),
        click.option(
            "--micro-batch-size",
            "micro_batch_size",
            type=POSITIVE_INT,
            default=None,
            help="Sequences per rank per micro-batch.",
        ),
        click.option(
            "--eval-interval",
            type=NON_NEGATIVE_INT,
            default=None,
            help="Steps between in-loop validation-loss evaluations (pretraining: 0 = none).",
        ),
        click.option("--checkpoint-interval", type=POSITIVE_INT, default=None, help="Steps between checkpoints."),
        click.option(
            "--stop-at-step",
            type=POSITIVE_INT,
            default=None,
            help="Stop (with a checkpoint) at this step; the schedule still spans the whole run.",
        ),
        click.option(
            "--gpu-peak-tflops",
            type=POSITIVE_FLOAT,
            default=GPU_PEAK_TFLOPS,
            show_default=True,
            help="Assumed accelerator peak (dense bf16) for the GPU-hour estimate.",
        ),
        click.option(
            "--mfu",
            type=FiniteFloatRange(min=0, max=1, min_open=True),
            default=GPU_MFU,
            show_default=True,
            help="Assumed model-FLOPs utilisation for the GPU-hour estimate.",
        ),
        click.option(
            "--world-size",
            "assume_world",
            type=click.IntRange(min=1),
            default=None,
            help="With --dry-run: resolve the config for this many processes (no torchrun needed).",
        ),
        click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]..."),
    ]

    @functools.wraps(f)
    def run(*args, assume_world, **kwargs):
        if assume_world is not None and not kwargs["dry_run"]:
            launched = int(os.environ.get("WORLD_SIZE", "1"))
            if assume_world != launched:
                raise click.UsageError(
                    f"--world-size {assume_world} without --dry-run: training uses the processes it "
                    f"is launched with ({launched}); launch with torchrun --nproc-per-node N instead"
                )
        with assumed_world_size(assume_world):
            return f(*args, **kwargs)

    for opt in reversed(options):
        run = opt(run)
    return run
