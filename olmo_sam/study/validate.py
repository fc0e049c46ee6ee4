"""Validate before compute: build every job's own configuration, without running it.

:func:`validate_plan` goes through the planned jobs and builds what each job would build -- the
pretraining experiment through the recipe's builder, the probe options through the probes' own
checks, the fine-tuning sweep through :func:`olmo_sam.finetune.sweep.expand` -- with stand-ins
for what earlier stages will produce (token files, checkpoints). A bad value therefore fails at
``olmo-sam study run --dry-run``, and every message starts with the field's path in the study
file (``arms[1].schedule: ...``, ``probes.quantize.quant[0]: ...``).
"""

from __future__ import annotations

import functools
import inspect
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from olmo_core.exceptions import OLMoConfigurationError

from .plan import Job, Plan
from .spec import ArmSpec, StudyError, StudySpec

__all__ = ["validate_plan", "validate_data"]

#: stand-ins for what the data, pretraining and fine-tuning-data jobs will write
_PLACEHOLDER_TOKENS = "<token files of the data stage>"
_PLACEHOLDER_BASE = "<checkpoint of the pretraining stage>"
_PLACEHOLDER_FT = "<prepared fine-tuning dataset>"


def _field_in(message: str, keys: Iterable[str]) -> Optional[str]:
    """The setting a builder's message is about: the key (or its ``--flag`` spelling) that
    appears first in the message."""
    best: Optional[tuple] = None
    for k in keys:
        pattern = rf"(?<![\w-])(?:--{re.escape(k.replace('_', '-'))}|{re.escape(k)})(?![\w-])"
        m = re.search(pattern, message)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), k)
    return best[1] if best else None


def _in_file_words(message: str, paths: Dict[str, str]) -> str:
    """A builder's message in the study file's words: ``--batch-size`` becomes the place of
    ``batch_size`` in the file (``pretrain.batch_size``)."""
    for key, path in paths.items():
        message = re.sub(rf"(?<![\w-])--{re.escape(key.replace('_', '-'))}(?![\w-])", path, message)
    return re.sub(r"(?<![\w-])--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), message)


def _is_remote(path: str) -> bool:
    return "://" in str(path)


# -- data ---------------------------------------------------------------------------------------


def validate_data(study: StudySpec, missing_ok: bool = False) -> List[str]:
    """Check the data section; missing files are errors, or (``missing_ok``: planning a study on
    a machine without its data) returned as warnings."""
    warnings: List[str] = []

    def missing(message: str) -> None:
        if not missing_ok:
            raise StudyError(message)
        warnings.append(message)

    d = study.data
    if d.demo is not None:
        from ..data.demo_data import prepare_demo_data

        if not isinstance(d.demo, dict):
            raise StudyError(f"data.demo: expected a mapping such as {{vocab_size: 2048}}, got {d.demo!r}")
        known = [n for n in inspect.signature(prepare_demo_data).parameters if n not in ("out_dir", "show_progress")]
        for k in d.demo:
            if k not in known:
                raise StudyError(f"data.demo.{k}: unknown option; allowed: {known}")
        from ..data.tokenizer import MIN_BPE_VOCAB

        v = d.demo.get("vocab_size")
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < MIN_BPE_VOCAB):
            raise StudyError(
                f"data.demo.vocab_size: must be a whole number >= {MIN_BPE_VOCAB} (the byte-level "
                f"BPE's 256 bytes and 2 special tokens), got {v!r}"
            )
        books = d.demo.get("books")
        if books is not None:
            if not isinstance(books, list) or not books:
                raise StudyError(f"data.demo.books: expected a non-empty list of book names, got {books!r}")
            known = _demo_book_names()
            for i, b in enumerate(books):
                if not isinstance(b, str):
                    raise StudyError(f"data.demo.books[{i}]: expected a book name, got {b!r}")
                if b not in known:
                    raise StudyError(f"data.demo.books[{i}]: unknown book {b!r}; available: {sorted(known)}")
        for k in ("val_fraction",):
            f = d.demo.get(k)
            if f is not None and (isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1):
                raise StudyError(f"data.demo.{k}: must be a number in (0, 1), got {f!r}")
        s = d.demo.get("seed")
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 0):
            raise StudyError(f"data.demo.seed: must be a whole number >= 0, got {s!r}")
        return warnings
    for key in ("train", "val"):
        for i, path in enumerate(getattr(d, key)):
            if not isinstance(path, str):
                raise StudyError(f"data.{key}[{i}]: expected a token file path, got {path!r}")
            if not _is_remote(path) and not Path(path).exists():
                missing(
                    f"data.{key}[{i}]: token file not found: {path}; fix the path or prepare it "
                    "with 'olmo-sam data tokenize'"
                )
    if d.mix and not Path(d.mix).exists():
        missing(f"data.mix: mix file not found: {d.mix}; fix the path")
    elif d.mix:
        from ..recipes.common import read_mix_file

        try:
            paths = read_mix_file(d.mix)
        except OLMoConfigurationError as e:
            raise StudyError(f"data.mix: {e}") from None
        absent = [str(p) for p in paths if not _is_remote(str(p)) and not Path(p).exists()]
        if absent:
            missing(f"data.mix: token file(s) listed in {d.mix} not found: {absent[:3]}; fix the mix file")
    if d.tokenizer and d.tokenizer != "dolma2" and not Path(d.tokenizer).is_dir():
        missing(f"data.tokenizer: not 'dolma2' and not a tokenizer directory: {d.tokenizer}; fix the path")
    return warnings


