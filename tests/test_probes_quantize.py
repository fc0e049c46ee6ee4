"""bitsandbytes quantization of a real tiny OLMo-core checkpoint and a real tiny HF model."""

from __future__ import annotations

import copy

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from olmo_core.exceptions import OLMoConfigurationError  # noqa: E402

from olmo_sam.checkpoints import load_transformer  # noqa: E402
from olmo_sam.evals import lm_loss  # noqa: E402
from olmo_sam.probes.quantize import (  # noqa: E402
    QuantConfig,
    QuantizationError,
    inspect_quantization,
    load_hf_quantized,
    parse_quant_spec,
    quantize_transformer,
)

# The 16 NF4 levels of QLoRA (Dettmers et al. 2023, App E), written out here so the test does not
# take them from bitsandbytes.
NF4 = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ]
)
LINEARS_PER_BLOCK = 7  # w_q, w_k, w_v, w_out, w1, w2, w3


def _nf4_round_trip(w: torch.Tensor, blocksize: int) -> torch.Tensor:
    blocks = w.reshape(-1, blocksize).float()
    absmax = blocks.abs().amax(1, keepdim=True)
    idx = (blocks / absmax).unsqueeze(-1).sub(NF4).abs().argmin(-1)
    return (NF4[idx] * absmax).view_as(w)


@pytest.fixture(scope="module")
def base(tiny_checkpoint, tiny_corpus):
    model, info = load_transformer(tiny_checkpoint)
    loss = lm_loss(model, [tiny_corpus.val], seq_len=64, vocab_size=tiny_corpus.vocab_size, max_sequences=32)
    return model, info, loss.loss


def _val_loss(model, corpus):
    return lm_loss(model, [corpus.val], seq_len=64, vocab_size=corpus.vocab_size, max_sequences=32).loss


@pytest.mark.parametrize("spec", ["nf4", "nf4-dq", "int8"])
def test_quantized_checkpoint_is_really_quantized(base, tiny_corpus, spec):
    model, info, base_loss = base
    n_blocks = info.model_config.n_layers
    q = copy.deepcopy(model)
    cfg = parse_quant_spec(spec)
    report = quantize_transformer(q, cfg)

    bnb_type = bnb.nn.Linear4bit if cfg.bits == 4 else bnb.nn.Linear8bitLt
    quantized = {n for n, m in q.named_modules() if isinstance(m, bnb_type)}
    plain = {n for n, m in q.named_modules() if type(m) is torch.nn.Linear}
    assert len(quantized) == LINEARS_PER_BLOCK * n_blocks
    assert all(n.startswith("blocks.") for n in quantized)
    assert plain == {"lm_head.w_out"}  # the LM head stays full precision by default
    assert type(q.embeddings) is torch.nn.Embedding
    for n in quantized:
        w = q.get_submodule(n).weight
        assert w.dtype == (torch.uint8 if cfg.bits == 4 else torch.int8), n
    packed = sum(q.get_submodule(n).weight.numel() * q.get_submodule(n).weight.element_size() for n in quantized)
    original = sum(model.get_submodule(n).weight.numel() * 4 for n in quantized)
    assert packed * (8 if cfg.bits == 4 else 4) == original  # 4 (8) bits per fp32 weight
    assert report.counts == {bnb_type.__name__: len(quantized), "Linear": 1}
    assert report.compression > (6 if cfg.bits == 4 else 3.5)

    q_loss = _val_loss(q, tiny_corpus)
    assert q_loss != base_loss
    assert abs(q_loss - base_loss) < 0.2
    if cfg.bits == 4:
        assert q_loss > base_loss  # 4-bit rounding of a trained model costs pretraining loss


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_weights_within_rounding_bound(base, double_quant):
    model, _, _ = base
    q = copy.deepcopy(model)
    quantize_transformer(q, QuantConfig(bits=4, double_quant=double_quant))
    half_gap = float((NF4[1:] - NF4[:-1]).max() / 2)
    for name, mod in q.named_modules():
        if not isinstance(mod, bnb.nn.Linear4bit):
            continue
        w = model.get_submodule(name).weight.detach()
        deq = bnb.functional.dequantize_4bit(mod.weight.data, mod.weight.quant_state)
        absmax = w.reshape(-1, 64).abs().amax(1, keepdim=True)
        err = (deq - w).reshape(-1, 64).abs()
        slack = 0.02 if double_quant else 1e-5  # double quantization rounds absmax to 8 bits too
        assert (err <= absmax * (half_gap + slack)).all(), name
        if not double_quant:
            # the same nearest-level rounding as an independent implementation (ties aside)
            same = (deq - _nf4_round_trip(w, 64)).abs() < 1e-6
            assert same.float().mean() > 0.99, name


