"""What a pretrained base is, as one record: written by its training job into the job's result
(``done.json``), read back by the analysis, the fine-tuning stage and :meth:`Plan.unit_meta`
under the same names.

A *base* is one study unit's checkpoint: an arm at one budget and pretraining seed. Its budget
``budget_tpp`` is the study file's tokens per parameter (the recipes' count,
:func:`olmo_sam.recipes.pretrain.budget_params`), else the recipe's own, else (a mid-training
run, a run by steps or tokens) the measured tokens per total parameter.

The analysis sees a base as a :class:`Base` (arm, seed, budget, sizes) and the study's bases as a
:class:`BaseSet`: its arms, budgets and the comparisons of an arm with its reference over seeds,
which every stage's analysis section uses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional, Tuple

from ..analysis.findings import make_finding
from ..analysis.stats import IntervalSpec, compare_seeds, interval_method, mean_interval
from ..config import ConfigError

__all__ = ["BaseRecord", "checkpoint_budget", "Base", "BaseSet", "base_of", "budget_key", "RECORD_FIELDS"]


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
            budget_tpp=None if budget is None else float(budget),
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
            raise ConfigError(
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


# -- the analysis's view of the bases ------------------------------------------------------------


@dataclass(frozen=True)
class Base(BaseRecord):
    """The analysis's view of a base: its record and the study unit it belongs to."""

    unit: str

    @property
    def budget_key(self) -> Optional[float]:
        return budget_key(self.budget_tpp)


def budget_key(tpp: Optional[float]) -> Optional[float]:
    """Bases whose budgets agree to 3 significant digits are compared with each other."""
    return None if tpp is None else float(f"{tpp:.3g}")


#: fields of a pretraining record copied into ``summary["bases"]`` as they are
RECORD_FIELDS = ("steps", "tpp_total", "tpp_non_embedding", "data_epochs", "data_source")


def base_of(unit: str, record: BaseRecord) -> Base:
    """The analysis's view of the base ``unit`` (its pretraining job's :class:`BaseRecord`)."""
    return Base(unit=unit, **record.to_dict())


