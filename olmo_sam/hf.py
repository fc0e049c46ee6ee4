"""OLMo-core checkpoints <-> Hugging Face ``Olmo2ForCausalLM`` directories.

Export (``olmo-sam export-hf CHECKPOINT OUT``) is what vLLM, bitsandbytes, lm-eval and OLMES
consume; import (``olmo-sam import-hf SOURCE OUT``) turns a Hugging Face OLMo-2 release (e.g.
``allenai/OLMo-2-0425-1B`` at its stage-1 revision) into an OLMo-core checkpoint that
:func:`olmo_sam.checkpoints.load_transformer` and the trainer's ``load_path`` read.

The weight mapping is OLMo-core's own (``olmo_core.nn.hf``: ``save_hf_model`` /
``load_hf_model``). This module adds what those leave to the caller: unsharding (an FSDP-sharded
checkpoint loads into one process through :func:`~olmo_sam.checkpoints.load_transformer`), a
correct ``config.json`` (``max_position_embeddings``, BOS/EOS/pad ids), the tokenizer, a
logit-equality check of every conversion, and atomic output (a temporary directory renamed into
place).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import click
import torch
from olmo_core.config import DType
from olmo_core.data import TokenizerConfig
from olmo_core.exceptions import OLMoConfigurationError
from olmo_core.nn.transformer import Transformer, TransformerConfig

from .output import atomic_dir, check_out_dir
from .preflight import POSITIVE_INT, model_callback, out_dir_callback

__all__ = [
    "export_hf",
    "import_hf",
    "write_compatible_files",
    "logit_diff",
    "export_hf_command",
    "import_hf_command",
    "REPORT_FILE",
]

#: written into every exported/imported directory: source, tokenizer, logit check
REPORT_FILE = "olmo-sam-conversion.json"
#: max |logit difference| accepted between the two implementations (fp32)
DEFAULT_ATOL = 1e-4
_CHECK_SEQ = 64


def logit_diff(olmo: Transformer, hf_model, vocab_size: int, seq_len: int = _CHECK_SEQ, seed: int = 0) -> float:
    """Max |logits| difference of the two models on the same random token ids (in fp32)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (2, seq_len), generator=g)
    with torch.no_grad():
        a = olmo(ids).float()
        b = hf_model(input_ids=ids).logits.float()
    n = min(a.shape[-1], b.shape[-1])
    return float((a[..., :n] - b[..., :n]).abs().max())


#: the tokenizer class written into exports: transformers 4.x and 5.x both know it (5.x writes
#: its own ``TokenizersBackend``, which 4.x cannot load)
EXPORT_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def write_compatible_files(hf_dir: Path) -> None:
    """Rewrite an export's ``config.json`` / ``tokenizer_config.json`` (as transformers 5.x saved
    them) so that transformers 4.x reads the same model and tokenizer.

    5.x keeps the RoPE base only inside ``rope_parameters``; 4.x ignores that key and silently
    falls back to ``rope_theta = 10000`` (a different model: OLMo-2 uses 500000), so the
    top-level ``rope_theta`` is written as well. Only plain RoPE is exported (OLMo-2 has no
    scaling); a scaled one is refused rather than written in a form one version misreads. The
    tokenizer class becomes ``PreTrainedTokenizerFast``, which both versions load from
    ``tokenizer.json``.
    """
    cfg_path = hf_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    rope = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", rope.get("rope_theta"))
    if theta is None:
        raise OLMoConfigurationError(f"{cfg_path} records no RoPE base (rope_theta)")
    if rope.get("rope_type", "default") != "default" or cfg.get("rope_scaling"):
        raise OLMoConfigurationError(
            f"{cfg_path}: RoPE type {rope.get('rope_type')!r} / scaling {cfg.get('rope_scaling')!r} is not "
            "exported (plain RoPE only, as OLMo-2 uses)"
        )
    cfg["rope_theta"] = theta
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tok_path = hf_dir / "tokenizer_config.json"
    if tok_path.exists():
        tok = json.loads(tok_path.read_text())
        tok["tokenizer_class"] = EXPORT_TOKENIZER_CLASS
        for key in ("is_local", "local_files_only"):  # where 5.x loaded it from, not the tokenizer's
            tok.pop(key, None)
        tok_path.write_text(json.dumps(tok, indent=2, sort_keys=True) + "\n")


