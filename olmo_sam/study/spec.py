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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from olmo_core.exceptions import OLMoConfigurationError

from ..config import Checked, ConfigError, Rule, check_settings, check_value, decode, given, setting, unknown_setting
from ..evals.offline import OfflineOptions
from ..evals.olmes import OlmesOptions
from ..files import parse_yaml, read_yaml
from ..finetune.sweep import GRID_METHODS, LR_GRIDS, MIX_METHODS, SWEEP_METHODS
from ..probes.runners import HessianOptions, NoiseOptions, QuantizeOptions
from ..seeds import DATA_SEED, INIT_SEED, MAX_SEED
from .hypotheses import Hypothesis, check_references, parse_hypotheses
from .stages import PIPELINE, STAGE_MODULES, check_stage_names, import_stage_modules, stage_modules, stage_names
from .stages.finetune import ANALYSIS_MATCHINGS

__all__ = [
    "StudySpec",
    "ArmSpec",
    "DataSpec",
    "load_study",
    "ConfigError",
]


def _mapping(data: Any, where: str) -> Dict[str, Any]:
    """A section of the study file: a mapping (``null`` or omitted: empty)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping (key: value), got {data!r}")
    return dict(data)


def _check_entries(data: Any, path: str = "") -> None:
    """Every list of the study file names distinct, non-empty things (learning rates, seeds,
    budgets, datasets, stages, ...): a list given empty is refused (omit the key for the
    default), and so is an entry given twice (it would be planned twice)."""
    if isinstance(data, dict):
        for k, v in data.items():
            _check_entries(v, f"{path}.{k}" if path else str(k))
    elif isinstance(data, list):
        if not data and path not in EMPTY_LIST_OK:
            raise ConfigError(
                f"{path}: the list is empty; give at least one entry (or omit the key where it has a default)"
            )
        seen: List[Any] = []
        for i, v in enumerate(data):
            if not isinstance(v, (dict, list, bool)) and v in seen:
                first = next(j for j, x in enumerate(seen) if x == v and not isinstance(x, bool))
                raise ConfigError(f"{path}[{i}]: duplicate entry {v!r} (also {path}[{first}]); give each entry once")
            seen.append(v)
            _check_entries(v, f"{path}[{i}]")


#: lists whose default is empty (a recorded study.json writes them so): empty = omitted
EMPTY_LIST_OK = ("data.train", "data.val")


@dataclass
class DataSpec(Checked):
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
            raise ConfigError(f"{where}: give either 'demo' or 'train'/'mix' token files, not both")
        if self.demo is None and not (self.train or self.mix):
            raise ConfigError(f"{where}: no pretraining data: set 'demo: {{}}' or 'train: [paths]'")
        if self.demo is None and not self.val:
            raise ConfigError(f"{where}: 'val' token files are needed for pretraining-loss evaluation")
        if self.demo is None and not self.tokenizer:
            raise ConfigError(f"{where}: 'tokenizer' is required with token files ('dolma2' or a dir)")
        if self.demo is not None:
            from .stages.data import DemoOptions

            decode(DemoOptions, self.demo, f"{where}.demo")


ARM_RECIPES = ("pretrain", "midtrain")
#: an arm's name: it names the directories of its bases' jobs (``pretrain/<arm>@...``)
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
#: the largest pretraining seed s of a study (its bases are seeded INIT_SEED + s and DATA_SEED + s)
MAX_STUDY_SEED = MAX_SEED - max(INIT_SEED, DATA_SEED)
#: keys of the ``pretrain:`` section that expand the arms instead of configuring the recipe
PRETRAIN_SEEDS = "seeds"
PRETRAIN_BUDGETS_TPP = "budgets_tpp"


#: a budget grid in tokens per parameter: positive numbers (whole ones kept as written)
_TPP_GRID = Optional[List[Union[int, float]]]


def check_token_budgets(budgets: Any, where: str) -> None:
    """Token budgets (``[12B, 24B]``): a non-empty list of token counts."""
    from ..recipes.common import parse_tokens

    if not isinstance(budgets, list) or not budgets:
        raise ConfigError(f"{where}: expected a non-empty list of token counts (e.g. [12B, 24B]), got {budgets!r}")
    for i, b in enumerate(budgets):
        if isinstance(b, bool):
            raise ConfigError(f"{where}[{i}]: expected a token count (e.g. 12B), got {b!r}")
        try:
            parse_tokens(b)
        except OLMoConfigurationError as e:
            raise ConfigError(f"{where}[{i}]: {e}") from None


def _check_pretrain_grid(pretrain: Dict[str, Any], budgets: Optional[List[Any]]) -> None:
    """``pretrain.seeds`` (distinct integers) and ``pretrain.budgets_tpp`` (positive numbers),
    which replace the recipe's own ``seed``/``data_seed`` and budget fields."""
    seeds = pretrain.get(PRETRAIN_SEEDS)
    if seeds is not None:  # (an empty list is refused with every other list of the file: _check_entries)
        pretrain[PRETRAIN_SEEDS] = check_value(
            seeds, List[int], "pretrain.seeds", Rule(ge=0, le=MAX_STUDY_SEED, hint=" (a base's init and data seed)")
        )
        clash = sorted({"seed", "data_seed"} & set(pretrain))
        if clash:
            raise ConfigError(
                f"pretrain: {clash} conflict with 'seeds' (each seed sets init and data order); drop them"
            )
    tpp = pretrain.get(PRETRAIN_BUDGETS_TPP)
    if tpp is not None:
        # (stored as read: a numeric string is a number, as everywhere in the file)
        pretrain[PRETRAIN_BUDGETS_TPP] = check_value(tpp, _TPP_GRID, "pretrain.budgets_tpp", Rule(gt=0))
        if budgets:
            raise ConfigError("give the study's 'budgets' (tokens) or 'pretrain.budgets_tpp', not both")
        clash = sorted({"steps", "tokens", "tokens_per_param"} & set(pretrain))
        if clash:
            raise ConfigError(
                f"pretrain: {clash} conflict with 'budgets_tpp' (which sets each run's budget); drop them"
            )


