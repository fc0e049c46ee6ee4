"""``olmo-sam export-hf`` output loads as the same model under transformers 4.x and 5.x.

transformers 5.x (this environment) saves the RoPE base only in ``rope_parameters`` and names
its own ``TokenizersBackend`` class; transformers 4.57 (the line OLMES and older lm-eval / vLLM
installs use) cannot load that tokenizer and silently builds the model with RoPE base 10000
instead of OLMo-2's 500000. The 4.x check runs in a subprocess that imports transformers 4.57 and
its tokenizers/huggingface-hub from an isolated ``pip install --target`` directory (installed
once, cached under ``$OLMO_SAM_CACHE/hf-compat``) with this environment's torch. Both versions
must reproduce the OLMo-core model's logits to 1e-4 and the tokenizer's ids and special tokens.
A copy of the export without the top-level ``rope_theta`` is the negative control: 4.x must then
disagree, which shows the comparison can fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_tokenizer

from olmo_sam.checkpoints import save_transformer
from olmo_sam.hf import export_hf

#: the transformers 4.x line under test and the dependencies it pins that differ from this
#: environment's (the rest -- numpy, safetensors, regex, ... -- come from this environment)
TRANSFORMERS_4 = ("transformers==4.57.1", "tokenizers==0.22.1", "huggingface-hub==0.36.0")
TEXT = "def f(x):\n    return x + 1  # the <|endoftext|> token"
SEQ = 96

LOADER = r"""
import json, sys, torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(1)
ref = torch.load(sys.argv[1])
out = {"version": transformers.__version__, "file": transformers.__file__, "dirs": {}}
for d in sys.argv[2:]:
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = float((model(input_ids=ref["ids"]).logits - ref["logits"]).abs().max())
    out["dirs"][d] = {
        "tokenizer_class": type(tok).__name__, "ids": tok(ref["text"], add_special_tokens=False)["input_ids"],
        "special": [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id], "max_len": tok.model_max_length,
        "diff": diff,
    }
print("RESULT " + json.dumps(out))
"""


def _cache_root() -> Path:
    return Path(os.environ.get("OLMO_SAM_CACHE", Path.home() / ".cache" / "olmo-sam"))


@pytest.fixture(scope="session")
def transformers4() -> Path:
    """``pip install --target`` directory of transformers 4.57 (installed on first use, cached)."""
    from olmo_sam.locks import file_lock

    name = "-".join(p.replace("==", "-") for p in TRANSFORMERS_4)
    target = _cache_root() / "hf-compat" / name
    with file_lock(target.parent / f"{name}.lock", what="(transformers 4.x install)"):
        if not (target / ".complete").exists():
            tmp = target.with_name(name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp), *TRANSFORMERS_4],
                capture_output=True,
                text=True,
            )
            assert proc.returncode == 0, f"could not install {TRANSFORMERS_4}: {proc.stderr[-2000:]}"
            (tmp / ".complete").write_text("\n".join(TRANSFORMERS_4))
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
    return target


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny OLMo-2 preset model (RoPE base 500000) with a BPE tokenizer, weights pushed away
    from their small init so that positions matter, exported; plus its reference logits."""
    from olmo_sam.data.tokenizer import tokenizer_config
    from olmo_sam.models import model_config

    root = tmp_path_factory.mktemp("hf_versions")
    tok = build_tiny_tokenizer(root / "tokenizer")
    tok_cfg = tokenizer_config(tok, identifier=str(root / "tokenizer"))
    cfg = model_config("tiny", vocab_size=tok_cfg.padded_vocab_size())
    assert cfg.block.sequence_mixer.rope.theta == 500_000
    model = cfg.build(init_device="cpu")
    model.init_weights(max_seq_len=SEQ, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    config = {"model": cfg.as_config_dict(), "dataset": {"tokenizer": tok_cfg.as_config_dict(), "sequence_length": SEQ}}
    step = save_transformer(model.eval(), root / "ckpt", config)
    export_hf(step, root / "hf")
    ids = torch.randint(0, len(tok), (2, SEQ), generator=g)
    with torch.no_grad():
        ref = {"ids": ids, "logits": model(ids), "text": TEXT}
    torch.save(ref, root / "ref.pt")
    # the tokenizer's own ids (the tokenizers library on tokenizer.json, no transformers)
    from tokenizers import Tokenizer

    want_ids = Tokenizer.from_file(str(root / "hf" / "tokenizer.json")).encode(TEXT, add_special_tokens=False).ids
    # negative control: the export as transformers 5.x alone would write its config
    bad = root / "hf-5x-only"
    shutil.copytree(root / "hf", bad)
    c = json.loads((bad / "config.json").read_text())
    assert c.pop("rope_theta") == 500_000 and c["rope_parameters"]["rope_theta"] == 500_000
    (bad / "config.json").write_text(json.dumps(c))
    return root, want_ids, (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)


def _load(python_path: str | None, root: Path, *dirs: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if python_path:
        env["PYTHONPATH"] = python_path
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, str(root / "ref.pt"), *map(str, dirs)],
        env=env,
        capture_output=True,
        text=True,
        cwd=root,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _check(res: dict, d: Path, want_ids, special) -> None:
    r = res["dirs"][str(d)]
    assert r["diff"] < 1e-4, (res["version"], r["diff"])
    assert r["tokenizer_class"] in ("PreTrainedTokenizerFast", "TokenizersBackend"), r["tokenizer_class"]
    assert r["ids"] == want_ids and tuple(r["special"]) == special and r["max_len"] == SEQ


def test_export_loads_identically_under_transformers_4(exported, transformers4):
    root, want_ids, special = exported
    res = _load(str(transformers4), root, root / "hf", root / "hf-5x-only")
    assert res["version"] == "4.57.1" and Path(res["file"]).is_relative_to(transformers4)
    _check(res, root / "hf", want_ids, special)
    # without the top-level rope_theta, 4.x builds RoPE base 10000: a different model
    assert res["dirs"][str(root / "hf-5x-only")]["diff"] > 1e-2


def test_export_loads_identically_under_transformers_5(exported):
    root, want_ids, special = exported
    res = _load(None, root, root / "hf")
    assert res["version"].startswith("5.")
    _check(res, root / "hf", want_ids, special)
