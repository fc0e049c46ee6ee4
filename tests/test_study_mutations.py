"""Every shipped study file, each value in it broken in turn, through ``olmo-sam study run --dry-run``.

For every node of every shipped study file (``olmo_sam/study/files/*.yaml``, which
``recipes/studies/*.yaml`` link to) the test writes a copy with that one node replaced -- by a value
of the wrong type, zero, a negative number, an empty list, or a duplicate (a list entry given
twice, a mapping key given twice in the YAML text) -- and runs the dry run in process (click's
``CliRunner``). Each case must end one of two ways:

* **refused cleanly**: a non-zero exit, no traceback, and exactly one ``Error:`` line naming the
  study-file field it is about (its key or section);
* **accepted cleanly**: exit 0 with the plan printed -- allowed only where the mutation is a valid
  value: a zero where the field documents zero (``ZERO_OK``). A wrong type, a negative number, an
  empty list and a duplicate are never valid, so they must be refused.

A bounded, derandomized hypothesis search then puts arbitrary values (numbers of any sign, text,
booleans, lists, mappings) at random places under the same oracle: a refused case must be refused
cleanly, and an accepted value must not be one the rules above forbid.
"""

from __future__ import annotations

import copy
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Tuple

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from olmo_sam.cli import main
from olmo_sam.files import read_yaml

ROOT = Path(__file__).resolve().parents[1]
#: (recipes/studies/*.yaml link to the shipped files)
STUDY_FILES = sorted(ROOT.glob("olmo_sam/study/files/*.yaml"))

#: leaf keys where 0 is a documented value: seeds; ``eval_interval: 0`` (no in-loop evaluation),
#: ``rho: 0`` (SAM without its perturbation, >= 0 by SAMConfig), ``power_iters: 0`` (skips them),
#: a pretraining ``lr: 0`` (a frozen run: the weights stay as loaded)
ZERO_OK = {"seed", "seeds", "eval_interval", "rho", "power_iters", "lr"}

Path_ = Tuple[Any, ...]


def _show(path: Path_) -> str:
    out = ""
    for k in path:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out