@dataclass
class ArmSpec(Checked):
    """One optimizer/schedule arm. Fields other than those declared here are the recipe's own
    (``olmo_sam.recipes`` PretrainSpec / MidtrainSpec, checked against it when the file is
    read), on top of the study's ``pretrain:``/``midtrain:`` defaults."""

    name: str
    recipe: str = setting("pretrain", choices=ARM_RECIPES)
    #: token budgets (e.g. [12B, 24B]) -- one run each; default: the study's budgets or one run
    budgets: Optional[List[Any]] = None
    #: budgets in tokens per parameter (e.g. [10, 100]); default: ``pretrain.budgets_tpp``
    budgets_tpp: Optional[List[float]] = setting(None, gt=0, type=_TPP_GRID)
    #: the arm its secondary comparisons are made against (default: the study's first arm)
    reference: Optional[str] = None
    #: pretrain on this fraction of the training tokens (a data-repetition control, e.g. 0.25)
    data_fraction: Optional[float] = setting(
        None,
        gt=0,
        le=1,
        hint=" (a fraction of the training tokens for a pretrain arm, e.g. 0.25: the first quarter of every token file)",
    )
    settings: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: Any, where: str) -> "ArmSpec":
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: an arm is a mapping, got {data!r}")
        d = dict(data)
        if d.get("name") is None:
            raise ConfigError(f"{where}: every arm needs a 'name'")
        name = d["name"]
        if not isinstance(name, str) or not ARM_NAME.fullmatch(name):
            raise ConfigError(
                f"{where}.name: expected a name of letters, digits and '_', '-', '.', '+' starting with a letter "
                f"or digit (at most 64; it names directories), got {name!r}"
            )
        own = {f.name: d.pop(f.name) for f in dataclasses.fields(cls) if f.name in d and f.name != "settings"}
        if "seeds" in d:
            raise ConfigError(f"{where} ({name}): 'seeds' is a study-wide setting; set it under 'pretrain:'")
        if "optimizer" not in d:
            raise ConfigError(f"{where} ({name}): the arm has no 'optimizer' (adamw, sam or sam-anneal)")
        try:
            arm = cls(**own, settings=d)
        except ConfigError as e:
            raise e.within(where) from None
        if arm.budgets is not None:
            check_token_budgets(arm.budgets, f"{where}.budgets")
        if arm.data_fraction is not None and arm.recipe != "pretrain":
            raise ConfigError(f"{where}.data_fraction: a data-repetition control of pretrain arms only (arm '{name}')")
        if arm.reference == name:
            raise ConfigError(f"{where}.reference: the name of another arm to compare {name!r} with, got {name!r}")
        if arm.budgets is not None and arm.budgets_tpp is not None:
            raise ConfigError(
                f"{where} ({name}): give 'budgets' (tokens) or 'budgets_tpp' (tokens per parameter), not both"
            )
        return arm


