"""Build and run an OLMo-core experiment with the SAM train module.

There is no second trainer here: :func:`build_experiment` fills OLMo-core's own
``ExperimentConfig`` (model, dataset, data loader, train module, trainer) and
:func:`run_experiment` builds those pieces in OLMo-core's order and calls ``Trainer.fit()``.
Recipes, the fine-tuner, the demo and the tests all go through here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from olmo_core.config import Config, DType
from olmo_core.data import (
    NumpyDataLoaderConfig,
    NumpyFSLDatasetConfig,
    NumpyPaddedFSLDatasetConfig,
    TokenizerConfig,
)
from olmo_core.data.types import NumpyDatasetDType
from olmo_core.distributed.parallel import DataParallelType
from olmo_core.distributed.utils import get_rank, is_distributed
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.io import is_url
from olmo_core.nn.transformer import (
    TransformerConfig,
    TransformerDataParallelWrappingStrategy,
)
from olmo_core.optim import OptimConfig
from olmo_core.script_utils import ExperimentConfig
from olmo_core.train import Duration, TrainerConfig, prepare_training_environment
from olmo_core.train.callbacks import (
    Callback,
    CheckpointerCallback,
    ConfigSaverCallback,
    LMEvaluatorCallbackConfig,
)
from olmo_core.train.train_module import TransformerDataParallelConfig
from olmo_core.utils import seed_all

from ..data.tokens import token_dtype_for_vocab
from ..output import atomic_write_text, differences, plain
from ..seeds import DATA_SEED, INIT_SEED
from .train_module import SAMTrainModuleConfig

log = logging.getLogger(__name__)

__all__ = [
    "build_experiment",
    "run_experiment",
    "build_trainer",
    "MetricsLogCallback",
    "read_metrics",
    "RunCanceled",
    "setup_environment",
    "validate_experiment",
]

METRICS_FILE = "metrics.jsonl"
#: label of the held-out pretraining set in OLMo-core's in-loop evaluator metrics
VAL_LABEL = "pt-val"
#: an interval that never fires
NO_INTERVAL = 10**12


@dataclass
class MetricsLogCallback(Callback, Config):
    """Appends every logged metrics dict to ``{save_folder}/metrics.jsonl`` (rank 0).

    On resume, records of steps after the restored step are dropped first, so the file always
    describes one uninterrupted history; a metric logged again at a step the file already records
    (a finished run launched again re-evaluates its last step) replaces the earlier value instead of
    adding a second line. Lines are flushed as they are written.
    """

    filename: str = METRICS_FILE
    enabled: bool = True

    def _path(self) -> Path:
        return Path(str(self.trainer.save_folder)) / self.filename

    def pre_train(self):
        self._restored = self.trainer.global_step
        if not self.enabled or get_rank() != 0:
            return
        path = self._path()
        if not path.exists():
            return
        keep = [r for r in _read_jsonl(path) if r.get("step", 0) <= self._restored]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))

    def log_metrics(self, step: int, metrics: Dict[str, float]):
        if not self.enabled or get_rank() != 0:
            return
        path = self._path()
        path.parent.mkdir(parents=True, exist_ok=True)
        rec = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        restored = getattr(self, "_restored", 0)  # (0: a run from its start)
        if restored and step <= restored and path.exists():  # a step recorded before this launch
            records = _read_jsonl(path)
            for r in records:
                if r.get("step") == step:
                    for key in rec.keys() - {"step"}:
                        r.pop(key, None)
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records + [rec] if len(r) > 1))
            return
        with path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()


def _read_jsonl(path: Path) -> List[Dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line after a kill: everything before it is valid
    return out


def read_metrics(save_folder: str | Path, filename: str = METRICS_FILE) -> Dict[int, Dict[str, float]]:
    """Per-step metrics of a run, merged by step (later records of a step win)."""
    by_step: Dict[int, Dict[str, float]] = {}
    path = Path(save_folder) / filename
    if not path.exists():
        return by_step
    for rec in _read_jsonl(path):
        step = int(rec.pop("step"))
        by_step.setdefault(step, {}).update(rec)
    return by_step


@dataclass
class ValLossCallbackConfig(LMEvaluatorCallbackConfig):
    """OLMo-core's in-loop LM evaluator on the held-out pretraining split (``eval/lm/pt-val``).

    It reads the split as one sequence per document, truncated to the sequence length, in whole
    eval batches (a last partial batch is not evaluated). A split too small for one batch would
    log a NaN loss at every evaluation; the evaluator is then left out, with a warning that says
    why. (The study's ``pt_eval`` stage measures L_PT over every validation token on its own.)
    """

    def build(self, trainer: Any) -> Optional[Callback]:
        callback = super().build(trainer)
        if callback is None:
            return None
        loader = callback.evaluators[0].batches
        if loader.total_batches == 0:
            log.warning(
                "in-loop validation is off: the validation split has %d sequence(s) (one per document, "
                "truncated to %d tokens), fewer than one eval batch of %d; give more validation documents "
                "or a smaller micro-batch to see eval/lm/%s during training",
                len(loader.dataset),
                self.eval_dataset.sequence_length,
                loader.global_batch_size // self.eval_dataset.sequence_length,
                VAL_LABEL,
            )
            return None
        return callback


def build_experiment(
    *,
    model: TransformerConfig,
    tokenizer: TokenizerConfig,
    train_paths: List[str],
    save_folder: str,
    optim: OptimConfig,
    sequence_length: int,
    global_batch_size: int,
    micro_batch_size: Optional[int] = None,
    max_steps: Optional[int] = None,
    max_tokens: Optional[int] = None,
    val_paths: Optional[List[str]] = None,
    eval_interval: Optional[int] = None,
    checkpoint_interval: Optional[int] = None,
    dp: Optional[str] = None,
    param_dtype: Optional[str] = None,
    callbacks: Optional[Dict[str, Callback]] = None,
    seed: int = INIT_SEED,
    check_paths: bool = True,
) -> ExperimentConfig:
    """An OLMo-core ``ExperimentConfig`` for pretraining (or fine-tuning) with SAM support.

    Batch sizes are in *sequences* (``micro_batch_size``: per rank per forward/backward, default
    the whole batch); OLMo-core's token-denominated fields (``global_batch_size``,
    ``rank_microbatch_size``) are derived here, and only here.
    ``dp`` is ``None`` (single process), ``"ddp"``, ``"fsdp"`` or ``"hsdp"``.
    Local data paths must exist unless ``check_paths=False`` (recipes' dry runs); remote ones
    (``s3://``, ``gs://``, ``https://``) are OLMo-core's to open.

    Everything else is a field of the returned config for the caller to set, e.g.
    ``cfg.train_module.scheduler`` (default: constant LR), ``cfg.train_module.max_grad_norm``
    (default: no clipping), ``cfg.data_loader.seed`` (data order, default :data:`olmo_sam.seeds.DATA_SEED`),
    ``cfg.load_path`` (initial weights), ``cfg.trainer.hard_stop``,
    ``cfg.trainer.metrics_collect_interval``, ``cfg.train_module.z_loss_multiplier``,
    ``cfg.dataset.label_mask_paths``. Only what needs a derivation (token counts from sequences,
    the seed in two places, the data-parallel config, the callbacks) is an argument here.
    """
    if not train_paths:
        raise OLMoConfigurationError("'train_paths' is empty: give at least one token file")
    missing = [p for p in list(train_paths) + list(val_paths or []) if not is_url(str(p)) and not Path(p).exists()]
    if missing and check_paths:
        raise OLMoConfigurationError(f"data file(s) not found: {missing}; prepare them with 'olmo-sam data tokenize'")
    if (max_steps is None) == (max_tokens is None):
        raise OLMoConfigurationError("give exactly one of 'max_steps' or 'max_tokens' (a recipe's --steps or --tokens)")
    work_dir = str(Path(save_folder) / "_work")

    # Token files are uint16 up to 65536 ids, else uint32 (olmo_sam.data.tokens.token_dtype_for_vocab);
    # say so explicitly: OLMo-core would infer uint8 for vocabularies of <= 256 ids.
    token_dtype = NumpyDatasetDType(token_dtype_for_vocab(tokenizer.vocab_size).name)
    dataset = NumpyFSLDatasetConfig(
        tokenizer=tokenizer,
        dtype=token_dtype,
        paths=[str(p) for p in train_paths],
        sequence_length=sequence_length,
        work_dir=work_dir,
    )
    data_loader = NumpyDataLoaderConfig(
        global_batch_size=global_batch_size * sequence_length,
        seed=DATA_SEED,
        num_workers=0,
        work_dir=work_dir,
    )

    dp_config = None
    if dp is not None:
        try:
            dp_type = DataParallelType(dp)
        except ValueError:
            raise OLMoConfigurationError(
                f"'dp' must be one of {[t.value for t in DataParallelType]} or None, got {dp!r}"
            ) from None
        dp_config = TransformerDataParallelConfig(
            name=dp_type,
            param_dtype=DType(param_dtype) if param_dtype else None,
            reduce_dtype=DType.float32,
            wrapping_strategy=TransformerDataParallelWrappingStrategy.blocks,
        )
    elif param_dtype not in (None, "float32"):
        raise OLMoConfigurationError(
            "'param_dtype' applies to FSDP/HSDP mixed precision; set dp='fsdp' or leave it unset"
        )

    train_module = SAMTrainModuleConfig(
        rank_microbatch_size=(micro_batch_size or global_batch_size) * sequence_length,
        max_sequence_length=sequence_length,
        optim=optim,
        dp_config=dp_config,
    )

    all_callbacks: Dict[str, Callback] = {
        "metrics_log": MetricsLogCallback(),
        "config_saver": ConfigSaverCallback(),
    }
    # Always our own checkpointer: no pre-train checkpoint, a final one at the end of the run
    # (or at a hard stop), and every `checkpoint_interval` steps if given. (Not None for "never":
    # as_config_dict() drops None fields, so a YAML round trip would bring back the default 250.)
    all_callbacks["checkpointer"] = CheckpointerCallback(
        save_interval=checkpoint_interval or NO_INTERVAL,
        ephemeral_save_interval=None,
        save_async=False,
        pre_train_checkpoint=False,
    )
    if val_paths:
        all_callbacks["lm_evaluator"] = ValLossCallbackConfig(
            eval_dataset=NumpyPaddedFSLDatasetConfig(
                tokenizer=tokenizer,
                dtype=token_dtype,
                paths=[str(p) for p in val_paths],
                # OLMo-core's LM evaluator reports per 'label' (eval/lm/{label}/CE loss) and
                # refuses datasets without one
                metadata=[{"label": VAL_LABEL}] * len(val_paths),
                sequence_length=sequence_length,
                work_dir=work_dir,
            ),
            eval_interval=eval_interval or NO_INTERVAL,  # (not None: see the checkpointer)
            eval_on_finish=True,
        )
    all_callbacks.update(callbacks or {})

    duration = Duration.steps(max_steps) if max_steps is not None else Duration.tokens(max_tokens)  # type: ignore[arg-type]
    trainer = TrainerConfig(
        save_folder=save_folder,
        work_dir=work_dir,
        save_overwrite=True,
        max_duration=duration,
        metrics_collect_interval=1,
        callbacks=all_callbacks,
        cancel_check_interval=10,
    )
    # OLMo-core draws the initial weights from the *model* config's own ``init_seed`` (the
    # experiment's ``init_seed`` only seeds the global RNGs), so the seed must go there too or
    # every run starts from the same weights whatever its seed.
    model = dataclasses.replace(model, init_seed=seed)
    return ExperimentConfig(
        model=model,
        dataset=dataset,
        data_loader=data_loader,
        train_module=train_module,
        trainer=trainer,
        init_seed=seed,
    )


def validate_experiment(config: ExperimentConfig) -> None:
    """Checks OLMo-core leaves to run time (or ignores) that we want before any compute."""
    from olmo_core.train.callbacks import Callback as _Callback

    for name, cb in config.trainer.callbacks.items():
        if type(cb) is _Callback:
            raise OLMoConfigurationError(
                f"trainer.callbacks.{name} decoded to a bare Callback: its '_CLASS_' field is "
                "missing or wrong, so it would silently do nothing"
            )
    tok = config.dataset.tokenizer
    if tok.vocab_size > config.model.vocab_size:
        raise OLMoConfigurationError(
            f"tokenizer vocab_size ({tok.vocab_size}) exceeds the model's embedding rows "
            f"(model.vocab_size={config.model.vocab_size}): the data and model do not match"
        )
    # Token files must exist and fit the tokenizer (prepared-dataset metadata, dtype, ids).
    from ..data.tokens import check_token_files

    check_token_files(list(getattr(config.dataset, "paths", None) or []), tok, "train data")
    for name, cb in config.trainer.callbacks.items():
        eval_ds = getattr(cb, "eval_dataset", None)
        if eval_ds is not None and getattr(eval_ds, "paths", None):
            check_token_files(list(eval_ds.paths), eval_ds.tokenizer, f"{name} validation data")


#: the sections of an experiment that a resumed run must share with the checkpoint it resumes
#: (the trainer's may change: a longer ``max_duration``, a ``hard_stop``, other intervals; so may
#: the data parallelism, for a run resumed on another number of GPUs, and the cache directories,
#: for a run directory moved or copied elsewhere)
RUN_SECTIONS = ("model", "dataset", "data_loader", "train_module", "init_seed")
MAY_CHANGE = ("train_module.dp_config", "dataset.work_dir", "data_loader.work_dir")


def check_same_run(config: ExperimentConfig) -> None:
    """Refuse to resume a save folder whose latest checkpoint was written by a run with other
    settings (its ``config.json``, written by OLMo-core's ``ConfigSaverCallback``): OLMo-core would
    load it and go on under the new settings, one run of two configurations recorded as the last."""
    from ..checkpoints import latest_step_dir

    step = latest_step_dir(Path(str(config.trainer.save_folder)))
    saved = step / "config.json" if step is not None else None
    if saved is None or not saved.is_file():
        return
    try:
        old = json.loads(saved.read_text())
    except (OSError, ValueError):
        return  # not ours to judge: OLMo-core loads the checkpoint itself
    new = plain(config.as_config_dict())
    diffs = [
        d
        for d in differences({k: old.get(k) for k in RUN_SECTIONS}, {k: new.get(k) for k in RUN_SECTIONS}, same=_same)
        if not any(d[0] == key or d[0].startswith(key + ".") for key in MAY_CHANGE)
    ]
    if diffs:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs[:4]) + (" ..." if len(diffs) > 4 else "")
        raise OLMoConfigurationError(
            f"{config.trainer.save_folder} holds a run with other settings ({shown}), which resuming "
            "would continue under the new ones; use a new output directory, or the same settings to resume "
            "(the run's length may change)"
        )


def check_stop_step(config: ExperimentConfig) -> None:
    """Refuse a stop (``--stop-at-step``: ``trainer.hard_stop``, in steps or tokens) behind the save
    folder's latest checkpoint: OLMo-core would load that checkpoint, find the stop passed and
    report the run complete, training nothing."""
    from ..checkpoints import latest_step_dir

    stop = config.trainer.hard_stop
    latest = latest_step_dir(Path(str(config.trainer.save_folder)))
    if stop is None or stop.unit not in ("steps", "tokens") or latest is None:
        return
    reached = int(latest.name[len("step") :])
    if stop.unit == "steps" and stop.value < reached:
        raise OLMoConfigurationError(
            f"--stop-at-step {stop.value} (trainer.hard_stop) is behind the run's latest checkpoint, step {reached} in "
            f"{config.trainer.save_folder}: give a --stop-at-step after {reached} (or none) to go on, or another --out "
            "for a new run"
        )
    tokens = reached * config.data_loader.global_batch_size
    if stop.unit == "tokens" and stop.value < tokens:
        raise OLMoConfigurationError(
            f"trainer.hard_stop = {stop.value:,d} tokens is behind the run's latest checkpoint, step {reached} "
            f"({tokens:,d} tokens) in {config.trainer.save_folder}: give a stop after it (or none) to go on, or "
            "another --out for a new run"
        )


def _same(a: Any, b: Any) -> bool:
    """Equal, or naming one existing file another way (a relative and an absolute data path)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, str) and isinstance(b, str) and a != b and Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return a == b


def setup_environment(threads: Optional[int] = None) -> None:
    """Initialise (distributed) training the way these machines need it.

    One process: no process group. Under torchrun: gloo on CPU, NCCL (+gloo) on GPUs. On CPU the
    intra-op thread count defaults to ``OMP_NUM_THREADS`` or 1 (several threads per process are
    much slower on small models here).
    """
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    else:
        backend = None
    if not torch.cuda.is_available():
        n = threads or int(os.environ.get("OMP_NUM_THREADS", "1"))
        os.environ.setdefault("OMP_NUM_THREADS", str(n))
        torch.set_num_threads(n)
    if not is_distributed():
        prepare_training_environment(backend=backend, shared_filesystem=True)


def build_trainer(config: ExperimentConfig, *, setup: bool = True):
    """Build model, train module, data loader and trainer from ``config`` (OLMo-core's order),
    loading the latest checkpoint of the save folder (resume) or ``load_path`` (initial weights).
    """
    validate_experiment(config)
    check_same_run(config)
    check_stop_step(config)
    if setup:
        setup_environment()
    seed_all(config.init_seed)
    model = config.model.build(init_device="meta")
    train_module = config.train_module.build(model)
    dataset = config.dataset.build()
    data_loader = config.data_loader.build(dataset, dp_process_group=train_module.dp_process_group)
    trainer = config.trainer.build(train_module, data_loader)
    for callback in trainer.callbacks.values():
        if isinstance(callback, ConfigSaverCallback):
            callback.config = config.as_config_dict()
            break
    if trainer.no_checkpoints:
        return trainer
    if trainer.maybe_load_checkpoint():
        # The checkpoint resumed from is on disk. OLMo-core's checkpointer counts its last save
        # from -1 on every launch, so a finished run launched again saved its last step once more
        # (rewriting the finished checkpoint in place: a kill then could damage it).
        for callback in trainer.callbacks.values():
            if isinstance(callback, CheckpointerCallback):
                callback._latest_checkpoint_step = trainer.global_step
    elif config.load_path:
        log.info(f"Loading weights from {config.load_path} (no checkpoint in the save folder)")
        trainer.load_checkpoint(config.load_path, load_trainer_state=False, load_optim_state=False)
    return trainer


class RunCanceled(KeyboardInterrupt):
    """Training was stopped before its end by SIGINT/SIGTERM (or a callback): OLMo-core saves a
    checkpoint and returns from ``fit()`` as if done. A ``KeyboardInterrupt``, so that what catches
    a failed run (``except Exception``: a sweep goes on to its next run) lets it through: a cut-short
    run is neither a result nor a failure, and the command stops (exit 130)."""


def run_experiment(config: ExperimentConfig, *, setup: bool = True):
    """Build everything from ``config`` and train. Returns the trainer; raises :class:`RunCanceled`
    when training stopped before its end other than at ``trainer.hard_stop``.

    Re-running with the same ``save_folder`` resumes from its latest checkpoint.
    """
    trainer = build_trainer(config, setup=setup)
    trainer.fit()
    if trainer.is_canceled:
        of = f" of {trainer.max_steps:,d}" if trainer.max_steps is not None else ""  # (an epoch budget: unknown)
        raise RunCanceled(
            f"training stopped at step {trainer.global_step:,d}{of} "
            f"({getattr(trainer, '_cancel_reason', None) or 'canceled'}); the same command resumes it from "
            f"its checkpoint in {config.trainer.save_folder}"
        )
    return trainer
