"""LoRA fine-tuning of OLMo-core transformers with PEFT, inside OLMo-core's own trainer.

LoRA (Hu et al. 2022; the baseline of [CFS] Sec 3, rank 256 with alpha = rank, App E.1) replaces
each targeted linear map ``W x`` by ``W x + (alpha / r) B A x`` with trainable ``A`` (r x in) and
``B`` (out x r, zero-initialised) while ``W`` stays frozen. PEFT's ``inject_adapter_in_model``
wraps OLMo-core's ``nn.Linear`` layers in place; nothing else in the model changes.

Wiring into the trainer (:class:`LoRATrainModuleConfig`):

1. the adapters are injected into the (meta-device) model before OLMo-core parallelises it and
   builds the optimizer, which therefore only holds the adapter parameters;
2. after OLMo-core's weight initialisation the adapters are re-initialised the LoRA way
   (OLMo-core's init resets every ``nn.Linear``, including ``B``);
3. the base checkpoint (``load_path``) loads through OLMo-core's ``load_key_mapping``
   (``...w_q.base_layer.weight`` <- ``...w_q.weight``), non-strict only for the adapter
   parameters that a base checkpoint cannot hold; the run's own checkpoints hold everything.

For evaluation the trained adapters are merged (:func:`load_merged_lora`), giving a plain
``Transformer`` with ``W + (alpha / r) B A``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Dict, Optional

import torch
from olmo_core.config import Config
from olmo_core.distributed.checkpoint import load_model_and_optim_state
from olmo_core.distributed.utils import get_local_tensor
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.nn.transformer import Transformer

from .. import paper
from ..checkpoints import load_transformer, resolve_checkpoint
from ..config import check_fields, setting
from ..train.train_module import SAMTrainModuleConfig, SAMTransformerTrainModule
from .sharding import local_like

log = logging.getLogger(__name__)

__all__ = [
    "LoRASettings",
    "LoRATrainModuleConfig",
    "inject_lora",
    "reset_lora_parameters",
    "merge_lora",
    "load_merged_lora",
]

#: Every linear map of every block (attention q/k/v/out, SwiGLU w1/w2/w3); not the LM head.
DEFAULT_TARGETS = r"blocks\.\d+\.(attention\.(w_q|w_k|w_v|w_out)|feed_forward\.(w1|w2|w3))"
ADAPTER = "default"


@dataclass
class LoRASettings(Config):
    rank: int = setting(paper.LORA_RANK, ge=1)
    #: scaling numerator; ``None`` = the rank ([CFS] App E.1 keeps alpha equal to r)
    alpha: Optional[float] = None
    dropout: float = setting(0.0, ge=0, lt=1)
    #: regular expression matched (fullmatch) against module names
    target_modules: str = DEFAULT_TARGETS
    init_seed: int = 0

    def __post_init__(self):
        check_fields(self)

    @property
    def scale_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)


def _lora_layers(model: torch.nn.Module):
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def inject_lora(model: torch.nn.Module, settings: LoRASettings) -> Dict[str, str]:
    """Wrap the targeted linear layers in place, freeze everything else, and return the
    state-dict key mapping (current key -> base-checkpoint key) of the wrapped weights."""
    from peft import LoraConfig, inject_adapter_in_model

    pattern = re.compile(settings.target_modules)
    if not any(pattern.fullmatch(n) for n, _ in model.named_modules()):
        raise OLMoConfigurationError(f"LoRA target_modules {settings.target_modules!r} matches no module of the model")
    cfg = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.scale_alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        bias="none",
    )
    inject_adapter_in_model(cfg, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return {k: k.replace(".base_layer.", ".") for k in model.state_dict() if ".base_layer." in k}


@torch.no_grad()
def reset_lora_parameters(model: torch.nn.Module, seed: int) -> None:
    """LoRA's own init (A Kaiming-uniform as PEFT does, B zero), drawn as full tensors from a
    seeded generator so that every rank and every sharding gets the same adapters."""
    g = torch.Generator().manual_seed(seed)
    for _, layer in _lora_layers(model):
        a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        full_a = torch.empty(a.shape, dtype=torch.float32)
        torch.nn.init.kaiming_uniform_(full_a, a=math.sqrt(5), generator=g)
        get_local_tensor(a).copy_(local_like(full_a, a, a.dtype))
        get_local_tensor(b).zero_()


@torch.no_grad()
def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Merge every adapter into its base weight and put the plain layer back (in place)."""
    for name, layer in _lora_layers(model):
        layer.merge(safe_merge=True, adapter_names=[ADAPTER])
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    return model


def load_merged_lora(
    base: str | Path, trained: str | Path, settings: LoRASettings, device: str | torch.device = "cpu"
) -> Transformer:
    """The base model with the adapters of the trained checkpoint merged in."""
    model, _ = load_transformer(base)
    inject_lora(model, settings)
    load_model_and_optim_state(str(resolve_checkpoint(trained) / "model_and_optim"), model)
    model = merge_lora(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.to(device).eval()  # type: ignore[return-value]


@dataclass
class LoRATrainModuleConfig(SAMTrainModuleConfig):
    """:class:`~olmo_sam.train.SAMTrainModuleConfig` that trains LoRA adapters (module docstring)."""

    lora: Optional[LoRASettings] = None

    def build(
        self, model: Transformer, device: Optional[torch.device] = None, eval_only: bool = False
    ) -> SAMTransformerTrainModule:
        if self.lora is None:
            raise OLMoConfigurationError("LoRATrainModuleConfig.lora is not set")
        mapping = inject_lora(model, self.lora)
        base = SAMTrainModuleConfig(**{f.name: getattr(self, f.name) for f in fields(SAMTrainModuleConfig)})
        base.load_key_mapping = {**(self.load_key_mapping or {}), **mapping}
        # only the adapters may be absent from a checkpoint (the base one); see module docstring
        base.state_dict_load_opts = {
            **(self.state_dict_load_opts or {}),
            "strict": False,
            "flatten_optimizer_state_dict": True,
        }
        train_module = base.build(model, device=device, eval_only=eval_only)
        reset_lora_parameters(train_module.model, self.lora.init_seed)
        n_train = sum(p.numel() for p in train_module.model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in train_module.model.parameters())
        log.info(f"LoRA r={self.lora.rank}: training {n_train:,d} of {n_all:,d} parameters")
        return train_module
