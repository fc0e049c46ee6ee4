"""``olmo-sam bench finetune-throughput``: a fine-tuning LR sweep three ways, measured in one run.

On a ``micro`` base (or ``--size``; briefly pretrained here on a synthetic Markov corpus) and a synthetic
prompt/response task, the same sweep (default: the demo's, 6 LRs x 60 steps x 16 x 128 tokens)
runs as

* ``checkpointed``: one run at a time through OLMo-core's trainer, saving the final checkpoint and
  loading it again before evaluation (the fine-tuner before in-memory evaluation; the reload is
  timed after the run),
* ``in_memory``: one run at a time through the trainer, evaluated in memory (``--engine trainer``),
* ``batched``: the LR grid trained together (``--engine batched``, :mod:`olmo_sam.finetune.batched`),

each with its own fresh sweep directory (so each computes the base L_PT once), and against
``pure_training``: plain forward/backward/clip/AdamW steps of one model at the same batch, the
compute limit of this work. Reported per way: wall time of the sweep, trained tokens per second,
that over the pure-training tokens per second, and speed-up over ``checkpointed``. The largest
difference of L_FT between the batched and the in-memory records is printed too (they are the same
runs).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click
import numpy as np
import torch

from olmo_sam.output import atomic_write_text
from olmo_sam.preflight import POSITIVE_INT, out_file_callback

__all__ = [
    "finetune_throughput",
    "finetune_throughput_command",
    "TARGETS",
    "WAYS",
    "setup_inputs",
    "sweep_spec",
    "measure_way",
    "pure_training",
]

#: the demo's fine-tuning LR grid (olmo_sam/study/files/demo.yaml)
DEMO_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
#: issue 21's goals: sweep throughput over the checkpointed path, batched tokens/s over pure training
TARGETS = {"speedup_vs_checkpointed": 3.0, "fraction_of_pure_training": 0.7}
_VOCAB, _EOS, _PAD = 384, 0, 1
#: the ways a sweep runs (module docstring)
WAYS = ("checkpointed", "in_memory", "batched")


def _task_docs(n: int, seed: int, prompt: int = 8, response: int = 23):
    """Prompt: random tokens; response: a fixed permutation walk from the prompt's last token
    (response-only loss)."""
    rng = np.random.default_rng(seed)
    perm = np.random.default_rng(99).permutation(np.arange(2, _VOCAB))
    for _ in range(n):
        p = rng.integers(2, _VOCAB, size=prompt)
        r = [perm[(int(p[-1]) - 2 + k) % (_VOCAB - 2)] for k in range(1, response + 1)]
        yield np.concatenate([p, r, [_EOS]]), np.concatenate([np.zeros(prompt, bool), np.ones(response + 1, bool)])


def setup_inputs(folder: Path, *, size: str, seq: int, train_tokens: int) -> Dict[str, Path]:
    """A ``size`` base (vocabulary 384) (20 AdamW steps on a synthetic corpus), a task dataset of at least
    ``train_tokens`` training tokens, and a pretraining validation file."""
    from olmo_core.data import TokenizerConfig
    from olmo_core.optim import AdamWConfig

    from olmo_sam.checkpoints import resolve_checkpoint
    from olmo_sam.data.synthetic import markov_tokens
    from olmo_sam.finetune.data import FTDataMeta, write_meta, write_split
    from olmo_sam.models import model_config
    from olmo_sam.optim import CosineAlpha
    from olmo_sam.train import build_experiment, run_experiment

    pt_train, pt_val = folder / "pt_train.npy", folder / "pt_val.npy"
    markov_tokens(200_000, seed=1, vocab=_VOCAB, eos=_EOS).astype(np.uint16).tofile(pt_train)
    markov_tokens(16_384, seed=2, vocab=_VOCAB, eos=_EOS).astype(np.uint16).tofile(pt_val)
    exp = build_experiment(
        model=model_config(size, vocab_size=_VOCAB),
        tokenizer=TokenizerConfig(vocab_size=_VOCAB, eos_token_id=_EOS, pad_token_id=_PAD, bos_token_id=_EOS),
        train_paths=[str(pt_train)],
        save_folder=str(folder / "base"),
        optim=AdamWConfig(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1),
        sequence_length=seq,
        global_batch_size=16,
        max_steps=20,
    )
    exp.train_module.scheduler = CosineAlpha(warmup=2)
    exp.train_module.max_grad_norm = 1.0
    run_experiment(exp)
    task = folder / "task"
    n_docs = train_tokens // 32 + 64
    splits = {
        "train": write_split(task, "train", _task_docs(n_docs, 1), vocab_size=_VOCAB, eos_token_id=_EOS),
        "val": write_split(task, "val", _task_docs(64, 2), vocab_size=_VOCAB, eos_token_id=_EOS),
    }
    write_meta(
        task,
        FTDataMeta(
            name="bench-task",
            vocab_size=_VOCAB,
            eos_token_id=_EOS,
            dtype="uint16",
            splits=splits,
            source={"generator": __name__},
        ),
    )
    return {"base": resolve_checkpoint(folder / "base"), "task": task, "pt_val": pt_val}


def pure_training(base: Path, *, steps: int, batch: int, seq: int, lr: float) -> Dict[str, float]:
    """Tokens per second (of wall and of CPU time) of plain training steps of one model at the sweep's batch: forward and
    backward (summed CE over label tokens), total-norm clipping, AdamW."""
    from olmo_core.optim import AdamWConfig

    from olmo_sam.checkpoints import load_transformer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_transformer(base, device=device)
    model.train()
    optim = AdamWConfig(lr=lr, betas=(0.9, 0.95), weight_decay=0.0).build(model)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, _VOCAB, (batch, seq), generator=gen)
    labels = torch.cat([ids[:, 1:], torch.full((batch, 1), -100)], dim=1).to(device)
    ids = ids.to(device)
    n = (labels != -100).sum()

    def step():
        _, loss, _, _ = model(ids, labels=labels, loss_reduction="sum", loss_div_factor=n, return_logits=False)
        loss.backward()
        params = list(model.parameters())
        torch.nn.utils.clip_grads_with_norm_(params, 1.0, torch.nn.utils.get_total_norm([p.grad for p in params]))
        optim.step()
        optim.zero_grad(set_to_none=True)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    tokens = steps * batch * seq
    return {
        "tokens_per_s": tokens / (time.perf_counter() - t0),
        "tokens_per_cpu_s": tokens / (time.process_time() - c0),
    }


def sweep_spec(paths: Dict[str, Path], *, lrs: Sequence[float], steps: int, batch: int, label: str):
    """The benchmark's LR sweep over :func:`setup_inputs`' base and task (L_FT and L_PT on 64
    sequences each)."""
    from olmo_sam.finetune.sweep import SweepSpec

    return SweepSpec(
        bases=[str(paths["base"])],
        base_labels=[label],
        datasets=[str(paths["task"])],
        lrs=list(lrs),
        common=dict(
            batch_size=batch,
            max_steps=steps,
            pt_val=[str(paths["pt_val"])],
            pt_val_max_sequences=64,
            ft_val_max_sequences=64,
        ),
    )


def measure_way(spec, out: Path, way: str, *, jobs: int = 1) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Run ``spec`` one of the :data:`WAYS` into the fresh folder ``out``; returns its wall and CPU
    time, runs, trained tokens and tokens per second, and each run's L_FT by run id."""
    from olmo_sam.checkpoints import load_transformer
    from olmo_sam.finetune.records import ResultStore
    from olmo_sam.finetune.sweep import run_sweep

    if way not in WAYS:
        raise ValueError(f"way {way!r}: choose from {', '.join(WAYS)}")
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_sweep(
        spec,
        out,
        jobs=jobs,
        progress=False,
        engine="batched" if way == "batched" else "trainer",
        keep_checkpoints=way == "checkpointed",
    )
    if res.failed:
        raise RuntimeError(f"{way}: {len(res.failed)} run(s) failed: {res.failed[0]}")
    records = ResultStore(out / "results.jsonl").records()
    if way == "checkpointed":  # the reload before evaluation of the checkpointed path
        for r in records:
            load_transformer(r.extra["checkpoint"])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = sum(r.tokens for r in records)
    measured = {
        "wall_s": wall,
        "cpu_s": cpu,
        "runs": len(records),
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "tokens_per_cpu_s": tokens / cpu,
    }
    return measured, {r.run_id: r.l_ft for r in records}