def _resolve_tokenizer(explicit: Optional[str], step_dir: Path, tok_cfg: Optional[TokenizerConfig]):
    """The Hugging Face tokenizer of a checkpoint: ``explicit`` > a ``tokenizer/`` directory beside
    the run (import layout) > the data's tokenizer identifier."""
    from .data.tokenizer import load_tokenizer

    candidates = []
    if explicit:
        candidates.append(explicit)
    for near in (step_dir.parent / "tokenizer", step_dir.parent.parent / "tokenizer"):
        if (near / "tokenizer.json").exists():
            candidates.append(str(near))
    if tok_cfg is not None and tok_cfg.identifier:
        candidates.append(str(tok_cfg.identifier))
    errors = []
    for c in candidates:
        try:
            return load_tokenizer(c), c
        except OLMoConfigurationError as e:
            if c == explicit:
                raise
            errors.append(str(e))
    raise OLMoConfigurationError(
        f"no tokenizer found for {step_dir} (tried {candidates or 'nothing'}{'; ' + '; '.join(errors) if errors else ''}); "
        "give one with --tokenizer, or export without it (--no-tokenizer)"
    )


def unfinished_warning(info) -> Optional[str]:
    """What an export says of a checkpoint before the end of its run (``None``: the run's end, or
    a run length that is not recorded): a run stopped early (``--stop-at-step``) or interrupted
    exports its latest step, which is not the trained model."""
    from .checkpoints import resolve_checkpoint

    if info.step is None or info.planned_steps is None or info.step >= info.planned_steps:
        return None
    planned = f"{info.planned_steps:,d} steps"
    if resolve_checkpoint(info.path.parent) == info.path:
        return (
            f"the run is unfinished: it stopped at step {info.step:,d} of its planned {planned} (--stop-at-step "
            "or an interruption; its training command resumes it)"
        )
    return f"step {info.step:,d} is an intermediate checkpoint of a run planned for {planned}"


