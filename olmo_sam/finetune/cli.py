"""``olmo-sam finetune {datasets,prepare,run,wise-ft}`` and ``olmo-sam sweep``."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, Optional

import click

from .. import paper
from ..preflight import FLOAT, POSITIVE_FLOAT, POSITIVE_INT, SEED, comma_list, errors_by_flag, out_dir_callback
from ..seeds import DATA_SEED

#: sweep flags that set a field of each run (the rest: --<field with dashes>)
SWEEP_FLAGS = {
    "lr": "--lrs",
    "ewc_lambda": "--ewc-lambdas",
    "l2_lambda": "--l2-lambdas",
    "lora_rank": "--lora-ranks",
    "replay_ratio": "--replay-ratios",
}
LR_HELP = "learning rates: a preset (table7 = [SAM-PT] Table 7, table3 = Table 3, table10 = EWC Table 10) or a comma-separated list"


def _budget(value: Optional[str]):
    if value is None:
        return None
    v = value.strip().lower()
    if v == "epoch":
        return "epoch"
    if v in ("table7", "table3"):
        return v
    try:
        n = int(float(v))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a number of tokens, 'epoch', 'table7' or 'table3'") from None
    if n < 1:
        raise click.BadParameter(f"the token budget must be >= 1, got {value}")
    return n


def recipe_options(fn):
    """Options shared by ``finetune run`` and ``sweep`` (FTConfig fields; unset = default)."""
    opts = [
        click.option("--batch-size", type=POSITIVE_INT, help=f"sequences per step [default: {paper.FT_BATCH_SIZE}]"),
        click.option(
            "--micro-batch-size",
            "micro_batch_size",
            type=POSITIVE_INT,
            help="sequences per forward/backward (memory); must divide --batch-size",
        ),
        click.option(
            "--seq-len",
            "seq_len",
            type=POSITIVE_INT,
            help="tokens per training sequence [default: the base checkpoint's]",
        ),
        click.option(
            "--token-budget",
            callback=lambda c, p, v: _budget(v),
            help="tokens per run, capped at one epoch: a number, 'epoch' (no cap), 'table7' (10M) or "
            "'table3' (per dataset: MetaMath 80M, others 50M) [default: table7]",
        ),
        click.option(
            "--max-steps", type=POSITIVE_INT, help="explicit number of steps (overrides the epoch/budget rule)"
        ),
        click.option(
            "--warmup-fraction",
            type=FLOAT,
            help=f"LR warmup as a fraction of the steps [default: {paper.FT_WARMUP_FRACTION:g}]",
        ),
        click.option("--final-lr-fraction", type=FLOAT, help="cosine floor as a fraction of the peak [default: 0]"),
        click.option("--weight-decay", type=FLOAT, help=f"AdamW weight decay [default: {paper.FT_WEIGHT_DECAY:g}]"),
        click.option("--max-grad-norm", type=FLOAT, help=f"gradient clipping norm [default: {paper.FT_MAX_GRAD_NORM}]"),
        click.option("--seed", type=SEED, help="model seed (LoRA init, dropout) [default: 0]"),
        click.option("--data-seed", type=SEED, help=f"seed of the training-data order [default: {DATA_SEED}]"),
        click.option("--dp", type=click.Choice(["ddp", "fsdp", "hsdp"]), help="data parallelism under torchrun"),
        click.option(
            "--checkpoint-interval", type=POSITIVE_INT, help="also checkpoint every N steps (resumable long runs)"
        ),
        click.option("--pt-val", multiple=True, help="pretraining validation token file(s) [default: the base run's]"),
        click.option(
            "--pt-val-max-sequences",
            type=POSITIVE_INT,
            help="evaluate L_PT on at most this many sequences [default: all]",
        ),
        click.option(
            "--ft-val-max-sequences",
            type=POSITIVE_INT,
            help="evaluate L_FT on at most this many sequences [default: all]",
        ),
        click.option("--eval-batch-size", type=POSITIVE_INT, help="sequences per evaluation batch [default: 8]"),
        click.option(
            "--fisher-batches", type=POSITIVE_INT, help=f"EWC Fisher batches [default: {paper.EWC_FISHER_BATCHES}]"
        ),
        click.option(
            "--fisher-batch-size", type=POSITIVE_INT, help="EWC: sequences per Fisher batch [default: --batch-size]"
        ),
        click.option("--fisher-data", multiple=True, help="EWC: pretraining token files [default: the base run's]"),
        click.option("--replay-data", multiple=True, help="replay: pretraining token files [default: the base run's]"),
        click.option("--lora-alpha", type=FLOAT, help="LoRA scaling numerator [default: the rank]"),
        click.option("--lora-dropout", type=FLOAT, help="LoRA dropout probability [default: 0]"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


_RECIPE_KEYS = (
    "batch_size",
    "micro_batch_size",
    "seq_len",
    "token_budget",
    "max_steps",
    "warmup_fraction",
    "final_lr_fraction",
    "weight_decay",
    "max_grad_norm",
    "seed",
    "data_seed",
    "dp",
    "checkpoint_interval",
    "pt_val",
    "pt_val_max_sequences",
    "ft_val_max_sequences",
    "eval_batch_size",
    "fisher_batches",
    "fisher_batch_size",
    "fisher_data",
    "replay_data",
    "lora_alpha",
    "lora_dropout",
)


def _common(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for k in _RECIPE_KEYS:
        v = kwargs.pop(k, None)
        if v is None or (isinstance(v, tuple) and not v):
            continue
        out[k] = list(v) if isinstance(v, tuple) else v
    if out.get("token_budget") == "epoch":
        out["token_budget"] = None
    elif out.get("token_budget") == "table7":
        out["token_budget"] = paper.FT_TOKEN_BUDGET_SMALL
    return out


def _setup_logging():
    from olmo_core.utils import prepare_cli_environment

    prepare_cli_environment()


def _records_table(records, title: str):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("base", "dataset", "method", "lr", "L_FT", "L_PT", "base L_PT", "forgetting"):
        table.add_column(col, justify="right" if col not in ("base", "dataset", "method") else "left")

    def loss(x: float, sign: str = "") -> str:  # (a run diverging to 7.5e7 nats is not cut to '752033...')
        return f"{x:{sign}.4f}" if abs(x) < 1e4 else f"{x:{sign}.3e}"

    diverged = []
    for r in sorted(records, key=lambda r: (r.base_label, r.dataset, r.method, r.lr, r.run_id)):
        method = r.method + (f" a={r.hparams['wise_alpha']:g}" if "wise_alpha" in r.hparams else "")
        why = r.extra.get("diverged")
        if why:
            diverged.append(f"  diverged: {r.run_id} ({why}); recorded with NaN losses")
        table.add_row(
            r.base_label,
            r.dataset,
            method,
            f"{r.lr:.3g}",
            "diverged" if why else loss(r.l_ft),
            "diverged" if why else loss(r.l_pt),
            loss(r.base_l_pt),
            loss(r.forgetting, "+"),
        )
    Console().print(table)
    if diverged:
        click.echo("\n".join(diverged) + "\n  (the frontiers and comparisons leave diverged runs out, and say so)")


# ---------------------------------------------------------------------------------------------
# olmo-sam finetune ...
# ---------------------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def finetune():
    """Prepare fine-tuning data and fine-tune a base checkpoint ([SAM-PT] App C.2).

    \b
    Example:
      olmo-sam finetune prepare demo-code --tokenizer runs/demo/data/tokenizer --out ft/code
      olmo-sam finetune run --base runs/demo/pretrain/sam --data ft/code --lr 1e-3 --out ft/runs/sam
    """


@finetune.command("datasets")
def datasets_command():
    """List the dataset adapters (Hugging Face sources and offline demo domains)."""
    from .adapters import SOURCES

    for name, src in SOURCES.items():
        where = src.hf_id or (src.asset.spec if src.asset else "local files")
        click.echo(f"{name:18s} {src.loss:9s} {where:32s} {src.description}")


@finetune.command("prepare")
@click.argument("name")
@click.option(
    "--tokenizer",
    required=True,
    type=click.Path(exists=True),
    help="Hugging Face tokenizer directory (or tokenizer.json)",
)
@click.option(
    "--out",
    callback=out_dir_callback,
    type=click.Path(),
    help="output directory [default: a keyed directory in the cache]",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="split seed")
@click.option(
    "--val-fraction", type=FLOAT, default=0.05, show_default=True, help="fraction of documents held out for L_FT"
)
@click.option(
    "--max-val-documents", type=POSITIVE_INT, default=2000, show_default=True, help="cap on held-out documents"
)
@click.option("--max-train-tokens", type=POSITIVE_INT, help="stop reading once the train split holds this many tokens")
@click.option("--max-documents", type=POSITIVE_INT, help="read at most this many rows")
@click.option("--overwrite", is_flag=True, help="replace a differently prepared dataset in --out")
def prepare_command(
    name, tokenizer, out, seed, val_fraction, max_val_documents, max_train_tokens, max_documents, overwrite
):
    """Format, tokenize and split dataset NAME (see 'olmo-sam finetune datasets')."""
    from .adapters import prepare_dataset

    ds = prepare_dataset(
        name,
        tokenizer,
        out,
        seed=seed,
        val_fraction=val_fraction,
        max_val_documents=max_val_documents,
        max_train_tokens=max_train_tokens,
        max_documents=max_documents,
        overwrite=overwrite,
    )
    click.echo(str(ds.root))
    for split, c in ds.meta.splits.items():
        click.echo(
            f"  {split}: {c['documents']:,d} documents, {c['tokens']:,d} tokens ({c['target_tokens']:,d} targets)"
        )


@finetune.command("run")
@click.option(
    "--base",
    required=True,
    help="base checkpoint: OLMo-core run or step directory, trainer or model-only (import-hf, wise-ft output)",
)
@click.option("--base-label", help="short name of the base in tables and plots [default: its run directory]")
@click.option("--data", required=True, help="prepared dataset directory ('olmo-sam finetune prepare')")
@click.option("--lr", required=True, type=POSITIVE_FLOAT, help="peak learning rate (cosine schedule)")
@click.option(
    "--method",
    type=click.Choice(["ft", "ewc", "l2init", "lora", "replay"]),
    default="ft",
    show_default=True,
    help="full fine-tuning or a forgetting-mitigation baseline",
)
@click.option("--ewc-lambda", type=FLOAT, help=f"[default: {paper.EWC_BEST_LAMBDA:g}]")
@click.option("--l2-lambda", type=FLOAT, help=f"[default: {paper.L2_INIT_PENALTY:g}]")
@click.option("--lora-rank", type=POSITIVE_INT, help=f"[default: {paper.LORA_RANK}]")
@click.option(
    "--replay-ratio", type=FLOAT, help=f"replayed PT tokens per task token [default: {paper.REPLAY_DEFAULT_RATIO:g}]"
)
@click.option("--wise-alpha", "wise_alphas", type=float, multiple=True, help="also record WiSE-FT at these alphas")
@click.option("--out", required=True, callback=out_dir_callback, type=click.Path(), help="run directory")
@click.option("--cache-dir", type=click.Path(), help="[default: OUT/../_cache]")
@click.option("--store", type=click.Path(), help="also append the records to this results.jsonl")
@click.option(
    "--keep-checkpoints", "keep_checkpoint", is_flag=True, help="keep the fine-tuned checkpoint (as sweep's flag)"
)
@click.option("--overwrite", is_flag=True, help="replace another run's files in --out (the same run is not redone)")
@recipe_options
def run_command(
    base,
    base_label,
    data,
    lr,
    method,
    ewc_lambda,
    l2_lambda,
    lora_rank,
    replay_ratio,
    wise_alphas,
    out,
    cache_dir,
    store,
    keep_checkpoint,
    overwrite,
    **kwargs,
):
    """Fine-tune one base checkpoint on one dataset at one learning rate."""
    from .engine import FTConfig, run_finetune
    from .records import ResultStore
    from .sweep import check_records, table3_budget

    common = _common(kwargs)
    if common.get("token_budget") == "table3":
        common["token_budget"] = table3_budget(data)
    _setup_logging()
    with errors_by_flag({f.name for f in fields(FTConfig)}):
        cfg = FTConfig.from_dict(
            dict(
                common,
                base=base,
                base_label=base_label,
                data=data,
                lr=lr,
                method=method,
                ewc_lambda=ewc_lambda,
                l2_lambda=l2_lambda,
                lora_rank=lora_rank,
                replay_ratio=replay_ratio,
                wise_alphas=wise_alphas,
            )
        )
        if store:  # (before the run: a store that contradicts it is refused first)
            done = check_records(ResultStore(store), [cfg.resolved()])
        records = run_finetune(cfg, out, cache_dir=cache_dir, keep_checkpoint=keep_checkpoint, overwrite=overwrite)
    if store:
        ResultStore(store).extend(r for r in records if r.run_id not in done)
    _records_table(records, f"fine-tuning run {Path(out)}")


@finetune.command("wise-ft")
@click.option("--base", required=True, help="base checkpoint")
@click.option("--ft", "ft_ckpt", required=True, help="fine-tuned checkpoint (kept with --keep-checkpoints)")
@click.option("--alpha", required=True, type=FLOAT, help="weight of the fine-tuned model (0 = base, 1 = fine-tuned)")
@click.option(
    "--out", required=True, callback=out_dir_callback, type=click.Path(), help="checkpoint directory to write"
)
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def wise_ft_command(base, ft_ckpt, alpha, out, overwrite):
    """Save the WiSE-FT interpolation (1 - alpha) * base + alpha * fine-tuned as a checkpoint."""
    from .baselines import save_wise_ft

    click.echo(str(save_wise_ft(base, ft_ckpt, alpha, out, overwrite=overwrite)))


# ---------------------------------------------------------------------------------------------
# olmo-sam sweep
# ---------------------------------------------------------------------------------------------


METHOD_CHOICES = ("ft", "ewc", "l2init", "lora", "replay", "wiseft")


@click.command("sweep", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--base", "bases", multiple=True, required=True, help="base checkpoint(s)")
@click.option("--base-label", "base_labels", multiple=True, help="one label per --base")
@click.option("--data", "datasets", multiple=True, required=True, help="prepared dataset directory(ies)")
@click.option("--lrs", "lr_grid", default="table7", show_default=True, help=LR_HELP)
@click.option(
    "--methods",
    "methods",
    multiple=True,
    default=("ft",),
    show_default=True,
    callback=comma_list(choices=METHOD_CHOICES),
    help=f"fine-tuning methods, comma-separated or repeated: {', '.join(METHOD_CHOICES)}",
)
@click.option(
    "--ewc-lambdas",
    "ewc_lambdas",
    multiple=True,
    callback=comma_list(float, keep=("table10",)),
    help="EWC lambdas, comma-separated or repeated; 'table10' = the Table 10 grid [default: 1e4]",
)
@click.option(
    "--l2-lambdas",
    "l2_lambdas",
    multiple=True,
    callback=comma_list(float),
    help=f"L2-to-init penalties, comma-separated or repeated [default: {paper.L2_INIT_PENALTY:g}]",
)
@click.option(
    "--lora-ranks",
    "lora_ranks",
    multiple=True,
    callback=comma_list(int),
    help=f"LoRA ranks, comma-separated or repeated [default: {paper.LORA_RANK}]",
)
@click.option(
    "--replay-ratios",
    "replay_ratios",
    multiple=True,
    callback=comma_list(float),
    help=f"replayed PT tokens per task token, comma-separated or repeated [default: {paper.REPLAY_DEFAULT_RATIO:g}]",
)
@click.option(
    "--wise-alphas",
    "wise_alphas",
    multiple=True,
    callback=comma_list(float),
    help=f"WiSE-FT weights of the fine-tuned model, comma-separated or repeated [default: {paper.WISE_FT_ALPHA:g}]",
)
@click.option(
    "--out",
    required=True,
    callback=out_dir_callback,
    type=click.Path(),
    help="sweep directory (results.jsonl, runs/, cache/)",
)
@click.option("--jobs", type=click.IntRange(min=1), help="parallel local workers [default: min(2, CPUs)]")
@click.option(
    "--executor",
    "launcher",
    type=click.Choice(["local", "torchrun"]),
    default="local",
    show_default=True,
    help="how runs start: local worker processes, or torchrun per run",
)
@click.option(
    "--nproc-per-node",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="torchrun processes per run (--executor torchrun)",
)
@click.option("--keep-checkpoints", is_flag=True, help="keep each run's fine-tuned checkpoint (WiSE-FT, benchmarks)")
@click.option(
    "--engine",
    type=click.Choice(["batched", "trainer"]),
    default="batched",
    show_default=True,
    help="batched: train the runs of an LR grid together in one process (ft, replay, mixes; each "
    "equal to its trainer run); trainer: every run through OLMo-core's trainer, one at a time",
)
@click.option(
    "--batch-memory-gb",
    type=click.FloatRange(min=0, min_open=True),
    help="memory for one batched chunk's training state (weights, gradients, AdamW moments); "
    "a larger grid runs in chunks [default: 4 on CPU, half the GPU's memory]",
)
@click.option("--dry-run", is_flag=True, help="list the runs and what is done, run nothing")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@click.option(
    "--mix",
    "mixes",
    multiple=True,
    metavar="METHOD=DIR",
    help="also run METHOD (cfs or cs) on a mix from 'olmo-sam cfs mix' of the single --data task, "
    "for the task's number of steps",
)
@recipe_options
def sweep(
    bases,
    base_labels,
    datasets,
    lr_grid,
    methods,
    ewc_lambdas,
    l2_lambdas,
    lora_ranks,
    replay_ratios,
    wise_alphas,
    out,
    jobs,
    launcher,
    nproc_per_node,
    keep_checkpoints,
    engine,
    batch_memory_gb,
    dry_run,
    no_progress,
    mixes,
    **kwargs,
):
    """Fine-tune every base on every dataset over an LR grid (and methods); resumable.

    Results are appended to OUT/results.jsonl (one record per finished run); re-running the
    same command skips finished runs.
    """
    from .sweep import (
        GRID_METHODS,
        SweepSpec,
        check_records,
        check_shared_settings,
        expand,
        mix_sweeps,
        parse_lrs,
        run_sweep,
    )

    grids = dict(
        ewc_lambdas=ewc_lambdas,
        l2_lambdas=l2_lambdas,
        lora_ranks=lora_ranks,
        replay_ratios=replay_ratios,
        wise_alphas=wise_alphas,
    )
    for name, method in GRID_METHODS.items():  # (a grid of a method the sweep does not run was ignored)
        if grids[name] and method not in methods:
            raise click.BadParameter(
                f"the grid of method '{method}', which --methods {','.join(methods)} does not list; add the "
                "method or drop the grid",
                param_hint="--" + name.replace("_", "-"),
            )
    if "table10" in ewc_lambdas and len(ewc_lambdas) > 1:
        raise click.BadParameter("'table10' is the whole Table 10 grid; give it alone", param_hint="--ewc-lambdas")
    ewc = paper.EWC_LAMBDA_GRID if "table10" in ewc_lambdas else ewc_lambdas
    from .engine import FTConfig

    with errors_by_flag({f.name for f in fields(FTConfig)}, SWEEP_FLAGS):
        spec = SweepSpec(
            bases=list(bases),
            base_labels=list(base_labels) or None,
            datasets=list(datasets),
            lrs=parse_lrs(lr_grid),
            methods=list(methods),
            ewc_lambdas=ewc or (paper.EWC_BEST_LAMBDA,),
            l2_lambdas=l2_lambdas or (paper.L2_INIT_PENALTY,),
            lora_ranks=lora_ranks or (paper.LORA_RANK,),
            replay_ratios=replay_ratios or (paper.REPLAY_DEFAULT_RATIO,),
            wise_alphas=wise_alphas or (paper.WISE_FT_ALPHA,),
            common=_common(kwargs),
        )
        mix_map = {}
        for m in mixes:
            method, sep, path = m.partition("=")
            if not sep or not path:
                raise click.BadParameter(f"{m!r}: write METHOD=DIR, e.g. cfs=runs/mix", param_hint="--mix")
            mix_map[method] = path
        specs = [spec, *mix_sweeps(spec, mix_map)]
        if dry_run:
            check_shared_settings(out, spec.common, record=False)
            from .engine import record_dataset
            from .records import ResultStore

            configs = [c for sp in specs for c in expand(sp)]
            done = check_records(ResultStore(Path(out) / "results.jsonl"), configs)
            n_done = sum(set(c.expected_run_ids()) <= done for c in configs)
            for c in configs:  # method and dataset as the records will carry them (a cfs/cs mix: its task)
                state = "done" if set(c.expected_run_ids()) <= done else "pending"
                method = c.record_method or c.method
                click.echo(
                    f"{state:8s} {c.run_id:36s} {c.base_label:16s} {record_dataset(c):20s} {method:7s} lr={c.lr:g}"
                )
            click.echo(f"{len(configs)} runs: {n_done} done, {len(configs) - n_done} pending")
            return
        _setup_logging()
        results = [
            run_sweep(
                sp,
                out,
                jobs=jobs,
                launcher=launcher,
                nproc_per_node=nproc_per_node,
                keep_checkpoints=keep_checkpoints,
                progress=not no_progress,
                engine=engine,
                memory_budget_gb=batch_memory_gb,
                shared_settings=spec.common,
            )
            for sp in specs
        ]
        _records_table([r for res in results for r in res.records], f"sweep {out}")
        failed = [f for res in results for f in res.failed]
        click.echo(
            f"{sum(r.total for r in results)} runs: {sum(r.already_done for r in results)} already done, "
            f"{sum(r.harvested for r in results)} recovered, {sum(r.ran for r in results)} ran, {len(failed)} "
            f"failed; results in {Path(out) / 'results.jsonl'}"
        )
        if failed:
            for rid, logp, why in failed:
                click.echo(f"  FAILED {rid} ({why}): {logp}", err=True)
            raise SystemExit(1)
