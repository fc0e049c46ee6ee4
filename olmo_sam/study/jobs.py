"""What each kind of study job does. Thin: every job calls the library function of its stage.

Each function takes a :class:`~olmo_sam.study.runner.JobContext` and returns a JSON-safe result
(paths of what it wrote and the headline numbers), which becomes the job's ``done.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from olmo_core.exceptions import OLMoConfigurationError

from ..output import atomic_write, atomic_write_text, json_text
from .bases import BaseRecord, checkpoint_budget
from .context import JobContext
from .plan import Job
from .spec import StudyError

__all__ = ["JOB_KINDS"]


def _data(ctx: JobContext) -> Dict[str, Any]:
    return ctx.dep("data")


def _unit_ckpt(ctx: JobContext, unit: str) -> str:
    return ctx.dep(f"pretrain/{unit}")["checkpoint"]


# -- data ---------------------------------------------------------------------------------------


def job_data(ctx: JobContext) -> Dict[str, Any]:
    from ..data.tokenizer import load_tokenizer, tokenizer_config

    d = ctx.study.data
    if d.demo is not None:
        from ..data.corpus import DEMO_CORPUS
        from ..data.demo_data import prepare_demo_data

        dd = prepare_demo_data(ctx.out / "data", **d.demo)
        books = d.demo.get("books")
        return {
            "train": [str(p) for p in dd.train_paths],
            "val": [str(p) for p in dd.val_paths],
            "tokenizer_dir": str(dd.tokenizer_dir),
            "tokenizer": dd.tokenizer.as_config_dict(),
            "vocab_size": dd.vocab_size,
            "train_tokens": dd.train_tokens,
            "val_tokens": dd.val_tokens,
            "source": "demo corpus",
            "description": (
                f"the registry-fetched demo corpus ({DEMO_CORPUS.spec}, "
                f"{len(books) if books else 'all'} books), byte-level BPE of {dd.vocab_size} tokens, "
                f"{dd.train_tokens:,} training tokens"
            ),
        }
    train = list(d.train)
    if d.mix:
        from ..recipes.common import read_mix_file

        train += [str(p) for p in read_mix_file(d.mix)]
    missing = [p for p in train + list(d.val) if not Path(p).exists() and "://" not in p]
    if missing:
        raise StudyError(f"data: token files not found: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    tok = load_tokenizer(d.tokenizer)
    cfg = tokenizer_config(tok, identifier=str(d.tokenizer))
    train_tokens = _local_token_count(train, cfg.vocab_size)
    return {
        "train": train,
        "val": list(d.val),
        "tokenizer_dir": None if d.tokenizer == "dolma2" else str(d.tokenizer),
        "tokenizer": cfg.as_config_dict(),
        "vocab_size": cfg.vocab_size,
        "train_tokens": train_tokens,
        "source": "token files",
        "description": f"{len(train)} token file(s)" + (f", {train_tokens:,} training tokens" if train_tokens else ""),
    }


def _local_token_count(paths, vocab_size: int):
    """Tokens in local token files (file size / token width); None if any file is remote."""
    from ..data.tokens import token_dtype_for_vocab

    if any("://" in str(p) for p in paths):
        return None
    width = token_dtype_for_vocab(vocab_size).itemsize
    return sum(Path(p).stat().st_size for p in paths) // width


def _tokenizer_config(data: Dict[str, Any]):
    from olmo_core.data import TokenizerConfig

    return TokenizerConfig.from_dict(dict(data["tokenizer"]))


# -- training -----------------------------------------------------------------------------------


#: RunSpec fields the study sets itself (from its data section and output directory)
STUDY_SET_FIELDS = ("train_paths", "val_paths", "tokenizer", "save_folder", "check_paths")
#: midtrain arm settings that go to run_midtrain, not to MidtrainSpec
MIDTRAIN_LOAD_KEYS = ("init_from_hf", "hf_revision")


def run_spec(
    job: Job,
    data: Dict[str, Any],
    save_folder: str,
    *,
    paths: Optional[Dict[str, str]] = None,
    check_paths: bool = True,
):
    """The PretrainSpec / MidtrainSpec of a pretraining job (``job.kind``), from its arm's settings
    checked by name and type; ``paths`` names each setting's place in the study file (errors say
    ``arms[1].rho`` rather than ``arm sam.rho``). The plan step calls this too, before any compute."""
    from ..recipes.common import parse_tokens
    from ..recipes.midtrain import MidtrainSpec
    from ..recipes.pretrain import PretrainSpec
    from .fields import typed_settings

    cls = PretrainSpec if job.kind == "pretrain" else MidtrainSpec
    paths = paths or {}
    where = f"arm {job.params['arm']}"
    settings = {k: v for k, v in job.params["settings"].items() if k not in MIDTRAIN_LOAD_KEYS}
    for key in STUDY_SET_FIELDS:
        if key in settings:
            raise StudyError(
                f"{paths.get(key, f'{where}.{key}')}: set by the study itself (its data section and "
                "output directory); remove it from the arm"
            )
    if isinstance(settings.get("tokens"), str):
        try:
            settings["tokens"] = parse_tokens(settings["tokens"])
        except OLMoConfigurationError as e:
            raise StudyError(f"{paths.get('tokens', f'{where}.tokens')}: {e}") from None
    settings = typed_settings(cls, settings, where, paths)
    return cls(
        **settings,
        train_paths=list(data["train"]),
        val_paths=list(data["val"]),
        tokenizer=_tokenizer_config(data),
        save_folder=save_folder,
        check_paths=check_paths,
    )


def build_run(job: Job, spec):
    """The OLMo-core experiment config of a pretraining job (the recipe's own builder)."""
    from ..recipes.midtrain import build_midtrain
    from ..recipes.pretrain import build_pretrain

    if job.kind == "pretrain":
        return build_pretrain(spec)
    return build_midtrain(spec), {}


def _watch(cfg, ctx: JobContext) -> None:
    """Report the trainer's steps to the study's progress display."""
    from .progress import PROGRESS_FILE, ProgressFileCallback

    cfg.trainer.callbacks["study_progress"] = ProgressFileCallback(path=str(ctx.dir / PROGRESS_FILE))


def _finished(trainer, ctx: JobContext) -> None:
    """A trainer stopped early (SIGINT/SIGTERM: OLMo-core saves a checkpoint and returns) is not
    a finished job: fail, so the study records it unfinished and a re-run resumes it."""
    if trainer.is_canceled:
        raise StudyError(
            f"{ctx.job.id}: training stopped at step {trainer.global_step} of {trainer.max_steps} (canceled); "
            "run the study again to resume from the last checkpoint"
        )


def data_fraction(data: Dict[str, Any], fraction: float, out: Path) -> Dict[str, Any]:
    """``data`` with its training token files cut to their first ``fraction`` of tokens, written
    under ``out`` (a data-repetition control: the same budget repeats a smaller corpus more often;
    ``train_tokens`` and the description say how much is left)."""
    from ..data.tokens import token_dtype_for_vocab

    width = token_dtype_for_vocab(int(data["vocab_size"])).itemsize
    out.mkdir(parents=True, exist_ok=True)
    paths, kept = [], 0
    for i, src in enumerate(data["train"]):
        if "://" in str(src):
            raise StudyError(f"data_fraction: remote token file {src}; the control cuts local files only")
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


def job_pretrain(ctx: JobContext) -> Dict[str, Any]:
    from ..checkpoints import resolve_checkpoint
    from ..train import read_metrics, run_experiment

    data = _data(ctx)
    if ctx.job.params.get("data_fraction") is not None:
        data = data_fraction(data, float(ctx.job.params["data_fraction"]), ctx.dir / "data")
    spec = run_spec(ctx.job, data, str(ctx.dir / "run"))
    cfg, resolved = build_run(ctx.job, spec)
    _watch(cfg, ctx)
    _finished(run_experiment(cfg), ctx)
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


def job_midtrain(ctx: JobContext) -> Dict[str, Any]:
    """Mid-training from a start checkpoint ([SAM-PT] App B): ``load_path`` in the arm's settings,
    or (the default) the paper's OLMo-2-0425-1B stage-1 checkpoint converted from the HF hub."""
    from ..checkpoints import resolve_checkpoint
    from ..recipes.midtrain import run_midtrain

    data = _data(ctx)
    settings = ctx.job.params["settings"]
    spec = run_spec(ctx.job, data, str(ctx.dir / "run"))
    cfg, _ = build_run(ctx.job, spec)
    _watch(cfg, ctx)
    kwargs: Dict[str, Any] = {"tokenizer": data.get("tokenizer_dir")}
    for key in MIDTRAIN_LOAD_KEYS:
        if settings.get(key) is not None:
            kwargs[key] = settings[key]
    _finished(run_midtrain(cfg, **kwargs), ctx)
    checkpoint = str(resolve_checkpoint(ctx.dir / "run"))
    return {
        "checkpoint": checkpoint,
        "save_folder": str(ctx.dir / "run"),
        **BaseRecord.measure(ctx.job.params, checkpoint_budget(checkpoint), data).to_dict(),
    }


def job_export(ctx: JobContext) -> Dict[str, Any]:
    from ..hf import export_hf

    data = _data(ctx)
    unit = ctx.job.params["unit"]
    report = export_hf(_unit_ckpt(ctx, unit), ctx.dir / "hf", tokenizer=data.get("tokenizer_dir"), overwrite=True)
    return {"hf_dir": str(ctx.dir / "hf"), "export": report}


def job_pt_eval(ctx: JobContext) -> Dict[str, Any]:
    from ..checkpoints import load_transformer
    from ..evals import lm_loss

    data = _data(ctx)
    opts = ctx.job.params.get("options") or {}
    model, info = load_transformer(_unit_ckpt(ctx, ctx.job.params["unit"]))
    res = lm_loss(
        model,
        data["val"],
        seq_len=info.sequence_length or 128,
        vocab_size=data["vocab_size"],
        max_sequences=opts.get("max_sequences"),
        batch_size=opts.get("batch_size", 8),
    )
    return {"l_pt": res.loss, "ppl": res.ppl, "tokens": res.tokens}


# -- probes -------------------------------------------------------------------------------------


def _probe(ctx: JobContext, fn_name: str) -> Dict[str, Any]:
    from ..probes import runners

    data = _data(ctx)
    unit = ctx.job.params["unit"]
    opts = dict(ctx.job.params.get("options") or {})
    fn: Callable = getattr(runners, fn_name)
    out = ctx.dir / "result.json"
    res = fn([_unit_ckpt(ctx, unit)], data["val"], labels=[unit], out=out, progress=False, **opts)
    return {"file": str(out), "unit": unit, "summary": res.get("summary") or res.get("records")}


def job_quantize(ctx: JobContext) -> Dict[str, Any]:
    return _probe(ctx, "quantize_probe")


def job_noise(ctx: JobContext) -> Dict[str, Any]:
    return _probe(ctx, "noise_probe")


def job_hessian(ctx: JobContext) -> Dict[str, Any]:
    return _probe(ctx, "hessian_probe")


# -- fine-tuning --------------------------------------------------------------------------------


def job_ft_data(ctx: JobContext) -> Dict[str, Any]:
    from ..finetune.adapters import prepare_dataset
    from ..finetune.data import read_meta

    name = ctx.job.params["dataset"]
    if Path(name).is_dir():
        meta = read_meta(name)
        return {"dir": str(Path(name).resolve()), "name": meta.name, "splits": meta.splits}
    data = _data(ctx)
    if not data.get("tokenizer_dir"):
        raise StudyError(
            "finetune: datasets are tokenized with the study's tokenizer directory; set data.tokenizer to a dir"
        )
    ds = prepare_dataset(
        name, data["tokenizer_dir"], ctx.dir / "data", overwrite=True, **ctx.job.params.get("prepare", {})
    )
    return {"dir": str(ds.root), "name": ds.name, "splits": ds.meta.splits}


def ft_sweeps(
    job: Job,
    *,
    base: str,
    ft_dir: str,
    pt_val: List[str],
    mixes: Dict[str, str],
    paths: Optional[Dict[str, str]] = None,
):
    """The fine-tuning sweeps of one ``ft_sweep`` job (the main methods, then one per cfs/cs mix);
    the plan step builds them too, with stand-in paths, and expands them without files. The
    shared options are checked by name and type (``paths``: their places in the study file)."""
    from ..finetune.engine import FTConfig
    from ..finetune.sweep import LR_GRIDS, MIX_METHODS, SweepSpec, mix_sweeps
    from .fields import typed_settings

    p = job.params
    lrs = [float(x) for x in (p["lrs"] if p["lrs"] is not None else LR_GRIDS[p["preset"]])]
    given = dict(p.get("common") or {})
    symbolic = {k: given.pop(k) for k in ("token_budget",) if given.get(k) == "table3"}  # resolved per dataset
    common = {"pt_val": list(pt_val), **typed_settings(FTConfig, given, "finetune.common", paths), **symbolic}
    methods = list(p["methods"])
    grids = dict(p.get("grids") or {})
    main = SweepSpec(
        bases=[base],
        datasets=[ft_dir],
        lrs=lrs,
        methods=[m for m in methods if m not in MIX_METHODS],
        base_labels=[p["unit"]],
        common=common,
        **grids,
    )
    return ([main] if main.methods else []) + mix_sweeps(main, {m: mixes[m] for m in methods if m in MIX_METHODS})


def job_ft_sweep(ctx: JobContext) -> Dict[str, Any]:
    """The LR sweep of one base checkpoint on one dataset, for every method; a ``cfs`` method
    trains on the context-free mix for as many steps as the task alone ([CFS] Sec 3)."""
    from ..finetune.sweep import MIX_METHODS, expand, run_sweep

    p = ctx.job.params
    unit, ds = p["unit"], p["dataset"]
    mixes = {m: ctx.dep(f"cfs/{unit}:{ds}:{m}")["mix_dir"] for m in p["methods"] if m in MIX_METHODS}
    sweeps = ft_sweeps(
        ctx.job,
        base=_unit_ckpt(ctx, unit),
        ft_dir=ctx.dep(f"finetune/data:{ds}")["dir"],
        pt_val=list(_data(ctx)["val"]),
        mixes=mixes,
    )
    from .progress import PROGRESS_FILE, write_progress

    sizes = [len(expand(spec)) for spec in sweeps]
    started = time.time()
    total, failed = 0, []
    for i, spec in enumerate(sweeps):
        before = sum(sizes[:i])
        report = lambda done, _n, before=before: write_progress(  # noqa: E731
            ctx.dir / PROGRESS_FILE, before + done, sum(sizes), "runs", started=started
        )
        res = run_sweep(
            spec,
            ctx.dir,
            jobs=1,
            progress=False,
            keep_checkpoints=bool(p.get("keep_checkpoints")),
            on_progress=report,
            engine=p.get("engine", "batched"),
        )
        total += res.total
        failed += [f"{rid}: {why} ({log})" for rid, log, why in res.failed]
    if failed:
        raise StudyError(f"{ctx.job.id}: {len(failed)} fine-tuning run(s) failed:\n" + "\n".join(failed))
    base_meta = BaseRecord.from_result(ctx.dep(f"pretrain/{unit}"), f"pretrain/{unit}").to_dict()
    return {"results": str(ctx.dir / "results.jsonl"), "runs": total, "base_label": unit, "base_meta": base_meta}


# -- context-free data, benchmarks --------------------------------------------------------------


def job_cfs(ctx: JobContext) -> Dict[str, Any]:
    """Context-free samples of one base model and their mix with one task ([CFS] Sec 2-3)."""
    from .. import paper
    from ..cfs.method import prepare_method
    from ..checkpoints import checkpoint_info

    p = ctx.job.params
    opts = dict(p.get("options") or {})
    method = p["method"]
    ratio = float(opts.pop("ratio", paper.CFS_DEFAULT_RATIO))
    hf_dir = ctx.dep(f"export/{p['unit']}")["hf_dir"]
    ft_dir = ctx.dep(f"finetune/data:{p['dataset']}")["dir"]
    seq_len = int(checkpoint_info(_unit_ckpt(ctx, p["unit"])).sequence_length or paper.CFS_FT_SEQ_LEN)
    ft_common = (ctx.study.finetune.common if ctx.study.finetune else {}) or {}
    mix = prepare_method(
        method,
        hf_dir,
        ft_dir,
        ctx.dir,
        ratio=ratio,
        seq_len=seq_len,
        max_tokens=int(opts.pop("max_tokens", seq_len - 1)),  # the BOS prompt takes one position
        global_batch_size=int(ft_common.get("batch_size", paper.FT_BATCH_SIZE)),
        epochs=1,
        **opts,
    )
    return {"mix_dir": str(mix), "method": method, "ratio": ratio}


def _benchmark(ctx: JobContext, hf_dir: str, label: str) -> Dict[str, Any]:
    from dataclasses import asdict

    from ..evals.offline import run_offline_suite

    p = ctx.job.params
    out: Dict[str, Any] = {"unit": label}
    if p.get("offline") is not None:
        opts = dict(p["offline"])
        quants = opts.pop("quant", [None])
        for q in quants if isinstance(quants, list) else [quants]:
            tag = "bf16" if q in (None, "none") else q
            recs = run_offline_suite(hf_dir, out_dir=ctx.dir / tag, model_label=f"{label}:{tag}", quant=q, **opts)
            out[tag] = [asdict(r) for r in recs]
    if p.get("olmes") is not None:
        from ..evals.olmes import run_olmes_suite

        out.update(run_olmes_suite(hf_dir, out_dir=ctx.dir / "olmes", label=label, **p["olmes"]))
    return out


def job_benchmarks(ctx: JobContext) -> Dict[str, Any]:
    """The benchmark suite on a base model (offline lm-eval and/or OLMES; bf16 and 4-bit)."""
    unit = ctx.job.params["unit"]
    return _benchmark(ctx, ctx.dep(f"export/{unit}")["hf_dir"], unit)


def job_benchmarks_ft(ctx: JobContext) -> Dict[str, Any]:
    """The benchmark suite on the fine-tuned model of one base and dataset that learned most
    (lowest L_FT), exported to Hugging Face format first."""
    from ..finetune.records import ResultStore
    from ..hf import export_hf

    p = ctx.job.params
    unit, ds = p["unit"], p["dataset"]
    recs = [r for r in ResultStore(ctx.dep(f"finetune/{unit}:{ds}")["results"]).records() if r.extra.get("checkpoint")]
    if not recs:
        raise StudyError(f"{ctx.job.id}: the sweep kept no fine-tuned checkpoint to benchmark")
    best = min(recs, key=lambda r: r.l_ft)
    hf_dir = ctx.dir / "hf"
    export_hf(best.extra["checkpoint"], hf_dir, tokenizer=_data(ctx).get("tokenizer_dir"), overwrite=True)
    out = _benchmark(ctx, str(hf_dir), f"{unit}:{ds}")
    out.update(base=unit, dataset=ds, run_id=best.run_id, lr=best.lr, method=best.method, l_ft=best.l_ft)
    return out


# -- analysis and report ------------------------------------------------------------------------


def job_analysis(ctx: JobContext) -> Dict[str, Any]:
    from .analysis import analyse_study

    return analyse_study(ctx)


def job_report(ctx: JobContext) -> Dict[str, Any]:
    from .report import write_report

    return write_report(ctx.out, ctx.dep("analysis"))


JOB_KINDS: Dict[str, Callable[[JobContext], Dict[str, Any]]] = {
    "data": job_data,
    "pretrain": job_pretrain,
    "midtrain": job_midtrain,
    "export": job_export,
    "pt_eval": job_pt_eval,
    "quantize": job_quantize,
    "noise": job_noise,
    "hessian": job_hessian,
    "ft_data": job_ft_data,
    "ft_sweep": job_ft_sweep,
    "cfs": job_cfs,
    "benchmarks": job_benchmarks,
    "benchmarks_ft": job_benchmarks_ft,
    "analysis": job_analysis,
    "report": job_report,
}
