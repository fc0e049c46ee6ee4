"""What the probe drivers share: which model a path names, how to load it, the validation-loss
settings, and atomic result files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from olmo_core.exceptions import OLMoConfigurationError

from ..files import read_json
from ..output import save_figure as _save_figure
from ..preflight import check_safetensors

__all__ = ["ModelRef", "model_refs", "load_full_precision", "save_figure"]


def is_hf_model_dir(path: Path) -> bool:
    """A directory with a ``config.json`` naming a ``model_type`` and no OLMo-core weights; a
    corrupt ``config.json`` (or ``*.safetensors`` header) is one line naming the file."""
    cfg = path / "config.json"
    if not (path.is_dir() and cfg.exists()) or (path / "model_and_optim").exists():
        return False
    data = read_json(cfg, what="model config.json")
    if isinstance(data, dict) and "model_type" in data:
        check_safetensors(path)
        return True
    return False


@dataclass
class ModelRef:
    """A model to probe: an OLMo-core checkpoint (step or run directory) or an exported Hugging
    Face model directory, with the label it carries in tables and plots."""

    path: Path
    label: str
    kind: str  # "olmo" | "hf"
    step: Optional[int] = None
    tokens: Optional[int] = None
    #: peak learning rate of the run that produced it (for 2/lr), when known
    lr: Optional[float] = None
    vocab_size: int = 0
    sequence_length: Optional[int] = None
    config: Dict[str, Any] = field(default_factory=dict, repr=False)

    def describe(self) -> Dict[str, Any]:
        return {
            "label": self.label,
            "path": str(self.path),
            "kind": self.kind,
            "step": self.step,
            "tokens": self.tokens,
            "lr": self.lr,
        }


def _peak_lr(cfg: Mapping[str, Any]) -> Optional[float]:
    optim = (cfg.get("train_module") or {}).get("optim") or {}
    for d in (optim, optim.get("base") or {}):
        lr = d.get("lr")
        if isinstance(lr, (int, float)):
            return float(lr)
    return None


def model_ref(path: str | Path, label: Optional[str] = None) -> ModelRef:
    p = Path(path)
    if is_hf_model_dir(p):
        cfg = read_json(p / "config.json", what="model config.json")
        return ModelRef(
            path=p,
            label=label or p.name,
            kind="hf",
            vocab_size=int(cfg["vocab_size"]),
            sequence_length=cfg.get("max_position_embeddings"),
            config=cfg,
        )
    from ..checkpoints import load_checkpoint_config, resolve_checkpoint

    step_dir = resolve_checkpoint(p)
    cfg = load_checkpoint_config(step_dir)
    step = int(step_dir.name[4:]) if step_dir.name.startswith("step") and step_dir.name[4:].isdigit() else None
    gbs = (cfg.get("data_loader") or {}).get("global_batch_size")
    tok = (cfg.get("dataset") or {}).get("tokenizer") or {}
    vocab = tok.get("vocab_size") or (cfg.get("model") or {}).get("vocab_size")
    if not vocab:
        raise OLMoConfigurationError(
            f"{step_dir}: config.json has neither dataset.tokenizer.vocab_size nor model.vocab_size"
        )
    return ModelRef(
        path=step_dir,
        label=label or (f"{step_dir.parent.name}/{step_dir.name}"),
        kind="olmo",
        step=step,
        tokens=step * int(gbs) if step is not None and gbs else None,
        lr=_peak_lr(cfg),
        vocab_size=int(vocab),
        sequence_length=(cfg.get("dataset") or {}).get("sequence_length"),
        config=cfg,
    )


def model_refs(paths: Sequence[str | Path], labels: Sequence[str] = ()) -> List[ModelRef]:
    """One :class:`ModelRef` per path; ``labels`` (optional) must match ``paths`` one to one."""
    if labels and len(labels) != len(paths):
        raise OLMoConfigurationError(
            f"got {len(labels)} label(s) for {len(paths)} checkpoint(s); give one label per checkpoint or none"
        )
    if not paths:
        raise OLMoConfigurationError("no checkpoint given")
    refs = [model_ref(p, labels[i] if labels else None) for i, p in enumerate(paths)]
    seen: Dict[str, str] = {}
    for r in refs:
        if r.label in seen:
            raise OLMoConfigurationError(
                f"two checkpoints share the label {r.label!r} ({seen[r.label]} and {r.path}); give distinct labels"
            )
        seen[r.label] = str(r.path)
    return refs


def load_full_precision(ref: ModelRef, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The unquantized float32 model behind ``ref``, in eval mode."""
    if ref.kind == "hf":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(ref.path), dtype=torch.float32)
        return model.to(device).eval()
    from ..checkpoints import load_transformer

    model, _ = load_transformer(ref.path, device=device, dtype=torch.float32)
    return model


def eval_seq_len(ref: ModelRef, seq_len: Optional[int]) -> int:
    s = seq_len or ref.sequence_length
    if not s:
        raise OLMoConfigurationError(f"{ref.path}: no sequence length recorded; give 'seq_len' (--seq-len)")
    return int(s)


def check_val_paths(val_paths: Sequence[str | Path]) -> List[str]:
    if not val_paths:
        raise OLMoConfigurationError(
            "no pretraining validation token files given (--val); the probes measure L_PT on them"
        )
    missing = [str(p) for p in val_paths if not Path(p).exists()]
    if missing:
        raise OLMoConfigurationError(f"validation file(s) not found: {missing}")
    seen: Dict[Path, str] = {}
    for p in val_paths:  # (a file given twice would count twice in L_PT)
        key = Path(p).resolve()
        if key in seen:
            raise OLMoConfigurationError(f"--val {p} is given twice (also as {seen[key]}); give each once")
        seen[key] = str(p)
    return [str(p) for p in val_paths]


# -------------------------------------------------------------------------------------------------
# Result files
# -------------------------------------------------------------------------------------------------


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure atomically (format from the suffix) and close it."""
    import matplotlib.pyplot as plt

    try:
        return _save_figure(fig, path, dpi=150, bbox_inches="tight")
    finally:
        plt.close(fig)