def nodes(data: Any, path: Path_ = ()) -> Iterator[Tuple[Path_, Any]]:
    """Every node below the root (mappings, lists and scalars), parents before children."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for k, v in items:
        yield path + (k,), v
        yield from nodes(v, path + (k,))


def _replace(data: Any, path: Path_, value: Any) -> Any:
    data = copy.deepcopy(data)
    node = data
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return data


def _leaf_key(path: Path_) -> str:
    return next(str(k) for k in reversed(path) if not isinstance(k, int))


class _DupKey(dict):
    """A mapping written with its first key twice (the second time with ``value``)."""

    def __init__(self, items, key, value):
        super().__init__(items)
        self.dup = (key, value)


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_DupKey, lambda d, m: d.represent_mapping("tag:yaml.org,2002:map", [*dict(m).items(), m.dup]))


def _wrong_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "no"  # a string where YAML's true/false belongs
    if isinstance(value, (int, float)):
        return "many"
    if isinstance(value, str):
        return 7
    if isinstance(value, list):
        return "all"  # a string where a list belongs (not to be read char by char)
    return ["x"]  # a list where a mapping belongs


def mutations(data: Any) -> Iterator[Tuple[str, Path_, Any, Any]]:
    """``(kind, path, new value, new document)`` for every node and every mutation that applies."""
    for path, value in nodes(data):
        yield "wrong type", path, _wrong_type(value), _replace(data, path, _wrong_type(value))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield "zero", path, 0, _replace(data, path, 0)
            neg = -abs(value) if value else -1
            yield "negative", path, neg, _replace(data, path, neg)
        if isinstance(value, list):
            yield "empty list", path, [], _replace(data, path, [])
            if value:
                dup = [value[0], *value]
                yield "duplicate", path, dup, _replace(data, path, dup)
        if isinstance(value, dict) and value:
            first = next(iter(value))
            yield "duplicate", path, value, _replace(data, path, _DupKey(value, first, value[first]))


#: other forms a field takes: (leaf key, category) -- a quantization setting is a preset string
#: (``nf4:blocksize=32``) or a QuantConfig mapping (``{}``: its defaults)
OTHER_FORMS = {("quant", "mapping")}


def must_refuse(kind: str, path: Path_, old: Any, new: Any) -> bool:
    """Whether ``new`` at ``path`` is never a valid value (so an exit 0 is a failure)."""
    if kind == "duplicate":
        return True
    if _category(new) != _category(old):
        return (_leaf_key(path), _category(new)) not in OTHER_FORMS
    if isinstance(new, list):
        return not new or any(new.count(x) > 1 for x in new if not isinstance(x, (dict, list)))
    if _category(new) == "number":
        return new < 0 or math.isnan(new) or (new == 0 and _leaf_key(path) not in ZERO_OK)
    return False


def _category(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "text", list: "list", dict: "mapping", _DupKey: "mapping"}.get(type(v), type(v).__name__)


_runner = CliRunner()


def dry_run(study_file: Path, doc: Any, tmp: Path) -> Tuple[str, str]:
    """``("ok" | "refused", output)`` of the dry run of ``doc``; any unclean end raises
    AssertionError with the reason."""
    tmp.mkdir(parents=True, exist_ok=True)
    f = tmp / study_file.name
    f.write_text(yaml.dump(doc, Dumper=_Dumper, sort_keys=False))
    res = _runner.invoke(main, ["study", "run", str(f), "--dry-run", "--allow-missing-data", "--out", str(tmp / "out")])
    out = res.output
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"traceback: {type(res.exception).__name__}: {res.exception}")
    assert "Traceback" not in out, out
    assert not (tmp / "out").exists(), "the dry run wrote its output directory"
    if res.exit_code == 0:
        assert re.search(r"^study '.*' -> ", out, re.M), out
        return "ok", out
    errors = [ln for ln in out.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and out.rstrip().endswith(errors[0]) and len(errors[0]) > 12, out
    return "refused", errors[0]


def _names_field(message: str, path: Path_) -> bool:
    """The message cites the field: one of its keys (or its section) as written in the file."""
    keys = [str(k) for k in path if not isinstance(k, int)]
    return any(re.search(rf"(?<![\w-]){re.escape(k)}(?![\w-])", message) for k in keys) or "line" in message


def _check(study_file: Path, kind: str, path: Path_, old: Any, new: Any, doc: Any, tmp: Path, counts: Counter):
    where = f"{study_file.name}: {_show(path)} ({kind}) = {new!r}"
    try:
        outcome, text = dry_run(study_file, doc, tmp)
    except AssertionError as e:
        raise AssertionError(f"{where}: {e}") from None
    if outcome == "ok":
        assert not must_refuse(kind, path, old, new), f"{where}: accepted:\n{text}"
        counts["accepted legitimately"] += 1
    else:
        assert _names_field(text, path), f"{where}: the message does not name the field: {text}"
        counts["refused cleanly"] += 1


@pytest.mark.parametrize("study_file", STUDY_FILES, ids=[p.name for p in STUDY_FILES])
def test_shipped_study_file_plans(study_file, tmp_path):
    outcome, out = dry_run(study_file, read_yaml(study_file), tmp_path)
    assert outcome == "ok", out


def test_every_node_of_every_study_file_broken_in_turn(tmp_path):
    counts: Counter = Counter()
    for study_file in STUDY_FILES:
        data = read_yaml(study_file)
        for i, (kind, path, new, doc) in enumerate(mutations(data)):
            old = next(v for p, v in nodes(data) if p == path)
            _check(study_file, kind, path, old, new, doc, tmp_path / f"{study_file.stem}-{i}", counts)
            counts["cases"] += 1
    print(f"\nstudy-file mutations: {dict(counts)}")
    assert counts["cases"] == counts["refused cleanly"] + counts["accepted legitimately"]
    assert counts["refused cleanly"] > 0.9 * counts["cases"]


_values = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.sampled_from(["a", "lr"]), st.integers(), max_size=1),
)


def test_random_values_at_random_places(tmp_path_factory):
    counts: Counter = Counter()

    @settings(max_examples=150, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(file_index=st.integers(0, len(STUDY_FILES) - 1), node_index=st.integers(0, 10**6), new=_values)
    def one(file_index, node_index, new):
        study_file = STUDY_FILES[file_index]
        data = read_yaml(study_file)
        all_nodes = list(nodes(data))
        path, old = all_nodes[node_index % len(all_nodes)]
        if new is None:  # null means "the default": fine where the field has one, refused cleanly otherwise
            old = None
        doc = _replace(data, path, new)
        _check(study_file, "random", path, old, new, doc, tmp_path_factory.mktemp("h"), counts)
        counts["cases"] += 1

    one()
    print(f"\nrandom values: {dict(counts)}")
    # both outcomes happen: the oracle is exercised, not vacuous
    assert counts["cases"] >= 100 and counts["refused cleanly"] > 0 and counts["accepted legitimately"] > 0


# -- the sections and checks the mutations of the shipped files do not reach ---------------------

SMALL = {
    "name": "small",
    "data": {"demo": {"vocab_size": 384}},
    "pretrain": {"size": "micro", "lr": 3e-3, "batch_size": 16, "seq_len": 64, "steps": 20, "eval_interval": 0},
    "arms": [{"name": "adamw", "optimizer": "adamw", "schedule": "cosine"}],
    "finetune": {"datasets": ["demo-code"], "lrs": [1e-3], "methods": ["ft", "cfs"], "common": {"max_steps": 4}},
    "cfs": {"ratio": 0.5},
}


def _set(doc: Any, dotted: str, value: Any) -> Any:
    keys = [int(k) if k.isdigit() else k for k in dotted.replace("[", ".").replace("]", "").split(".")]
    doc = copy.deepcopy(doc)
    node = doc
    for k in keys[:-1]:
        node = node.setdefault(k, {}) if isinstance(node, dict) else node[k]
    node[keys[-1]] = value
    return doc


def _refusal(doc: Any, tmp: Path, text: str | None = None) -> str:
    tmp.mkdir(parents=True, exist_ok=True)
    f = tmp / "study.yaml"
    f.write_text(text if text is not None else yaml.safe_dump(doc, sort_keys=False))
    res = _runner.invoke(main, ["study", "run", str(f), "--dry-run", "--out", str(tmp / "out")])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code != 0, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    return errors[0][len("Error: ") :]


SECTION_CASES = [
    # (field, value, the message starts with, and says)
    ("cfs.ratios", 0.5, "cfs.ratios: unknown setting; did you mean 'ratio'?", "allowed"),
    ("cfs.engine", "vlm", "cfs.engine: must be one of", "did you mean 'vllm'?"),
    ("cfs.ratio", -0.5, "cfs.ratio: must be a number > 0", "-0.5"),
    ("cfs.dtype", "fp8", "cfs.dtype: must be one of", "bfloat16"),
    ("cfs.top_p", 1.5, "cfs.top_p: must be a number in (0, 1]", "1.5"),
    ("cfs", ["ratio"], "cfs: expected a mapping", "['ratio']"),
    ("benchmarks.offline", {"tasks": ["arc_easyy"]}, "benchmarks.offline.tasks[0]: unknown offline task", "arc_easyy"),
    ("benchmarks.offline", {"limit": 0}, "benchmarks.offline.limit: must be a whole number >= 1", "0"),
    ("benchmarks.offline", {"quant": ["nf5"]}, "benchmarks.offline.quant[0]: must be one of", "nf5"),
    ("benchmarks.olmes", {"tasks": ["arcc"]}, "benchmarks.olmes.tasks[0]: 'arcc' is not in suite", "arcc"),
    (
        "benchmarks.olmes",
        {"quant": ["fp4"], "model_type": "vllm"},
        "benchmarks.olmes.quant[0]: 'fp4' is not available with model_type vllm",
        "fp4",
    ),
    ("data.demo.books", [], "data.demo.books: the list is empty", "at least one"),
    (
        "data.demo.books",
        "austen-persuasion",
        "data.demo.books: expected a list of strings (or null)",
        "'austen-persuasion'",
    ),
    ("data.demo.vocab_size", 100, "data.demo.vocab_size: must be a whole number >= 258", "BPE"),
    ("pretrain.lr", -3e-3, "pretrain.lr: must be a number >= 0", "-0.003"),
    ("pretrain.eval_interval", -1, "pretrain.eval_interval: must be a whole number >= 0", "-1"),
    ("pretrain.batch_size", -16, "pretrain.batch_size: must be a whole number >= 1", "-16"),
    (
        "pretrain.micro_batch_size",
        6,
        "pretrain.batch_size: 16 is not divisible by pretrain.micro_batch_size 6",
        "(arm 'adamw')",
    ),  # noqa: E501
    (
        "pretrain",
        {**SMALL["pretrain"], "steps": None, "tokens": 16 * 10**6, "seq_len": 10**6},
        "pretrain.tokens: the run is only 1 step(s)",
        "pretrain.seq_len 1000000",
    ),
    ("finetune.lrs", [1e-3, 1e-3], "finetune.lrs[1]: duplicate entry 0.001 (also finetune.lrs[0])", "once"),
    ("pretrain.seeds", [0, 1, 0], "pretrain.seeds[2]: duplicate entry 0 (also pretrain.seeds[0])", "once"),
    ("finetune.lrs[0]", -1e-3, "finetune.lrs[0]: must be a number > 0", "-0.001"),
    ("stages", "all", "stages: expected a list", "'all'"),
    ("stages", ["data", "finetune", "cfs", "analysis"], "stages: the 'cfs' stage needs the 'export' stage", "add it"),
    (
        "stages",
        ["data", "pretrain", "export", "finetune"],
        "stages: the 'finetune' stage needs the 'cfs' stage",
        "add it",
    ),
    ("executor.reuse_processes", "no", "executor.reuse_processes: expected true or false", "'no'"),
    ("quick", 1, "quick: expected true or false", "1"),
    ("name", 7, "name: expected a string", "7"),
    ("seed", -1, "seed: must be a whole number in [0, 4294932774]", "-1"),
    ("pretrain.seeds", [0, -1], "pretrain.seeds[1]: must be a whole number in [0, 4294932774]", "-1"),
]


@pytest.mark.parametrize("field, value, start, says", SECTION_CASES, ids=[f"{c[0]}={c[1]!r}" for c in SECTION_CASES])
def test_each_section_is_checked_at_dry_run(tmp_path, field, value, start, says):
    msg = _refusal(_set(SMALL, field, value), tmp_path)
    assert msg.startswith(start) and says in msg, msg


def test_the_small_study_plans(tmp_path):
    outcome, out = dry_run(Path("small.yaml"), SMALL, tmp_path)
    assert outcome == "ok" and "cfs" in out, out


def test_yaml_duplicate_keys_and_strict_booleans(tmp_path):
    text = yaml.safe_dump(SMALL, sort_keys=False)
    dup = text.replace("  lr: 0.003\n", "  lr: 0.003\n  lr: 0.01\n")
    assert dup != text
    msg = _refusal(None, tmp_path / "dup", dup)
    assert "study.yaml, line" in msg and "duplicate key 'lr'" in msg, msg
    # YAML 1.1's yes/no are strings to the study reader: a boolean field refuses them
    msg = _refusal(None, tmp_path / "no", text + "quick: no\n")
    assert msg.startswith("quick: expected true or false, got 'no'"), msg


def test_edited_study_is_refused_at_dry_run_as_at_run(tmp_path):
    from olmo_sam.study.plan import build_plan
    from olmo_sam.study.runner import save_study
    from olmo_sam.study.spec import parse_study

    out = tmp_path / "out"
    plan = build_plan(parse_study({**SMALL, "out_dir": str(out)}))
    out.mkdir()
    save_study(plan)
    plan.by_id()["data"].mark_done(out, {}, 0.0)  # what the runner records when the data job finishes
    f = tmp_path / "study.yaml"
    f.write_text(yaml.safe_dump(_set(SMALL, "data.demo.vocab_size", 512)))
    res = _runner.invoke(main, ["study", "run", str(f), "--dry-run", "--out", str(out)])
    assert res.exit_code != 0 and "the study changed since the results" in res.output, res.output
    assert "data.demo.vocab_size" in res.output and "--rerun" in res.output
    res = _runner.invoke(main, ["study", "run", str(f), "--dry-run", "--out", str(out), "--rerun", "--stages", "data"])
    assert res.exit_code == 0, res.output


def test_unknown_demo_book_is_refused_before_anything_is_fetched(tmp_path, monkeypatch):
    # the pinned package's book list is known without the corpus: an empty cache still refuses
    monkeypatch.setenv("OLMO_SAM_CACHE", str(tmp_path / "empty-cache"))
    msg = _refusal(_set(SMALL, "data.demo.books", ["austen-persuasion", "austen-persuation"]), tmp_path)
    assert msg.startswith("data.demo.books[1]: must be one of ["), msg
    assert "got 'austen-persuation'; did you mean 'austen-persuasion'?" in msg, msg


def test_recipe_configs_are_read_by_the_same_strict_reader(tmp_path):
    from olmo_core.exceptions import OLMoConfigurationError
    from olmo_core.script_utils import ExperimentConfig

    from olmo_sam.files import load_config

    f = tmp_path / "exp.yaml"
    f.write_text("run_name: a\nrun_name: b\n")
    with pytest.raises(
        OLMoConfigurationError,
        match=r"exp\.yaml, line 2, column 1: not valid YAML: duplicate key 'run_name' \(first at line 1\)",
    ):
        load_config(ExperimentConfig, f)


@pytest.mark.parametrize(
    "extra, start",
    [
        ({"analysis": {"seed": -1}}, "analysis.seed: must be a whole number in [0, 4294967295]"),
        ({"out_dir": " "}, "out_dir: give a directory"),
        ({"benchmarks": {"finetuned": "yes"}}, "benchmarks.finetuned: expected true or false, got 'yes'"),
        ({"benchmarks": {"offline": {"tasks": "arc"}}}, "benchmarks.offline.tasks: expected a list of strings"),
    ],
)
def test_top_level_values_and_small_sections(tmp_path, extra, start):
    msg = _refusal({**SMALL, **extra}, tmp_path)
    assert msg.startswith(start), msg


def test_option_sections_name_the_functions_keyword_options():
    """``data.demo``, ``finetune.prepare`` and ``benchmarks.offline/olmes`` are checked by
    dataclasses whose fields are exactly the keyword options of the functions they configure."""
    import dataclasses
    import inspect

    from olmo_sam.data.demo_data import prepare_demo_data
    from olmo_sam.evals.offline import OfflineOptions, run_offline_suite
    from olmo_sam.evals.olmes import OlmesOptions, run_olmes_suite
    from olmo_sam.finetune.adapters import prepare_dataset
    from olmo_sam.study.stages.data import DemoOptions
    from olmo_sam.study.stages.finetune import PrepareOptions

    for cls, fn, not_options in [
        (DemoOptions, prepare_demo_data, {"out_dir", "show_progress"}),
        (PrepareOptions, prepare_dataset, {"name", "tokenizer_path", "out_dir", "overwrite"}),
        # (what the benchmark stage sets itself: the model, where results go, its label)
        (OfflineOptions, run_offline_suite, {"model_dir", "out_dir", "model_label", "cache_dir"}),
        (OlmesOptions, run_olmes_suite, {"model", "out_dir", "label", "echo", "olmes", "model_args"}),
    ]:
        assert {f.name for f in dataclasses.fields(cls)} == set(inspect.signature(fn).parameters) - not_options


def test_rerun_holds_back_the_excluded_stages_after_it_and_marks_them_to_run_again(tmp_path):
    """``--rerun --exclude STAGE``: the excluded stage's jobs after the re-run ones are not run
    (the downstream rule used to run them anyway) and the run marks them to run again, since
    their results would predate the re-run; the dry run lists every job that will run (it used to
    list the selected stages only, not the jobs after them)."""
    from olmo_sam.study.plan import build_plan
    from olmo_sam.study.runner import save_study
    from olmo_sam.study.spec import parse_study

    out = tmp_path / "out"
    plan = build_plan(parse_study({**SMALL, "out_dir": str(out)}))
    out.mkdir()
    save_study(plan)
    for j in plan.jobs:
        j.mark_done(out, {}, 0.0)
    f = tmp_path / "study.yaml"
    f.write_text(yaml.safe_dump(SMALL))
    stages = {j.id: j.stage for j in plan.jobs}
    for exclude, held in (([], []), (["report"], ["report"]), (["analysis"], ["analysis", "report"])):
        args = ["study", "run", str(f), "--dry-run", "--out", str(out), "--rerun", "--stages", "finetune"]
        res = _runner.invoke(main, args + [f"--exclude={s}" for s in exclude])
        assert res.exit_code == 0, res.output
        todo = [line.split("] ")[1].split(": ")[0] for line in res.output.splitlines() if "[todo]" in line]
        # (the cfs job comes after finetune/data:demo-code, the fine-tuning data job)
        after = {"finetune", "cfs", "analysis", "report"} - set(held)
        assert sorted({stages[t] for t in todo}) == sorted(after) and len(todo) == len(set(todo)), res.output
        n_held = sum(stages[j] in held for j in stages)
        assert (f"--exclude: {n_held} job(s) after the re-run ones are not run now" in res.output) == bool(held)
    assert all(j.is_done(out) for j in plan.jobs)  # a dry run changes nothing
