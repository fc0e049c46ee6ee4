"""The sampling loop shared by both generation engines, and the vLLM engine's subprocess entry.

This file is deliberately standard-library-only at import time: it runs *as a script* inside the
separate vLLM environment (``python worker.py REQUEST.json``), which has neither olmo-sam nor
OLMo-core installed, and it is imported by olmo-sam itself for the transformers fallback, which
plugs its own backend into the same :func:`run_request` loop. One loop, two backends: shards,
record layout, atomic writes and progress events are identical whichever engine samples.

Request (JSON)::

    {"model": DIR, "engine_args": {...},          # vLLM LLM(...) keyword arguments
     "jobs": [{"name": str,
               "sampling": {"temperature", "top_p", "max_tokens", "logprobs"},
               "extra": {...},                    # fields copied into every record
               "shards": [{"path": FILE, "seed": int,
                           "items": [{"index": int, "seed": int, "prompt": [ids]}]}]}]}

Each finished shard is one JSONL file written atomically (tmp + ``os.replace``), one record per
item, and one progress event on stdout: a line ``@@olmo-sam@@ {json}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from typing import Callable, List

EVENT_PREFIX = "@@olmo-sam@@ "
#: vLLM's gpu_memory_utilization on CPU machines (platform-facts: 0.2 works here)
CPU_MEMORY_UTILIZATION = 0.2

#: A backend samples one shard: (items, sampling, shard_seed) -> one output dict per item with
#: keys prompt_token_ids (as the engine received them), token_ids, text, finish_reason, seed (the
#: seed that drove this sample's RNG) and optionally logprobs (per position: {token_id: logprob}).
Backend = Callable[[List[dict], dict, int], List[dict]]


def derive_seed(seed: int, *keys: object) -> int:
    """A deterministic 31-bit seed for (seed, keys...) that does not depend on the platform."""
    digest = hashlib.sha256(":".join(str(k) for k in (seed, *keys)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def emit(event: str, **fields) -> None:
    print(EVENT_PREFIX + json.dumps({"event": event, **fields}), flush=True)


def write_jsonl_atomic(path: str, records: List[dict]) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def run_request(request: dict, backend: Backend, emit: Callable[..., None] = emit) -> None:
    """Sample every shard of every job in ``request`` with ``backend``, writing one file per shard
    and reporting each through ``emit`` (stdout events in the subprocess, a callback in-process)."""
    for job in request["jobs"]:
        sampling, extra = job["sampling"], job.get("extra", {})
        for shard in job["shards"]:
            items = shard["items"]
            start = time.perf_counter()
            outs = backend(items, sampling, shard["seed"])
            seconds = time.perf_counter() - start
            if len(outs) != len(items):
                raise RuntimeError(f"backend returned {len(outs)} outputs for {len(items)} prompts")
            records = []
            for item, out in zip(items, outs):
                rec = {
                    "index": item["index"],
                    "seed": out["seed"],
                    # the prompt as the engine saw it (not as we sent it)
                    "prompt_token_ids": list(out["prompt_token_ids"]),
                    "token_ids": list(out["token_ids"]),
                    "text": out["text"],
                    "finish_reason": out["finish_reason"],
                }
                if out.get("logprobs") is not None:
                    rec["logprobs"] = out["logprobs"]
                rec.update(extra)
                records.append(rec)
            write_jsonl_atomic(shard["path"], records)
            emit(
                "shard",
                job=job["name"],
                path=shard["path"],
                samples=len(items),
                tokens=sum(len(r["token_ids"]) for r in records),
                seconds=seconds,
            )


# ------------------------------------------------------------------------------------------------
# vLLM backend (runs only inside the vLLM environment)
# ------------------------------------------------------------------------------------------------


def vllm_backend(request: dict) -> Backend:
    from vllm import LLM, SamplingParams  # only importable inside the vLLM environment

    try:
        from vllm.inputs import TokensPrompt
    except ImportError:  # older layouts
        from vllm import TokensPrompt  # type: ignore

    import torch

    engine_args = dict(request.get("engine_args", {}))
    if not torch.cuda.is_available():
        # On the CPU backend this is the fraction of *host* memory reserved for the KV cache; the
        # GPU default (0.9) fails to start on a shared machine.
        engine_args.setdefault("gpu_memory_utilization", CPU_MEMORY_UTILIZATION)
    start = time.perf_counter()
    llm = LLM(model=request["model"], **engine_args)
    emit("engine_ready", seconds=time.perf_counter() - start)

    def generate(items: List[dict], sampling: dict, shard_seed: int) -> List[dict]:
        params = [
            SamplingParams(
                n=1,
                temperature=sampling["temperature"],
                top_p=sampling["top_p"],
                top_k=0,  # 0 = top-k off (vLLM 0.32 SamplingParams)
                min_p=0.0,
                presence_penalty=0.0,
                frequency_penalty=0.0,
                repetition_penalty=1.0,
                max_tokens=sampling["max_tokens"],
                min_tokens=0,
                seed=item["seed"],
                logprobs=sampling.get("logprobs"),
                skip_special_tokens=True,
            )
            for item in items
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(item["prompt"])) for item in items]
        results = llm.generate(prompts, params, use_tqdm=False)
        outs = []
        for item, res in zip(items, results):
            o = res.outputs[0]
            lps = None
            if o.logprobs is not None:
                lps = [{str(t): float(lp.logprob) for t, lp in pos.items()} for pos in o.logprobs]
            outs.append(
                {
                    "prompt_token_ids": list(res.prompt_token_ids),
                    "token_ids": list(o.token_ids),
                    "text": o.text,
                    "finish_reason": o.finish_reason,
                    "seed": item["seed"],
                    "logprobs": lps,
                }
            )
        return outs

    return generate


def stop_with_parent(poll_seconds: float = 1.0) -> None:
    """Stop this worker and the engine processes vLLM starts when olmo-sam, its parent, is gone
    (killed, even by SIGKILL): a thread polls the parent's pid and kills this process group, which
    the worker leads (started with ``start_new_session``). Without it the engine went on sampling
    as an orphan, holding its memory and racing a resumed run for the same shards."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def main(argv: List[str]) -> int:
    stop_with_parent()
    if len(argv) != 1:
        print("usage: worker.py REQUEST.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        request = json.load(f)
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        emit("error", kind="no_vllm", message=f"{sys.executable}: cannot import vllm ({e})")
        return 3
    import vllm as _v

    emit("start", python=sys.executable, vllm=getattr(_v, "__version__", "?"))
    run_request(request, vllm_backend(request))
    emit("done")
    return 0


if __name__ == "__main__":  # vLLM spawns engine processes: the guard is required
    sys.exit(main(sys.argv[1:]))