def export_hf(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    tokenizer: Optional[str] = None,
    include_tokenizer: bool = True,
    dtype: Optional[str] = None,
    max_position_embeddings: Optional[int] = None,
    validate: bool = True,
    atol: float = DEFAULT_ATOL,
    overwrite: bool = False,
) -> Dict[str, Any]:
    """Export an OLMo-core checkpoint (step or run directory; single-process or FSDP-sharded) to a
    Hugging Face ``Olmo2ForCausalLM`` directory. Returns the conversion report."""
    from olmo_core.nn.hf import save_hf_model
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from .checkpoints import load_transformer

    out = check_out_dir(out_dir, overwrite=overwrite, inputs=[checkpoint])  # before the (possibly large) load
    model, info = load_transformer(checkpoint)
    tok_cfg = info.tokenizer
    hf_tok, tok_source = (None, None)
    if include_tokenizer:
        hf_tok, tok_source = _resolve_tokenizer(tokenizer, info.path, tok_cfg)
        if tok_cfg is not None and len(hf_tok) != tok_cfg.vocab_size:
            raise OLMoConfigurationError(
                f"tokenizer {tok_source} has {len(hf_tok)} tokens but the checkpoint was trained "
                f"with vocab_size={tok_cfg.vocab_size}: wrong tokenizer"
            )
        if len(hf_tok) > model.vocab_size:
            raise OLMoConfigurationError(
                f"tokenizer {tok_source} has {len(hf_tok)} tokens, more than the model's "
                f"{model.vocab_size} embedding rows"
            )
    max_pos = max_position_embeddings or info.sequence_length
    if not max_pos:
        raise OLMoConfigurationError(
            "the checkpoint does not record its sequence length; give --max-position-embeddings"
        )
    ids = {
        "bos_token_id": hf_tok.bos_token_id if hf_tok is not None else (tok_cfg.bos_token_id if tok_cfg else None),
        "eos_token_id": hf_tok.eos_token_id if hf_tok is not None else (tok_cfg.eos_token_id if tok_cfg else None),
        "pad_token_id": hf_tok.pad_token_id if hf_tok is not None else (tok_cfg.pad_token_id if tok_cfg else None),
    }
    if hf_tok is not None and ids["pad_token_id"] is None and tok_cfg is not None:
        ids["pad_token_id"] = tok_cfg.pad_token_id
    with atomic_dir(out, overwrite=overwrite, inputs=[checkpoint]) as tmp:
        save_hf_model(
            tmp,
            model.state_dict(),
            model,
            huggingface_tokenizer=hf_tok,
            dtype=DType(dtype) if dtype else None,
            vocab_size=model.vocab_size,
            save_overwrite=True,
        )
        config = AutoConfig.from_pretrained(tmp)
        config.max_position_embeddings = int(max_pos)
        for name, value in ids.items():
            setattr(config, name, value)
        config.save_pretrained(tmp)
        gen = GenerationConfig.from_model_config(config)
        gen.do_sample = True
        gen.save_pretrained(tmp)
        if hf_tok is not None:
            hf_tok.model_max_length = int(max_pos)
            hf_tok.save_pretrained(tmp)
        write_compatible_files(tmp)
        report: Dict[str, Any] = {
            "direction": "olmo-core -> hf",
            "source": str(info.path),
            "step": info.step,
            "tokenizer": tok_source,
            "dtype": dtype or "float32",
            "max_position_embeddings": int(max_pos),
            **ids,
        }
        if info.planned_steps is not None:
            report["planned_steps"] = info.planned_steps
            if (warning := unfinished_warning(info)) is not None:
                report["warning"] = warning
        if validate:
            hf_model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
            ref = model
            if dtype:
                ref = info.model_config.build(init_device="cpu")
                ref.init_weights(max_seq_len=info.sequence_length, device=torch.device("cpu"))
                ref.load_state_dict({k: v.to(DType(dtype).as_pt()).float() for k, v in model.state_dict().items()})
                ref.eval()
            diff = logit_diff(ref, hf_model, model.vocab_size, seq_len=min(_CHECK_SEQ, int(max_pos)))
            report["max_abs_logit_diff"] = diff
            if not diff <= atol:
                raise OLMoConfigurationError(
                    f"exported model disagrees with the checkpoint: max |logit diff| {diff:.3g} > {atol}"
                )
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


# ---------------------------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------------------------

_COMPARED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "attention_bias",
    "rms_norm_eps",
    "tie_word_embeddings",
)


def _rope_theta(cfg) -> Optional[float]:
    theta = getattr(cfg, "rope_theta", None)
    if theta is None and isinstance(getattr(cfg, "rope_parameters", None), dict):
        theta = cfg.rope_parameters.get("rope_theta")
    return float(theta) if theta is not None else None


def _signature(cfg) -> Dict[str, Any]:
    sig = {k: getattr(cfg, k, None) for k in _COMPARED}
    if sig["num_key_value_heads"] is None:
        sig["num_key_value_heads"] = sig["num_attention_heads"]
    sig["rms_norm_eps"] = float(sig["rms_norm_eps"])
    sig["rope_theta"] = _rope_theta(cfg)
    return sig