def test_lm_head_and_embedding_flags(base, tiny_corpus):
    model, _, base_loss = base
    q = copy.deepcopy(model)
    report = quantize_transformer(q, QuantConfig(bits=4, quantize_lm_head=True, quantize_embeddings=True))
    assert isinstance(q.lm_head.w_out, bnb.nn.Linear4bit)
    assert isinstance(q.embeddings, bnb.nn.Embedding4bit)
    assert report.full_precision_linear == []
    assert _val_loss(q, tiny_corpus) != base_loss

    q8 = copy.deepcopy(model)
    quantize_transformer(q8, QuantConfig(bits=8, skip_modules=("blocks.0.*",)))
    assert type(q8.blocks["0"].attention.w_q) is torch.nn.Linear
    assert isinstance(q8.blocks["1"].attention.w_q, bnb.nn.Linear8bitLt)


def test_verification_fails_loudly(base):
    model, _, _ = base
    with pytest.raises(QuantizationError, match="nothing was quantized"):
        inspect_quantization(copy.deepcopy(model)).verify(QuantConfig(bits=4))

    q = copy.deepcopy(model)
    report = quantize_transformer(q, QuantConfig(bits=4))
    with pytest.raises(QuantizationError, match="asked for 8-bit"):
        report.verify(QuantConfig(bits=8))
    with pytest.raises(QuantizationError, match="double_quant"):
        report.verify(QuantConfig(bits=4, double_quant=True))

    # a corrupted packed weight (as a broken kernel would produce) differs from the exact
    # reference dequantizer, even where one 4-bit code moves to its neighbour (within the old
    # "half the widest NF4 gap" bound)
    originals = {
        n: model.get_submodule(n).weight.detach().clone()
        for n, m in q.named_modules()
        if isinstance(m, bnb.nn.Linear4bit)
    }
    assert report.mismatched_4bit_weights == 0
    packed = q.blocks["1"].feed_forward.w2.weight.data
    packed[:3].copy_(packed[:3] ^ 0x01)  # low nibble only: code i -> i^1, a neighbouring NF4 level
    bad = inspect_quantization(q, originals=originals)
    assert bad.modules["blocks.1.feed_forward.w2"]["mismatches"] == 3
    assert bad.modules["blocks.0.feed_forward.w2"]["mismatches"] == 0
    with pytest.raises(QuantizationError, match="3 dequantized nf4 weights differ from the exact reference"):
        bad.verify(QuantConfig(bits=4))


@pytest.mark.parametrize("spec", ["nf4", "nf4-dq", "fp4", "nf4:blocksize=32", "nf4:blocksize=128"])
def test_4bit_proof_is_the_exact_reference(base, spec):
    """Every weight equals the plain-torch reference (nearest code x stored block scale)."""
    from olmo_sam.probes.quantize import reference_4bit_dequant

    model, _, _ = base
    q = copy.deepcopy(model)
    cfg = parse_quant_spec(spec)
    report = quantize_transformer(q, cfg)
    assert report.mismatched_4bit_weights == 0
    mod = q.blocks["0"].attention.w_q
    w = model.blocks["0"].attention.w_q.weight.detach()
    deq = bnb.functional.dequantize_4bit(mod.weight.data, mod.weight.quant_state)
    if not cfg.double_quant:
        same = deq == reference_4bit_dequant(w, cfg.quant_type, cfg.blocksize)
        assert same.float().mean() > 0.999  # all but near-midpoint ties, bit for bit
    if cfg.quant_type == "nf4" and not cfg.double_quant:
        # and the reference is QLoRA's NF4, with the levels written out in this file
        assert ((deq - _nf4_round_trip(w, cfg.blocksize)).abs() > 1e-7).float().mean() < 1e-3


def test_blocksize_the_cpu_forward_cannot_run_is_refused(base):
    model, _, _ = base  # tiny: input widths 128 and 512, so 256 splits the 128-wide rows too
    for bs in (2048, 4096, 256):
        with pytest.raises(
            OLMoConfigurationError, match=rf"'blocksize'={bs}: .*input width.*use blocksize 32 or 64 or 128"
        ):
            quantize_transformer(copy.deepcopy(model), parse_quant_spec(f"nf4:blocksize={bs}"))