@functools.lru_cache(maxsize=1)
def _demo_book_names() -> frozenset:
    """The demo corpus's book names (those of the pinned package: known without fetching it)."""
    from ..data.corpus import DEMO_BOOKS

    return DEMO_BOOKS


def _placeholder_data(study: StudySpec) -> Dict[str, Any]:
    """What the data job will return, as far as building configs needs it."""
    from olmo_core.data import TokenizerConfig

    d = study.data
    if d.demo is not None:
        from ..data.demo_data import DEMO_VOCAB_SIZE

        v = int(d.demo.get("vocab_size", DEMO_VOCAB_SIZE))
        tok = TokenizerConfig(vocab_size=v, eos_token_id=v - 1, pad_token_id=v - 1)
    elif d.tokenizer == "dolma2" or not Path(str(d.tokenizer)).is_dir():
        tok = TokenizerConfig.dolma2()  # (a missing directory is reported by validate_data)
    else:
        from ..data.tokenizer import load_tokenizer, tokenizer_config

        tok = tokenizer_config(load_tokenizer(d.tokenizer), identifier=str(d.tokenizer))
    return {
        "train": list(d.train) or [_PLACEHOLDER_TOKENS],
        "val": list(d.val) or [_PLACEHOLDER_TOKENS],
        "tokenizer": tok.as_config_dict(),
        "tokenizer_dir": None,
    }


# -- pretraining --------------------------------------------------------------------------------


def _arm(study: StudySpec, job: Job) -> tuple:
    for i, arm in enumerate(study.arms):
        if arm.name == job.params.get("arm"):
            return i, arm
    raise StudyError(f"{job.id}: no arm {job.params.get('arm')!r} in the study")


def _setting_paths(study: StudySpec, index: int, arm: ArmSpec, settings: Dict[str, Any]) -> Dict[str, str]:
    section = "pretrain" if arm.recipe == "pretrain" else "midtrain"
    paths = {}
    for k in settings:
        if k in arm.settings:
            paths[k] = f"arms[{index}].{k}"
        elif k in (study.pretrain if section == "pretrain" else study.midtrain):
            paths[k] = f"{section}.{k}"
        elif k in ("tokens", "tokens_per_param"):  # one entry of the budget grid
            if k == "tokens":
                grid, where = (
                    (arm.budgets, f"arms[{index}].budgets") if arm.budgets is not None else (study.budgets, "budgets")
                )
            elif arm.budgets_tpp is not None:
                grid, where = arm.budgets_tpp, f"arms[{index}].budgets_tpp"
            else:
                grid, where = study.pretrain.get("budgets_tpp"), "pretrain.budgets_tpp"
            grid = list(grid or [])
            paths[k] = f"{where}[{grid.index(settings[k])}]" if settings[k] in grid else where
        else:
            paths[k] = f"arms[{index}].{k}"
    return paths