@dataclass
class FinetuneSpec(Checked):
    #: adapter names (olmo_sam.finetune.adapters) or prepared dataset directories
    datasets: List[str] = field(default_factory=list)
    lrs: Optional[List[float]] = setting(None, gt=0, hint=" (a learning rate)")
    #: LR preset instead of ``lrs``: table7 | table3 | table10
    preset: Optional[str] = setting(None, choices=sorted(LR_GRIDS))
    methods: List[str] = setting(default_factory=lambda: ["ft"], choices=SWEEP_METHODS + MIX_METHODS)
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
    engine: str = setting("batched", choices=("batched", "trainer"))

    def validate(self) -> None:
        if not self.datasets:
            raise ConfigError("finetune.datasets: give at least one dataset id (e.g. code, music, gsm8k)")
        for i, ds in enumerate(self.datasets):
            if not ds.strip():
                raise ConfigError(f"finetune.datasets[{i}]: a dataset id is missing")
        if self.lrs is None and self.preset is None:
            raise ConfigError("finetune: give 'lrs' (a list) or 'preset' (table7, table3, table10)")
        if self.lrs is not None and self.preset is not None:
            raise ConfigError("finetune: give 'lrs' or 'preset', not both")
        stray = sorted(set(self.per_dataset) - set(self.datasets))
        if stray:
            raise ConfigError(f"finetune.per_dataset: {stray} are not in finetune.datasets")
        from ..finetune.engine import FTConfig
        from ..finetune.sweep import SweepSpec
        from .stages.finetune import PrepareOptions

        grids = sorted(k for k in SweepSpec.__dataclass_fields__ if k.endswith("s") and k not in SWEEP_AXES)
        for k in self.grids:
            if k not in grids:
                raise ConfigError(f"finetune.grids.{k}: unknown grid; allowed: {grids}")
        decode(PrepareOptions, self.prepare, "finetune.prepare")
        for k in self.grids:  # a grid of a method the study does not run would be ignored
            if GRID_METHODS[k] not in self.methods:
                raise ConfigError(
                    f"finetune.grids.{k}: the grid of method '{GRID_METHODS[k]}', which finetune.methods "
                    f"{self.methods} does not list; add the method or drop the grid"
                )
        for where, options in [("finetune.common", self.common)] + [
            (f"finetune.per_dataset.{ds}", own) for ds, own in self.per_dataset.items()
        ]:
            # (Table 3's per-dataset token budgets, ``token_budget: table3``, are resolved per dataset)
            check_settings(FTConfig, {k: v for k, v in options.items() if (k, v) != ("token_budget", "table3")}, where)


#: SweepSpec's list fields that the study sets itself (the rest are ``finetune.grids``)
SWEEP_AXES = ("bases", "datasets", "lrs", "methods", "base_labels")


