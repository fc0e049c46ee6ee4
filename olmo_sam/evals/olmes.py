"""Drive AllenAI's OLMES for the OLMo-2 pretraining benchmark suite, and parse what it writes.

The 1B evaluation of [SAM-PT] (App B.1.2, Tables 2 and 8) scores ten OLMES tasks and reports
their mean; forgetting is the drop of that mean. OLMES pins versions OLMo-core refuses
(transformers<5, torch<2.9), so it lives in its own environment and runs as a subprocess:
``olmes --model ... --task ... --output-dir ...`` (``oe_eval/launch.py``), which in turn runs
``python -m oe_eval.run_eval`` from ``PATH`` — hence the environment's ``bin`` directory is put first
on ``PATH``.

Output files (``oe_eval/run_eval.py``, ``oe_eval/utils.py`` in OLMES):

* ``task-{idx:03d}-{task_name}-metrics.json`` per task: the run's ``full_config`` (``task_name``,
  ``task_hash``, ``model_hash``, ``model_config``, ``task_config`` with ``metadata.alias``,
  ``compute_config``, ``processing_time``, ``current_date``, ``num_instances``, ``beaker_info``)
  plus ``metrics`` (with ``primary_score``) and ``task_idx``. ``task_name`` is the registry name
  (``arc_challenge:mc``, ``mmlu_pro_computer science``), so file names hold ``:`` and spaces.
* ``metrics-all.jsonl``: suite aggregates first (``task_idx`` null), then every task.
* ``metrics.json``: ``all_primary_scores`` as ``"alias: score"`` strings (the alias contains
  ``::``, so it is split from the right), ``tasks`` and ``model_config``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from olmo_core.exceptions import OLMoConfigurationError

from .. import paper
from ..config import Checked, ConfigError, did_you_mean, setting
from ..files import iter_jsonl, read_json
from .hf_load import QUANT_KINDS
from .records import BenchRecord

__all__ = [
    "SuiteTask",
    "SUITES",
    "OLMES_ENV_VAR",
    "OLMES_INSTALL_HINT",
    "OlmesNotFound",
    "find_olmes",
    "quant_model_args",
    "validate_model_args",
    "build_olmes_command",
    "run_olmes",
    "load_olmes_results",
    "is_olmes_output_dir",
    "parse_primary_score_line",
]

OLMES_ENV_VAR = "OLMO_SAM_OLMES"

OLMES_INSTALL_HINT = f"""\
OLMES is not installable next to OLMo-core (it pins transformers<5 and torch<2.9); give it its own
environment and point olmo-sam at it:

    python3.11 -m venv /opt/olmes-venv
    git clone https://github.com/allenai/olmes.git && cd olmes
    /opt/olmes-venv/bin/pip install -e .            # HF backend
    /opt/olmes-venv/bin/pip install -e '.[gpu]'     # + vLLM backend
    export {OLMES_ENV_VAR}=/opt/olmes-venv/bin/olmes   # or pass --olmes PATH