class BaseSet:
    """The study's bases, their arms (the first is the reference), budgets and the comparisons."""

    def __init__(
        self,
        bases: List[Base],
        spec: IntervalSpec,
        references: Optional[Dict[str, str]] = None,
        contrasts: Optional[Dict[str, str]] = None,
    ):
        self.by_unit = {b.unit: b for b in bases}
        self.arms = list(dict.fromkeys(b.arm for b in bases))
        self.reference = self.arms[0] if self.arms else None
        #: arm -> the arm it is compared with (default: the first arm), and what they differ in
        self.references = {a: r for a, r in (references or {}).items() if a in self.arms and r in self.arms}
        self.contrasts = dict(contrasts or {})
        self.budgets = sorted({b.budget_key for b in bases}, key=lambda k: (k is None, k or 0.0))
        self.spec = spec
        seen: Dict[Tuple, str] = {}
        for b in bases:
            key = (b.arm, b.budget_key, b.seed)
            if key in seen:
                raise ConfigError(
                    f"units '{seen[key]}' and '{b.unit}' are both arm '{b.arm}', seed {b.seed} at "
                    f"{b.budget_tpp} tokens/param: give each base of an arm and budget its own seed"
                )
            seen[key] = b.unit

    def cell(self, arm: str, key: Optional[float], values: Dict[str, float]) -> Dict[int, float]:
        """seed -> value for the bases of one arm and budget that have a value."""
        return {
            b.seed: values[b.unit]
            for b in self.by_unit.values()
            if b.arm == arm and b.budget_key == key and values.get(b.unit) is not None and math.isfinite(values[b.unit])
        }

    def budget(self, key: Optional[float]) -> Dict[str, Any]:
        bs = [b for b in self.by_unit.values() if b.budget_key == key]
        ref = [b for b in bs if b.arm == self.reference] or bs
        b = ref[0]
        return {"budget_tpp": b.budget_tpp, "tpp_non_embedding": b.tpp_non_embedding, "tokens": b.tokens}

    def budget_label(self, key: Optional[float]) -> str:
        return "budget n/a" if key is None else f"{key:g} tok/param"

    @property
    def xlog(self) -> bool:
        return all(k is not None and k > 0 for k in self.budgets)

    def x(self, key: Optional[float]) -> float:
        return key if self.xlog else float(self.budgets.index(key))  # type: ignore[return-value]

    @property
    def max_seeds(self) -> int:
        counts: Dict[Tuple, int] = {}
        for b in self.by_unit.values():
            counts[(b.arm, b.budget_key)] = counts.get((b.arm, b.budget_key), 0) + 1
        return max(counts.values(), default=0)

    def reference_of(self, arm: str) -> Optional[str]:
        """The arm ``arm`` is compared with (None for the study's first arm without a reference)."""
        ref = self.references.get(arm, self.reference)
        return None if ref == arm else ref

    def compare(self, values: Dict[str, float], **kw) -> List[Dict[str, Any]]:
        """One finding per arm with a reference and budget with values for both arms."""
        out: List[Dict[str, Any]] = []
        extra = dict(kw.pop("extra", None) or {})
        for key in self.budgets:
            for arm in self.arms:
                ref_arm = self.reference_of(arm)
                ref = self.cell(ref_arm, key, values) if ref_arm else {}
                vals = self.cell(arm, key, values)
                if vals and ref:
                    diff = compare_seeds(vals, ref, self.spec)
                    note = {"note": self.contrast_note(arm)} if arm in self.contrasts else {}
                    out.append(
                        make_finding(
                            arm=arm,
                            reference=ref_arm,
                            diff=diff,
                            budget=self.budget(key),
                            extra={**extra, **self.contrast(arm), **note},
                            **kw,
                        )
                    )
        return out

    def contrast(self, arm: str) -> Dict[str, str]:
        """``{"contrast": what arm and its reference differ in}`` (empty when unknown)."""
        return {"contrast": self.contrasts[arm]} if arm in self.contrasts else {}

    def contrast_note(self, arm: str) -> Optional[str]:
        if arm not in self.contrasts:
            return None
        return f"({arm} and {self.reference_of(arm)} differ in: {self.contrasts[arm]}.)"

    def band(self, arm: str, key: Optional[float], values: Dict[str, float], x: Optional[float] = None):
        """(x, mean, low, high) over the seeds of one arm and budget, or None without values."""
        vals = list(self.cell(arm, key, values).values())
        if not vals:
            return None
        m, lo, hi = mean_interval(vals, self.spec)
        return (self.x(key) if x is None else x, m, lo, hi)

    def seed_lines(self, arm: str, values: Dict[str, float]) -> List[List[Tuple[float, float]]]:
        """One (x, value) line per seed of ``arm`` across the budgets (the figures' thin lines)."""
        seeds = sorted({b.seed for b in self.by_unit.values() if b.arm == arm})
        lines = []
        for s in seeds:
            pts = [(self.x(k), self.cell(arm, k, values)[s]) for k in self.budgets if s in self.cell(arm, k, values)]
            if pts:
                lines.append(pts)
        return lines

    def colors(self) -> Dict[str, Any]:
        """One colour per arm, the same in every figure."""
        from ..analysis.plots import arm_colors

        return arm_colors(self.arms)

    def bars(self, values: Dict[str, float]) -> Dict[str, List[Any]]:
        return {arm: [self.band(arm, k, values) for k in self.budgets] for arm in self.arms}

    def band_label(self) -> str:
        if self.max_seeds < 2:
            return ""
        method, note = interval_method(self.spec, self.max_seeds)
        return f"{100 * self.spec.confidence:g}% interval of the mean over seeds ({method}{'; bootstrap refused below 10 seeds' if note else ''})"

    def row(self, unit: str) -> Dict[str, Any]:
        b = self.by_unit.get(unit)
        return {} if b is None else {"arm": b.arm, "seed": b.seed, "budget_tpp": b.budget_tpp}