def _cfs_engines():
    from ..cfs.generate import ENGINES

    return ENGINES


def _cfs_dtypes():
    from ..cfs.generate import DTYPES

    return DTYPES


@dataclass
class CfsSpec(Checked):
    """The ``cfs:`` section: how the context-free (``cfs``) and contextual (``cs``) mixes of the
    fine-tuning methods are made ([CFS] Sec 2-3; :func:`olmo_sam.cfs.method.prepare_method`,
    :func:`olmo_sam.cfs.generate.run_generation`). Omitted keys take those functions' defaults;
    the sequence length, epochs and batch come from the base model and ``finetune.common``."""

    #: the synthetic pool as a fraction of the task set
    ratio: Optional[float] = setting(None, gt=0)
    #: the synthetic loss weight (default: ``ratio``)
    lam: Optional[float] = setting(None, gt=0)
    num_samples: Optional[int] = setting(None, ge=1)
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    max_tokens: Optional[int] = None
    gen_seed: Optional[int] = setting(None, ge=0, le=MAX_SEED)
    mix_seed: Optional[int] = setting(None, ge=0, le=MAX_SEED)
    #: vllm | hf | auto
    engine: Optional[str] = setting(None, choices=_cfs_engines)
    vllm_python: Optional[str] = None
    #: auto | float32 | bfloat16 | float16
    dtype: Optional[str] = setting(None, choices=_cfs_dtypes)
    enforce_eager: Optional[bool] = None
    max_model_len: Optional[int] = setting(None, ge=1)
    gpu_memory_utilization: Optional[float] = setting(None, gt=0, le=1)
    hf_batch_size: Optional[int] = setting(None, ge=1)

    def validate(self) -> None:
        from ..cfs.generate import SamplingSettings

        for contextual in (False, True):
            try:
                SamplingSettings.for_kind(
                    contextual,
                    temperature=self.temperature,
                    top_p=self.top_p,
                    **({"max_tokens": self.max_tokens} if self.max_tokens is not None else {}),
                )
            except ConfigError as e:
                raise e.within("cfs") from None

    def options(self) -> Dict[str, Any]:
        return given(self)


@dataclass
class ProbesSpec:
    """``probes``: each probe's options (the keyword options of its function in
    :mod:`olmo_sam.probes.runners`); an omitted probe does not run, ``{}`` runs it with its
    defaults."""

    quantize: Optional[QuantizeOptions] = None
    noise: Optional[NoiseOptions] = None
    hessian: Optional[HessianOptions] = None


@dataclass
class BenchmarksSpec:
    """``benchmarks``: the offline lm-eval suite and/or OLMES, each with the options of the
    function that runs it (an omitted one does not run, ``{}`` runs it with its defaults)."""

    offline: Optional[OfflineOptions] = None
    olmes: Optional[OlmesOptions] = None
    #: also benchmark, per base and dataset, the fine-tuned model with the lowest L_FT
    finetuned: bool = False

    def options(self) -> Dict[str, Any]:
        """What the benchmark jobs run: each suite's options as given (``None``: not run)."""
        return {k: None if v is None else given(v) for k, v in (("offline", self.offline), ("olmes", self.olmes))}


@dataclass
class PtEvalSpec(Checked):
    """``pt_eval``: how each base's pretraining validation loss is measured
    (:func:`olmo_sam.evals.lm_loss`); ``max_sequences`` also sets the validation subset of the
    probes and of fine-tuning's PT loss, unless their own options say otherwise."""

    max_sequences: Optional[int] = setting(None, ge=1)
    batch_size: Optional[int] = setting(None, ge=1)

    def options(self) -> Dict[str, Any]:
        return given(self)