def finetune_throughput(
    *,
    lrs: Sequence[float] = DEMO_LRS,
    steps: int = 60,
    batch: int = 16,
    seq: int = 128,
    jobs: int = 1,
    size: str = "micro",
    work_dir: Optional[str] = None,
) -> Dict[str, Any]:
    """Run the benchmark (module docstring); returns the report as a dict."""
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        folder = Path(tmp)
        paths = setup_inputs(folder, size=size, seq=seq, train_tokens=steps * batch * seq)
        spec = sweep_spec(paths, lrs=lrs, steps=steps, batch=batch, label=size)
        report: Dict[str, Any] = {
            "model": size,
            "lrs": list(lrs),
            "steps": steps,
            "batch_size": batch,
            "seq_len": seq,
            "jobs": jobs,
            "threads": torch.get_num_threads(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
        }
        l_ft: Dict[str, Dict[str, float]] = {}
        for mode in WAYS:
            report[mode], l_ft[mode] = measure_way(spec, folder / mode, mode, jobs=jobs)
        pure = pure_training(paths["base"], steps=min(steps, 30), batch=batch, seq=seq, lr=min(lrs))
    report["pure_training"] = pure
    for mode in WAYS:
        m = report[mode]
        m["fraction_of_pure_training"] = m["tokens_per_s"] / pure["tokens_per_s"]
        m["speedup_vs_checkpointed"] = report["checkpointed"]["wall_s"] / m["wall_s"]
        # CPU time of this process (jobs=1): what the wall time is on idle cores
        if jobs == 1:
            m["cpu_fraction_of_pure_training"] = m["tokens_per_cpu_s"] / pure["tokens_per_cpu_s"]
            m["cpu_speedup_vs_checkpointed"] = report["checkpointed"]["cpu_s"] / m["cpu_s"]
    # the most any way could gain over the checkpointed path: its time over the sweep's pure compute
    tokens = report["checkpointed"]["tokens"]
    report["ceiling_speedup_vs_checkpointed"] = report["checkpointed"]["wall_s"] / (tokens / pure["tokens_per_s"])
    if jobs == 1:
        report["ceiling_cpu_speedup_vs_checkpointed"] = report["checkpointed"]["cpu_s"] / (
            tokens / pure["tokens_per_cpu_s"]
        )
    report["max_abs_l_ft_diff_batched_vs_in_memory"] = max(
        abs(l_ft["batched"][k] - l_ft["in_memory"][k]) for k in l_ft["in_memory"]
    )
    report["targets"] = dict(TARGETS)
    return report


def _table(r: Dict[str, Any]) -> List[str]:
    lines = [
        f"{r['model']} model, {len(r['lrs'])} LRs x {r['steps']} steps x {r['batch_size']} x {r['seq_len']} tokens, "
        f"jobs {r['jobs']}, {r['threads']} thread(s), {r['device']}",
        f"{'way':14s} {'sweep s':>9s} {'tokens/s':>10s} {'of pure':>8s} {'speed-up':>9s}   "
        f"{'CPU s':>7s} {'tok/CPU-s':>10s} {'of pure':>8s} {'speed-up':>9s}",
    ]
    for mode in WAYS:
        m = r[mode]
        cpu = (
            (
                f"{m['cpu_s']:7.1f} {m['tokens_per_cpu_s']:10.0f} {m['cpu_fraction_of_pure_training']:8.0%} "
                f"{m['cpu_speedup_vs_checkpointed']:8.2f}x"
            )
            if "cpu_speedup_vs_checkpointed" in m
            else ""
        )
        lines.append(
            f"{mode:14s} {m['wall_s']:9.1f} {m['tokens_per_s']:10.0f} {m['fraction_of_pure_training']:8.0%} "
            f"{m['speedup_vs_checkpointed']:8.2f}x   {cpu}"
        )
    pure = r["pure_training"]
    lines.append(
        f"{'pure training':14s} {'':9s} {pure['tokens_per_s']:10.0f} {'100%':>8s} {'':9s}   "
        f"{'':7s} {pure['tokens_per_cpu_s']:10.0f} {'100%':>8s}"
    )
    ceiling = f"{r['ceiling_speedup_vs_checkpointed']:.2f}x wall"
    if "ceiling_cpu_speedup_vs_checkpointed" in r:
        ceiling += f", {r['ceiling_cpu_speedup_vs_checkpointed']:.2f}x CPU"
    lines.append(f"ceiling (checkpointed time / pure compute of the sweep's tokens): {ceiling}")
    lines.append(
        f"targets: batched >= {TARGETS['speedup_vs_checkpointed']:g}x checkpointed, >= "
        f"{TARGETS['fraction_of_pure_training']:.0%} of pure training; "
        f"max |L_FT batched - in memory| = {r['max_abs_l_ft_diff_batched_vs_in_memory']:.2e}"
    )
    return lines


@click.command("finetune-throughput")
@click.option(
    "--lrs",
    default=",".join(f"{x:g}" for x in DEMO_LRS),
    show_default=True,
    help="comma-separated learning rates (default: the demo's grid)",
)
@click.option(
    "--size",
    type=click.Choice(["micro", "tiny", "20M", "60M", "150M"]),
    default="micro",
    show_default=True,
    help="Model preset (vocabulary 384); the GPU comparison uses 20M with 8 LRs.",
)
@click.option("--steps", type=POSITIVE_INT, default=60, show_default=True, help="Steps per run.")
@click.option("--batch-size", "batch", type=POSITIVE_INT, default=16, show_default=True, help="Sequences per step.")
@click.option("--seq-len", "seq", type=POSITIVE_INT, default=128, show_default=True, help="Sequence length (tokens).")
@click.option(
    "--jobs", type=POSITIVE_INT, default=1, show_default=True, help="Sweep worker processes (the same for every way)."
)
@click.option("--threads", type=POSITIVE_INT, default=None, help="CPU threads per process (default 1).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--out",
    callback=out_file_callback,
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the JSON report here.",
)
def finetune_throughput_command(lrs, size, steps, batch, seq, jobs, threads, as_json, out):
    """A fine-tuning LR sweep checkpointed vs in memory vs batched, against pure training.

    \b
    Example:
      olmo-sam bench finetune-throughput --steps 60 --json
      olmo-sam bench finetune-throughput --size 20M --lrs 1e-4,2e-4,5e-4,1e-3,2e-3,5e-3,1e-2,2e-2   # GPU
    """
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        grid = [float(x) for x in lrs.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{lrs!r}: give comma-separated numbers", param_hint="--lrs") from None
    if not grid:
        raise click.BadParameter("give at least one learning rate", param_hint="--lrs")
    r = finetune_throughput(lrs=grid, steps=steps, batch=batch, seq=seq, jobs=jobs, size=size)
    if out:
        atomic_write_text(out, json.dumps(r, indent=2))
    click.echo(json.dumps(r, indent=2) if as_json else "\n".join(_table(r)))
