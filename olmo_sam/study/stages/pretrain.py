"""The pretraining stage: one OLMo-core run per base (an arm at one budget and seed), built by the
arm's recipe (:mod:`olmo_sam.recipes.pretrain` / :mod:`olmo_sam.recipes.midtrain`); its analysis
section is the bases' pretraining loss and curves."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional

from olmo_core.exceptions import OLMoConfigurationError

from ...config import ConfigError
from ...output import atomic_write, atomic_write_text, json_text, save_figure, write_table
from ..bases import BaseRecord, checkpoint_budget
from ..job import Job
from .base import PlanBuilder, ReportSection, Stage, data_of, field_in, in_file_words, load_json
from .data import tokenizer_of

__all__ = ["PretrainStage", "recipe_settings", "run_spec", "build_run", "data_fraction"]


#: RunSpec fields the study sets itself (from its data section and output directory)
STUDY_SET_FIELDS = ("train_paths", "val_paths", "tokenizer", "save_folder", "check_paths")


#: midtrain arm settings that go to run_midtrain, not to MidtrainSpec
MIDTRAIN_LOAD_KEYS = ("init_from_hf", "hf_revision")


def recipe_settings(recipe: str, settings: Dict[str, Any], where: str, paths: Optional[Dict[str, str]] = None):
    """``(PretrainSpec or MidtrainSpec, settings)``: an arm's recipe settings checked by name and type
    and converted (``tokens: 12B`` to a count), the fields the study sets itself refused. ``paths``
    names each setting's place in the study file (``arms[1].rho`` rather than ``{where}.rho``). The
    study file's reader calls this for ``pretrain:``, ``midtrain:`` and every arm; :func:`run_spec`
    for the merged settings of a job."""
    from ...config import check_settings
    from ...recipes.common import parse_tokens
    from ...recipes.midtrain import MidtrainSpec
    from ...recipes.pretrain import PretrainSpec

    cls = PretrainSpec if recipe == "pretrain" else MidtrainSpec
    paths = paths or {}
    own = {k: v for k, v in settings.items() if recipe == "pretrain" or k not in MIDTRAIN_LOAD_KEYS}
    for key in STUDY_SET_FIELDS:
        if key in own:
            raise ConfigError(
                f"{paths.get(key, f'{where}.{key}')}: set by the study itself (its data section and output "
                "directory); remove it"
            )
    if isinstance(own.get("tokens"), str):
        try:
            own["tokens"] = parse_tokens(own["tokens"])
        except OLMoConfigurationError as e:
            raise ConfigError(f"{paths.get('tokens', f'{where}.tokens')}: {e}") from None
    return cls, check_settings(cls, own, where, paths, reserved=STUDY_SET_FIELDS)


def run_spec(
    job: Job,
    data: Dict[str, Any],
    save_folder: str,
    *,
    paths: Optional[Dict[str, str]] = None,
    check_paths: bool = True,
):
    """The PretrainSpec / MidtrainSpec of a pretraining job (``job.kind``), from its arm's settings
    (:func:`recipe_settings`). The plan step calls this too, before any compute."""
    cls, settings = recipe_settings(job.kind, job.params["settings"], f"arm {job.params['arm']}", paths)
    return cls(
        **settings,
        train_paths=list(data["train"]),
        val_paths=list(data["val"]),
        tokenizer=tokenizer_of(data),
        save_folder=save_folder,
        check_paths=check_paths,
    )


def build_run(job: Job, spec):
    """The OLMo-core experiment config of a pretraining job (the recipe's own builder)."""
    from ...recipes.midtrain import build_midtrain
    from ...recipes.pretrain import build_pretrain

    if job.kind == "pretrain":
        return build_pretrain(spec)
    return build_midtrain(spec), {}


def _watch(cfg, ctx) -> None:
    """Report the trainer's steps to the study's progress display."""
    from ..progress import PROGRESS_FILE, ProgressFileCallback

    cfg.trainer.callbacks["study_progress"] = ProgressFileCallback(path=str(ctx.dir / PROGRESS_FILE))


def data_fraction(data: Dict[str, Any], fraction: float, out: Path) -> Dict[str, Any]:
    """``data`` with its training token files cut to their first ``fraction`` of tokens, written
    under ``out`` (a data-repetition control: the same budget repeats a smaller corpus more often;
    ``train_tokens`` and the description say how much is left)."""
    from ...data.tokens import token_dtype_for_vocab

    width = token_dtype_for_vocab(int(data["vocab_size"])).itemsize
    out.mkdir(parents=True, exist_ok=True)
    paths, kept = [], 0
    for i, src in enumerate(data["train"]):
        if "://" in str(src):
            raise ConfigError(f"data_fraction: remote token file {src}; the control cuts local files only")
        n = Path(src).stat().st_size // width
        k = max(1, int(n * fraction))
        dst = out / f"train-{i:05d}.npy"
        if not (dst.exists() and dst.stat().st_size == k * width):
            with open(src, "rb") as f:
                head = f.read(k * width)
            atomic_write(dst, lambda tmp: tmp.write_bytes(head))
        paths.append(str(dst))
        kept += k
    desc = data.get("description") or data.get("source") or "the training data"
    return {
        **data,
        "train": paths,
        "train_tokens": kept,
        "description": f"{desc}; cut to its first {fraction:g} ({kept:,} tokens) per file",
    }


def job_pretrain(ctx) -> Dict[str, Any]:
    from ...checkpoints import resolve_checkpoint
    from ...train import read_metrics, run_experiment

    data = data_of(ctx)
    if ctx.job.params.get("data_fraction") is not None:
        data = data_fraction(data, float(ctx.job.params["data_fraction"]), ctx.dir / "data")
    spec = run_spec(ctx.job, data, str(ctx.dir / "run"))
    cfg, resolved = build_run(ctx.job, spec)
    _watch(cfg, ctx)
    run_experiment(cfg)  # (a run stopped by a signal raises RunCanceled: the job is not finished)
    metrics = read_metrics(ctx.dir / "run")
    curve = [
        {
            "step": s,
            "train_loss": m.get("train/CE loss"),
            "lr": m.get("optim/LR (group 0)"),
            "sam_active": m.get("sam/active"),
        }
        for s, m in sorted(metrics.items())
        if "train/CE loss" in m
    ]
    evals = {s: v for s, m in metrics.items() for k, v in m.items() if k.startswith("eval/") and k.endswith("CE loss")}
    atomic_write_text(ctx.dir / "curve.json", json_text({"train": curve, "eval": evals}))
    return {
        "checkpoint": str(resolve_checkpoint(ctx.dir / "run")),
        "save_folder": str(ctx.dir / "run"),
        "final_train_loss": curve[-1]["train_loss"] if curve else None,
        "curve": str(ctx.dir / "curve.json"),
        "resolved": resolved,
        "optimizer": spec.optimizer,
        "schedule": spec.schedule,
        **BaseRecord.measure(ctx.job.params, resolved, data).to_dict(),
    }


def job_midtrain(ctx) -> Dict[str, Any]:
    """Mid-training from a start checkpoint ([SAM-PT] App B): ``load_path`` in the arm's settings,
    or (the default) the paper's OLMo-2-0425-1B stage-1 checkpoint converted from the HF hub."""
    from ...checkpoints import resolve_checkpoint
    from ...recipes.midtrain import run_midtrain

    data = data_of(ctx)
    settings = ctx.job.params["settings"]
    spec = run_spec(ctx.job, data, str(ctx.dir / "run"))
    cfg, _ = build_run(ctx.job, spec)
    _watch(cfg, ctx)
    kwargs: Dict[str, Any] = {"tokenizer": data.get("tokenizer_dir")}
    for key in MIDTRAIN_LOAD_KEYS:
        if settings.get(key) is not None:
            kwargs[key] = settings[key]
    run_midtrain(cfg, **kwargs)
    checkpoint = str(resolve_checkpoint(ctx.dir / "run"))
    return {
        "checkpoint": checkpoint,
        "save_folder": str(ctx.dir / "run"),
        **BaseRecord.measure(ctx.job.params, checkpoint_budget(checkpoint), data).to_dict(),
    }


# -- validation ---------------------------------------------------------------------------------


def _arm(study, job: Job) -> tuple:
    for i, arm in enumerate(study.arms):
        if arm.name == job.params.get("arm"):
            return i, arm
    raise ConfigError(f"{job.id}: no arm {job.params.get('arm')!r} in the study")


def _setting_paths(study, index: int, arm, settings: Dict[str, Any]) -> Dict[str, str]:
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


def _validate_run(study, job: Job, data: Dict[str, Any]) -> None:
    index, arm = _arm(study, job)
    settings = job.params["settings"]
    paths = _setting_paths(study, index, arm, settings)
    try:
        spec = run_spec(job, data, "<out>/pretrain/run", paths=paths, check_paths=False)
        build_run(job, spec)
    except ConfigError as e:
        if e.path not in settings:  # already named by its place in the study file
            raise
        raise ConfigError.at(paths[e.path], f"{e.problem} (arm '{arm.name}')") from None
    except (OLMoConfigurationError, TypeError, ValueError) as e:
        msg = str(e).strip()
        section = "pretrain" if arm.recipe == "pretrain" else "midtrain"
        missing = re.search(r"missing \d+ required .*argument: '(\w+)'", msg)
        if missing:  # a recipe setting without a default
            raise ConfigError(
                f"{section}.{missing.group(1)}: required; set it under '{section}:' or in arms[{index}] "
                f"(arm '{arm.name}')"
            ) from None
        key = field_in(msg, settings)
        if key is None and "give exactly one of" in msg:  # no budget at all
            grids = "budgets (tokens) or pretrain.budgets_tpp" if section == "pretrain" else "budgets (tokens)"
            raise ConfigError(
                f"{section}: arm '{arm.name}' has no budget; give the study's {grids}, or steps or "
                f"tokens under '{section}:' or in arms[{index}]"
            ) from None
        where = paths[key] if key else f"arms[{index}] ({arm.name})"
        msg = in_file_words(msg, paths)
        msg = msg[len(where) :].lstrip() if msg.startswith(f"{where} ") else msg  # "pretrain.lr: must be > 0"
        raise ConfigError(f"{where}: {msg} (arm '{arm.name}')") from None


# -- analysis -----------------------------------------------------------------------------------


def _pretraining(ctx, bases, out: Path) -> Dict[str, Any]:
    rows, curves = [], {}
    for u, b in bases.by_unit.items():
        pre = ctx.finished(f"pretrain/{u}")
        ev = ctx.finished(f"pt_eval/{u}")
        if pre is None:
            continue
        curve = load_json(pre.get("curve")) or {}
        curves[u] = curve.get("train", [])
        rows.append(
            {
                "unit": u,
                "arm": b.arm,
                "seed": b.seed,
                "budget_tpp": b.budget_tpp,
                "tpp_non_embedding": b.tpp_non_embedding,
                "tokens": b.tokens,
                "params_total": b.params_total,
                "params_non_embedding": b.params_non_embedding,
                "optimizer": pre.get("optimizer"),
                "schedule": pre.get("schedule"),
                "final_train_loss": pre.get("final_train_loss"),
                "l_pt": ev and ev.get("l_pt"),
                "sam_steps": sum(1 for p in curves[u] if p.get("sam_active")),
                "steps": len(curves[u]),
            }
        )
    if not rows:
        return {}
    write_table(out, "pretraining", list(rows[0]), rows)
    values = {r["unit"]: r["l_pt"] for r in rows if r["l_pt"] is not None}
    findings = bases.compare(values, section="pretraining", quantity="l_pt", context="Base model")
    figs = {}
    if any(curves.values()):
        from ...analysis.plots import _colors, _figure

        color = _colors(bases.arms)
        fig, (ax1, ax2) = _figure(2, panel_w=5.0, panel_h=3.4)
        seen = set()
        for u, pts in curves.items():
            b = bases.by_unit[u]
            steps = [p["step"] for p in pts]
            label = None if b.arm in seen else b.arm
            seen.add(b.arm)
            ax1.plot(steps, [p["train_loss"] for p in pts], lw=0.8, alpha=0.8, color=color[b.arm], label=label)
            ax2.plot(steps, [p["lr"] for p in pts], lw=0.8, alpha=0.8, color=color[b.arm])
        ax1.set(xlabel="step", ylabel="train CE loss", title="Pretraining loss (every seed and budget)")
        ax2.set(xlabel="step", ylabel="learning rate", title="Schedules")
        ax1.legend(fontsize=7)
        figs["loss_curves"] = str(save_figure(fig, out / "pretraining_curves.png", dpi=110, bbox_inches="tight"))
    return {"rows": rows, "figures": figs, "findings": findings}


class PretrainStage(Stage):
    name = "pretrain"
    kinds = {"pretrain": job_pretrain, "midtrain": job_midtrain}
    report = ReportSection(
        "pretraining", "Pretraining", {"rows": "one row per base checkpoint (arm, budget, seed)"}, rank=0
    )

    def configured(self, study) -> bool:
        return bool(study.arms)

    def plan(self, study, plan: PlanBuilder) -> None:
        for unit in plan.units:
            u = unit.name
            plan.add(
                Job(
                    f"pretrain/{u}",
                    "pretrain",
                    unit.recipe,
                    params={
                        "arm": unit.arm,
                        "unit": u,
                        "settings": unit.settings,
                        "seed": unit.seed,
                        "budget": unit.budget,
                        "budget_tpp": unit.budget_tpp,
                        **({"data_fraction": unit.data_fraction} if unit.data_fraction is not None else {}),
                    },
                    deps=["data"],
                    distributed=True,
                )
            )

    def validate(self, study, job: Job, data) -> None:
        _validate_run(study, job, data())

    def analyse(self, ctx, bases, out: Path) -> Dict[str, Any]:
        return _pretraining(ctx, bases, out)
