"""The fine-tuner: one fine-tuning run of a base checkpoint, measured as a learning-forgetting
point ([SAM-PT] App C.2).

:func:`run_finetune` trains with OLMo-core's own trainer (:func:`olmo_sam.train.build_experiment`
/ :func:`~olmo_sam.train.run_experiment`, ``load_path`` = the base checkpoint) and returns one
:class:`~olmo_sam.finetune.records.FTRecord` per result:

* L_FT: loss of the fine-tuned weights on the dataset's validation split, counting only target
  tokens (response-only for prompt/response data, every token for plain text),
* L_PT: their loss on a fixed pretraining validation set, and the base model's own L_PT
  (computed once per base and cached),
* steps, tokens, wall time, and every hyper-parameter.

The recipe defaults are Table 7 / Table 3 of [SAM-PT] (:mod:`olmo_sam.paper`): AdamW, cosine to
zero after a 10% linear warmup, batch 64 sequences, weight decay 0, and one epoch or the token
budget, whichever is smaller. The model, tokenizer and sequence length come from the base
checkpoint.

Methods (one per run): ``ft``; ``ewc`` and ``l2init`` (:mod:`.penalty`); ``lora`` (:mod:`.lora`);
``replay`` (:mod:`.baselines`). WiSE-FT is post-hoc: ``wise_alphas`` adds one ``wiseft`` record
per alpha, evaluated on interpolations of the run's final weights with the base.

A run directory holds ``spec.json`` (the resolved config), ``train/`` (OLMo-core's save folder:
``metrics.jsonl``, and checkpoints only when asked) and ``records.json`` (written atomically, last).
A one-process run evaluates the trained model in memory; it saves its final checkpoint only when
kept (``keep_checkpoint``), and intermediate ones when ``checkpoint_interval`` asks for resume
points (DDP/FSDP and LoRA runs still evaluate from their final checkpoint). Re-running the same
config on the same directory returns the stored records, resumes an interrupted training from its
latest checkpoint, or restarts cleanly; a directory holding a different config is cleared first.
Sweeps train LR grids through :mod:`.batched`, each slice equal to this trainer run.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from olmo_core.distributed.utils import is_distributed
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.optim import AdamWConfig

from .. import paper
from ..checkpoints import (
    CheckpointInfo,
    checkpoint_info,
    latest_step_dir,
    load_transformer,
    resolve_checkpoint,
    trainer_load_path,
)
from ..config import Checked, ConfigError, decode, setting
from ..data.tokens import token_dtype_for_vocab
from ..evals.lm_loss import lm_loss
from ..locks import cached_file, file_lock
from ..optim import CosineAlpha
from ..output import differences, json_digest, write_json
from ..recipes.common import check_dp_processes, check_micro_batch, world_size
from ..seeds import DATA_SEED, MAX_SEED
from ..train import build_experiment, read_metrics, run_experiment
from .baselines import build_replay_mix, wise_ft
from .data import FTDataMeta, data_digest, read_meta, split_paths
from .lora import LoRASettings, LoRATrainModuleConfig, load_merged_lora
from .penalty import WeightPenaltyCallback, diagonal_fisher, save_tensors
from .records import FTRecord

log = logging.getLogger(__name__)

__all__ = ["METHODS", "FTConfig", "FTPlan", "plan_run", "run_finetune", "evaluate_run", "base_pt_loss"]

#: Fine-tuning methods; WiSE-FT is post-hoc (``wise_alphas``), not a training method.
METHODS = ("ft", "ewc", "l2init", "lora", "replay")

#: method -> its own options and their defaults (None: filled from the base checkpoint)
_METHOD_OPTIONS: Dict[str, Dict[str, Any]] = {
    "ewc": {
        "ewc_lambda": paper.EWC_BEST_LAMBDA,
        "fisher_batches": paper.EWC_FISHER_BATCHES,
        "fisher_batch_size": paper.EWC_FISHER_BATCH_SIZE,
        "fisher_data": None,
    },
    "l2init": {"l2_lambda": paper.L2_INIT_PENALTY},
    "lora": {"lora_rank": paper.LORA_RANK, "lora_alpha": None, "lora_dropout": 0.0},
    "replay": {"replay_ratio": paper.REPLAY_DEFAULT_RATIO, "replay_data": None},
}
#: fields that do not change any number of a run (left out of its id)
_NOT_IN_ID = ("base_label", "wise_alphas", "checkpoint_interval")


@dataclass
class FTConfig(Checked):
    """One fine-tuning run. ``None`` fields are filled from the base checkpoint or the paper by
    :meth:`resolved`."""

    #: base checkpoint (step directory, or run directory = its latest step; a trainer checkpoint or a
    #: model-only one such as an import-hf or WiSE-FT output)
    base: str
    #: prepared dataset directory (:mod:`olmo_sam.finetune.data`)
    data: str
    lr: float = setting(gt=0)
    method: str = setting("ft", choices=METHODS, hint=" (WiSE-FT: set wise_alphas)")
    base_label: Optional[str] = None
    # -- recipe (Table 7 / Table 3) --
    batch_size: int = setting(paper.FT_BATCH_SIZE, ge=1)
    #: sequences per rank per forward/backward (default: the rank's whole batch)
    micro_batch_size: Optional[int] = setting(None, ge=1)
    #: tokens per training sequence (default: the base checkpoint's)
    seq_len: Optional[int] = setting(None, ge=1)
    #: train for min(one epoch, token_budget) tokens; None = one epoch
    token_budget: Optional[int] = setting(paper.FT_TOKEN_BUDGET_SMALL, ge=1)
    #: explicit step count, overriding the epoch/budget rule
    max_steps: Optional[int] = setting(None, ge=1)
    #: prepared dataset whose train split defines "one epoch" (default: ``data``). A mix (CFS,
    #: contextual synthetic data) trained for as many steps as its task alone passes the task
    #: here ([CFS] Sec 3 holds gradient steps equal across mixes); replay does this itself.
    epoch_data: Optional[str] = None
    #: name stored as FTRecord.method (default: ``method``), e.g. "cfs" for a CFS mix trained
    #: with method "ft"
    record_method: Optional[str] = None
    warmup_fraction: float = setting(paper.FT_WARMUP_FRACTION, ge=0, lt=1)
    final_lr_fraction: float = setting(paper.FT_COSINE_FINAL_LR_FRACTION, ge=0, le=1)
    weight_decay: float = setting(paper.FT_WEIGHT_DECAY, ge=0)
    betas: Tuple[float, float] = paper.FT_BETAS
    max_grad_norm: Optional[float] = setting(paper.FT_MAX_GRAD_NORM, gt=0, hint=" (null: no clipping)")
    seed: int = setting(0, ge=0, le=MAX_SEED)
    data_seed: int = setting(DATA_SEED, ge=0, le=MAX_SEED)
    #: None (one process), "ddp", "fsdp" or "hsdp" (under torchrun)
    #: data parallelism under torchrun (several processes)
    dp: Optional[str] = setting(None, choices=("ddp", "fsdp", "hsdp"))
    checkpoint_interval: Optional[int] = setting(None, ge=1)
    # -- evaluation --
    #: pretraining validation token files; default: the base run's evaluator files
    pt_val: Optional[List[str]] = None
    pt_val_max_sequences: Optional[int] = setting(None, ge=1)
    ft_val_max_sequences: Optional[int] = setting(None, ge=1)
    eval_batch_size: int = setting(8, ge=1)
    # -- baselines --
    #: (baseline options apply to their method only; defaults: _METHOD_OPTIONS)
    ewc_lambda: Optional[float] = setting(None, ge=0)
    fisher_batches: Optional[int] = setting(None, ge=1)
    fisher_batch_size: Optional[int] = setting(None, ge=1)
    #: pretraining token files for the Fisher; default: the base run's training files
    fisher_data: Optional[List[str]] = None
    l2_lambda: Optional[float] = setting(None, ge=0)
    lora_rank: Optional[int] = setting(None, ge=1)
    #: LoRA scaling numerator; default: the rank ([CFS] App E.1)
    lora_alpha: Optional[float] = setting(None, gt=0)
    lora_dropout: Optional[float] = setting(None, ge=0, lt=1)
    replay_ratio: Optional[float] = setting(None, gt=0, hint=" (replayed pretraining tokens per task token)")
    #: pretraining token files to replay; default: the base run's training files
    replay_data: Optional[List[str]] = None
    #: WiSE-FT interpolation weights evaluated after training (0 = base, 1 = fine-tuned)
    wise_alphas: Tuple[float, ...] = setting((), ge=0, le=1)

    def __post_init__(self):
        super().__post_init__()
        self.betas, self.wise_alphas = tuple(self.betas), tuple(self.wise_alphas)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "FTConfig":
        return decode(cls, d)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["wise_alphas"] = list(self.wise_alphas)
        return d

    # -- validation and defaults ---------------------------------------------------------------

    def check(self, strict: bool = True) -> Dict[str, Any]:
        """The checks that need no files (the study's plan step runs them before any compute);
        returns the method's own options with paper defaults (see :meth:`_method_options`)."""
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ConfigError.at(
                "micro_batch_size", f"{self.micro_batch_size} must divide batch_size ({self.batch_size})"
            )
        return self._method_options(strict)

    def resolved(self, strict: bool = True) -> "FTConfig":
        """Validated copy with paths absolute and defaults filled from the checkpoint / paper.

        :param strict: reject options of other methods (else clear them, as sweeps do)."""
        values = self.check(strict)
        try:
            base = resolve_checkpoint(self.base)
        except FileNotFoundError as e:
            raise OLMoConfigurationError(f"base checkpoint: {e}") from None
        info = checkpoint_info(base)
        data = Path(self.data).resolve()
        data_meta = read_meta(data)  # fails clearly if this is not a prepared dataset
        epoch_data = str(Path(self.epoch_data).resolve()) if self.epoch_data else None
        if epoch_data:
            _check_mix_task(data_meta, self.data, read_meta(epoch_data), self.epoch_data, self.record_method)
        seq = self.seq_len or info.sequence_length
        if not seq:
            raise OLMoConfigurationError(f"{base}: config.json has no dataset.sequence_length; set seq_len")
        pt_val = self.pt_val or _evaluator_paths(info)
        if not pt_val:
            raise OLMoConfigurationError(
                f"no pretraining validation set: {base} was trained without an evaluator; give pt_val (--pt-val)"
            )
        fisher = (self.fisher_data or info.train_paths) if self.method == "ewc" else None
        replay = (self.replay_data or info.train_paths) if self.method == "replay" else None
        if self.method in ("ewc", "replay") and not (fisher or replay):
            raise OLMoConfigurationError(
                f"method {self.method!r} needs pretraining token files (fisher_data / replay_data); {base} records none"
            )
        abs_paths = lambda ps: [str(Path(p).resolve()) for p in ps] if ps else None  # noqa: E731
        for p in (pt_val or []) + (fisher or []) + (replay or []):
            if not Path(p).exists():
                raise OLMoConfigurationError(f"token file not found: {p}")
        return replace(
            self,
            base=str(base.resolve()),
            data=str(data),
            epoch_data=epoch_data,
            base_label=self.base_label or base.parent.name,
            seq_len=int(seq),
            pt_val=abs_paths(pt_val),
            wise_alphas=tuple(float(a) for a in self.wise_alphas),
            **{**values, "fisher_data": abs_paths(fisher), "replay_data": abs_paths(replay)},
        )

    def _method_options(self, strict: bool) -> Dict[str, Any]:
        """The method's own options with paper defaults; other methods' options must be unset
        (``strict``) or are cleared (sweeps share options across methods)."""
        out: Dict[str, Any] = {}
        for method, options in _METHOD_OPTIONS.items():
            for name, default in options.items():
                value = getattr(self, name)
                if method == self.method:
                    out[name] = default if value is None else value
                elif value is not None:
                    if strict:
                        raise OLMoConfigurationError(
                            f"'{name}' is set but method is {self.method!r}; it only applies to method '{method}'"
                        )
                    out[name] = None
        return out

    @property
    def run_id(self) -> str:
        """Deterministic id of the run: method, LR and a hash of everything that changes its
        numbers (call on a :meth:`resolved` config)."""
        # unset options are left out, so a new optional field does not change existing ids
        key = {k: v for k, v in self.to_dict().items() if k not in _NOT_IN_ID and v is not None}
        return f"{self.method}-lr{self.lr:.3g}-{json_digest(key, 12)}"

    def wise_run_id(self, alpha: float) -> str:
        return f"{self.run_id}-wise{alpha:g}"

    def expected_run_ids(self) -> List[str]:
        return [self.run_id] + [self.wise_run_id(a) for a in self.wise_alphas]


#: ``source.method`` of a mix built by :func:`olmo_sam.cfs.mix.build_mix`
_MIX_METHODS = ("cfs", "cs")


def _check_mix_task(
    mix: FTDataMeta, mix_dir: str, task: FTDataMeta, task_dir: str, record_method: Optional[str]
) -> None:
    """A cfs/cs mix trained for the steps of ``epoch_data`` and recorded on its set must have been
    built from that task (and be the mix of the method it is recorded as): else the run trains and
    is scored on another task's data under this task's name."""
    src = mix.source or {}
    method = src.get("method")
    if method not in _MIX_METHODS or "task_dir" not in src:
        return  # not a mix (e.g. a plain dataset with its own epoch definition)
    if record_method in _MIX_METHODS and record_method != method:
        raise OLMoConfigurationError(
            f"{mix_dir} is a '{method}' mix, but its runs would be recorded as '{record_method}': "
            f"give it as {method}={mix_dir} (--mix), or build a '{record_method}' mix"
        )
    built_from = src["task_dir"]
    mix_task = str(src.get("task_name") or mix.name.rpartition("+")[0] or mix.name)
    if "task_digest" in src:  # mixes built since the digest is recorded: the exact preparation
        same = src["task_digest"] == data_digest(task_dir)
    else:
        same = mix_task == task.name and src.get("task_source") == task.source
    if same:
        return
    if mix_task == task.name:
        what = f"another preparation of task '{mix_task}' ({built_from}) than the one in {task_dir} (--data)"
        fix = f"rebuild the mix from {task_dir} (olmo-sam cfs mix {task_dir} SAMPLES --out ...)"
    else:
        what = f"task '{mix_task}' ({built_from}), but the run's task (--data) is '{task.name}' ({task_dir})"
        fix = (
            f"build the mix from {task_dir} (olmo-sam cfs mix {task_dir} SAMPLES --out ...) or give --data {built_from}"
        )
    raise OLMoConfigurationError(f"the '{method}' mix {mix_dir} was built from {what}: {fix}")


def record_dataset(cfg: "FTConfig") -> str:
    """The dataset name a run's records carry: a mix trained for its task's steps (CFS/CS) is a
    point on the TASK's learning-forgetting set (its L_FT is on the task's validation split, which
    the mix carries unchanged)."""
    return read_meta(cfg.epoch_data or cfg.data).name


def _evaluator_paths(info: CheckpointInfo) -> Optional[List[str]]:
    cbs = ((info.config.get("trainer") or {}).get("callbacks")) or {}
    ev = (cbs.get("lm_evaluator") or {}).get("eval_dataset") or {}
    return list(ev.get("paths") or []) or None


def _file_key(paths: Sequence[str]) -> List[str]:
    return [f"{Path(p).resolve()}:{Path(p).stat().st_size}:{int(Path(p).stat().st_mtime)}" for p in paths]


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Planning: data checks, step count
# ---------------------------------------------------------------------------------------------


@dataclass
class FTPlan:
    cfg: FTConfig
    info: CheckpointInfo
    meta: FTDataMeta
    steps: int
    epoch_steps: int
    tokens_per_step: int

    @property
    def vocab_size(self) -> int:
        assert self.info.tokenizer is not None
        return self.info.tokenizer.vocab_size


def plan_run(cfg: FTConfig) -> FTPlan:
    """Check the data against the checkpoint and fix the number of steps (one epoch of the
    task's training tokens or the token budget, whichever is smaller; or ``max_steps``)."""
    info = checkpoint_info(cfg.base)
    if info.tokenizer is None:
        raise OLMoConfigurationError(f"{cfg.base}: config.json has no dataset.tokenizer")
    meta = read_meta(cfg.data)
    tok = info.tokenizer
    want_dtype = token_dtype_for_vocab(tok.vocab_size).name
    if (
        meta.vocab_size > info.model_config.vocab_size
        or meta.eos_token_id != tok.eos_token_id
        or meta.dtype != want_dtype
    ):
        raise OLMoConfigurationError(
            f"dataset {cfg.data} was prepared with another tokenizer (vocab {meta.vocab_size}, EOS "
            f"{meta.eos_token_id}, {meta.dtype}) than the base checkpoint's (vocab {tok.vocab_size}, "
            f"EOS {tok.eos_token_id}, {want_dtype}); prepare it with the checkpoint's tokenizer"
        )
    seq = int(cfg.seq_len)  # type: ignore[arg-type]
    tokens_per_step = cfg.batch_size * seq
    epoch_meta = read_meta(cfg.epoch_data) if cfg.epoch_data else meta
    train_tokens = epoch_meta.splits["train"]["tokens"]
    epoch_steps = (train_tokens // seq) // cfg.batch_size
    if cfg.max_steps is not None:
        steps = cfg.max_steps
    else:
        steps = epoch_steps
        if cfg.token_budget is not None:
            steps = min(steps, cfg.token_budget // tokens_per_step)
    if steps < 1:
        raise OLMoConfigurationError(
            f"dataset '{meta.name}' has {train_tokens:,d} training tokens: not one batch of "
            f"{cfg.batch_size} x {seq} tokens (or the token budget {cfg.token_budget} is smaller "
            "than one batch); use more data, a smaller batch_size or seq_len"
        )
    return FTPlan(cfg, info, meta, steps, epoch_steps, tokens_per_step)


# ---------------------------------------------------------------------------------------------
# Cached pieces: base L_PT, Fisher, replay mix
# ---------------------------------------------------------------------------------------------


def base_pt_loss(cfg: FTConfig, vocab_size: int, cache_dir: Path) -> float:
    """The base model's own L_PT, computed once per (base, PT validation set) and cached."""
    key = json_digest(
        dict(
            base=cfg.base,
            ckpt=_file_key([str(Path(cfg.base) / "model_and_optim" / ".metadata")]),
            pt_val=_file_key(cfg.pt_val or []),
            seq=cfg.seq_len,
            max_seq=cfg.pt_val_max_sequences,
            vocab=vocab_size,
        )
    )

    def compute(path: Path) -> None:
        model, _ = load_transformer(cfg.base, device=_device())
        res = lm_loss(
            model,
            cfg.pt_val or [],
            seq_len=int(cfg.seq_len or 0),
            vocab_size=vocab_size,
            batch_size=cfg.eval_batch_size,
            max_sequences=cfg.pt_val_max_sequences,
        )
        write_json(
            path,
            dict(loss=res.loss, tokens=res.tokens, base=cfg.base, pt_val=cfg.pt_val),
            keep_nan=True,
            sort_keys=True,
        )

    path = cached_file(cache_dir / "base_pt_loss" / f"{key}.json", compute)
    return float(json.loads(path.read_text())["loss"])


def fisher_file(cfg: FTConfig, vocab_size: int, cache_dir: Path, micro_batch_size: Optional[int] = None) -> Path:
    """Diagonal Fisher of the base on its pretraining data (cached per base and settings)."""
    fisher_data = cfg.fisher_data or []
    key = json_digest(
        dict(
            base=cfg.base,
            data=_file_key(fisher_data),
            seq=cfg.seq_len,
            batches=cfg.fisher_batches,
            batch=cfg.fisher_batch_size,
            seed=cfg.seed,
        )
    )

    def compute(path: Path) -> None:
        model, _ = load_transformer(cfg.base, device=_device())
        model.train()
        fisher = diagonal_fisher(
            model,
            fisher_data,
            seq_len=int(cfg.seq_len or 0),
            dtype=token_dtype_for_vocab(vocab_size),
            n_batches=int(cfg.fisher_batches or 0),
            batch_size=int(cfg.fisher_batch_size or 0),
            micro_batch_size=micro_batch_size,
            seed=cfg.seed,
        )
        save_tensors(fisher, path)

    return cached_file(cache_dir / "fisher" / f"{key}.pt", compute)


def replay_dir(cfg: FTConfig, cache_dir: Path) -> Path:
    key = json_digest(
        dict(
            data=cfg.data,
            meta=_file_key([str(Path(cfg.data) / "meta.json")]),
            pt=_file_key(cfg.replay_data or []),
            ratio=cfg.replay_ratio,
            seed=cfg.data_seed,
        )
    )
    out = cache_dir / "replay" / key
    with file_lock(cache_dir / "replay" / f"{key}.lock"):
        build_replay_mix(cfg.data, cfg.replay_data or [], float(cfg.replay_ratio or 0), out, seed=cfg.data_seed)
    return out


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _lora_settings(cfg: FTConfig) -> LoRASettings:
    return LoRASettings(
        rank=int(cfg.lora_rank or 0), alpha=cfg.lora_alpha, dropout=float(cfg.lora_dropout or 0.0), init_seed=cfg.seed
    )


def build_ft_experiment(plan: FTPlan, train_folder: Path, cache_dir: Path):
    """The OLMo-core experiment config of a run (the base weights enter through ``load_path``,
    resolved by :func:`~olmo_sam.checkpoints.trainer_load_path`: trainer or model-only checkpoint)."""
    cfg = plan.cfg
    assert plan.info.tokenizer is not None
    check_dp_processes(cfg.dp, f"dp {cfg.dp!r} (--dp)")
    world = world_size()
    micro_batch_size = cfg.micro_batch_size or cfg.batch_size // world  # (default: the rank's whole batch)
    check_micro_batch(cfg.batch_size, world, micro_batch_size)
    data = Path(cfg.data)
    if cfg.method == "replay":
        data = replay_dir(cfg, cache_dir)
    tokens, mask = split_paths(data, "train")
    callbacks = {}
    if cfg.method in ("ewc", "l2init"):
        fisher = fisher_file(cfg, plan.vocab_size, cache_dir, cfg.micro_batch_size) if cfg.method == "ewc" else None
        callbacks[cfg.method] = WeightPenaltyCallback(
            anchor_path=cfg.base,
            lam=float(cfg.ewc_lambda if cfg.method == "ewc" else cfg.l2_lambda),  # type: ignore[arg-type]
            fisher_path=str(fisher) if fisher else None,
            name=cfg.method,
        )
    exp = build_experiment(
        model=plan.info.model_config,
        tokenizer=plan.info.tokenizer,
        train_paths=[str(tokens)],
        save_folder=str(train_folder),
        optim=AdamWConfig(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay),
        sequence_length=int(cfg.seq_len),  # type: ignore[arg-type]
        global_batch_size=cfg.batch_size,
        micro_batch_size=micro_batch_size,
        max_steps=plan.steps,
        callbacks=callbacks,
        seed=cfg.seed,
        dp=cfg.dp,
        checkpoint_interval=cfg.checkpoint_interval,
    )
    exp.train_module.scheduler = CosineAlpha(warmup_fraction=cfg.warmup_fraction, alpha_f=cfg.final_lr_fraction)
    exp.train_module.max_grad_norm = cfg.max_grad_norm
    exp.dataset.label_mask_paths = [str(mask)]
    exp.data_loader.seed = cfg.data_seed
    exp.load_path = trainer_load_path(cfg.base)
    if cfg.method == "lora":
        tm = exp.train_module
        exp.train_module = LoRATrainModuleConfig(
            **{f.name: getattr(tm, f.name) for f in fields(tm)}, lora=_lora_settings(cfg)
        )
    return exp


def _finished_step(train_folder: Path, steps: int) -> Optional[Path]:
    step = latest_step_dir(train_folder)
    return step if step is not None and step.name == f"step{steps}" else None


def _prepare_dir(out: Path, spec: Dict[str, Any], overwrite: bool = True) -> Optional[List[FTRecord]]:
    """Stored records if this directory finished the same run; clears a different run's files
    (refused unless ``overwrite``: ``finetune run --out`` of another run's directory)."""
    spec_path, rec_path = out / "spec.json", out / "records.json"
    if spec_path.exists():
        try:
            old = json.loads(spec_path.read_text())
        except json.JSONDecodeError:
            old = None
        same = old == spec
        if same and rec_path.exists():
            return [FTRecord.from_dict(d) for d in json.loads(rec_path.read_text())]
        if not same and not overwrite:
            changed = [path for path, _, _ in differences(old if isinstance(old, dict) else {}, spec)]
            raise OLMoConfigurationError(
                f"{out} holds another fine-tuning run ({', '.join(changed[:6])} differ); pass --overwrite to "
                "replace it, or another --out"
            )
        if not same:
            log.warning(f"{out} holds another run's files; clearing them")
            for child in out.iterdir():
                if child.name != ".lock":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
    elif rec_path.exists():
        rec_path.unlink()
    write_json(spec_path, spec, keep_nan=True, sort_keys=True)
    return None


def run_spec(cfg: FTConfig) -> Dict[str, Any]:
    """What a run directory's ``spec.json`` holds (of a :meth:`FTConfig.resolved` config): the
    config, its run id and the digest of its data as prepared; a directory holding another spec
    holds another run."""
    return dict(cfg.to_dict(), run_id=cfg.run_id, data_digest=data_digest(cfg.data, cfg.epoch_data))


#: OLMo-core's trainer stops a run whose training loss is not finite with this error
#: (``Trainer._check_and_pass_on_metrics``); the run is recorded as diverged, with the message
DIVERGED = re.compile(r"^(nan|inf|-inf) loss encountered at step \d+$")


def _in_memory(cfg: FTConfig) -> bool:
    """Whether a run evaluates its trained model in memory: one process (a sharded DDP/FSDP model
    is evaluated from its checkpoint on rank 0) and not LoRA (evaluated merged from its checkpoint)."""
    return cfg.dp is None and cfg.method != "lora"


def run_finetune(
    cfg: FTConfig,
    out_dir: str | Path,
    *,
    cache_dir: Optional[str | Path] = None,
    keep_checkpoint: bool = False,
    overwrite: bool = True,
) -> List[FTRecord]:
    """Fine-tune, evaluate and return the run's records (module docstring). Under torchrun every
    rank calls this; rank 0 evaluates and returns the records, the others return ``[]``.
    ``out_dir`` holding another run's files is cleared, or with ``overwrite=False`` (``finetune
    run`` without ``--overwrite``) refused; one holding this run's records returns them.

    One-process runs evaluate the trained model in memory and write a checkpoint only when asked
    (``keep_checkpoint``; ``checkpoint_interval`` resume points)."""
    cfg = cfg.resolved()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir).resolve() if cache_dir is not None else out.parent / "_cache"
    rank0 = int(os.environ.get("RANK", "0")) == 0
    spec = run_spec(cfg)
    lock = file_lock(out / ".lock", what=f"(run {cfg.run_id})") if rank0 else contextlib.nullcontext()
    with lock:
        if rank0:
            stored = _prepare_dir(out, spec, overwrite)
            if stored is not None:
                return stored
        t0 = time.monotonic()
        plan = plan_run(cfg)
        train_folder = out / "train"
        final = _finished_step(train_folder, plan.steps)
        model, diverged = None, None
        if final is None:
            exp = build_ft_experiment(plan, train_folder, cache)
            in_memory = _in_memory(cfg)
            if in_memory and not keep_checkpoint and cfg.checkpoint_interval is None:
                exp.trainer.callbacks["checkpointer"].enabled = False  # type: ignore[attr-defined]
            try:
                trainer = run_experiment(exp)
                model = trainer.train_module.model if in_memory else None
                del trainer
            except RuntimeError as e:
                if not DIVERGED.match(str(e)):
                    raise
                diverged = str(e)
            gc.collect()
            if is_distributed():
                from olmo_core.train import teardown_training_environment

                teardown_training_environment()
            final = _finished_step(train_folder, plan.steps)
            if final is None and model is None and diverged is None:
                raise RuntimeError(f"training of {cfg.run_id} ended without its final checkpoint in {train_folder}")
        if not rank0:
            return []
        kept = str(final) if final is not None and keep_checkpoint and diverged is None else None
        if model is None and diverged is None:
            assert final is not None
            model = _load_trained(cfg, final)
        last = read_metrics(train_folder).get(plan.steps, {})
        records = evaluate_run(plan, model, cache, time.monotonic() - t0, last, checkpoint=kept, diverged=diverged)
        del model
        gc.collect()
        write_json(out / "records.json", [r.to_dict() for r in records], sort_keys=True)
        if not keep_checkpoint:
            for step in train_folder.glob("step*"):
                shutil.rmtree(step, ignore_errors=True)
        return records


def _load_trained(cfg: FTConfig, final: Path) -> torch.nn.Module:
    if cfg.method == "lora":
        return load_merged_lora(cfg.base, final, _lora_settings(cfg), device=_device())
    model, _ = load_transformer(final, device=_device())
    return model


@torch.no_grad()
def evaluate_run(
    plan: FTPlan,
    model: Optional[torch.nn.Module],
    cache: Path,
    train_time: float,
    last: Dict[str, float],
    *,
    checkpoint: Optional[str] = None,
    diverged: Optional[str] = None,
) -> List[FTRecord]:
    """The run's records from its trained ``model`` (in memory): L_FT, L_PT, and one WiSE-FT
    record per ``wise_alphas``. ``last`` holds the final step's logged metrics (``train/CE loss``,
    the penalty); ``checkpoint`` is the kept final checkpoint, if any. A run whose training loss
    stopped being finite (``diverged``: OLMo-core's message, which names the step) has no model:
    its records carry NaN losses and the message (``extra["diverged"]``), and the analysis leaves
    them out of every frontier, saying so."""
    cfg = plan.cfg
    t0 = time.monotonic()
    device = _device()
    if model is not None:
        model.eval()
    val_tokens, val_mask = split_paths(cfg.data, "val")
    seq = int(cfg.seq_len)  # type: ignore[arg-type]

    def losses(m) -> Tuple[float, float]:
        l_ft = lm_loss(
            m,
            [val_tokens],
            mask_paths=[val_mask],
            seq_len=seq,
            vocab_size=plan.vocab_size,
            batch_size=cfg.eval_batch_size,
            max_sequences=cfg.ft_val_max_sequences,
        )
        l_pt = lm_loss(
            m,
            cfg.pt_val or [],
            seq_len=seq,
            vocab_size=plan.vocab_size,
            batch_size=cfg.eval_batch_size,
            max_sequences=cfg.pt_val_max_sequences,
        )
        return l_ft.loss, l_pt.loss

    base_l_pt = base_pt_loss(cfg, plan.vocab_size, cache)
    l_ft, l_pt = losses(model) if diverged is None else (math.nan, math.nan)
    extra = {
        "epoch_steps": plan.epoch_steps,
        "final_train_ce": last.get("train/CE loss"),
        "target_tokens_train": plan.meta.splits["train"]["target_tokens"],
        "checkpoint": checkpoint,
        "penalty": last.get(f"{cfg.method}/penalty"),
        **({"diverged": diverged} if diverged is not None else {}),
    }
    hparams = cfg.to_dict()
    method = cfg.record_method or cfg.method
    dataset = record_dataset(cfg)
    common = dict(
        base=cfg.base,
        base_label=cfg.base_label or "",
        dataset=dataset,
        lr=cfg.lr,
        base_l_pt=base_l_pt,
        steps=plan.steps,
        tokens=plan.steps * plan.tokens_per_step,
        data_digest=data_digest(cfg.data, cfg.epoch_data),
    )
    records = [
        FTRecord(
            run_id=cfg.run_id,
            method=method,
            l_ft=l_ft,
            l_pt=l_pt,
            hparams=hparams,
            wall_time_s=train_time + time.monotonic() - t0,
            extra=extra,
            **common,
        )
    ]
    if cfg.wise_alphas:
        base_model = load_transformer(cfg.base, device=device)[0] if diverged is None else None
        for alpha in cfg.wise_alphas:
            w_ft, w_pt = losses(wise_ft(base_model, model, alpha)) if diverged is None else (math.nan, math.nan)
            records.append(
                FTRecord(
                    run_id=cfg.wise_run_id(alpha),
                    method="wiseft" if method == "ft" else f"{method}+wiseft",
                    l_ft=w_ft,
                    l_pt=w_pt,
                    wall_time_s=0.0,
                    hparams=dict(hparams, wise_alpha=alpha),
                    extra=dict(extra, source_run=cfg.run_id),
                    **common,
                )
            )
    return records