def test_forward_check_refuses_what_crashes_in_the_forward():
    """The forward check itself: a layer the pre-check would not see (96 inputs, blocksize 64)
    passes quantization but crashes bitsandbytes' CPU inference kernel, and is refused by name."""
    if not bnb.functional.has_avx512bf16():
        pytest.skip("the crash is in bitsandbytes' AVX-512 BF16 CPU kernel")
    from olmo_sam.probes.quantize import _check_4bit_forward

    net = torch.nn.Sequential(torch.nn.Linear(96, 64, bias=False))
    q = bnb.nn.Linear4bit(96, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4", device="meta")
    q.weight = bnb.nn.Params4bit(
        net[0].weight.detach().clone(), requires_grad=False, quant_type="nf4", blocksize=64, module=q
    )
    net[0] = q.to("cpu")
    with pytest.raises(OLMoConfigurationError, match=r"'blocksize'=64 .*cannot run the 4-bit forward of 0 \(96->64\)"):
        _check_4bit_forward(net, ["0"], QuantConfig())
    ok = torch.nn.Sequential(torch.nn.Linear(128, 64, bias=True))
    quantize_transformer(ok, QuantConfig())  # runs and matches x @ dequant(W)^T: no error


def test_option_errors():
    with pytest.raises(OLMoConfigurationError, match="load_in_4_bit: unknown setting; did you mean 'load_in_4bit'"):
        QuantConfig.from_dict({"load_in_4_bit": True})
    with pytest.raises(OLMoConfigurationError, match="blocksze: .*'blocksize'"):
        parse_quant_spec("nf4:blocksze=128")
    with pytest.raises(OLMoConfigurationError, match="preset 'nf5'"):
        parse_quant_spec("nf5")
    with pytest.raises(OLMoConfigurationError, match="double_quant: applies to 4-bit"):
        parse_quant_spec("int8:double_quant=true")
    with pytest.raises(OLMoConfigurationError, match="blocksize: must be one of"):
        QuantConfig(blocksize=100)
    with pytest.raises(OLMoConfigurationError, match="quant_type: must be one of"):
        QuantConfig(quant_type="int4")
    with pytest.raises(OLMoConfigurationError, match="bits: given twice"):
        parse_quant_spec("int8:load_in_4bit=true")
    with pytest.raises(OLMoConfigurationError, match="'blocksize'=128: transformers"):
        QuantConfig(blocksize=128).to_transformers()
    # typed values: a misspelled boolean is not truthy, a non-number names its option
    with pytest.raises(OLMoConfigurationError, match="quantize_lm_head: expected true or false, got 'flase'"):
        parse_quant_spec("nf4:quantize_lm_head=flase")
    with pytest.raises(OLMoConfigurationError, match="double_quant: expected true or false, got 'yes'"):
        parse_quant_spec("nf4:double_quant=yes")
    with pytest.raises(OLMoConfigurationError, match="int8_threshold: expected a number, got 'abc'"):
        parse_quant_spec("int8:int8_threshold=abc")
    with pytest.raises(OLMoConfigurationError, match="blocksize: expected a whole number, got '12.5'"):
        parse_quant_spec("nf4:blocksize=12.5")
    with pytest.raises(OLMoConfigurationError, match="load_in_4bit: expected true or false"):
        parse_quant_spec("load_in_4bit=1")
    with pytest.raises(OLMoConfigurationError, match="quantize_lm_head: expected true or false, got 'true'"):
        QuantConfig.from_dict({"quantize_lm_head": "true"})  # a YAML string is not a boolean
    with pytest.raises(OLMoConfigurationError, match="int8_threshold: expected a number"):
        QuantConfig.from_dict({"bits": 8, "int8_threshold": "abc"})
    assert parse_quant_spec("nf4:quantize_lm_head=FALSE").quantize_lm_head is False
    assert parse_quant_spec("int8:int8_threshold=4").int8_threshold == 4.0
    # transformers' own names are accepted with their meaning
    cfg = QuantConfig.from_dict({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True})
    assert cfg == QuantConfig(bits=4, quant_type="nf4", double_quant=True)
    hf = parse_quant_spec("nf4-dq").to_transformers()
    assert hf.load_in_4bit and hf.bnb_4bit_quant_type == "nf4" and hf.bnb_4bit_use_double_quant
    assert "lm_head" in hf.llm_int8_skip_modules


def test_skip_pattern_must_match(base):
    model, _, _ = base
    with pytest.raises(OLMoConfigurationError, match="match no module"):
        quantize_transformer(copy.deepcopy(model), QuantConfig(skip_modules=("block.*",)))


@pytest.mark.parametrize("spec,cls", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_hf_path_quantizes(tiny_hf_model, spec, cls):
    from transformers import AutoModelForCausalLM

    fp = AutoModelForCausalLM.from_pretrained(str(tiny_hf_model), dtype=torch.float32).eval()
    model, report = load_hf_quantized(tiny_hf_model, parse_quant_spec(spec))
    q = {n for n, m in model.named_modules() if type(m).__name__ == cls}
    assert len(q) == LINEARS_PER_BLOCK * fp.config.num_hidden_layers
    assert report.full_precision_linear == ["lm_head"]
    assert report.counts[cls] == len(q)
    x = torch.randint(0, fp.config.vocab_size, (2, 16))
    with torch.no_grad():
        d = (model(x).logits - fp(x).logits).abs().max()
    assert 0 < d < 1.0

    head, _ = load_hf_quantized(tiny_hf_model, parse_quant_spec(spec + ":quantize_lm_head=true"))
    assert type(head.lm_head).__name__ == cls


def test_quantize_probe_resumes(tiny_checkpoint, tiny_hf_model, tiny_corpus, tmp_path, monkeypatch):
    from olmo_sam.probes import runners

    out = tmp_path / "q.json"
    kw = dict(quant=["nf4"], labels=["olmo", "hf"], seq_len=64, max_sequences=8, out=out, progress=False)
    first = runners.quantize_probe([tiny_checkpoint, tiny_hf_model], [tiny_corpus.val], **kw)
    recs = {(r["label"], r["quant"]): r for r in first["records"]}
    assert set(recs) == {("olmo", "none"), ("olmo", "nf4"), ("hf", "none"), ("hf", "nf4")}
    assert recs[("hf", "nf4")]["proof"]["counts"]["Linear4bit"] == 14
    assert recs[("hf", "nf4")]["degradation"] == pytest.approx(
        recs[("hf", "nf4")]["loss"] - recs[("hf", "none")]["loss"]
    )

    def no_model(*a, **k):
        raise AssertionError("a finished measurement was recomputed")

    monkeypatch.setattr(runners, "load_full_precision", no_model)
    monkeypatch.setattr("olmo_sam.probes.quantize.load_hf_quantized", no_model)
    again = runners.quantize_probe([tiny_checkpoint, tiny_hf_model], [tiny_corpus.val], **kw)
    assert again["records"] == first["records"]
    other = {**kw, "labels": ["olmo"], "max_sequences": 4}
    with pytest.raises(
        OLMoConfigurationError, match=r"holds quantize results of other settings \(changed: max_sequences"
    ):
        runners.quantize_probe([tiny_checkpoint], [tiny_corpus.val], **other)  # (their results are kept)
    with pytest.raises(AssertionError, match="recomputed"):  # overwrite: measured afresh
        runners.quantize_probe([tiny_checkpoint], [tiny_corpus.val], **other, overwrite=True)


@pytest.mark.parametrize("double_quant", [False, True])
def test_bfloat16_weights_are_proved_to_their_own_rounding(double_quant):
    """A bfloat16 model dequantizes to bfloat16: the exact comparison allows that rounding and
    still catches one code moved to its neighbour."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.Linear(64, 128)).to(torch.bfloat16)
    originals = {n: m.weight.detach().float() for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)}
    report = quantize_transformer(net, QuantConfig(double_quant=double_quant, compute_dtype="bfloat16"))
    assert report.mismatched_4bit_weights == 0
    assert net[0].weight.quant_state.dtype == torch.bfloat16
    packed = net[1].weight.data
    packed[:1].copy_(packed[:1] ^ 0x01)
    assert inspect_quantization(net, originals=originals).modules["1"]["mismatches"] == 1
    if not double_quant:  # a wrong block scale is caught even though codes x scale are consistent
        net[0].weight.quant_state.absmax[0] *= 1.01
        assert inspect_quantization(net, originals=originals).modules["0"]["scale_error"] > 1
