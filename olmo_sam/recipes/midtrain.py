"""SAM mid-training of OLMo-2-1B ([SAM-PT] App B, Table 1), on OLMo-core.

Start: the Hugging Face release ``allenai/OLMo-2-0425-1B`` at revision
``stage1-step1907359-tokens4001B`` (end of stage 1, 4T tokens), converted into an OLMo-core
checkpoint by :func:`olmo_sam.hf.import_hf` (done automatically on first launch, or beforehand
with ``olmo-sam import-hf``). Then 50B tokens of the Dolmino mix (a mix file of token-file paths;
``--mix-include`` selects sources) with Table 1's hyper-parameters: seed 42, context 2048 (down
from 4096, batch doubled to 1024 sequences to keep tokens per step), AdamW betas (0.9, 0.95),
weight decay 0.1, no warmup, LR 7.4487e-5 decayed linearly to 0 (the registered ``midtrain``
schedule, [WSO] Eq. 11). ``--optimizer adamw`` is the OLMo baseline; ``--optimizer sam`` changes
only the optimizer (rho 0.05). FSDP under torchrun; re-launching with the same save folder
resumes. The dry run builds the model on the meta device only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import click
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.io import is_url
from olmo_core.optim import AdamWConfig, OptimConfig, OptimGroupOverride
from olmo_core.script_utils import ExperimentConfig
from olmo_core.train import Duration

from .. import paper
from ..config import setting
from ..models import dolma2_tokenizer, model_config
from ..optim import Midtrain, SAMConfig
from ..preflight import FLOAT, NON_NEGATIVE_FLOAT, POSITIVE_INT, model_callback
from ..train import build_experiment
from .common import (
    RunSpec,
    apply_overrides,
    check_micro_batch,
    common_options,
    flag_error,
    parse_tokens,
    print_dry_run,
    resolve_data,
    resolve_dp,
    run_summary,
    world_size,
)

__all__ = ["MidtrainSpec", "build_midtrain", "run_midtrain", "check_init_checkpoint", "as_load_path", "main"]

T1 = paper.MIDTRAIN_1B
OPTIMIZERS = ("adamw", "sam")
#: per-rank micro-batch (sequences of 2048) on an 80 GB GPU under FSDP bf16 (a project choice)
DEFAULT_MICRO_BATCH_SIZE = 4
EVAL_INTERVAL = 1000
CHECKPOINT_INTERVAL = 1000
INIT_DIR = "init"


@dataclass(kw_only=True)
class MidtrainSpec(RunSpec):
    optimizer: str = setting("adamw", choices=OPTIMIZERS)
    #: '1B' (the paper) or 'tiny' (CPU tests of the same recipe)
    size: str = setting("1B", choices=("1B", "tiny"))
    tokens: Optional[int] = setting(T1.tokens, ge=1)
    steps: Optional[int] = setting(None, ge=1)
    lr: float = setting(T1.lr, ge=0)
    #: SAM radius of the sam arm (default: Table 1's); an error with adamw, which has none
    rho: Optional[float] = None
    seq_len: int = setting(T1.context_length, ge=1)
    batch_size: int = setting(T1.batch_sequences, ge=1)
    load_path: Optional[str] = None
    save_folder: str = "runs/midtrain-1B"


def _optim(spec: MidtrainSpec) -> OptimConfig:
    adamw = AdamWConfig(
        lr=spec.lr,
        betas=T1.betas,
        weight_decay=T1.weight_decay,
        group_overrides=[
            OptimGroupOverride(params=["embeddings.weight"], opts={"weight_decay": T1.embedding_weight_decay})
        ],
    )
    if spec.optimizer == "sam":
        return SAMConfig(base=adamw, rho=T1.rho if spec.rho is None else spec.rho)
    if spec.rho is not None:
        raise OLMoConfigurationError("rho is the SAM radius; it does not apply to --optimizer adamw (use sam)")
    return adamw


def build_midtrain(spec: MidtrainSpec, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The OLMo-core experiment of Table 1 (with dotted ``overrides`` applied)."""
    tokenizer = spec.tokenizer or dolma2_tokenizer()
    if spec.size == "1B":
        model = model_config("1B", vocab_size=T1.embedding_size)
        if tokenizer.padded_vocab_size() != T1.embedding_size:
            raise OLMoConfigurationError(
                f"OLMo-2-1B has {T1.embedding_size} embedding rows (dolma2); tokenizer "
                f"{tokenizer.identifier} pads to {tokenizer.padded_vocab_size()}"
            )
    else:
        model = model_config("tiny", vocab_size=tokenizer.padded_vocab_size())
    world = world_size()
    micro_batch_size = spec.micro_batch_size or min(spec.batch_size // world, DEFAULT_MICRO_BATCH_SIZE)
    check_micro_batch(spec.batch_size, world, micro_batch_size)
    cfg = build_experiment(
        model=model,
        tokenizer=tokenizer,
        train_paths=list(spec.train_paths),
        val_paths=list(spec.val_paths) or None,
        save_folder=spec.save_folder,
        optim=_optim(spec),
        sequence_length=spec.seq_len,
        global_batch_size=spec.batch_size,
        micro_batch_size=micro_batch_size,
        max_steps=spec.steps,
        max_tokens=spec.tokens,
        eval_interval=spec.eval_interval or EVAL_INTERVAL,
        checkpoint_interval=spec.checkpoint_interval or CHECKPOINT_INTERVAL,
        dp=spec.dp,
        param_dtype=spec.param_dtype,
        seed=T1.seed,
        check_paths=spec.check_paths,
    )
    # Table 1: no warmup, linear decay from the starting LR to alpha_f * LR = 0
    cfg.train_module.scheduler = Midtrain(alpha_f=T1.final_lr_fraction)
    cfg.train_module.max_grad_norm = T1.max_grad_norm
    cfg.train_module.z_loss_multiplier = T1.z_loss_multiplier
    cfg.data_loader.seed = T1.seed
    cfg.load_path = spec.load_path
    if spec.stop_at_step is not None:
        cfg.trainer.hard_stop = Duration.steps(spec.stop_at_step)
    return apply_overrides(cfg, overrides)


def check_init_checkpoint(cfg: ExperimentConfig) -> None:
    """The starting checkpoint exists and holds the recipe's model (before any compute)."""
    from ..checkpoints import load_checkpoint_config, resolve_checkpoint

    if cfg.load_path is None or is_url(cfg.load_path):
        return
    try:
        step = resolve_checkpoint(cfg.load_path)
        saved = load_checkpoint_config(step)["model"]
    except FileNotFoundError as e:
        raise OLMoConfigurationError(f"starting checkpoint: {e}") from None
    want = cfg.model.as_config_dict()
    # the architecture must match; ``init_seed`` only draws fresh weights, which loading replaces
    diff = sorted(k for k in set(saved) | set(want) if k != "init_seed" and saved.get(k) != want.get(k))
    if diff:
        raise OLMoConfigurationError(
            f"starting checkpoint {step} holds a different model than the recipe's (fields {diff}); "
            "convert the right release with 'olmo-sam import-hf'"
        )


def default_start(save_folder: str) -> str:
    """Where :func:`run_midtrain` converts the Hugging Face start (the trainer's ``load_path``)."""
    return f"{save_folder}/{INIT_DIR}/step0/model_and_optim"


def run_midtrain(
    cfg: ExperimentConfig,
    *,
    init_from_hf: Optional[str] = paper.OLMO2_1B_HF_ID,
    hf_revision: Optional[str] = paper.OLMO2_1B_STAGE1_REVISION,
    tokenizer: Optional[str] = None,
):
    """Run a mid-training experiment from :func:`build_midtrain`.

    With ``init_from_hf`` (default: the paper's OLMo-2-0425-1B stage-1 checkpoint) and no
    ``cfg.load_path``, the model is converted into ``{save_folder}/init`` first (once; rank 0) and
    training starts from it. The start checkpoint must hold the recipe's model. Re-running with
    the same save folder resumes.
    """
    from ..train.experiment import (
        run_experiment,
        setup_environment,
        validate_experiment,
    )

    save = str(cfg.trainer.save_folder)
    if cfg.load_path is None:
        if init_from_hf is None:
            raise OLMoConfigurationError(
                "mid-training needs a start: give load_path (an OLMo-core checkpoint) or init_from_hf"
            )
        cfg.load_path = default_start(save)
    elif cfg.load_path != default_start(save):
        cfg.load_path = as_load_path(cfg.load_path)  # a model-only start (e.g. a study arm's) too
    validate_experiment(cfg)
    setup_environment()
    if init_from_hf is not None and cfg.load_path == default_start(save):
        _import_on_rank0(init_from_hf, hf_revision, Path(save) / INIT_DIR, tokenizer)
    check_init_checkpoint(cfg)
    return run_experiment(cfg, setup=False)


def as_load_path(path: str) -> str:
    """``--load-path`` as the trainer's ``load_path``
    (:func:`olmo_sam.checkpoints.trainer_load_path`), with a missing checkpoint as a config error."""
    from ..checkpoints import trainer_load_path

    try:
        return trainer_load_path(path)
    except FileNotFoundError as e:
        raise OLMoConfigurationError(f"--load-path: {e}") from None


def _import_on_rank0(hf_source: str, revision: Optional[str], dest: Path, tokenizer: Optional[str]) -> Path:
    """Convert the Hugging Face start into ``dest`` once (rank 0, in a subprocess so that the
    conversion's single-process checkpoint write stays out of the training process group)."""
    from olmo_core.distributed.utils import barrier, get_rank

    from ..checkpoints import latest_step_dir

    if Path(hf_source).exists():
        revision = None  # a local directory has no revisions
    if get_rank() == 0 and latest_step_dir(dest) is None:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        }
        cmd = [sys.executable, "-m", "olmo_sam.cli", "import-hf", hf_source, "--out", str(dest)]
        if revision:
            cmd += ["--revision", revision]
        if tokenizer:
            cmd += ["--tokenizer", tokenizer]
        click.echo(f"converting {hf_source}{'@' + revision if revision else ''} -> {dest}")
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            raise click.ClickException(f"import of {hf_source} failed (exit {proc.returncode})")
    barrier()
    step = latest_step_dir(dest)
    assert step is not None
    return step