@dataclass
class AnalysisSpec(Checked):
    """``analysis``: how arms are compared over seeds -- the interval (``t`` or ``bootstrap``, its
    ``confidence``, the bootstrap's ``n_boot`` and ``seed``: :class:`~olmo_sam.analysis.stats.IntervalSpec`)
    and ``matching``, how a base is read at tau (``nearest``: the frontier run with the largest
    L_FT <= tau, the paper's; ``interpolate``: log-LR interpolation between the runs bracketing tau)."""

    interval: Optional[str] = None
    confidence: Optional[float] = None
    n_boot: Optional[int] = None
    #: the bootstrap's seed
    seed: Optional[int] = setting(None, ge=0, le=MAX_SEED)
    matching: Optional[str] = setting(
        None,
        choices=ANALYSIS_MATCHINGS,
        hint=" (nearest frontier run at L_FT <= tau, or log-LR interpolation between the runs bracketing tau)",
    )

    def validate(self) -> None:
        try:
            self.interval_spec()
        except ConfigError as e:  # (IntervalSpec's method is this section's interval)
            raise ConfigError.at(f"analysis.{'interval' if e.path == 'method' else e.path}", e.problem) from None

    def interval_spec(self):
        """The :class:`~olmo_sam.analysis.stats.IntervalSpec` of these options (default: 95% t-intervals)."""
        from ..analysis.stats import IntervalSpec

        given = {"method": self.interval, "confidence": self.confidence, "n_boot": self.n_boot, "seed": self.seed}
        return IntervalSpec(**{k: v for k, v in given.items() if v is not None})

    @property
    def matching_rule(self) -> str:
        return self.matching or "nearest"

    def options(self) -> Dict[str, Any]:
        return given(self)


@dataclass
class ExecutorSpec(Checked):
    #: local | torchrun | slurm
    kind: str = setting("local", choices=("local", "torchrun", "slurm"))
    jobs: int = setting(2, ge=1)
    nproc_per_node: int = setting(1, ge=1)
    #: local: run the jobs in ``jobs`` long-lived worker processes (imports paid once per worker)
    reuse_processes: bool = False
    #: submitit parameters for slurm (partition, gpus_per_node, timeout_min, ...)
    slurm: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        for k, v in self.slurm.items():
            if k not in SLURM_GENERIC and not k.startswith(("slurm_", "local_")):
                # submitit's AutoExecutor takes these, and its executors' own parameters prefixed
                raise unknown_setting(k, [*SLURM_GENERIC, "slurm_<sbatch option>"], f"executor.slurm.{k}")
            # counts and minutes (gpus_per_node, tasks_per_node, nodes, timeout_min, cpus_per_task, mem_gb, ...)
            if k in (*SLURM_COUNTS, "slurm_array_parallelism"):
                self.slurm[k] = check_value(v, int, f"executor.slurm.{k}", Rule(ge=1))


