"""What a pretrained base is, as one record: written by its training job into the job's result
(``done.json``), read back by the analysis, the fine-tuning stage and :meth:`Plan.unit_meta`
under the same names.

A *base* is one study unit's checkpoint: an arm at one budget and pretraining seed. Its budget
``budget_tpp`` is the study file's tokens per parameter (the recipes' count,
:func:`olmo_sam.recipes.pretrain.budget_params`), else the recipe's own, else (a mid-training
run, a run by steps or tokens) the measured tokens per total parameter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional

from .spec import StudyError

__all__ = ["BaseRecord", "checkpoint_budget"]


@dataclass(frozen=True)
class BaseRecord:
    arm: str
    #: the study's pretraining seed (initialisation and data order: :mod:`olmo_sam.seeds`)
    seed: int
    #: the budget the base is grouped and compared under, in tokens per parameter (module docstring)
    budget_tpp: Optional[float]
    tokens: Optional[int]
    steps: Optional[int]
    params_total: Optional[int]
    params_non_embedding: Optional[int]
    #: tokens per total / non-embedding parameter, measured
    tpp_total: Optional[float]
    tpp_non_embedding: Optional[float]
    #: passes over the training data
    data_epochs: Optional[float]
    data_source: Optional[str]

    @classmethod
    def measure(cls, params: Dict[str, Any], run: Dict[str, Any], data: Dict[str, Any]) -> "BaseRecord":
        """The record of the base that the job with ``params`` (its plan parameters) trained:
        ``run`` holds its ``tokens``, ``steps``, parameter counts and tokens per parameter both
        ways (a recipe's resolved budget, or :func:`checkpoint_budget`), ``data`` the study's data."""
        tokens = run.get("tokens")
        train_tokens = data.get("train_tokens")
        budget = next(
            (v for v in (params.get("budget_tpp"), run.get("budget_tpp"), run.get("tpp_total")) if v is not None), None
        )
        return cls(
            arm=params["arm"],
            seed=params["seed"],
            budget_tpp=budget,
            tokens=tokens,
            steps=run.get("steps"),
            params_total=run.get("params_total"),
            params_non_embedding=run.get("params_non_embedding"),
            tpp_total=run.get("tpp_total"),
            tpp_non_embedding=run.get("tpp_non_embedding"),
            data_epochs=tokens / train_tokens if tokens and train_tokens else None,
            data_source=data.get("description") or data.get("source"),
        )

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_result(cls, result: Dict[str, Any], job_id: str) -> "BaseRecord":
        """The record in the result of job ``job_id`` (every field, as written)."""
        missing = [f.name for f in fields(cls) if f.name not in result]
        if missing:
            raise StudyError(
                f"{job_id}: its result has no {missing} (written by an older olmo-sam); "
                f"train it again: olmo-sam study run FILE --rerun --stages {job_id.split('/', 1)[0]}"
            )
        return cls(**{f.name: result[f.name] for f in fields(cls)})


def checkpoint_budget(checkpoint: str) -> Dict[str, Any]:
    """``tokens`` (steps x global batch tokens), ``steps``, parameter counts and tokens per
    parameter both ways of a trained checkpoint, from its config (a mid-training run)."""
    from ..checkpoints import checkpoint_info
    from ..models import param_counts

    info = checkpoint_info(checkpoint)
    counts = param_counts(info.model_config)
    batch_tokens = (info.config.get("data_loader") or {}).get("global_batch_size")
    tokens = info.step * int(batch_tokens) if info.step is not None and batch_tokens else None
    return {
        "tokens": tokens,
        "steps": info.step,
        "params_total": counts.total,
        "params_non_embedding": counts.non_embedding,
        "tpp_total": tokens / counts.total if tokens else None,
        "tpp_non_embedding": tokens / counts.non_embedding if tokens else None,
    }