def transformer_config_from_hf(hf_config) -> TransformerConfig:
    """The OLMo-core config of a Hugging Face OLMo-2 model: the project's preset when one matches
    (so recipes recognise it), else an equivalent OLMo-2 config; verified field by field."""
    from olmo_core.nn.feed_forward import FeedForwardConfig
    from olmo_core.nn.hf.config import get_hf_config
    from olmo_core.nn.transformer import TransformerBlockType

    from .models import model_config

    if getattr(hf_config, "model_type", None) != "olmo2":
        raise OLMoConfigurationError(
            f"only OLMo-2 models (model_type 'olmo2') are imported, got {getattr(hf_config, 'model_type', None)!r}"
        )
    want = _signature(hf_config)
    candidates = [
        model_config("1B", vocab_size=want["vocab_size"]),
        model_config("tiny", vocab_size=want["vocab_size"]),
    ]
    candidates.append(
        TransformerConfig.llama_like(
            d_model=want["hidden_size"],
            vocab_size=want["vocab_size"],
            n_layers=want["num_hidden_layers"],
            n_heads=want["num_attention_heads"],
            n_kv_heads=want["num_key_value_heads"],
            block_name=TransformerBlockType.reordered_norm,
            qk_norm=True,
            rope_theta=int(want["rope_theta"] or 10_000),
            layer_norm_eps=want["rms_norm_eps"],
            feed_forward=FeedForwardConfig(hidden_size=want["intermediate_size"], bias=False),
        )
    )
    found = {}
    for cand in candidates:
        got = _signature(get_hf_config(cand.build(init_device="meta")))
        if got == want:
            return cand
        found = got
    diff = {k: (want[k], found.get(k)) for k in want if want[k] != found.get(k)}
    raise OLMoConfigurationError(f"cannot express this OLMo-2 config in OLMo-core: (hf, olmo-core) differ in {diff}")


def import_hf(
    source: str,
    out_dir: str | Path,
    *,
    revision: Optional[str] = None,
    tokenizer: Optional[str] = None,
    validate: bool = True,
    atol: float = DEFAULT_ATOL,
    overwrite: bool = False,
) -> Dict[str, Any]:
    """Import a Hugging Face OLMo-2 model (hub id or local directory) as an OLMo-core checkpoint:
    ``{out_dir}/step0`` (``model_and_optim/`` + ``config.json``) and ``{out_dir}/tokenizer``."""
    from olmo_core.nn.hf import load_hf_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from .checkpoints import save_transformer
    from .data.tokenizer import load_tokenizer, tokenizer_config

    out = check_out_dir(out_dir, overwrite=overwrite, inputs=[source])
    if Path(source).exists():
        if revision is not None:
            raise OLMoConfigurationError(
                f"--revision {revision}: {source} is a local directory, which has no revisions; give a hub id or "
                "drop --revision"
            )
        if not (Path(source) / "config.json").is_file():
            raise OLMoConfigurationError(f"{source}: no config.json, not a Hugging Face model directory")
        if not any(Path(source).glob("*.safetensors")) and not any(Path(source).glob("*.bin")):
            raise OLMoConfigurationError(
                f"{source}: no model weights (*.safetensors or *.bin) beside its config.json; copy the whole "
                "model directory"
            )
    try:
        hf_config = AutoConfig.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as e:
        raise OLMoConfigurationError(f"cannot read a Hugging Face model config from {source!r}: {e}") from e
    tcfg = transformer_config_from_hf(hf_config)
    hf_tok = load_tokenizer(tokenizer or source, revision=None if tokenizer else revision)
    tok_cfg = tokenizer_config(hf_tok, identifier=tokenizer or source)
    if tok_cfg.vocab_size > tcfg.vocab_size:
        raise OLMoConfigurationError(
            f"tokenizer has {tok_cfg.vocab_size} tokens but the model only {tcfg.vocab_size} embedding rows"
        )
    seq_len = int(hf_config.max_position_embeddings)
    model = tcfg.build(init_device="cpu")
    model.init_weights(max_seq_len=seq_len, device=torch.device("cpu"))
    state = model.state_dict()
    try:
        load_hf_model(source, state, revision=revision or "main", num_embeddings=tcfg.vocab_size)
    except Exception as e:  # noqa: BLE001 - safetensors / torch raise several kinds for a bad file
        if not Path(source).exists():
            raise
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise OLMoConfigurationError(
            f"{source}: the model weights could not be read ({type(e).__name__}: {first}); a *.safetensors file "
            "is truncated or corrupt: download or copy it again"
        ) from None
    model.load_state_dict(state)
    model.eval()
    report: Dict[str, Any] = {
        "direction": "hf -> olmo-core",
        "source": source,
        "revision": revision,
        "tokenizer": tokenizer or source,
        "sequence_length": seq_len,
    }
    if validate:
        hf_model = AutoModelForCausalLM.from_pretrained(source, revision=revision or "main", dtype=torch.float32).eval()
        diff = logit_diff(model, hf_model, tok_cfg.vocab_size, seq_len=min(_CHECK_SEQ, seq_len))
        del hf_model
        report["max_abs_logit_diff"] = diff
        if not diff <= atol:
            raise OLMoConfigurationError(
                f"imported model disagrees with {source}: max |logit diff| {diff:.3g} > {atol}"
            )
    config = {
        "model": tcfg.as_config_dict(),
        "dataset": {"tokenizer": tok_cfg.as_config_dict(), "sequence_length": seq_len},
        "source": report,
    }
    with atomic_dir(out, overwrite=overwrite, inputs=[source]) as tmp:
        save_transformer(model, tmp, config, step=0)
        hf_tok.save_pretrained(tmp / "tokenizer")
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


