"""The study file: one YAML that names the arms, sizes, budgets, datasets and grids.

A study is the paper's workflow as data ([SAM-PT] Sec 3, App C): pretrain arms (optimizer x
schedule x budget) -> export -> pretraining-loss evaluation -> quantization and noise probes ->
Hessian probes -> fine-tuning sweeps per dataset -> analysis -> report, plus context-free data
and benchmarks when configured. Every field is checked when the file is read: unknown keys,
unknown stages, arms without an optimizer, datasets without an id are errors before any compute.

Example (a CPU study in the overtrained regime, cf. ``olmo_sam/study/files/demo.yaml``)::

    name: demo
    data: {demo: {vocab_size: 384}}
    pretrain: {size: micro, lr: 3e-3, seeds: [0, 1, 2], budgets_tpp: [10, 100]}
    arms:
      - {name: adamw, optimizer: adamw, schedule: cosine}
      - {name: sam, optimizer: sam, schedule: cosine, rho: 0.01}
    finetune: {datasets: [demo-code], lrs: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2], common: {max_steps: 30}}

Seeds and budgets: ``pretrain.seeds`` (pretraining seeds: init and data order) and
``pretrain.budgets_tpp`` (tokens per parameter, counted as the recipes count them:
:func:`olmo_sam.recipes.pretrain.budget_params`) expand every arm into one pretrained base per
budget x seed; an arm may give its own ``budgets_tpp`` (or token ``budgets``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from olmo_core.exceptions import OLMoConfigurationError

from ..files import read_yaml
from .hypotheses import Hypothesis, check_references, parse_hypotheses

__all__ = [
    "STAGES",
    "StudySpec",
    "ArmSpec",
    "DataSpec",
    "load_study",
    "StudyError",
]

#: The chain, in order. A stage without configuration in the study file has no jobs.
STAGES = (
    "data",
    "pretrain",
    "export",
    "pt_eval",
    "quantize",
    "noise",
    "hessian",
    "cfs",
    "finetune",
    "benchmarks",
    "analysis",
    "report",
)


class StudyError(OLMoConfigurationError):
    pass


def _strict(cls, data: Any, where: str):
    """Build dataclass ``cls`` from ``data`` refusing unknown keys (named with their path)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise StudyError(f"{where}: expected a mapping, got {type(data).__name__}: {data!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise StudyError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    try:
        return cls(**data)
    except TypeError as e:
        raise StudyError(f"{where}: {e}") from None


@dataclass
class DataSpec:
    """Pretraining data: the registry-fetched demo corpus, or prepared token files."""

    #: ``{vocab_size: N}`` for the demo corpus (olmo_sam.data.prepare_demo_data)
    demo: Optional[Dict[str, Any]] = None
    train: List[str] = field(default_factory=list)
    val: List[str] = field(default_factory=list)
    #: a mix file of token-file paths (one per line), alternative to ``train``
    mix: Optional[str] = None
    #: ``dolma2`` or a Hugging Face tokenizer directory
    tokenizer: Optional[str] = None

    def validate(self, where: str = "data") -> None:
        if self.demo is not None and (self.train or self.mix):
            raise StudyError(f"{where}: give either 'demo' or 'train'/'mix' token files, not both")
        if self.demo is None and not (self.train or self.mix):
            raise StudyError(f"{where}: no pretraining data: set 'demo: {{}}' or 'train: [paths]'")
        if self.demo is None and not self.val:
            raise StudyError(f"{where}: 'val' token files are needed for pretraining-loss evaluation")
        if self.demo is None and not self.tokenizer:
            raise StudyError(f"{where}: 'tokenizer' is required with token files ('dolma2' or a dir)")


ARM_RECIPES = ("pretrain", "midtrain")
#: keys of the ``pretrain:`` section that expand the arms instead of configuring the recipe
PRETRAIN_SEEDS = "seeds"
PRETRAIN_BUDGETS_TPP = "budgets_tpp"


def _positive_list(values: Any, where: str) -> List[float]:
    if not isinstance(values, list) or not values:
        raise StudyError(f"{where}: expected a non-empty list of numbers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise StudyError(f"{where}: every entry must be a positive number, got {v!r}")
        out.append(v)
    if len(set(out)) != len(out):
        raise StudyError(f"{where}: duplicate entries in {values!r}")
    return out


def _check_pretrain_grid(pretrain: Dict[str, Any], budgets: Optional[List[Any]]) -> None:
    """``pretrain.seeds`` (distinct integers) and ``pretrain.budgets_tpp`` (positive numbers),
    which replace the recipe's own ``seed``/``data_seed`` and budget fields."""
    seeds = pretrain.get(PRETRAIN_SEEDS)
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
            raise StudyError(f"pretrain.seeds: expected a non-empty list of integers, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise StudyError(f"pretrain.seeds: duplicate seeds in {seeds!r}")
        clash = sorted({"seed", "data_seed"} & set(pretrain))
        if clash:
            raise StudyError(f"pretrain: {clash} conflict with 'seeds' (each seed sets init and data order); drop them")
    tpp = pretrain.get(PRETRAIN_BUDGETS_TPP)
    if tpp is not None:
        _positive_list(tpp, "pretrain.budgets_tpp")
        if budgets:
            raise StudyError("give the study's 'budgets' (tokens) or 'pretrain.budgets_tpp', not both")
        clash = sorted({"steps", "tokens", "tokens_per_param"} & set(pretrain))
        if clash:
            raise StudyError(f"pretrain: {clash} conflict with 'budgets_tpp' (which sets each run's budget); drop them")
#: fine-tuning methods trained on a context-free (cfs) or contextual (cs) synthetic mix
MIX_METHODS = ("cfs", "cs")


@dataclass
class ArmSpec:
    """One optimizer/schedule arm. Fields other than ``name``/``recipe``/``budgets`` are the
    recipe's own (``olmo_sam.recipes`` PretrainSpec / MidtrainSpec), on top of the study's
    ``pretrain:``/``midtrain:`` defaults."""

    name: str
    recipe: str = "pretrain"
    #: token budgets (e.g. [12B, 24B]) -- one run each; default: the study's budgets or one run
    budgets: Optional[List[Any]] = None
    #: budgets in tokens per parameter (e.g. [10, 100]); default: ``pretrain.budgets_tpp``
    budgets_tpp: Optional[List[float]] = None
    #: the arm its secondary comparisons are made against (default: the study's first arm)
    reference: Optional[str] = None
    #: pretrain on this fraction of the training tokens (a data-repetition control, e.g. 0.25)
    data_fraction: Optional[float] = None
    settings: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: Any, where: str) -> "ArmSpec":
        if not isinstance(data, dict):
            raise StudyError(f"{where}: an arm is a mapping, got {data!r}")
        d = dict(data)
        name = d.pop("name", None)
        if not name or not isinstance(name, str):
            raise StudyError(f"{where}: every arm needs a 'name'")
        recipe = d.pop("recipe", "pretrain")
        if recipe not in ARM_RECIPES:
            raise StudyError(f"{where} ({name}): recipe must be one of {ARM_RECIPES}, got {recipe!r}")
        budgets = d.pop("budgets", None)
        budgets_tpp = d.pop("budgets_tpp", None)
        reference = d.pop("reference", None)
        data_fraction = d.pop("data_fraction", None)
        if data_fraction is not None and (isinstance(data_fraction, bool) or not isinstance(data_fraction, (int, float))
                                          or not 0 < data_fraction <= 1 or recipe != "pretrain"):  # fmt: skip
            raise StudyError(f"{where}.data_fraction: a fraction of the training tokens in (0, 1] for a pretrain arm "
                             f"(e.g. 0.25: the first quarter of every token file), got {data_fraction!r}")  # fmt: skip
        if reference is not None and (not isinstance(reference, str) or reference == name):
            raise StudyError(f"{where}.reference: the name of another arm to compare {name!r} with, got {reference!r}")
        if budgets is not None and budgets_tpp is not None:
            raise StudyError(f"{where} ({name}): give 'budgets' (tokens) or 'budgets_tpp' (tokens per parameter), not both")
        if budgets_tpp is not None:
            budgets_tpp = _positive_list(budgets_tpp, f"{where} ({name}).budgets_tpp")
        if "seeds" in d:
            raise StudyError(f"{where} ({name}): 'seeds' is a study-wide setting; set it under 'pretrain:'")
        if "optimizer" not in d:
            raise StudyError(
                f"{where} ({name}): the arm has no 'optimizer' (adamw, sam or sam-anneal)"
            )
        return cls(name=name, recipe=recipe, budgets=budgets, budgets_tpp=budgets_tpp, reference=reference,
                   data_fraction=None if data_fraction is None else float(data_fraction), settings=d)


@dataclass
class FinetuneSpec:
    #: adapter names (olmo_sam.finetune.adapters) or prepared dataset directories
    datasets: List[str] = field(default_factory=list)
    lrs: Optional[List[float]] = None
    #: LR preset instead of ``lrs``: table7 | table3 | table10
    preset: Optional[str] = None
    methods: List[str] = field(default_factory=lambda: ["ft"])
    #: FTConfig fields shared by every run (max_steps, token_budget, batch_size, ...)
    common: Dict[str, Any] = field(default_factory=dict)
    #: dataset -> FTConfig fields for that dataset only (e.g. Table 3's token budgets)
    per_dataset: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    #: SweepSpec grids for the baselines
    grids: Dict[str, Any] = field(default_factory=dict)
    #: dataset preparation options (olmo_sam.finetune prepare): max documents, seq len, ...
    prepare: Dict[str, Any] = field(default_factory=dict)
    #: batched (LR grids trained together where the method allows; olmo_sam.finetune.batched) |
    #: trainer (every run through OLMo-core's trainer, one at a time)
    engine: str = "batched"


@dataclass
class ProbesSpec:
    quantize: Optional[Dict[str, Any]] = None
    noise: Optional[Dict[str, Any]] = None
    hessian: Optional[Dict[str, Any]] = None


@dataclass
class BenchmarksSpec:
    offline: Optional[Dict[str, Any]] = None
    olmes: Optional[Dict[str, Any]] = None
    #: also benchmark, per base and dataset, the fine-tuned model with the lowest L_FT
    finetuned: bool = False


@dataclass
class ExecutorSpec:
    #: local | torchrun | slurm
    kind: str = "local"
    jobs: int = 2
    nproc_per_node: int = 1
    #: local: run the jobs in ``jobs`` long-lived worker processes (imports paid once per worker)
    reuse_processes: bool = False
    #: submitit parameters for slurm (partition, gpus_per_node, timeout_min, ...)
    slurm: Dict[str, Any] = field(default_factory=dict)


@dataclass
class StudySpec:
    name: str
    out_dir: Optional[str] = None
    seed: int = 0
    data: DataSpec = field(default_factory=DataSpec)
    #: defaults for every pretrain arm (PretrainSpec fields: size, steps/tokens, lr, batch, ...)
    pretrain: Dict[str, Any] = field(default_factory=dict)
    #: defaults for every midtrain arm (MidtrainSpec fields)
    midtrain: Dict[str, Any] = field(default_factory=dict)
    budgets: Optional[List[Any]] = None
    arms: List[ArmSpec] = field(default_factory=list)
    #: pretraining-loss evaluation options: max_sequences, batch_size
    pt_eval: Dict[str, Any] = field(default_factory=dict)
    probes: ProbesSpec = field(default_factory=ProbesSpec)
    finetune: Optional[FinetuneSpec] = None
    cfs: Optional[Dict[str, Any]] = None
    benchmarks: BenchmarksSpec = field(default_factory=BenchmarksSpec)
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    #: how the analysis compares arms over seeds: ``interval`` (t | bootstrap), ``confidence``
    #: (0.95), ``n_boot`` and ``seed`` of the bootstrap (olmo_sam.analysis.stats.IntervalSpec), and
    #: ``matching`` (nearest | interpolate: how each base is read at tau)
    analysis: Dict[str, Any] = field(default_factory=dict)
    #: only these stages (default: every configured one)
    stages: Optional[List[str]] = None
    #: pre-registered primary hypotheses (olmo_sam.study.hypotheses), fixed before anything runs
    hypotheses: List[Hypothesis] = field(default_factory=list)
    #: free-form notes carried into the report
    notes: Optional[str] = None
    #: a smoke-test sized study (e.g. ``olmo-sam demo --quick``): its report says its numbers are
    #: not evidence
    quick: bool = False
    #: where the file came from (not a key of the file)
    source: Optional[str] = None

    @property
    def out(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")

    def configured_stages(self) -> List[str]:
        has = {
            "data": True,
            "pretrain": bool(self.arms),
            "export": bool(self.arms),
            "pt_eval": bool(self.arms),
            "quantize": self.probes.quantize is not None,
            "noise": self.probes.noise is not None,
            "hessian": self.probes.hessian is not None,
            "cfs": self.cfs is not None
            or (self.finetune is not None and any(m in MIX_METHODS for m in self.finetune.methods)),
            "finetune": self.finetune is not None,
            "benchmarks": self.benchmarks.offline is not None or self.benchmarks.olmes is not None,
            "analysis": True,
            "report": True,
        }
        wanted = self.stages or list(STAGES)
        return [s for s in STAGES if has[s] and s in wanted]

    def arm_budgets(self, arm: ArmSpec) -> List[Optional[Any]]:
        budgets = arm.budgets if arm.budgets is not None else self.budgets
        return list(budgets) if budgets else [None]

    def arm_budgets_tpp(self, arm: ArmSpec) -> List[Optional[float]]:
        """The arm's budgets in tokens per parameter, or ``[None]`` when it has token budgets
        (``budgets``) or none (the recipe's own ``steps``/``tokens`` then apply)."""
        if arm.budgets_tpp is not None:
            return list(arm.budgets_tpp)
        if arm.budgets is not None or arm.recipe != "pretrain":
            return [None]
        grid = self.pretrain.get(PRETRAIN_BUDGETS_TPP)
        return list(grid) if grid else [None]

    def pretrain_seeds(self) -> List[int]:
        """Pretraining seeds (init and data order) of every base: ``pretrain.seeds``, else the
        study's ``seed``."""
        seeds = self.pretrain.get(PRETRAIN_SEEDS)
        return [int(x) for x in seeds] if seeds else [self.seed]

    def plain(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["arms"] = [
            {"name": a.name, "recipe": a.recipe, "budgets": a.budgets,
             **({"budgets_tpp": a.budgets_tpp} if a.budgets_tpp is not None else {}),
             **({"reference": a.reference} if a.reference is not None else {}),
             **({"data_fraction": a.data_fraction} if a.data_fraction is not None else {}), **a.settings}
            for a in self.arms
        ]  # fmt: skip
        d.pop("source", None)
        return d


def parse_study(data: Dict[str, Any], source: str = "<study>") -> StudySpec:
    if not isinstance(data, dict):
        raise StudyError(f"{source}: a study file is a mapping, got {type(data).__name__}")
    d = copy.deepcopy(data)
    top = {f.name for f in dataclasses.fields(StudySpec)} - {"source"}
    unknown = sorted(set(d) - top)
    if unknown:
        raise StudyError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(top)}")
    if not d.get("name"):
        raise StudyError(f"{source}: 'name' is required")
    spec = StudySpec(name=str(d["name"]), source=source)
    spec.out_dir = d.get("out_dir")
    spec.seed = int(d.get("seed", 0))
    spec.data = _strict(DataSpec, d.get("data"), "data")
    spec.data.validate()
    spec.pretrain = dict(d.get("pretrain") or {})
    spec.midtrain = dict(d.get("midtrain") or {})
    spec.budgets = d.get("budgets")
    _check_pretrain_grid(spec.pretrain, spec.budgets)
    arms = d.get("arms")
    if not arms:
        raise StudyError("arms: the study has no arms; add at least one, e.g. "
                         "arms: [{name: adamw, optimizer: adamw, schedule: cosine}]")  # fmt: skip
    if not isinstance(arms, list):
        raise StudyError("arms: expected a list of arms")
    spec.arms = [ArmSpec.parse(a, f"arms[{i}]") for i, a in enumerate(arms)]
    names = [a.name for a in spec.arms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise StudyError(f"arms: duplicate arm name(s) {dup}")
    for i, a in enumerate(spec.arms):
        if a.reference is not None and a.reference not in names:
            raise StudyError(f"arms[{i}].reference: no arm {a.reference!r} in the study; arms: {names}")
    spec.pt_eval = dict(d.get("pt_eval") or {})
    bad = sorted(set(spec.pt_eval) - {"max_sequences", "batch_size"})
    if bad:
        raise StudyError(f"pt_eval: unknown key(s) {bad}; allowed: ['batch_size', 'max_sequences']")
    spec.probes = _strict(ProbesSpec, d.get("probes"), "probes")
    if d.get("finetune") is not None:
        spec.finetune = _strict(FinetuneSpec, d["finetune"], "finetune")
        if not spec.finetune.datasets:
            raise StudyError("finetune.datasets: give at least one dataset id (e.g. code, music, gsm8k)")
        for i, ds in enumerate(spec.finetune.datasets):
            if not isinstance(ds, str) or not ds.strip():
                raise StudyError(f"finetune.datasets[{i}]: a dataset id is missing")
        if spec.finetune.lrs is None and spec.finetune.preset is None:
            raise StudyError("finetune: give 'lrs' (a list) or 'preset' (table7, table3, table10)")
        stray = sorted(set(spec.finetune.per_dataset) - set(spec.finetune.datasets))
        if stray:
            raise StudyError(f"finetune.per_dataset: {stray} are not in finetune.datasets")
        if spec.finetune.lrs is not None and len(spec.finetune.lrs) == 0:
            raise StudyError("finetune.lrs: the LR grid is empty")
        if spec.finetune.engine not in ("batched", "trainer"):
            raise StudyError(f"finetune.engine: {spec.finetune.engine!r}; choose one of 'batched', 'trainer'")
    spec.cfs = d.get("cfs")
    spec.benchmarks = _strict(BenchmarksSpec, d.get("benchmarks"), "benchmarks")
    spec.executor = _strict(ExecutorSpec, d.get("executor"), "executor")
    if spec.executor.kind not in ("local", "torchrun", "slurm"):
        raise StudyError(f"executor.kind must be local, torchrun or slurm, got {spec.executor.kind!r}")
    spec.analysis = dict(d.get("analysis") or {})
    _check_analysis(spec.analysis)
    stages = d.get("stages")
    if stages is not None:
        check_stage_names(stages, "stages")
        spec.stages = list(stages)
    spec.notes = d.get("notes")
    quick = d.get("quick", False)
    if not isinstance(quick, bool):
        raise StudyError(f"quick: expected true or false, got {quick!r}")
    spec.quick = quick
    for arm in spec.arms:
        if PRETRAIN_SEEDS in spec.pretrain and {"seed", "data_seed"} & set(arm.settings):
            raise StudyError(f"arms ({arm.name}): 'seed'/'data_seed' conflict with pretrain.seeds; drop them")
        if arm.budgets_tpp is not None and arm.recipe != "pretrain":
            raise StudyError(f"arms ({arm.name}): 'budgets_tpp' applies to pretrain arms only")
        if arm.budgets_tpp is not None and {"steps", "tokens", "tokens_per_param"} & set(arm.settings):
            raise StudyError(f"arms ({arm.name}): 'budgets_tpp' sets the budget; drop steps/tokens/tokens_per_param")
    spec.hypotheses = parse_hypotheses(d.get("hypotheses"))
    check_references(spec.hypotheses, spec)
    return spec


#: ``analysis:`` key -> IntervalSpec field
ANALYSIS_KEYS = {"interval": "method", "confidence": "confidence", "n_boot": "n_boot", "seed": "seed"}


#: ``analysis: matching`` -- how a base's retained PT loss is read at tau: ``nearest`` (the paper's:
#: the frontier run with the largest L_FT <= tau) or ``interpolate`` (log-LR interpolation between
#: the two frontier runs that bracket tau; olmo_sam.analysis.forgetting.retained_pt_loss)
ANALYSIS_MATCHINGS = ("nearest", "interpolate")


def _check_analysis(opts: Dict[str, Any]) -> None:
    bad = sorted(set(opts) - set(ANALYSIS_KEYS) - {"matching"})
    if bad:
        raise StudyError(f"analysis: unknown key(s) {bad}; allowed: {sorted([*ANALYSIS_KEYS, 'matching'])}")
    if opts.get("matching", "nearest") not in ANALYSIS_MATCHINGS:
        raise StudyError(
            f"analysis.matching: unknown {opts['matching']!r}; choose one of {list(ANALYSIS_MATCHINGS)} "
            f"(nearest frontier run at L_FT <= tau, or log-LR interpolation between the runs bracketing tau)"
        )
    from ..analysis.stats import IntervalSpec

    IntervalSpec(**{ANALYSIS_KEYS[k]: v for k, v in opts.items() if k in ANALYSIS_KEYS})  # raises with the field named


def check_stage_names(names: Sequence[str], where: str) -> None:
    bad = [s for s in names if s not in STAGES]
    if bad:
        raise StudyError(f"{where}: unknown stage(s) {bad}; the stages are {list(STAGES)}")


def load_study(path: str | Path, overrides: Optional[Dict[str, Any]] = None) -> StudySpec:
    p = Path(path)
    if not p.exists():
        raise StudyError(f"study file not found: {p}")
    try:
        data = read_yaml(p)
    except OLMoConfigurationError as e:
        raise StudyError(str(e)) from None
    if overrides:
        data = {**(data or {}), **overrides}
    return parse_study(data, str(p))
