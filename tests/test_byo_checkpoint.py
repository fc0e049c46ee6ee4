"""The README's "Bring your own checkpoint" walk-through, command by command, on a tiny Hugging Face
OLMo-2 model (a local directory instead of the hub id, the offline demo-code task instead of
GSM8K, a short LR grid and few steps): import-hf -> data with that tokenizer -> sweep --base ...
--pt-val ... -> WiSE-FT -> a sweep from the WiSE-FT output -> forgetting compare -> probes.

Model-only checkpoints (import-hf and WiSE-FT outputs: ``step0/`` without trainer state) must be
fine-tuned *from their weights*: with a learning rate of 1e-9 the kept fine-tuned weights equal
the base's to 1e-6 (a fresh initialisation differs by ~1e-2), and L_PT equals the base's L_PT.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from olmo_sam.checkpoints import load_transformer, resolve_checkpoint, trainer_load_path
from olmo_sam.cli import main as cli
from olmo_sam.finetune.records import ResultStore

TINY_LR = 1e-9
SWEEP = [
    "--lrs",
    f"{TINY_LR},3e-3",
    "--batch-size",
    "4",
    "--max-steps",
    "3",
    "--seq-len",
    "64",
    "--pt-val-max-sequences",
    "8",
    "--ft-val-max-sequences",
    "8",
    "--jobs",
    "1",
    "--no-progress",
]


def olmo_sam(*args: str) -> str:
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.stdout


def max_weight_diff(a: Path, b: Path) -> float:
    sa, sb = load_transformer(a)[0].state_dict(), load_transformer(b)[0].state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k] - sb[k]).abs().max().item() for k in sa)


def kept_checkpoint(sweep: Path, base_label: str, lr: float) -> Path:
    rec = next(
        r
        for r in ResultStore(sweep / "results.jsonl").records()
        if r.base_label == base_label and r.lr == lr and r.method == "ft"
    )
    return resolve_checkpoint(sweep / "runs" / rec.run_id / "train")


def test_trainer_load_path_of_each_checkpoint_form(tiny_checkpoint, tiny_hf_model, tmp_path):
    from olmo_sam.hf import import_hf

    # a trainer checkpoint: the step directory (run directory -> its latest step)
    assert trainer_load_path(tiny_checkpoint.parent) == str(tiny_checkpoint)
    # a model-only checkpoint: its model_and_optim directory, from the output dir or step dir
    import_hf(str(tiny_hf_model), tmp_path / "imp")
    want = str(tmp_path / "imp" / "step0" / "model_and_optim")
    assert trainer_load_path(tmp_path / "imp") == want == trainer_load_path(tmp_path / "imp" / "step0")
    with pytest.raises(FileNotFoundError, match="neither an OLMo-core step directory"):
        trainer_load_path(tmp_path)


def test_bring_your_own_checkpoint_walkthrough(tiny_hf_model, tmp_path):
    w = tmp_path
    # 1. the Hugging Face model as an OLMo-core checkpoint (step0/ + tokenizer/)
    olmo_sam("import-hf", tiny_hf_model, "--out", w / "base")
    tok = w / "base" / "tokenizer"
    # 2. data with that tokenizer: a pretraining validation set and a fine-tuning task
    text = w / "pt.txt"
    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[60:90]  # not the tokenizer's files
    text.write_text("\n\n".join(f.read_text(encoding="utf-8", errors="replace")[:3000] for f in stdlib))
    olmo_sam(
        "data",
        "tokenize",
        "--out",
        w / "pt",
        "--tokenizer",
        tok,
        "--input",
        text,
        "--text-docs",
        "paragraphs",
        "--val-fraction",
        "0.3",
    )
    pt_val = [str(w / "pt" / "val-00000.npy")]
    olmo_sam(
        "finetune",
        "prepare",
        "demo-code",
        "--tokenizer",
        tok,
        "--out",
        w / "task",
        "--max-train-tokens",
        "20000",
        "--max-documents",
        "60",
    )
    # 3. a sweep from the imported model
    olmo_sam(
        "sweep",
        "--base",
        w / "base",
        "--base-label",
        "base",
        "--data",
        w / "task",
        "--pt-val",
        *pt_val[:1],
        *SWEEP,
        "--out",
        w / "sweep",
        "--keep-checkpoints",
    )
    recs = {r.lr: r for r in ResultStore(w / "sweep" / "results.jsonl").records()}
    assert set(recs) == {TINY_LR, 3e-3}
    # started from the imported weights, not a fresh init
    assert max_weight_diff(kept_checkpoint(w / "sweep", "base", TINY_LR), w / "base") < 1e-6
    assert abs(recs[TINY_LR].l_pt - recs[TINY_LR].base_l_pt) < 1e-4
    assert max_weight_diff(kept_checkpoint(w / "sweep", "base", 3e-3), w / "base") > 1e-4  # it did train

    # 4. the WiSE-FT baseline's output is a base checkpoint too
    ft = kept_checkpoint(w / "sweep", "base", 3e-3)
    olmo_sam("finetune", "wise-ft", "--base", w / "base", "--ft", ft, "--alpha", "0.5", "--out", w / "wise")
    olmo_sam(
        "sweep",
        "--base",
        w / "base",
        "--base-label",
        "base",
        "--base",
        w / "wise",
        "--base-label",
        "wise",
        "--data",
        w / "task",
        "--pt-val",
        *pt_val[:1],
        *SWEEP,
        "--out",
        w / "sweep",
        "--keep-checkpoints",
    )
    wise = {r.lr: r for r in ResultStore(w / "sweep" / "results.jsonl").records() if r.base_label == "wise"}
    assert set(wise) == {TINY_LR, 3e-3}
    assert max_weight_diff(kept_checkpoint(w / "sweep", "wise", TINY_LR), w / "wise") < 1e-6
    assert abs(wise[TINY_LR].l_pt - wise[TINY_LR].base_l_pt) < 1e-4
    assert max_weight_diff(w / "wise", w / "base") > 1e-4  # a different base from the imported one

    # 5. learning-forgetting comparison of the two bases
    out = olmo_sam(
        "forgetting", "compare", w / "sweep" / "results.jsonl", "--reference", "base", "--json", "--out", w / "report"
    )
    assert any(p.suffix == ".png" for p in (w / "report").iterdir())
    curves = {c["label"]: c for c in json.loads(out)["datasets"]["demo-code"]["curves"]}
    assert set(curves) == {"base", "wise"}
    assert curves["wise"]["base"] == str(resolve_checkpoint(w / "wise"))
    assert curves["wise"]["base_l_pt"] == pytest.approx(wise[TINY_LR].base_l_pt)

    # 6. probes of the same checkpoints
    olmo_sam(
        "probe",
        "noise",
        w / "base",
        w / "wise",
        "--val",
        pt_val[0],
        "--gammas",
        "0.01",
        "--seeds",
        "0",
        "--max-sequences",
        "4",
        "--out",
        w / "probes",
    )
    assert (w / "probes" / "noise.json").exists()


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