@click.command("export-hf")
@click.argument("checkpoint", type=click.Path(exists=True))
@click.option(
    "--out",
    "out_dir",
    required=True,
    callback=out_dir_callback,
    type=click.Path(),
    help="Hugging Face model directory to write.",
)
@click.option("--tokenizer", default=None, help="Tokenizer dir / id [default: the checkpoint's].")
@click.option("--no-tokenizer", is_flag=True, help="Export without a tokenizer (ids from the training config).")
@click.option(
    "--dtype", type=click.Choice(["float32", "bfloat16"]), default=None, help="Weight dtype [default: as trained]."
)
@click.option(
    "--max-position-embeddings", type=POSITIVE_INT, default=None, help="[default: the training context length]"
)
@click.option("--no-validate", is_flag=True, help="Skip the logit comparison.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def export_hf_command(
    checkpoint, out_dir, tokenizer, no_tokenizer, dtype, max_position_embeddings, no_validate, overwrite
):
    """Export an OLMo-core CHECKPOINT (step or run dir, sharded or not) to a Hugging Face
    Olmo2ForCausalLM directory (--out)."""
    report = export_hf(
        checkpoint,
        out_dir,
        tokenizer=tokenizer,
        include_tokenizer=not no_tokenizer,
        dtype=dtype,
        max_position_embeddings=max_position_embeddings,
        validate=not no_validate,
        overwrite=overwrite,
    )
    click.echo(json.dumps(report, indent=2))
    if "warning" in report:
        click.echo(f"warning: {report['warning']}", err=True)


@click.command("import-hf")
@click.argument("source", callback=model_callback)
@click.option(
    "--out",
    "out_dir",
    required=True,
    callback=out_dir_callback,
    type=click.Path(),
    help="OLMo-core checkpoint directory to write.",
)
@click.option("--revision", default=None, help="Hub revision (e.g. stage1-step1907359-tokens4001B).")
@click.option("--tokenizer", default=None, help="Tokenizer dir / id [default: SOURCE's].")
@click.option("--no-validate", is_flag=True, help="Skip the logit comparison.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def import_hf_command(source, out_dir, revision, tokenizer, no_validate, overwrite):
    """Import a Hugging Face OLMo-2 model SOURCE (hub id or dir) as an OLMo-core checkpoint in
    --out (step0/ for load_path, tokenizer/)."""
    report = import_hf(
        source, out_dir, revision=revision, tokenizer=tokenizer, validate=not no_validate, overwrite=overwrite
    )
    click.echo(json.dumps(report, indent=2))