@click.command("midtrain", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--optimizer",
    type=click.Choice(OPTIMIZERS),
    default="adamw",
    show_default=True,
    help="adamw: the OLMo baseline; sam: Table 1's SAM run.",
)
@click.option(
    "--size", type=click.Choice(["1B", "tiny"]), default="1B", show_default=True, help="'tiny' runs the recipe on CPU."
)
@click.option("--tokens", type=str, default=None, help="Token budget [default: 50B, Table 1].")
@click.option("--steps", type=POSITIVE_INT, default=None, help="Budget in steps instead (CPU runs).")
@click.option("--lr", type=NON_NEGATIVE_FLOAT, default=None, help=f"Starting LR [default: {T1.lr}, Table 1].")
@click.option("--rho", type=FLOAT, default=None, help=f"SAM radius [default: {T1.rho}].")
@click.option("--seq-len", type=POSITIVE_INT, default=None, help=f"[default: {T1.context_length}]")
@click.option(
    "--batch-size", type=POSITIVE_INT, default=None, help=f"Global batch in sequences [default: {T1.batch_sequences}]."
)
@click.option(
    "--data-mix",
    "data",
    multiple=True,
    help="Mix file of token files (Dolmino), dataset dir or token file (repeatable).",
)
@click.option("--mix-include", multiple=True, help="Only mix-file lines with this label (repeatable).")
@click.option("--data-root", default=None, help="Root for relative mix-file paths (e.g. https://olmo-data.org).")
@click.option("--val", multiple=True, help="Validation token files / dataset dir / mix file.")
@click.option("--tokenizer", "tokenizer_name", default=None, help="'dolma2' (default) or a tokenizer dir (tiny).")
@click.option("--load-path", default=None, help="OLMo-core checkpoint to start from (overrides --init-from-hf).")
@click.option(
    "--init-from-hf",
    default=paper.OLMO2_1B_HF_ID,
    show_default=True,
    callback=model_callback,
    help="HF model to convert and start from.",
)
@click.option(
    "--hf-revision", default=paper.OLMO2_1B_STAGE1_REVISION, show_default=True, help="Its revision (stage-1 end)."
)
@common_options
def main(
    optimizer,
    size,
    tokens,
    steps,
    lr,
    rho,
    seq_len,
    batch_size,
    data,
    mix_include,
    data_root,
    val,
    tokenizer_name,
    load_path,
    init_from_hf,
    hf_revision,
    dry_run,
    as_json,
    save_folder,
    dp,
    param_dtype,
    micro_batch_size,
    eval_interval,
    checkpoint_interval,
    stop_at_step,
    gpu_peak_tflops,
    mfu,
    overrides,
):
    """OLMo-2-1B mid-training with AdamW or SAM ([SAM-PT] App B, Table 1).

    Extra KEY=VALUE arguments override the resolved OLMo-core config.
    """
    import olmo_sam  # noqa: F401

    try:
        if save_folder is None and not dry_run:
            raise click.UsageError("--out is required: the run directory (re-using it resumes the run)")
        if not data and not dry_run:
            raise click.UsageError(
                "--data-mix is required: a mix file of Dolmino token files (e.g. OLMo-core's "
                "src/scripts/train/OLMo2/anneal/dolmino100.txt with --data-root https://olmo-data.org)"
            )
        tokenizer = None
        if tokenizer_name not in (None, "dolma2"):
            from ..data.tokenizer import load_tokenizer, tokenizer_config

            tokenizer = tokenizer_config(load_tokenizer(tokenizer_name))
        ds = resolve_data(
            data,
            val,
            data_root=data_root,
            tokenizer_id=(tokenizer or dolma2_tokenizer()).identifier,
            include=mix_include,
        )
        if size == "tiny" and tokenizer is None:
            tokenizer = ds.tokenizer
            if tokenizer is None:
                raise click.UsageError("--size tiny takes its tokenizer from a prepared dataset dir or --tokenizer")
        save = save_folder or "runs/midtrain-1B"
        hf_init = load_path is None
        start = as_load_path(load_path) if load_path else default_start(save)
        spec = MidtrainSpec(
            optimizer=optimizer,
            size=size,
            tokens=(parse_tokens(tokens) if tokens is not None else (None if steps is not None else T1.tokens)),
            steps=steps,
            lr=T1.lr if lr is None else lr,
            rho=rho,
            seq_len=seq_len or T1.context_length,
            batch_size=batch_size or T1.batch_sequences,
            train_paths=ds.train or ["<Dolmino token files>"],
            val_paths=ds.val,
            tokenizer=tokenizer,
            load_path=start,
            save_folder=save,
            dp=resolve_dp(dp, "fsdp"),
            param_dtype=param_dtype,
            micro_batch_size=micro_batch_size,
            eval_interval=eval_interval,
            checkpoint_interval=checkpoint_interval,
            stop_at_step=stop_at_step,
            check_paths=not dry_run,
        )
        cfg = build_midtrain(spec, overrides)
        extra: Dict[str, Any] = {
            "start": f"{init_from_hf}@{hf_revision} (converted into {start})" if hf_init else start
        }
        if dry_run:
            print_dry_run(cfg, run_summary(cfg, gpu_peak_tflops=gpu_peak_tflops, mfu=mfu), as_json=as_json, extra=extra)
            return
        run_midtrain(
            cfg, init_from_hf=init_from_hf if hf_init else None, hf_revision=hf_revision, tokenizer=tokenizer_name
        )
    except OLMoConfigurationError as e:
        raise click.ClickException(str(flag_error(e))) from e


if __name__ == "__main__":  # python -m / torchrun -m olmo_sam.recipes.midtrain
    main()