def _validate_run(study: StudySpec, job: Job, data: Dict[str, Any]) -> None:
    from .jobs import build_run, run_spec

    index, arm = _arm(study, job)
    settings = job.params["settings"]
    paths = _setting_paths(study, index, arm, settings)
    try:
        spec = run_spec(job, data, "<out>/pretrain/run", paths=paths, check_paths=False)
        build_run(job, spec)
    except StudyError:
        raise
    except (OLMoConfigurationError, TypeError, ValueError) as e:
        msg = str(e).strip()
        section = "pretrain" if arm.recipe == "pretrain" else "midtrain"
        missing = re.search(r"missing \d+ required .*argument: '(\w+)'", msg)
        if missing:  # a recipe setting without a default
            raise StudyError(
                f"{section}.{missing.group(1)}: required; set it under '{section}:' or in arms[{index}] "
                f"(arm '{arm.name}')"
            ) from None
        key = _field_in(msg, settings)
        if key is None and "give exactly one of" in msg:  # no budget at all
            grids = "budgets (tokens) or pretrain.budgets_tpp" if section == "pretrain" else "budgets (tokens)"
            raise StudyError(
                f"{section}: arm '{arm.name}' has no budget; give the study's {grids}, or steps or "
                f"tokens under '{section}:' or in arms[{index}]"
            ) from None
        where = paths[key] if key else f"arms[{index}] ({arm.name})"
        msg = _in_file_words(msg, paths)
        msg = msg[len(where) :].lstrip() if msg.startswith(f"{where} ") else msg  # "pretrain.lr: must be > 0"
        raise StudyError(f"{where}: {msg} (arm '{arm.name}')") from None


# -- probes ------------------------------------------------------------------------------------


def _validate_probe(job: Job) -> None:
    from ..probes.runners import check_probe_options

    try:
        check_probe_options(job.stage, dict(job.params.get("options") or {}))
    except OLMoConfigurationError as e:
        raise StudyError(f"probes.{job.stage}.{e}") from None


# -- fine-tuning --------------------------------------------------------------------------------


def _validate_ft_data(study: StudySpec, job: Job) -> None:
    from ..finetune.adapters import get_source, prepare_dataset

    name = job.params["dataset"]
    where = f"finetune.datasets[{study.finetune.datasets.index(name)}]" if study.finetune else "finetune.datasets"
    if not Path(name).is_dir():
        try:
            get_source(name)
        except OLMoConfigurationError as e:
            raise StudyError(f"{where}: {e}; or give a prepared dataset directory") from None
    known = [
        n
        for n in inspect.signature(prepare_dataset).parameters
        if n not in ("name", "tokenizer_path", "out_dir", "overwrite")
    ]
    for k, v in (job.params.get("prepare") or {}).items():
        if k not in known:
            raise StudyError(f"finetune.prepare.{k}: unknown option; allowed: {known}")
        if k == "val_fraction":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise StudyError(f"finetune.prepare.val_fraction: must be a number in (0, 1), got {v!r}")
        elif v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "seed" else 1)):
            raise StudyError(f"finetune.prepare.{k}: must be a whole number >= {0 if k == 'seed' else 1}, got {v!r}")


