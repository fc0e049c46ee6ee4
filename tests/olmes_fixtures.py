"""Write output directories shaped the way OLMES writes them (read from OLMES's own writer code).

``oe_eval/run_eval.py``: ``compute_save_metrics`` saves ``full_config`` (task_name, task_hash,
model_hash, model_config, task_config, compute_config, processing_time, current_date,
num_instances, beaker_info) + ``metrics`` + ``task_idx`` to
``task_file_name(output_dir, task_idx, task_name, "metrics.json")`` =
``task-{idx:03d}-{task_name}-metrics.json`` (``oe_eval/utils.py``); ``save_json`` is a bare
``json.dumps`` and ``save_jsonl`` one ``json.dumps`` per line. At the end ``metrics-all.jsonl``
holds the suite aggregates first, then the tasks, and ``metrics.json`` holds
``all_primary_scores`` (``f"{alias}: {score:.6}"``), ``tasks`` and ``model_config``.

Aggregate entries: only the keys ``run_eval`` itself reads from every ``metrics_all`` entry are
used (task_name, task_config, metrics.primary_score, num_instances, processing_time), with
``task_idx`` null -- OLMES's aggregator module was not available to read, so no other key is
assumed (and the parser relies on no other).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from typing import Dict, List, Optional, Sequence

MODEL_DEFAULTS_SUBSET = {"revision": None, "trust_remote_code": None, "max_length": 2048, "model_path": None}


def _md5(obj) -> str:
    return hashlib.md5(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def save_json(path, data):  # oe_eval.utils.save_json
    with open(path, "w") as f:
        f.write(json.dumps(data))


def save_jsonl(path, rows):  # oe_eval.utils.save_jsonl
    with open(path, "w") as f:
        for d in rows:
            f.write(json.dumps(d))
            f.write("\n")


def task_file_name(output_dir, task_idx, task_name, file_name):  # oe_eval.utils.task_file_name
    return os.path.join(output_dir, f"task-{task_idx:03d}-{task_name}-{file_name}")


def model_config(model: str) -> dict:
    return {"model": model, **MODEL_DEFAULTS_SUBSET, "model_type": "hf"}


def task_metrics(
    idx: int,
    task_name: str,
    alias: str,
    primary_metric: str,
    score: float,
    n: int,
    model: str,
    base_task_config: Optional[dict] = None,
) -> dict:
    task_config = dict(
        base_task_config
        or {
            "task_name": task_name,
            "task_core": task_name.split(":")[0],
            "limit": None,
            "split": "test",
            "num_shots": 5,
            "fewshot_seed": 1234,
            "random_subsample_seed": 1234,
            "context_kwargs": None,
            "generation_kwargs": None,
            "metric_kwargs": None,
            "native_id_field": "id",
            "fewshot_source": None,
            "dataset_path": None,
            "dataset_name": None,
            "use_chat_format": None,
            "version": 0,
            "revision": None,
            "compute_gold_bpb": False,
        }
    )
    task_config.update({"task_name": task_name, "primary_metric": primary_metric})
    task_config["metadata"] = {**task_config.get("metadata", {}), "regimes": ["OLMES-v0.1"], "alias": alias}
    full_config = {
        "task_name": task_name,
        "task_hash": _md5(task_config),
        "model_hash": _md5(model_config(model)),
        "model_config": model_config(model),
        "task_config": task_config,
        "compute_config": {
            "batch_size": "16",
            "max_batch_size": 32,
            "output_dir": "out",
            "num_recorded_inputs": 3,
            "save_raw_requests": True,
            "recompute_metrics": False,
        },
        "processing_time": 1.5,
        "current_date": "2025-06-01 12:00:00 UTC",
        "num_instances": n,
        "beaker_info": {},
    }
    metrics = full_config.copy()
    metrics["metrics"] = {primary_metric: score, "extra_metrics": {"num_tokens": 3.0}, "primary_score": score}
    metrics["task_idx"] = idx
    return metrics


def aggregate(alias: str, score: float, n: int) -> dict:
    return {
        "task_name": alias,
        "task_config": {"task_name": alias, "metadata": {"alias": alias}},
        "metrics": {"primary_score": score},
        "num_instances": n,
        "processing_time": 0.0,
        "task_idx": None,
    }


def write_run(out: str, tasks: Sequence[dict], aggregates: Sequence[dict] = (), model: str = "m") -> None:
    """Per-task files, then metrics-all.jsonl and metrics.json, as run_eval writes them."""
    os.makedirs(out, exist_ok=True)
    for m in tasks:
        save_json(task_file_name(out, m["task_idx"], m["task_name"], "metrics.json"), m)
        save_jsonl(task_file_name(out, m["task_idx"], m["task_name"], "predictions.jsonl"), [{"doc_id": 0}])
    metrics_all: List[Dict] = list(aggregates) + list(tasks)
    save_jsonl(os.path.join(out, "metrics-all.jsonl"), metrics_all)
    summary = []
    for m in metrics_all:
        name = m["task_config"].get("metadata", {}).get("alias", m["task_name"])
        score = m["metrics"].get("primary_score", "NA")
        summary.append(f"{name}: {score:.6}")
    save_json(
        os.path.join(out, "metrics.json"),
        {
            "all_primary_scores": summary,
            "tasks": [
                {
                    "alias": m["task_config"].get("metadata", {}).get("alias", m["task_name"]),
                    "metrics": m["metrics"],
                    "num_instances": m["num_instances"],
                    "processing_time": m["processing_time"],
                    "task_config": {},
                }
                for m in metrics_all
            ],
            "model_config": {"model": model},
        },
    )


AGI = ["aqua-rat", "gaokao-english", "logiqa-en", "lsat-ar", "lsat-lr", "lsat-rc", "sat-en", "sat-math"]
MMLU_PRO = [
    "math",
    "health",
    "physics",
    "business",
    "biology",
    "chemistry",
    "computer science",
    "economics",
    "engineering",
    "philosophy",
    "other",
    "history",
    "psychology",
    "law",
]


def suite_tasks(seed=0, model="/ckpt/sam-4bit"):
    """Per-task metrics of a full olmo2-pretrain run, with OLMES's task names and aliases."""
    rng = random.Random(seed)
    specs = []  # (task_name, alias, primary_metric)
    for t in ("arc_challenge", "hellaswag", "winogrande"):
        specs.append((f"{t}:mc", f"{t}:mc::olmes", "acc_raw"))
        specs.append((t, f"{t}:rc::olmes", "acc_uncond" if t == "arc_challenge" else "acc_per_char"))
    specs += [(f"mmlu_subject_{i:02d}:mc", f"mmlu_subject_{i:02d}:mc::olmes", "acc_raw") for i in range(57)]
    specs += [("drop", "drop::olmes", "f1"), ("naturalqs_open", "naturalqs::olmes", "f1")]
    specs += [(f"agi_eval_{a}:mc", f"agi_eval_{a}:1shot::olmes", "acc_raw") for a in AGI]
    specs += [("gsm8k", "gsm8k::olmes", "exact_match")]
    specs += [(f"mmlu_pro_{c}", f"mmlu_pro_{c}:mc::none", "acc_raw") for c in MMLU_PRO]
    specs += [("triviaqa", "triviaqa::olmes", "f1")]
    return [
        task_metrics(i, name, alias, pm, rng.uniform(0.1, 0.9), rng.randint(50, 400), model)
        for i, (name, alias, pm) in enumerate(specs)
    ]