#: executor.slurm keys that are counts (submitit's AutoExecutor parameters)
SLURM_COUNTS = ("nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "timeout_min", "mem_gb")
#: submitit's AutoExecutor parameters (besides those of its executors, prefixed ``slurm_``/``local_``)
SLURM_GENERIC = ("cluster", "name", "stderr_to_stdout", *SLURM_COUNTS)


@dataclass
class StudySpec:
    name: str
    out_dir: Optional[str] = None
    #: pretraining seed of every base when ``pretrain.seeds`` is not given
    seed: int = setting(0, ge=0, le=MAX_STUDY_SEED)
    data: DataSpec = field(default_factory=DataSpec)
    #: defaults for every pretrain arm (PretrainSpec fields: size, steps/tokens, lr, batch, ...)
    pretrain: Dict[str, Any] = field(default_factory=dict)
    #: defaults for every midtrain arm (MidtrainSpec fields)
    midtrain: Dict[str, Any] = field(default_factory=dict)
    budgets: Optional[List[Any]] = None
    arms: List[ArmSpec] = field(default_factory=list)
    pt_eval: PtEvalSpec = field(default_factory=PtEvalSpec)
    probes: ProbesSpec = field(default_factory=ProbesSpec)
    finetune: Optional[FinetuneSpec] = None
    cfs: Optional[Dict[str, Any]] = None
    benchmarks: BenchmarksSpec = field(default_factory=BenchmarksSpec)
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    #: only these stages (default: every configured one)
    stages: Optional[List[str]] = None
    #: pre-registered primary hypotheses (olmo_sam.study.hypotheses), fixed before anything runs
    hypotheses: List[Hypothesis] = field(default_factory=list)
    #: free-form notes carried into the report
    notes: Optional[str] = None
    #: a smoke-test sized study (e.g. ``olmo-sam demo --quick``): its report says its numbers are
    #: not evidence
    quick: bool = False
    #: the sections of stages added with :func:`olmo_sam.study.stages.register_stage` (section ->
    #: its stage's ``config``), written at the top level of the file like the built-in ones
    sections: Dict[str, Any] = field(default_factory=dict)
    #: where the file came from (not a key of the file)
    source: Optional[str] = None

    @property
    def out(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")

    def configured_stages(self) -> List[str]:
        """The stages this study runs: those its file configures (:meth:`Stage.configured`),
        among ``stages:`` when given, in pipeline order."""
        wanted = self.stages or stage_names()
        return [s.name for s in PIPELINE if s.configured(self) and s.name in wanted]

    def added_stage_modules(self) -> Dict[str, str]:
        """Stage name -> module, for the stages it uses that do not ship with olmo-sam: its
        ``study.json`` records them (``stage_modules``), and every process that reads it imports
        them. A stage no other process can import (defined in ``__main__``) is refused."""
        return stage_modules(s.name for s in PIPELINE if s.configured(self) or s.name in (self.stages or ()))

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
            {
                "name": a.name,
                "recipe": a.recipe,
                "budgets": a.budgets,
                **({"budgets_tpp": a.budgets_tpp} if a.budgets_tpp is not None else {}),
                **({"reference": a.reference} if a.reference is not None else {}),
                **({"data_fraction": a.data_fraction} if a.data_fraction is not None else {}),
                **a.settings,
            }
            for a in self.arms
        ]
        d.pop("source", None)
        d["probes"] = {k: None if v is None else given(v) for k, v in vars(self.probes).items()}  # as given
        d["benchmarks"] = {**self.benchmarks.options(), "finetuned": self.benchmarks.finetuned}
        d["pt_eval"], d["analysis"] = self.pt_eval.options(), self.analysis.options()  # as given
        d.update(d.pop("sections"))  # (none in a study without added stages: the file's own keys only)
        added = self.added_stage_modules()
        if added:  # (none in a study without added stages)
            d[STAGE_MODULES] = added
        if not d["hypotheses"]:  # none registered: omitted, as in the study file
            d.pop("hypotheses")
        return d


#: top-level keys holding one value (the sections are parsed by their own dataclass)
_TOP_VALUES = ("name", "out_dir", "seed", "budgets", "stages", "notes", "quick")


def parse_study(data: Dict[str, Any], source: str = "<study>") -> StudySpec:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a study file is a mapping, got {type(data).__name__}")
    d = copy.deepcopy(data)
    import_stage_modules(d.pop(STAGE_MODULES, None), source)  # the stages it adds (recorded in study.json)
    added = {s.section: s for s in PIPELINE if s.section}
    top = ({f.name for f in dataclasses.fields(StudySpec)} - {"source", "sections"}) | set(added)
    unknown = sorted(set(d) - top)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(top)}")
    values = check_settings(StudySpec, {k: d[k] for k in _TOP_VALUES if d.get(k) is not None})
    if not values.get("name", "").strip():
        raise ConfigError(f"{source}: 'name' is required (a non-empty string)")
    if not values["name"].isprintable():
        raise ConfigError(f"name: expected a one-line string of printable characters, got {values['name']!r}")
    spec = StudySpec(source=source, **values)
    if spec.out_dir is not None and not spec.out_dir.strip():
        raise ConfigError("out_dir: give a directory, or omit the key for runs/<name>")
    spec.data = decode(DataSpec, d.get("data"), "data")
    if spec.data.demo:  # a null option is its default
        spec.data.demo = {k: v for k, v in spec.data.demo.items() if v is not None}
    spec.data.validate()
    spec.pretrain = _mapping(d.get("pretrain"), "pretrain")
    spec.midtrain = _mapping(d.get("midtrain"), "midtrain")
    if spec.budgets is not None:
        check_token_budgets(spec.budgets, "budgets")
    _check_pretrain_grid(spec.pretrain, spec.budgets)
    arms = d.get("arms")
    if not arms:
        raise ConfigError(
            "arms: the study has no arms; add at least one, e.g. "
            "arms: [{name: adamw, optimizer: adamw, schedule: cosine}]"
        )
    if not isinstance(arms, list):
        raise ConfigError(f"arms: expected a list of arms, got {arms!r}")
    spec.arms = [ArmSpec.parse(a, f"arms[{i}]") for i, a in enumerate(arms)]
    names = [a.name for a in spec.arms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"arms: duplicate arm name(s) {dup}")
    for i, a in enumerate(spec.arms):
        if a.reference is not None and a.reference not in names:
            raise ConfigError(f"arms[{i}].reference: no arm {a.reference!r} in the study; arms: {names}")
    spec.pt_eval = decode(PtEvalSpec, d.get("pt_eval"), "pt_eval")
    spec.probes = decode(ProbesSpec, d.get("probes"), "probes")
    if d.get("finetune") is not None:
        spec.finetune = decode(FinetuneSpec, d["finetune"], "finetune")
        spec.finetune.validate()
    if d.get("cfs") is not None:
        cfs = decode(CfsSpec, d["cfs"], "cfs")
        cfs.validate()
        spec.cfs = cfs.options()
    spec.benchmarks = decode(BenchmarksSpec, d.get("benchmarks"), "benchmarks")
    spec.executor = decode(ExecutorSpec, d.get("executor"), "executor")
    spec.executor.validate()
    spec.analysis = decode(AnalysisSpec, d.get("analysis"), "analysis")
    spec.analysis.validate()
    if spec.stages is not None:
        check_stage_names(spec.stages, "stages")
    for arm in spec.arms:
        if PRETRAIN_SEEDS in spec.pretrain and {"seed", "data_seed"} & set(arm.settings):
            raise ConfigError(f"arms ({arm.name}): 'seed'/'data_seed' conflict with pretrain.seeds; drop them")
        if arm.budgets_tpp is not None and arm.recipe != "pretrain":
            raise ConfigError(f"arms ({arm.name}): 'budgets_tpp' applies to pretrain arms only")
        if arm.budgets_tpp is not None and {"steps", "tokens", "tokens_per_param"} & set(arm.settings):
            raise ConfigError(f"arms ({arm.name}): 'budgets_tpp' sets the budget; drop steps/tokens/tokens_per_param")
    _check_recipe_settings(spec)
    for section, stage in added.items():
        if section in d:
            spec.sections[section] = decode(stage.config, d[section], section)
            if hasattr(spec.sections[section], "validate"):
                spec.sections[section].validate()
    _check_entries(d)
    spec.hypotheses = parse_hypotheses(d.get("hypotheses"))
    check_references(spec.hypotheses, spec)
    return spec