def _validate_ft_sweep(study: StudySpec, job: Job) -> None:
    from ..finetune.sweep import MIX_METHODS, SWEEP_METHODS, SweepSpec, expand

    ft = study.finetune
    assert ft is not None
    for i, m in enumerate(ft.methods):
        if m not in SWEEP_METHODS + MIX_METHODS:
            raise StudyError(
                f"finetune.methods[{i}]: unknown method {m!r}; choose from {list(SWEEP_METHODS + MIX_METHODS)}"
            )
    grids = dict(job.params.get("grids") or {})
    grid_fields = {
        k: v
        for k, v in SweepSpec.__dataclass_fields__.items()
        if k.endswith("s") and k not in ("bases", "datasets", "lrs", "methods", "base_labels")
    }  # noqa: E501
    for k in grids:
        if k not in grid_fields:
            raise StudyError(f"finetune.grids.{k}: unknown grid; allowed: {sorted(grid_fields)}")
    ds = job.params["dataset"]
    own = ft.per_dataset.get(ds, {})
    paths = {
        k: (f"finetune.per_dataset.{ds}.{k}" if k in own else f"finetune.common.{k}") for k in job.params["common"]
    }
    if (
        "pt_val_max_sequences" in paths
        and "pt_val_max_sequences" not in ft.common
        and "pt_val_max_sequences" not in own
    ):
        paths["pt_val_max_sequences"] = "pt_eval.max_sequences"
    mixes = {m: _PLACEHOLDER_FT for m in MIX_METHODS}
    try:
        from .jobs import ft_sweeps

        for spec in ft_sweeps(
            job, base=_PLACEHOLDER_BASE, ft_dir=_PLACEHOLDER_FT, pt_val=[_PLACEHOLDER_TOKENS], mixes=mixes, paths=paths
        ):
            expand(spec, resolve=False)
    except StudyError:
        raise
    except (OLMoConfigurationError, TypeError, ValueError) as e:
        msg = str(e).strip()
        key = _field_in(msg, list(paths))
        msg = _in_file_words(msg, paths)
        if key:
            raise StudyError(f"{paths[key]}: {msg}") from None
        gkey = _field_in(msg, list(grids))
        if gkey:
            raise StudyError(f"finetune.grids.{gkey}: {msg}") from None
        if "learning rate" in msg:
            raise StudyError(f"finetune.lrs: {msg}") from None
        raise StudyError(f"finetune ({ds}): {msg}") from None


# -- the plan -----------------------------------------------------------------------------------


def validate_executor(
    study: StudySpec, *, kind: Optional[str] = None, jobs: Optional[int] = None, nproc_per_node: Optional[int] = None
) -> None:
    """``executor`` settings and their command-line overrides (``--jobs``, ``--nproc-per-node``)."""
    ex = study.executor
    kind = kind or ex.kind
    for name, flag in (("jobs", jobs), ("nproc_per_node", nproc_per_node)):  # (the file's: ExecutorSpec.validate)
        if flag is not None and (isinstance(flag, bool) or flag < 1):
            raise StudyError(f"--{name.replace('_', '-')}: must be >= 1, got {flag}")
    nproc = nproc_per_node if nproc_per_node is not None else ex.nproc_per_node
    where = "--nproc-per-node" if nproc_per_node is not None else "executor.nproc_per_node"
    if nproc > 1 and kind == "local":
        raise StudyError(
            f"{where}: the local executor runs every job in one process and would ignore it; use the "
            "torchrun executor (--executor torchrun / executor.kind: torchrun)"
        )
    tasks = (ex.slurm or {}).get("tasks_per_node", 1)
    if nproc > 1 and kind == "slurm" and nproc != tasks:
        raise StudyError(
            f"{where}: under the slurm executor the processes of a job are executor.slurm.tasks_per_node "
            f"({tasks}), and {nproc} would be ignored; make them equal or drop it"
        )


def validate_plan(plan: Plan, missing_data_ok: bool = False) -> List[str]:
    """Build every planned job's configuration (no compute, no files written); raises
    :class:`StudyError` naming the study-file field of the first bad value. Returns warnings
    (missing data files, with ``missing_data_ok``)."""
    study = plan.study
    warnings = validate_data(study, missing_data_ok)
    data = None
    for job in plan.jobs:
        if job.kind in ("pretrain", "midtrain"):
            data = data or _placeholder_data(study)
            _validate_run(study, job, data)
        elif job.kind in ("quantize", "noise", "hessian"):
            _validate_probe(job)
        elif job.kind == "ft_data":
            _validate_ft_data(study, job)
        elif job.kind == "ft_sweep":
            _validate_ft_sweep(study, job)
    return warnings
