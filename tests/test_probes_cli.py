"""``olmo-sam probe quantize|noise|hessian`` end to end on the tiny checkpoint."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from olmo_sam.cli import main


def _run(args):
    res = CliRunner().invoke(main, ["probe", *args], catch_exceptions=False)
    return res


def test_probe_commands_write_json_and_plots(tiny_checkpoint, tiny_corpus, tmp_path):
    common = ["--val", str(tiny_corpus.val), "--max-sequences", "8", "--out", str(tmp_path)]
    res = _run(["quantize", str(tiny_checkpoint), "--label", "adamw@40", "--quant", "nf4", "--quant", "int8", *common])
    assert res.exit_code == 0, res.output
    q = json.loads((tmp_path / "quantize.json").read_text())
    assert [r["quant"] for r in q["records"]] == ["none", "nf4", "int8"]
    assert q["records"][1]["proof"]["counts"]["Linear4bit"] == 14
    assert "degradation" in res.output
    # the full-precision loss is a row; degradations (~1e-4 here) at 3 significant digits
    none, *quantized = q["records"]
    assert f"adamw@40  none       loss {none['loss']:.6f}  (full precision)" in res.output
    for r in quantized:
        assert f"loss {r['loss']:.6f}  degradation {r['degradation']:+.3g}  (" in res.output
    assert "-0.0000" not in res.output and "+0.0000" not in res.output

    res = _run(
        ["noise", str(tiny_checkpoint), "--gammas", "0.02", "--seeds", "0,1", "--exclude", "embeddings.*", *common]
    )
    assert res.exit_code == 0, res.output
    p = json.loads((tmp_path / "noise.json").read_text())
    assert "embeddings.weight" not in p["records"][0]["perturbed"]
    assert {s["gamma"] for s in p["summary"]} == {0.0, 0.02}
    noisy = [s for s in p["summary"] if s["gamma"] == 0.02][0]
    assert f"increase {noisy['increase']:+.3g}  SD {noisy['std']:.2g} over 2 noise draws" in res.output
    assert "seeds)" not in res.output

    res = _run(["hessian", str(tiny_checkpoint), "--n-sequences", "2", "--probes", "3", "--power-iters", "2", *common])
    assert res.exit_code == 0, res.output
    h = json.loads((tmp_path / "hessian.json").read_text())
    assert h["records"][0]["trace"]["n_probes"] == 3
    eig = h["records"][0]["top_eigenvalue"]
    assert f"lambda_max {eig['value']:.4g}" in res.output
    assert ("dominant eigenvalue" in res.output) == (eig["largest_magnitude"] < 0)
    # 2/lr is gradient descent's threshold; an AdamW checkpoint's table says so
    assert ("preconditioned Hessian" in res.output) == bool(h["records"][0].get("edge_of_stability"))
    for name in ("quantize", "noise", "hessian"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries

    # another setting into the same --out would have replaced those results without a word
    before = (tmp_path / "noise.json").read_text()
    res = _run(["noise", str(tiny_checkpoint), "--gammas", "0.05", "--seeds", "0", *common])
    assert (
        res.exit_code == 1 and "holds noise results of other settings (changed: exclude, gammas, seeds)" in res.output
    )
    assert "pass --overwrite" in res.output and (tmp_path / "noise.json").read_text() == before
    res = _run(["noise", str(tiny_checkpoint), "--gammas", "0.05", "--seeds", "0", "--overwrite", *common])
    assert res.exit_code == 0, res.output
    assert {s["gamma"] for s in json.loads((tmp_path / "noise.json").read_text())["summary"]} == {0.0, 0.05}


@pytest.mark.parametrize(
    "args,message,code",
    [
        (["quantize", "--quant", "nf4:load_in_4_bit=true"], "did you mean 'load_in_4bit'", 2),
        (["quantize", "--quant", "int4"], "unknown quantization preset 'int4'", 2),
        (
            ["quantize", "--quant", "nf4:quantize_lm_head=flase"],
            "quantize_lm_head: expected true or false, got 'flase'",
            2,
        ),
        (["quantize", "--quant", "int8:int8_threshold=abc"], "int8_threshold: expected a number, got 'abc'", 2),
        (["quantize", "--quant", "nf4:blocksize=2048"], "'blocksize'=2048: bitsandbytes' CPU 4-bit kernels", 1),
        (["noise", "--exclude", "embedding.*"], "match no parameter", 1),
        (["quantize", "--label", "a", "--label", "b"], "2 label(s) for 1 checkpoint", 1),
    ],
)
def test_probe_usage_errors(tiny_checkpoint, tiny_corpus, tmp_path, args, message, code):
    cmd, *rest = args
    res = CliRunner().invoke(
        main, ["probe", cmd, str(tiny_checkpoint), "--val", str(tiny_corpus.val), "--out", str(tmp_path), *rest]
    )
    # a --quant that does not parse is a usage error (2); a setting refused by the run, an error (1)
    assert res.exit_code == code, res.output
    assert message in res.output


def test_probe_options_are_the_probe_functions_keyword_options():
    """Each probe's options dataclass (what a study file and the plan step check) names exactly
    the keyword options of the probe function it configures, and refuses bad values by name."""
    import dataclasses
    import inspect

    from olmo_sam.config import ConfigError
    from olmo_sam.probes import runners

    not_options = {"checkpoints", "val_paths", "labels", "out", "overwrite", "progress", "pairs"}
    fns = {"quantize": runners.quantize_probe, "noise": runners.noise_probe, "hessian": runners.hessian_probe}
    for probe, fn in fns.items():
        params = set(inspect.signature(fn).parameters) - not_options
        assert {f.name for f in dataclasses.fields(runners.PROBE_OPTIONS[probe])} == params, probe
    for probe, options, message in [
        ("noise", {"gammas": [0.01, -1]}, "gammas[1]: must be a number > 0, got -1"),
        ("noise", {"seeds": []}, "seeds: the list is empty"),
        ("quantize", {"quant": ["nf4", "nf4:blocksze=128"]}, "quant[1]: blocksze: unknown setting"),
        ("hessian", {"method": "double_backwards"}, "did you mean 'double_backward'"),
        ("hessian", {"power_iter": 3}, "power_iter: unknown setting; did you mean 'power_iters'"),
    ]:
        with pytest.raises(ConfigError) as err:
            runners.check_probe_options(probe, options)
        assert message in str(err.value), str(err.value)


def test_hessian_line_says_when_a_negative_eigenvalue_dominates():
    """User probe: the table said "lambda_max 5.939 (not converged)" while hessian.json had the
    dominant eigenvalue at -8.81; the row now carries both, with the sign (record from that run)."""
    from olmo_sam.probes.cli import hessian_line

    rec = {
        "label": "sam",
        "trace": {"trace": 443.4, "stderr": 12.0},
        "top_eigenvalue": {"value": 5.939470017898884, "converged": False, "largest_magnitude": -8.810512512513242},
        "edge_of_stability": 666.6666666666666,
    }
    line = hessian_line(rec)
    assert "lambda_max 5.939 (not converged)  dominant eigenvalue -8.811 (negative, largest in magnitude)" in line
    rec["top_eigenvalue"] = {"value": 9.23, "converged": True, "largest_magnitude": 9.23}
    assert "dominant" not in hessian_line(rec) and "lambda_max 9.23  (2/lr = 666.7)" in hessian_line(rec)


def test_a_bad_probe_option_is_named_by_its_flag(tiny_checkpoint, tiny_corpus, tmp_path):
    """`probe noise --gammas 0` said 'gammas[0]: must be a number > 0' (the function's keyword);
    the error now names the flag the user typed."""
    common = [str(tiny_checkpoint), "--val", str(tiny_corpus.val), "--out", str(tmp_path)]
    res = CliRunner().invoke(main, ["probe", "noise", *common, "--gammas", "0.01,0"])
    assert res.exit_code == 1 and "Error: --gammas[1]: must be a number > 0, got 0.0" in res.output
    res = CliRunner().invoke(main, ["probe", "hessian", *common, "--rtol", "-1"])
    assert res.exit_code == 1 and "Error: --rtol: must be a number > 0" in res.output
    res = CliRunner().invoke(main, ["probe", "quantize", *common, "--quant", "nf5"])
    assert res.exit_code != 0 and "nf5" in res.output and "Traceback" not in res.output


def test_a_quantization_the_model_cannot_take_is_refused_before_any_evaluation(
    tiny_checkpoint, tiny_corpus, tmp_path, monkeypatch
):
    """`probe quantize --quant nf4:blocksize=2048` evaluated the full-precision model (minutes on
    a large one) before refusing the setting; every setting is now checked against the model first."""
    from olmo_core.exceptions import OLMoConfigurationError

    from olmo_sam.probes import runners

    monkeypatch.setattr(runners, "_loss", lambda *a, **k: pytest.fail("evaluated before refusing"))
    with pytest.raises(OLMoConfigurationError, match=r"'blocksize'=2048: .*input width"):
        runners.quantize_probe(
            [str(tiny_checkpoint)],
            [str(tiny_corpus.val)],
            quant=["int8", "nf4:blocksize=2048"],
            out=tmp_path / "q.json",
        )
