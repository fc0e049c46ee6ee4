"""Mix synthetic samples into a prepared fine-tuning set, holding the gradient steps fixed.

[CFS] Sec 2, the objective after Eq. (2)::

    min_theta  E_{(x,y)~F}[-log p_theta(y|x)]  +  lambda * E_{x~p_theta*}[-log p_theta(x)]

The first term is the task's response-only loss; the second is an all-token ("pretraining style")
loss on context-free samples x ~ p_theta*, an unbiased estimate of KL(p_theta* || p_theta) up to a
constant. Here both terms are realised as documents of one token stream in the shared fine-tuning
format (:mod:`olmo_sam.finetune.data`): task documents keep their response-only label mask,
context-free documents are all targets.

lambda. OLMo-core's label mask is boolean and the train module sums token losses over the batch
(then divides by the batch's target-token count), so there is no per-token weight. Instead, one
*pass* over the data holds the N task documents and lambda*N synthetic documents drawn from a pool
of M = ratio*N distinct samples: every pool sample appears q = lambda/ratio times per pass,
floor(q) copies plus a without-replacement draw (with randomised rounding of its size) for the
fractional part. The expected summed loss of a pass is then exactly
N * (mean task loss + lambda * mean pool loss), i.e. the weighted objective above, in expectation
over the draw and exactly whenever q is an integer. The default lambda = ratio (q = 1: each
sample once per pass) is the paper's plain mix ("1:1 mix" = ratio 1 = lambda 1). The per-batch
normalisation by target tokens is a positive scalar common to both terms.

Steps held equal ([CFS] Sec 3, "we control for number of gradient steps, i.e. the size of
dataset is inversely proportional to the number of epochs"). Plain fine-tuning for E epochs over
T_task tokens packed into windows of L tokens and batches of B windows runs
S = E * floor(floor(T_task / L) / B) steps (OLMo-core's FSL dataset drops the tail window, its data
loader the tail batch). The mixed split materialises consecutive, independently shuffled passes
and is cut at exactly S * B * L tokens, so ONE epoch over it is exactly S steps whatever the ratio:
more synthetic data means fewer passes over the task data, as in the paper.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
from olmo_core.exceptions import OLMoConfigurationError

from .. import paper
from ..data.fetch import sha256_of
from ..finetune.data import (
    FTDataMeta,
    data_digest,
    iter_documents,
    read_meta,
    split_paths,
    write_meta,
    write_split,
)
from .generate import iter_samples
from .prompts import task_prompts  # noqa: F401  (re-exported: the prompts a CS mix answers)

__all__ = [
    "MixPlan",
    "ft_train_steps",
    "plan_mix",
    "mix_stream",
    "sample_document",
    "task_prompts",
    "build_mix",
    "build_cfs_mix",
    "build_cs_mix",
]

Doc = Tuple[np.ndarray, np.ndarray]  # (tokens, label mask)


def ft_train_steps(train_tokens: int, *, epochs: int, seq_len: int, global_batch_size: int) -> int:
    """Steps of plain fine-tuning: ``epochs * floor(floor(train_tokens / seq_len) / global_batch_size)``.

    ``global_batch_size`` counts sequences (windows of ``seq_len`` tokens), as in [CFS] App B.
    """
    for name, v in (("epochs", epochs), ("seq_len", seq_len), ("global_batch_size", global_batch_size)):
        if v < 1:
            raise OLMoConfigurationError(f"{name} must be >= 1, got {v}")
    return epochs * ((train_tokens // seq_len) // global_batch_size)


@dataclass(frozen=True)
class MixPlan:
    task_documents: int
    #: M: distinct synthetic samples used (round(ratio * N))
    pool_size: int
    ratio: float
    lam: float
    #: synthetic documents per pass: lambda * N (a real number; its fractional part is randomised)
    draws_per_pass: float
    #: whole copies of every pool sample per pass, and the expected extra draws per pass
    copies_per_pass: int
    extra_draws_per_pass: float
    train_steps: int
    seq_len: int
    global_batch_size: int
    epochs_equivalent: int

    @property
    def train_tokens(self) -> int:
        return self.train_steps * self.global_batch_size * self.seq_len


def plan_mix(
    task_documents: int,
    task_tokens: int,
    *,
    ratio: float,
    lam: Optional[float] = None,
    epochs: int = paper.CFS_FT_EPOCHS,
    seq_len: int = paper.CFS_FT_SEQ_LEN,
    global_batch_size: int = paper.CFS_FT_BATCH_SIZE,
) -> MixPlan:
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0):
        raise OLMoConfigurationError(
            f"ratio must be > 0 (the synthetic pool as a fraction of the task set, e.g. "
            f"{', '.join(str(r) for r in paper.CFS_MIX_RATIOS)}), got {ratio!r}"
        )
    lam = ratio if lam is None else lam
    if not (math.isfinite(lam) and lam > 0):
        raise OLMoConfigurationError(f"lam (the synthetic loss weight) must be > 0, got {lam!r}")
    if task_documents < 1:
        raise OLMoConfigurationError("the task set has no training documents")
    pool = round(ratio * task_documents)
    if pool < 1:
        raise OLMoConfigurationError(
            f"ratio={ratio} of {task_documents} task documents rounds to 0 synthetic samples; raise the ratio"
        )
    steps = ft_train_steps(task_tokens, epochs=epochs, seq_len=seq_len, global_batch_size=global_batch_size)
    if steps < 1:
        raise OLMoConfigurationError(
            f"{task_tokens} task tokens give 0 steps of {global_batch_size} x {seq_len} tokens in "
            f"{epochs} epochs; lower the batch size (--batch-size) or the sequence length (--seq-len)"
        )
    draws = lam * task_documents
    copies = math.floor(draws / pool)
    return MixPlan(
        task_documents=task_documents,
        pool_size=pool,
        ratio=float(ratio),
        lam=float(lam),
        draws_per_pass=draws,
        copies_per_pass=copies,
        extra_draws_per_pass=draws - copies * pool,
        train_steps=steps,
        seq_len=seq_len,
        global_batch_size=global_batch_size,
        epochs_equivalent=epochs,
    )


def _pass_documents(plan: MixPlan, rng: np.random.Generator) -> np.ndarray:
    """Indices of one shuffled pass: task docs as 0..N-1, pool sample j as N + j."""
    n, m = plan.task_documents, plan.pool_size
    extra = plan.extra_draws_per_pass
    n_extra = math.floor(extra) + int(rng.random() < extra - math.floor(extra))
    synth = np.concatenate([np.tile(np.arange(m), plan.copies_per_pass), rng.choice(m, size=n_extra, replace=False)])
    order = np.concatenate([np.arange(n), n + synth])
    rng.shuffle(order)
    return order


def mix_stream(
    task_docs: Sequence[Doc], pool_docs: Sequence[Doc], plan: MixPlan, *, eos_token_id: int, seed: int = 0
) -> Iterator[Tuple[Doc, int]]:
    """Yield ``(document, source)`` (source: task index ``i`` or ``N + j`` for pool sample ``j``)
    pass after pass until exactly ``plan.train_tokens`` tokens; the document crossing the end is
    cut and closed by a non-target EOS."""
    if len(task_docs) != plan.task_documents or len(pool_docs) < plan.pool_size:
        raise ValueError("documents do not match the plan")
    budget = plan.train_tokens
    n = plan.task_documents
    for p in range(10**9):
        rng = np.random.default_rng([seed, p])
        for src in _pass_documents(plan, rng):
            tokens, mask = task_docs[src] if src < n else pool_docs[src - n]
            if len(tokens) > budget:
                tokens = np.append(tokens[: budget - 1], eos_token_id)
                mask = np.append(mask[: budget - 1], False)
            budget -= len(tokens)
            yield (tokens, mask), int(src)
            if budget == 0:
                return
    raise AssertionError("unreachable")


def sample_document(rec: dict, *, eos_token_id: int) -> Doc:
    """Turn one generated sample into a fine-tuning document.

    Context-free samples: every generated token is a target (all-token loss), the prompt is not; a
    leading EOS prompt is dropped, since in the stream the previous document's EOS precedes every
    document already (BOS = EOS for OLMo). Contextual (CS) samples: the task prompt is kept and
    masked, the model's answer is the target (response-only loss, like the task data). A sample cut
    at max_tokens ends with a non-target EOS: it did not end there, so the model must not learn
    to stop there.
    """
    prompt = list(rec["prompt_token_ids"])
    if prompt and prompt[0] == eos_token_id:
        prompt = prompt[1:]
    gen = list(rec["token_ids"])
    if eos_token_id in gen[:-1]:
        raise OLMoConfigurationError(f"sample {rec['index']} has an EOS before its end")
    if eos_token_id in prompt:
        raise OLMoConfigurationError(f"sample {rec['index']}: its prompt contains EOS after the start token")
    gen_mask = [True] * len(gen)
    if not gen or gen[-1] != eos_token_id:  # finish_reason "length"
        gen.append(eos_token_id)
        gen_mask.append(False)
    return np.asarray(prompt + gen, dtype=np.int64), np.asarray([False] * len(prompt) + gen_mask, dtype=bool)


def build_mix(
    task_dir: str | Path,
    samples: str | Path,
    ratio: float,
    out_dir: str | Path,
    *,
    method: str = "cfs",
    lam: Optional[float] = None,
    epochs: int = paper.CFS_FT_EPOCHS,
    seq_len: int = paper.CFS_FT_SEQ_LEN,
    global_batch_size: int = paper.CFS_FT_BATCH_SIZE,
    seed: int = 0,
) -> FTDataMeta:
    """Write the mixed fine-tuning dataset for ``method`` ("cfs": context-free samples, all-token
    loss; "cs": contextual samples, response-only loss) into ``out_dir``; returns its meta.

    Train on its train split for ONE epoch (``meta.source["train_steps"]`` steps of
    ``global_batch_size`` x ``seq_len``); the val split is the task's, unchanged.
    """
    kinds = {"cfs": "context_free", "cs": "contextual"}
    if method not in kinds:
        raise OLMoConfigurationError(f"method must be one of {sorted(kinds)}, got {method!r}")
    task_dir, out_dir, samples = Path(task_dir), Path(out_dir), Path(samples)
    if out_dir.resolve() == task_dir.resolve():
        raise OLMoConfigurationError("out_dir must differ from task_dir")
    task = read_meta(task_dir)
    train_stats = task.splits.get("train")
    if not train_stats:
        raise OLMoConfigurationError(f"{task_dir}: meta.json lists no train split")
    plan = plan_mix(
        train_stats["documents"],
        train_stats["tokens"],
        ratio=ratio,
        lam=lam,
        epochs=epochs,
        seq_len=seq_len,
        global_batch_size=global_batch_size,
    )
    eos = task.eos_token_id
    dtype = np.dtype(task.dtype)
    pool: List[Doc] = []
    model_sha = None
    n_records = 0
    for rec in iter_samples(samples):  # streamed: a pool of 10^5 samples stays compact
        n_records += 1
        if len(pool) == plan.pool_size:
            continue  # only counting: the pool is the file's first M samples
        if rec["kind"] != kinds[method]:
            raise OLMoConfigurationError(
                f"{samples}: method {method!r} needs {kinds[method]} samples, but sample "
                f"{rec['index']} is {rec['kind']}"
            )
        if rec["eos_token_id"] != eos:
            raise OLMoConfigurationError(
                f"{samples}: sample {rec['index']} was generated with EOS id {rec['eos_token_id']}, "
                f"the task data uses {eos}: model and task tokenizer differ"
            )
        model_sha = model_sha or rec.get("model_sha256")
        tokens, mask = sample_document(rec, eos_token_id=eos)
        if tokens.max() >= task.vocab_size:
            raise OLMoConfigurationError(
                f"{samples}: sample {rec['index']} has token id {tokens.max()} >= the task's vocab_size "
                f"{task.vocab_size}: model and task tokenizer differ"
            )
        pool.append((tokens.astype(dtype), mask))
    if len(pool) < plan.pool_size:
        raise OLMoConfigurationError(
            f"ratio={ratio} of {plan.task_documents} task documents needs {plan.pool_size} samples, "
            f"{samples} has {n_records}; generate more (cfs generate --num-samples "
            f"{ratio * 100:g}% --task-dir {task_dir})"
        )
    task_docs = list(iter_documents(task_dir, "train"))
    if len(task_docs) != plan.task_documents:
        raise OLMoConfigurationError(
            f"{task_dir}: meta.json says {plan.task_documents} train documents, the files hold {len(task_docs)}"
        )

    seen: Counter = Counter()

    def stream():
        for doc, src in mix_stream(task_docs, pool, plan, eos_token_id=eos, seed=seed):
            seen["task" if src < plan.task_documents else "synthetic"] += 1
            yield doc

    out_dir.mkdir(parents=True, exist_ok=True)
    splits = {"train": write_split(out_dir, "train", stream(), vocab_size=task.vocab_size, eos_token_id=eos)}
    if "val" in task.splits:
        for src_path, dst_path in zip(split_paths(task_dir, "val"), split_paths(out_dir, "val")):
            shutil.copyfile(src_path, dst_path)
        splits["val"] = dict(task.splits["val"])
    meta = FTDataMeta(
        name=f"{task.name}+{method}{ratio * 100:g}",
        vocab_size=task.vocab_size,
        eos_token_id=eos,
        dtype=task.dtype,
        splits=splits,
        source={
            "method": method,
            "task_dir": str(task_dir),
            "task_name": task.name,
            # the task's preparation: a sweep checks that its --data is the task the mix was built from
            "task_digest": data_digest(task_dir),
            "task_source": task.source,
            "samples": str(samples),
            "samples_sha256": sha256_of(samples),
            "model_sha256": model_sha,
            "seed": seed,
            **asdict(plan),
            "run_epochs": 1,
            "documents_seen": dict(seen),
            "task_passes": seen["task"] / plan.task_documents,
        },
        tokenizer=task.tokenizer,
    )
    write_meta(out_dir, meta)
    return meta


def build_cfs_mix(task_dir, cfs_jsonl, ratio, out_dir, **kwargs) -> FTDataMeta:
    """CFS: the task set plus context-free samples with all-token loss (see :func:`build_mix`)."""
    return build_mix(task_dir, cfs_jsonl, ratio, out_dir, method="cfs", **kwargs)


def build_cs_mix(task_dir, cs_jsonl, ratio, out_dir, **kwargs) -> FTDataMeta:
    """CS baseline: the task set plus the base model's answers to its prompts (response-only loss)."""
    return build_mix(task_dir, cs_jsonl, ratio, out_dir, method="cs", **kwargs)