def _check_recipe_settings(spec: StudySpec) -> None:
    """The recipe settings of ``pretrain:``, ``midtrain:`` and every arm, checked by name and
    type against the arm's recipe when the file is read (:func:`~.stages.pretrain.recipe_settings`);
    how they combine (an AdamW arm given a radius, a run without a budget) is its build's to
    check, when the study is planned."""
    from .stages.pretrain import recipe_settings

    grid = (PRETRAIN_SEEDS, PRETRAIN_BUDGETS_TPP)
    recipe_settings("pretrain", {k: v for k, v in spec.pretrain.items() if k not in grid}, "pretrain")
    recipe_settings("midtrain", spec.midtrain, "midtrain")
    for i, arm in enumerate(spec.arms):
        recipe_settings(arm.recipe, arm.settings, f"arms[{i}]")


_OVERRIDE_PART = re.compile(r"([A-Za-z_][\w-]*)((?:\[\d+\])*)$")


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """The study file's mapping with dotted overrides applied, in order: ``KEY=VALUE`` with ``KEY``
    a path into the file (``finetune.lrs``, ``arms[1].rho`` or ``arms.1.rho``, ``executor.jobs``)
    and ``VALUE`` read as YAML (``[1e-4, 3e-4]``, ``0.05``, ``true``) by the strict reader. A
    missing mapping on the way is created (``probes.noise.gammas=[0.01]``); a list entry must
    exist. The result is checked like the file itself (:func:`parse_study`), so an override of a
    key the file does not know is refused with its path."""
    out = copy.deepcopy(data)
    for raw in overrides:
        key, eq, text = raw.partition("=")
        key = key.strip().lstrip("-")
        if not eq or not key:
            raise ConfigError(
                f"override {raw!r}: expected KEY=VALUE (e.g. finetune.lrs=[1e-4,3e-4] or arms[1].rho=0.05)"
            )
        steps: List[Union[str, int]] = []
        for part in key.split("."):
            m = _OVERRIDE_PART.match(part)
            if part.isdigit():
                steps.append(int(part))
            elif m:
                steps += [m.group(1).replace("-", "_")] + [int(x) for x in re.findall(r"\d+", m.group(2))]
            else:
                raise ConfigError(f"override {raw!r}: {part!r} is not a key or list index of the study file")
        try:
            value = parse_yaml(text, f"override {key}")
        except OLMoConfigurationError as e:
            raise ConfigError(str(e)) from None
        node: Any = out
        for i, step in enumerate(steps):
            where = _path(steps[:i]) or "the study file"
            last = i == len(steps) - 1
            if isinstance(step, int):
                if not isinstance(node, list) or step >= len(node):
                    size = f"a list of {len(node)}" if isinstance(node, list) else "not a list"
                    raise ConfigError(f"override {key}: {where} is {size}; no entry [{step}]")
                if last:
                    node[step] = value
                else:
                    node = node[step]
            elif not isinstance(node, dict):
                raise ConfigError(f"override {key}: {where} is not a mapping; it has no key {step!r}")
            elif last:
                node[step] = value
            else:
                if node.get(step) is None:
                    node[step] = {}
                node = node[step]
    return out


