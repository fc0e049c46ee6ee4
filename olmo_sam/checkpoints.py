"""Load and save OLMo-core checkpoints as plain (unsharded) models for probes, fine-tuning, export.

A checkpoint is an OLMo-core step directory (``{save_folder}/step{N}``) holding
``model_and_optim/`` (torch distributed checkpoint, single-process or FSDP-sharded) and the
``config.json`` that the trainer's ``ConfigSaverCallback`` wrote. A run directory (its
``save_folder``) resolves to its latest step.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
from olmo_core.data import TokenizerConfig
from olmo_core.distributed.checkpoint import (
    load_model_and_optim_state,
    save_model_and_optim_state,
)
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.nn.transformer import Transformer, TransformerConfig

from .output import atomic_write_text

__all__ = [
    "CheckpointInfo",
    "resolve_checkpoint",
    "load_checkpoint_config",
    "checkpoint_info",
    "load_transformer",
    "save_transformer",
    "latest_step_dir",
    "trainer_load_path",
]

_STEP_RE = re.compile(r"^step(\d+)$")


def latest_step_dir(run_dir: Path) -> Optional[Path]:
    steps = []
    for child in run_dir.iterdir() if run_dir.is_dir() else []:
        m = _STEP_RE.match(child.name)
        if m and (child / "model_and_optim").is_dir() and (child / "model_and_optim" / ".metadata").exists():
            steps.append((int(m.group(1)), child))
    return max(steps)[1] if steps else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A step directory for ``path`` (a step directory, or a run directory -> its latest step)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if (p / "model_and_optim").is_dir():
        return p
    if p.name == "model_and_optim" and p.is_dir():
        return p.parent
    step = latest_step_dir(p)
    if step is None:
        raise FileNotFoundError(
            f"{p} is neither an OLMo-core step directory (with model_and_optim/) nor a run directory containing one"
        )
    return step


def trainer_load_path(path: str | Path) -> str:
    """The trainer's ``load_path`` for a base checkpoint ``path`` (any form
    :func:`resolve_checkpoint` accepts; URLs pass through unchanged).

    A full trainer checkpoint (a step directory with ``train/``) is returned as its step
    directory. A model-only checkpoint -- what ``olmo-sam import-hf``, the WiSE-FT baseline and
    :func:`save_transformer` write: ``stepN/`` with ``model_and_optim/`` and ``config.json`` but no
    trainer state -- becomes its ``model_and_optim`` directory, the form in which OLMo-core's
    ``Trainer.load_checkpoint`` loads bare weights (given the step directory it looks for
    trainer checkpoints inside it and fails with "No checkpoints found"). The fine-tuner, the
    sweep and the mid-training recipe all start through this function.
    """
    from olmo_core.io import is_url

    if is_url(str(path)):
        return str(path)
    step = resolve_checkpoint(path)
    if (step / "train").is_dir():
        return str(step)
    return str(step / "model_and_optim")


def load_checkpoint_config(path: str | Path) -> Dict[str, Any]:
    step = resolve_checkpoint(path)
    for candidate in (step / "config.json", step.parent / "config.json"):
        if candidate.exists():
            from .files import read_json

            return read_json(candidate, what="checkpoint config.json")
    raise FileNotFoundError(f"no config.json next to {step}; it is written by OLMo-core's ConfigSaverCallback")


@dataclass
class CheckpointInfo:
    path: Path
    config: Dict[str, Any]
    model_config: TransformerConfig
    tokenizer: Optional[TokenizerConfig]
    sequence_length: Optional[int]
    train_paths: List[str]
    step: Optional[int]
    #: the length of the run that wrote it, in steps (its ``trainer.max_duration``); ``None``
    #: when not recorded (an imported or model-only checkpoint) or in epochs
    planned_steps: Optional[int] = None


def _planned_steps(cfg: Dict[str, Any]) -> Optional[int]:
    duration = (cfg.get("trainer") or {}).get("max_duration") or {}
    value, unit = duration.get("value"), duration.get("unit")
    if unit == "steps" and isinstance(value, int):
        return value
    batch = (cfg.get("data_loader") or {}).get("global_batch_size")  # tokens per step
    if unit == "tokens" and isinstance(value, int) and isinstance(batch, int) and batch > 0:
        return math.ceil(value / batch)
    return None


def _info(step_dir: Path, cfg: Dict[str, Any]) -> CheckpointInfo:
    import olmo_sam  # noqa: F401  (registrations needed to decode configs)

    model_cfg = TransformerConfig.from_dict(dict(cfg["model"]))
    ds = cfg.get("dataset") or {}
    tok = TokenizerConfig.from_dict(dict(ds["tokenizer"])) if ds.get("tokenizer") else None
    m = _STEP_RE.match(step_dir.name)
    return CheckpointInfo(
        path=step_dir,
        config=cfg,
        model_config=model_cfg,
        tokenizer=tok,
        sequence_length=ds.get("sequence_length"),
        train_paths=list(ds.get("paths") or []),
        step=int(m.group(1)) if m else None,
        planned_steps=_planned_steps(cfg),
    )


def checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Model config, tokenizer, sequence length, data paths of a checkpoint, without its weights."""
    step_dir = resolve_checkpoint(path)
    return _info(step_dir, load_checkpoint_config(step_dir))


def unreadable_checkpoint(path: Path, error: BaseException) -> OLMoConfigurationError:
    """One line for a checkpoint whose files cannot be read (a truncated ``.distcp``, say)."""
    first = (str(error).strip().splitlines() or [""])[0][:200]
    return OLMoConfigurationError(
        f"{path}: the checkpoint could not be read ({type(error).__name__}: {first}); a file is truncated or "
        "corrupt (an interrupted save or copy?): copy it again, or use an earlier step directory"
    )


@contextlib.contextmanager
def _single_process_notice_off() -> Iterator[None]:
    """torch.distributed.checkpoint warns "torch.distributed is disabled, unavailable or
    uninitialized, assuming the intent is to load (save) in a single process" on every call without
    a process group: the very case of these helpers, so not a warning to print."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def load_transformer(
    path: str | Path, device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None
) -> tuple[Transformer, CheckpointInfo]:
    """Build the checkpoint's model (unsharded, on ``device``) and load its weights."""
    step_dir = resolve_checkpoint(path)
    info = _info(step_dir, load_checkpoint_config(step_dir))
    model = info.model_config.build(init_device="cpu")
    # init_weights also fills non-persistent buffers (RoPE caches) that checkpoints do not hold
    model.init_weights(max_seq_len=info.sequence_length, device=torch.device("cpu"))
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    try:
        with _single_process_notice_off():
            load_model_and_optim_state(str(step_dir / "model_and_optim"), model)
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - torch.distributed.checkpoint raises many kinds
        raise unreadable_checkpoint(step_dir / "model_and_optim", e) from None
    model = model.to(device=device)
    if dtype is not None:
        model = model.to(dtype=dtype)
    model.eval()
    return model, info


def save_transformer(model: Transformer, out_dir: str | Path, config: Dict[str, Any], *, step: int = 0) -> Path:
    """Save ``model`` as ``{out_dir}/step{step}`` with ``config.json``, loadable by
    :func:`load_transformer` (and by OLMo-core's trainer via ``load_path``)."""
    step_dir = Path(out_dir) / f"step{step}"
    step_dir.mkdir(parents=True, exist_ok=True)
    with _single_process_notice_off():
        save_model_and_optim_state(str(step_dir / "model_and_optim"), model, save_overwrite=True)
    atomic_write_text(step_dir / "config.json", json.dumps(config))
    return step_dir