{OLMES_ENV_VAR} / --olmes may name the 'olmes' executable, the environment's python, or the
environment directory itself."""


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteTask:
    """One paper task and how OLMES scores it.

    ``rule`` is OLMES's suite aggregation (``oe_eval/configs/task_suites.py``): ``single`` (a
    plain task), ``macro`` (mean over sub-tasks), ``micro`` (instance-weighted mean),
    ``mc_or_rc`` (the better of the multiple-choice and cloze formulations, OLMES's standard for
    these tasks: Gu et al. 2024, *OLMES*, Sec 3).
    """

    task: str
    alias: str
    rule: str = "single"
    #: regex over sub-task aliases, and how many OLMES runs for the suite
    subtasks: str = ""
    expected: int = 1


def _suite_olmo2_pretrain() -> Dict[str, SuiteTask]:
    spec = {
        "arc_challenge": SuiteTask(
            "arc_challenge", "arc_challenge::olmes", "mc_or_rc", r"arc_challenge:(mc|rc)::olmes", 2
        ),
        "hellaswag": SuiteTask("hellaswag", "hellaswag::olmes", "mc_or_rc", r"hellaswag:(mc|rc)::olmes", 2),
        "winogrande": SuiteTask("winogrande", "winogrande::olmes", "mc_or_rc", r"winogrande:(mc|rc)::olmes", 2),
        # 57 MMLU subjects; mmlu_pro_* must not match
        "mmlu": SuiteTask("mmlu", "mmlu:mc::olmes", "macro", r"mmlu_(?!pro_).+:mc::olmes", 57),
        "drop": SuiteTask("drop", "drop::olmes"),
        "naturalqs": SuiteTask("naturalqs", "naturalqs::olmes"),
        # 8 English AGIEval sets (sat-en-without-passage excluded by OLMES)
        "agi_eval_english": SuiteTask(
            "agi_eval_english",
            "agi_eval_english:1shot::olmes",
            "macro",
            r"agi_eval_.+:1shot::olmes",
            8,
        ),
        "gsm8k": SuiteTask("gsm8k", "gsm8k::olmes"),
        # 14 MMLU-Pro categories ("computer science" has a space)
        "mmlu_pro": SuiteTask("mmlu_pro", "mmlu_pro:mc::none", "micro", r"mmlu_pro_.+:mc::none", 14),
        "triviaqa": SuiteTask("triviaqa", "triviaqa::olmes"),
    }
    if set(spec) != set(paper.OLMES_SUITE_1B):
        raise AssertionError("olmo2-pretrain suite out of sync with paper.OLMES_SUITE_1B")
    return {k: spec[k] for k in paper.OLMES_SUITE_1B}


#: Suites by CLI name. ``olmo2-pretrain`` = the ten tasks of [SAM-PT] App B.1.2.
SUITES: Dict[str, Dict[str, SuiteTask]] = {"olmo2-pretrain": _suite_olmo2_pretrain()}
DEFAULT_SUITE = "olmo2-pretrain"


def get_suite(name: str) -> Dict[str, SuiteTask]:
    if name not in SUITES:
        raise OLMoConfigurationError(f"unknown suite {name!r}; choose one of {sorted(SUITES)}")
    return SUITES[name]


# ---------------------------------------------------------------------------------------------
# Model arguments (validated here: OLMES would otherwise fail only after the job started, and a
# transformers<5 ``from_pretrained`` silently ignores a misspelled quantization kwarg)
# ---------------------------------------------------------------------------------------------

#: Keys of ``MODEL_DEFAULTS`` in OLMES ``oe_eval/default_configs.py``. ``run_eval`` hashes the
#: model config with ``hash_dict(..., require_top_level_default=True)``, so any other key fails.
OLMES_MODEL_ARG_KEYS = frozenset(
    {
        "model",
        "model_type",
        "revision",
        "trust_remote_code",
        "tokenizer",
        "max_length",
        "model_path",
        "load_in_4bit",
        "load_in_8bit",
        "quantization_config",
        "dtype",
        "use_fast_tokenizer",
        "add_bos_token",
        "prefix_token_id",
        "parallelize",
        "device_map_option",
        "peft",
        "delta",
        "autogptq",
        "chat_model",
        "chat_template",
        "vllm_for_mc",
        "vllm_logit_bias",
        "gpu_memory_utilization",
        "enforce_eager",
        "max_num_batched_tokens",
        "data_parallel_size",
        "process_output",
        "custom_kwargs",
        "api_base_url",
    }
)
#: Set by our own flags; refused in --model-arg so there is one way to say each thing.
_FLAG_OWNED = {"model": "MODEL_DIR", "model_path": "MODEL_DIR", "model_type": "--model-type"}
#: vLLM engine arguments we let through ``custom_kwargs`` (``VLLM_Verbose`` merges them into
#: ``vllm.LLM(...)``); anything else cannot be checked without vLLM, so it is refused.
VLLM_CUSTOM_KWARGS = frozenset(
    {
        "quantization",
        "load_format",
        "tensor_parallel_size",
        "seed",
        "dtype",
        "swap_space",
        "kv_cache_dtype",
        "max_num_seqs",
    }
)
_BNB_QUANT_TYPES = ("nf4", "fp4")


def _bnb_config_keys() -> frozenset:
    """Parameter names of ``transformers.BitsAndBytesConfig`` (the installed version)."""
    import inspect

    from transformers import BitsAndBytesConfig

    return frozenset(p for p in inspect.signature(BitsAndBytesConfig).parameters if p != "kwargs")


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, sorted(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def quant_model_args(
    quant: str, model_type: str, compute_dtype: str = "bfloat16", *, where: str = "--quant"
) -> Dict[str, Any]:
    """OLMES ``--model-args`` entries that load the model quantized.

    HF backend: a ``quantization_config`` dict (a ``MODEL_DEFAULTS`` key), which transformers 4.x
    turns into a ``BitsAndBytesConfig`` via ``AutoQuantizationConfig.from_dict``. The bare
    ``load_in_4bit`` kwarg would give bitsandbytes' default FP4, not the paper's NF4, and
    ``bnb_4bit_quant_type`` is not an OLMES model arg. vLLM backend: in-flight bitsandbytes
    quantization (``quantization=load_format="bitsandbytes"``), which vLLM hard-codes to NF4 with
    double quantization; so ``fp4``/``int8`` are HF-only. An error is placed at ``where`` (the
    flag, or ``quant[i]`` of a study's :class:`OlmesOptions`, which checks its settings here).
    """
    if quant not in QUANT_KINDS:
        raise ConfigError.at(where, f"must be one of {QUANT_KINDS}, got {quant!r}")
    if quant == "none":
        return {}
    if model_type == "vllm":
        if quant != "nf4":
            raise ConfigError.at(
                where,
                f"{quant!r} is not available with model_type vllm (--model-type vllm: vLLM's in-flight "
                "bitsandbytes quantization is NF4 only); use model_type hf (--model-type hf)",
            )
        return {"custom_kwargs": {"quantization": "bitsandbytes", "load_format": "bitsandbytes"}}
    if quant == "int8":
        qc: Dict[str, Any] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    else:
        qc = {
            "quant_method": "bitsandbytes",
            "load_in_4bit": True,
            "bnb_4bit_quant_type": quant,
            "bnb_4bit_compute_dtype": compute_dtype,
        }
    return {"quantization_config": qc}


def validate_model_args(args: Mapping[str, Any], model_type: str) -> Dict[str, Any]:
    """Check OLMES model args; raise naming the bad key (with a suggestion) instead of running."""
    if model_type not in ("hf", "vllm"):
        raise OLMoConfigurationError(f"--model-type must be 'hf' or 'vllm', got {model_type!r}")
    out = dict(args)
    for key, value in out.items():
        if key in _FLAG_OWNED:
            raise OLMoConfigurationError(
                f"model arg {key!r} is set by {_FLAG_OWNED[key]}; do not pass it in --model-arg"
            )
        if key not in OLMES_MODEL_ARG_KEYS:
            raise OLMoConfigurationError(
                f"unknown OLMES model arg {key!r}{_suggest(key, OLMES_MODEL_ARG_KEYS)}; OLMES "
                f"accepts only the keys of its MODEL_DEFAULTS: {sorted(OLMES_MODEL_ARG_KEYS)}"
            )
        if key == "max_length" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise OLMoConfigurationError(f"model arg max_length={value!r}: give the context length in tokens (>= 1)")
        if key in ("load_in_4bit", "load_in_8bit") and value:
            raise OLMoConfigurationError(
                f"model arg {key}=true loads bitsandbytes with its defaults (4-bit = FP4, not "
                f"the paper's NF4) and is not checked by OLMES; use --quant nf4|fp4|int8"
            )
        if key == "quantization_config":
            if model_type != "hf":
                raise OLMoConfigurationError("quantization_config applies to --model-type hf only")
            if not isinstance(value, dict):
                raise OLMoConfigurationError("model arg quantization_config must be a JSON object")
            known = _bnb_config_keys() | {"quant_method"}
            for k in value:
                if k not in known:
                    raise OLMoConfigurationError(
                        f"unknown BitsAndBytesConfig field quantization_config.{k}"
                        f"{_suggest(k, known)}; valid: {sorted(known)}"
                    )
            if not (value.get("load_in_4bit") or value.get("load_in_8bit")):
                raise OLMoConfigurationError(
                    "quantization_config sets neither load_in_4bit nor load_in_8bit: the model would run unquantized"
                )
            qt = value.get("bnb_4bit_quant_type", "fp4")
            if value.get("load_in_4bit") and qt not in _BNB_QUANT_TYPES:
                raise OLMoConfigurationError(
                    f"quantization_config.bnb_4bit_quant_type must be one of {_BNB_QUANT_TYPES}, got {qt!r}"
                )
        if key == "custom_kwargs":
            if model_type != "vllm":
                raise OLMoConfigurationError(
                    "custom_kwargs is only forwarded by OLMES's vLLM backend; with --model-type "
                    "hf it would reach from_pretrained() unchecked"
                )
            if not isinstance(value, dict):
                raise OLMoConfigurationError("model arg custom_kwargs must be a JSON object")
            for k in value:
                if k == "max_model_len":
                    # OLMES always passes max_length to lm-eval's vLLM wrapper, which asserts that
                    # only one of max_length / max_model_len is given: the job would die at load.
                    raise OLMoConfigurationError(
                        "custom_kwargs.max_model_len conflicts with OLMES's own max_length (lm-eval's "
                        "vLLM wrapper accepts only one of them); set OLMES's max length instead: "
                        f"--model-arg max_length={value[k]}"
                    )
                if k not in VLLM_CUSTOM_KWARGS:
                    raise OLMoConfigurationError(
                        f"custom_kwargs.{k} is not a vLLM engine arg olmo-sam knows"
                        f"{_suggest(k, VLLM_CUSTOM_KWARGS)}; allowed: {sorted(VLLM_CUSTOM_KWARGS)}"
                    )
    return out


def parse_model_arg_pairs(pairs: Sequence[str]) -> Dict[str, Any]:
    """``KEY=VALUE`` strings (VALUE parsed as JSON when it is JSON, else kept as a string)."""
    out: Dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise OLMoConfigurationError(f"--model-arg expects KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        k = k.strip().replace("-", "_")
        if not k:
            raise OLMoConfigurationError(f"--model-arg {p!r} has an empty key")
        if k in out:
            raise OLMoConfigurationError(f"--model-arg {k} is given twice ({out[k]!r} and {v!r}); give it once")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# Locating and running OLMES
# ---------------------------------------------------------------------------------------------


class OlmesNotFound(OLMoConfigurationError):
    #: the message ends in install commands: the CLI prints its lines as they are
    keep_lines = True


def find_olmes(spec: Optional[str | os.PathLike] = None) -> Path:
    """The ``olmes`` executable from ``spec`` (flag), ``$OLMO_SAM_OLMES`` or ``PATH``.

    ``spec`` may be the executable, the environment's python (``olmes`` beside it), or the
    environment directory (``bin/olmes`` inside it).
    """
    raw = spec if spec is not None else os.environ.get(OLMES_ENV_VAR)
    where = "--olmes" if spec is not None else f"${OLMES_ENV_VAR}"
    if raw is None:
        found = shutil.which("olmes")
        if found is None:
            raise OlmesNotFound(f"no OLMES environment found (--olmes, ${OLMES_ENV_VAR}, PATH).\n{OLMES_INSTALL_HINT}")
        return Path(found)
    p = Path(raw).expanduser()
    if p.is_dir():
        cand = p / "bin" / "olmes"
    elif p.is_file() and re.match(r"python[0-9.]*$", p.name):
        cand = p.parent / "olmes"
    else:
        cand = p
    if not cand.is_file() or not os.access(cand, os.X_OK):
        raise OlmesNotFound(
            f"{where}={raw!s} does not lead to an executable 'olmes' (looked for {cand}).\n{OLMES_INSTALL_HINT}"
        )
    return cand


def build_olmes_command(
    model: str | os.PathLike,
    tasks: Sequence[str],
    *,
    output_dir: str | os.PathLike,
    model_type: str = "hf",
    model_args: Optional[Mapping[str, Any]] = None,
    limit: Optional[float] = None,
    batch_size: Optional[int | str] = None,
    gpus: Optional[int] = None,
    olmes: str | os.PathLike = "olmes",
) -> List[str]:
    """The argv of one OLMES run (``oe_eval/launch.py`` flags)."""
    model = str(model)
    if "=" in model or "," in model:
        # launch.py parses an unknown --model with parse_args_string: "a=b" would become a dict
        raise OLMoConfigurationError(
            f"model path {model!r} contains '=' or ','; OLMES would parse it as key=value pairs. "
            f"Rename or symlink the directory."
        )
    if not tasks:
        raise OLMoConfigurationError("no OLMES tasks to run")
    args = validate_model_args(model_args or {}, model_type)
    cmd = [str(olmes), "--model", model, "--model-type", model_type, "--task", *tasks]
    cmd += ["--output-dir", str(output_dir)]
    if args:
        cmd += ["--model-args", json.dumps(args, sort_keys=True)]
    if limit is not None:
        if limit <= 0 or (limit > 1 and not float(limit).is_integer()):
            raise OLMoConfigurationError(
                f"--limit {limit:g}: give a number of instances (a whole number) or a fraction of each task below 1"
            )
        cmd += ["--limit", str(int(limit)) if float(limit).is_integer() else str(limit)]
    if batch_size is not None:
        cmd += ["--batch-size", str(batch_size)]
    if gpus is not None:
        if gpus < 0:
            raise OLMoConfigurationError(f"--gpus must be >= 0, got {gpus}")
        cmd += ["--gpus", str(gpus)]
    return cmd


def olmes_env(olmes_exe: Path) -> Dict[str, str]:
    """Environment for the subprocess: OLMES's launcher runs ``python -m oe_eval.run_eval``
    through the shell, so its environment's ``bin`` must come first on ``PATH``."""
    env = os.environ.copy()
    env["PATH"] = str(Path(olmes_exe).parent) + os.pathsep + env.get("PATH", "")
    return env


def format_command(cmd: Sequence[str], olmes_exe: Optional[Path] = None) -> str:
    s = shlex.join(cmd)
    if olmes_exe is not None:
        s = f"PATH={shlex.quote(str(Path(olmes_exe).parent))}:$PATH {s}"
    return s


def run_olmes(cmd: Sequence[str], olmes_exe: Path, echo=None) -> int:
    """Run OLMES, streaming its output line by line to ``echo`` (stdout); returns its exit code."""
    echo = echo or (lambda line: print(line, end="", flush=True))
    with subprocess.Popen(
        list(cmd),
        env=olmes_env(olmes_exe),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            echo(line)
        return proc.wait()


def suite_aliases(suite: str, tasks: Optional[Sequence[str]], where: str = "--task") -> List[str]:
    """The OLMES task aliases of ``tasks`` (paper task names; all of ``suite`` when empty); an
    unknown one is an error naming ``where`` (formatted with the task's index ``i``: ``tasks[{i}]``)."""
    st = get_suite(suite)
    tasks = list(tasks or ())
    for i, t in enumerate(tasks):
        if t not in st:
            raise ConfigError.at(
                where.format(i=i), f"{t!r} is not in suite {suite}; {did_you_mean(t, list(st))}choose from {list(st)}"
            )
        if t in tasks[:i]:
            raise ConfigError.at(where.format(i=i), f"{t!r} is given twice; give each task once")
    return [st[t].alias for t in (tasks or st)]


def with_quant_args(
    model_args: Mapping[str, Any], quant: str, model_type: str, where: str = "--quant"
) -> Dict[str, Any]:
    """``model_args`` plus the entries that load the model quantized (:func:`quant_model_args`);
    an entry given both ways is an error naming ``where``."""
    args = dict(model_args)
    for k, v in quant_model_args(quant, model_type, where=where).items():
        if k in args:
            raise OLMoConfigurationError(f"{where} {quant} sets model arg {k}; do not also pass it")
        args[k] = v
    return args


@dataclass
class OlmesOptions(Checked):
    """A study's ``benchmarks.olmes``: the options of :func:`run_olmes_suite` (``None``: its
    default; a test keeps the two equal), run once per ``quant`` setting."""

    suite: Optional[str] = setting(None, choices=lambda: sorted(SUITES))
    #: the suite's paper task names (default: all of them)
    tasks: Optional[List[str]] = None
    #: quantization settings, one run each (``none`` or null: full precision)
    quant: Optional[Union[str, List[Optional[str]]]] = setting(None, choices=QUANT_KINDS)
    model_type: Optional[str] = setting(None, choices=("hf", "vllm"))
    limit: Optional[int] = setting(None, ge=1)
    batch_size: Optional[int] = setting(None, ge=1)
    gpus: Optional[int] = setting(None, ge=1)

    def __post_init__(self):
        super().__post_init__()
        suite_aliases(self.suite or DEFAULT_SUITE, self.tasks, where="tasks[{i}]")
        quants = [self.quant] if isinstance(self.quant, str) else self.quant or []
        for i, q in enumerate(quants):
            quant_model_args(q or "none", self.model_type or "hf", where=f"quant[{i}]")


def run_olmes_suite(
    model: str | os.PathLike,
    *,
    out_dir: str | os.PathLike,
    suite: str = DEFAULT_SUITE,
    tasks: Optional[Sequence[str]] = None,
    quant: str | Sequence[str] | None = None,
    model_type: str = "hf",
    model_args: Optional[Mapping[str, Any]] = None,
    limit: Optional[float] = None,
    batch_size: Optional[int | str] = None,
    gpus: Optional[int] = None,
    olmes: Optional[str | os.PathLike] = None,
    label: Optional[str] = None,
    echo=None,
) -> Dict[str, List[Dict[str, Any]]]:
    """OLMES on ``model`` for the paper's ``suite``, once per quantization setting in ``quant``
    (``none``: full precision), each in its own output directory under ``out_dir`` (``bf16``,
    ``nf4``, ...) with its ``results.json``; returns ``{"olmes-<setting>": [record dicts]}``.
    The command line's ``olmo-sam eval olmes`` and the study's benchmarks stage both run this."""
    from dataclasses import asdict

    from .records import write_records

    aliases = suite_aliases(suite, tasks, where="benchmarks.olmes.tasks[{i}]")
    exe = find_olmes(olmes)
    settings = [quant] if quant is None or isinstance(quant, str) else list(quant)
    out: Dict[str, List[Dict[str, Any]]] = {}
    for q in settings:
        q = q or "none"
        args = with_quant_args(model_args or {}, q, model_type, where="benchmarks.olmes.quant")
        tag = "bf16" if q == "none" else q
        run_dir = Path(out_dir) / tag
        cmd = build_olmes_command(
            model,
            aliases,
            output_dir=run_dir,
            model_type=model_type,
            model_args=args,
            limit=limit,
            batch_size=batch_size,
            gpus=gpus,
            olmes=exe,
        )
        rc = run_olmes(cmd, exe, echo=echo)
        if rc != 0:
            raise OLMoConfigurationError(f"OLMES exited with code {rc}; its output is in {run_dir}")
        records = load_olmes_results(run_dir, model=label or Path(model).name, suite=suite)
        write_records(run_dir / "results.json", records, meta={"command": cmd, "quant": q})
        out[f"olmes-{tag}"] = [asdict(r) for r in records]
    return out


# ---------------------------------------------------------------------------------------------
# Parsing OLMES outputs
# ---------------------------------------------------------------------------------------------

_TASK_FILE = re.compile(r"^task-(\d{3,})-(.+)-metrics\.json$")


@dataclass
class _Entry:
    alias: str
    task_name: str
    primary_score: Optional[float]
    primary_metric: str
    num_instances: int
    task_hash: str
    model: str
    is_aggregate: bool


def parse_primary_score_line(line: str) -> Tuple[str, Optional[float]]:
    """``"mmlu_pro_computer science:mc::none: 0.123"`` -> (alias, 0.123). OLMES formats the score
    with ``f"{score:.6}"`` and writes ``NA`` when a task has no primary score."""
    if ": " not in line:
        raise OLMoConfigurationError(f"malformed OLMES primary-score line {line!r}")
    alias, score = line.rsplit(": ", 1)
    score = score.strip()
    if score == "NA":
        return alias, None
    try:
        return alias, float(score)
    except ValueError as e:
        raise OLMoConfigurationError(f"malformed score in OLMES line {line!r}") from e


def _model_label(model_config: Any) -> str:
    if isinstance(model_config, dict):
        m = model_config.get("model_path") or model_config.get("model")
        if isinstance(m, list):
            m = m[0] if m else None
        if m:
            return Path(str(m).rstrip("/")).name or str(m)
    return ""


def _entry(d: Dict[str, Any], source: str) -> _Entry:
    if not isinstance(d, dict) or "metrics" not in d:
        raise OLMoConfigurationError(f"{source}: OLMES entry without 'metrics'")
    tc = d.get("task_config") or {}
    meta = tc.get("metadata") or {}
    task_name = d.get("task_name") or tc.get("task_name") or ""
    alias = meta.get("alias") or d.get("alias") or task_name
    if not alias:
        raise OLMoConfigurationError(f"{source}: OLMES entry has neither an alias nor a task_name")
    score = d["metrics"].get("primary_score")
    if isinstance(score, str) or score is None or (isinstance(score, float) and math.isnan(score)):
        score = None
    return _Entry(
        alias=alias,
        task_name=task_name,
        primary_score=None if score is None else float(score),
        primary_metric=str(tc.get("primary_metric") or ""),
        num_instances=int(d.get("num_instances") or 0),
        task_hash=str(d.get("task_hash") or ""),
        model=_model_label(d.get("model_config")),
        is_aggregate=d.get("task_idx", 0) is None,
    )


def _read_metrics_all(path: Path) -> List[_Entry]:
    return [_entry(d, where) for where, d in iter_jsonl(path, what="OLMES metrics file")]


def _read_task_files(root: Path) -> List[_Entry]:
    out = []
    for p in sorted(root.iterdir()):
        if not p.is_file() or not _TASK_FILE.match(p.name):
            continue
        d = read_json(p, what="OLMES task metrics file")
        # verbose-metrics files and others also end in "-metrics.json": keep a file only if its
        # name is exactly task_file_name(task_idx, task_name, "metrics.json") of its content
        if not isinstance(d, dict) or "metrics" not in d or not isinstance(d.get("task_idx"), int):
            continue
        if p.name != f"task-{d['task_idx']:03d}-{d.get('task_name')}-metrics.json":
            continue
        out.append(_entry(d, str(p)))
    return out


def _read_summary(path: Path) -> List[_Entry]:
    d = read_json(path, what="OLMES metrics.json summary")
    if not isinstance(d, dict) or "tasks" not in d:
        raise OLMoConfigurationError(f"{path} is not an OLMES metrics.json summary")
    model = _model_label(d.get("model_config"))
    scores = dict(parse_primary_score_line(s) for s in d.get("all_primary_scores", []))
    out = []
    for t in d["tasks"]:
        alias = t.get("alias", "")
        score = t.get("metrics", {}).get("primary_score", scores.get(alias))
        out.append(
            _Entry(
                alias=alias,
                task_name=alias,
                primary_score=None if score in (None, "NA") else float(score),
                primary_metric=str((t.get("task_config") or {}).get("primary_metric") or ""),
                num_instances=int(t.get("num_instances") or 0),
                task_hash="",
                model=model,
                is_aggregate=False,
            )
        )
    return out


def is_olmes_output_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (
        (path / "metrics-all.jsonl").is_file() or any(_TASK_FILE.match(p.name) for p in path.iterdir())
    )


def _collect(root: Path) -> Dict[str, _Entry]:
    """Entries by alias; metrics-all.jsonl wins over per-task files, which win over metrics.json."""
    by_alias: Dict[str, _Entry] = {}
    sources = []
    if (root / "metrics.json").is_file():
        sources.append(_read_summary(root / "metrics.json"))
    sources.append(_read_task_files(root))
    if (root / "metrics-all.jsonl").is_file():
        sources.append(_read_metrics_all(root / "metrics-all.jsonl"))
    for entries in sources:  # later sources override earlier ones
        for e in entries:
            by_alias[e.alias] = e
    return by_alias


def _md5(parts: Sequence[str]) -> str:
    return hashlib.md5(json.dumps(list(parts)).encode()).hexdigest()


def _aggregate(st: SuiteTask, subs: List[_Entry]) -> Tuple[float, str]:
    scores = [s.primary_score for s in subs]
    metrics = sorted({s.primary_metric or "primary_score" for s in subs})
    if st.rule == "macro":
        return sum(scores) / len(scores), f"macro({','.join(metrics)})"
    if st.rule == "micro":
        n = sum(s.num_instances for s in subs)
        if n <= 0:
            raise OLMoConfigurationError(f"{st.alias}: sub-tasks report no instances for micro mean")
        return sum(s.primary_score * s.num_instances for s in subs) / n, f"micro({','.join(metrics)})"
    if st.rule == "mc_or_rc":
        best = max(subs, key=lambda s: s.primary_score)
        parts = ", ".join(f"{s.alias.split('::')[0].split(':')[-1]}:{s.primary_metric}" for s in subs)
        return best.primary_score, f"max({parts})"
    raise OLMoConfigurationError(f"unknown aggregation rule {st.rule!r}")


def load_olmes_results(
    output_dir: str | Path,
    *,
    model: Optional[str] = None,
    suite: str = "olmo2-pretrain",
    strict: bool = True,
) -> List[BenchRecord]:
    """One :class:`BenchRecord` per suite task found in an OLMES output directory.

    A suite score is taken from OLMES's own aggregate entry in ``metrics-all.jsonl`` when there is
    one; otherwise it is recomputed from the sub-tasks by the suite's rule (and the record says
    so in ``details["aggregated_by"]``). With ``strict`` a suite task whose sub-tasks are only
    partly present is an error; tasks absent altogether are skipped (a run may cover a subset).
    """
    root = Path(output_dir)
    if not is_olmes_output_dir(root):
        raise OLMoConfigurationError(f"{root} holds no OLMES output (metrics-all.jsonl or task-NNN-NAME-metrics.json)")
    entries = _collect(root)
    # one model per output directory: the model_config of any task entry, else the dir name
    label = model or next((e.model for e in entries.values() if e.model), "") or root.name
    records: List[BenchRecord] = []
    for st in get_suite(suite).values():
        whole = entries.get(st.alias)
        if whole is not None and whole.primary_score is not None:
            subs = [e for a, e in entries.items() if re.fullmatch(st.subtasks, a)] if st.subtasks else []
            n = whole.num_instances or sum(s.num_instances for s in subs)
            metric = whole.primary_metric or (st.rule if st.rule != "single" else "primary_score")
            records.append(
                BenchRecord(
                    model=label,
                    task=st.task,
                    score=100.0 * whole.primary_score,
                    metric=metric,
                    num_instances=n,
                    config_hash=whole.task_hash or _md5(sorted(s.task_hash for s in subs)),
                    source="olmes",
                    alias=st.alias,
                    details={"aggregated_by": "olmes", "subtasks": len(subs)},
                )
            )
            continue
        if st.rule == "single":
            if whole is not None and strict:
                raise OLMoConfigurationError(f"{root}: task {st.alias} has no primary_score")
            continue
        subs = [e for a, e in sorted(entries.items()) if re.fullmatch(st.subtasks, a)]
        if not subs:
            continue
        missing_score = [s.alias for s in subs if s.primary_score is None]
        if len(subs) != st.expected or missing_score:
            if strict:
                raise OLMoConfigurationError(
                    f"{root}: {st.alias} needs {st.expected} sub-tasks with scores, found "
                    f"{len(subs) - len(missing_score)} (without score: {missing_score[:3]}); "
                    f"rerun OLMES for the missing ones or load with strict=False"
                )
            continue
        score, metric = _aggregate(st, subs)
        records.append(
            BenchRecord(
                model=label,
                task=st.task,
                score=100.0 * score,
                metric=metric,
                num_instances=sum(s.num_instances for s in subs),
                config_hash=_md5(sorted(s.task_hash for s in subs)),
                source="olmes",
                alias=st.alias,
                details={"aggregated_by": "olmo-sam", "subtasks": len(subs)},
            )
        )
    if not records:
        raise OLMoConfigurationError(f"{root}: no task of suite {suite!r} found in the OLMES output")
    return records