def _path(steps: Sequence[Union[str, int]]) -> str:
    return "".join(f"[{s}]" if isinstance(s, int) else (f".{s}" if j else s) for j, s in enumerate(steps))


#: the study files shipped with the package (``recipes/studies/*.yaml`` link here)
STUDY_FILES_DIR = Path(__file__).parent / "files"


def bundled_study(name: str | Path) -> Path:
    """The shipped study file ``name`` (``paper-60m`` or ``paper-60m.yaml``), for a study not
    found as a path: what a ``pip install`` gives in place of the repository's ``recipes/studies``."""
    shipped = sorted(p.stem for p in STUDY_FILES_DIR.glob("*.yaml"))
    n = Path(name)
    if n.parent == Path("."):
        for cand in (STUDY_FILES_DIR / n.name, STUDY_FILES_DIR / f"{n.name}.yaml"):
            if cand.is_file():
                return cand
    raise ConfigError(f"study file not found: {name} (nor a shipped study; shipped: {shipped})")


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> StudySpec:
    """The study file at ``path``, with dotted ``overrides`` (:func:`apply_overrides`)."""
    p = Path(path)
    if not p.exists():
        p = bundled_study(path)
    try:
        data = read_yaml(p)
    except OLMoConfigurationError as e:
        raise ConfigError(str(e)) from None
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: a study file is a mapping, got {type(data).__name__}")
        data = apply_overrides(data, overrides)
    return parse_study(data, str(p))
