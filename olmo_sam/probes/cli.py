"""``olmo-sam probe quantize|noise|hessian CHECKPOINT...``: JSON + a plot per probe.

The command names are the study file's probe stages and the flags are their keys
(``probes: {noise: {gammas: [...], seeds: [...]}}`` = ``probe noise --gammas ... --seeds ...``).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Dict

import click
from olmo_core.exceptions import OLMoConfigurationError

from .. import paper
from ..preflight import (
    DEVICE,
    FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    SEED,
    comma_list,
    errors_by_flag,
    out_dir_callback,
)

__all__ = ["probe"]


def _common(fn: Callable) -> Callable:
    options = [
        click.option(
            "--val",
            "val_paths",
            multiple=True,
            required=True,
            type=click.Path(exists=True, dir_okay=False),
            help="Pretraining validation token file (repeatable).",
        ),
        click.option(
            "--label", "labels", multiple=True, help="Label per checkpoint, in order (ARM@TOKENS groups lines by ARM)."
        ),
        click.option(
            "--seq-len",
            type=POSITIVE_INT,
            default=None,
            help="Window length (default: the checkpoint's training sequence length).",
        ),
        click.option(
            "--eval-batch-size",
            "batch_size",
            type=POSITIVE_INT,
            default=8,
            show_default=True,
            help="Sequences per evaluation batch (not the training --batch-size).",
        ),
        click.option("--max-sequences", type=POSITIVE_INT, default=None, help="Evaluate at most this many windows."),
        click.option(
            "--device",
            type=DEVICE,
            default="cpu",
            show_default=True,
            help="Torch device to evaluate on (cpu, cuda, cuda:1, ...).",
        ),
        click.option(
            "--out",
            "out_dir",
            callback=out_dir_callback,
            type=click.Path(file_okay=False),
            default="probe-results",
            show_default=True,
            help="Where <probe>.json and <probe>.png go.",
        ),
        click.option(
            "--overwrite",
            is_flag=True,
            help="Replace a <probe>.json of other settings in --out (the same settings resume).",
        ),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


#: a probe option whose flag is not --<its name with dashes>
_FLAG_OF = {"batch_size": "--eval-batch-size", "val_max_sequences": "--max-sequences"}


def _flags(probe_name: str):
    """A bad option of the probe function is named by its flag (``--gammas[0]: ...``), as the
    user gave it, not by the function's keyword (``gammas[0]``)."""
    from .runners import PROBE_OPTIONS

    return errors_by_flag({f.name for f in fields(PROBE_OPTIONS[probe_name])}, _FLAG_OF)


def _write(out_dir: str, name: str, result: Dict[str, Any], plot: Callable) -> None:
    out = Path(out_dir)
    fig = plot(result, out / f"{name}.png")
    click.echo(f"wrote {out / (name + '.json')} and {fig}")


@click.group("probe")
def probe():
    """Robustness and geometry probes: quantization, weight noise, Hessian sharpness.

    \b
    Example:
      olmo-sam probe noise runs/demo/pretrain/sam/step400 --val data/val-000.npy --gammas 0.01,0.02 --out probes/
    """


@probe.command("quantize")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option(
    "--quant",
    "quant",
    multiple=True,
    default=("nf4", "nf4-dq", "int8"),
    show_default=True,
    help="Setting: preset (nf4, nf4-dq, fp4, int8) with optional ':key=value,...' (e.g. nf4:blocksize=128,quantize_lm_head=true), repeatable.",
)
@_common
def quantize_cmd(checkpoints, quant, val_paths, labels, seq_len, batch_size, max_sequences, device, out_dir, overwrite):
    """L_PT of each CHECKPOINT (OLMo-core step/run dir or exported HF dir) quantized with
    bitsandbytes, minus its full-precision L_PT ([SAM-PT] Sec 3.4, Fig 8a)."""
    from .plots import plot_quantize
    from .quantize import parse_quant_spec
    from .runners import quantize_probe

    cfgs = []
    for spec in quant:
        try:
            cfgs.append(parse_quant_spec(spec))
        except OLMoConfigurationError as e:
            raise click.BadParameter(str(e), param_hint="--quant") from e
    with _flags("quantize"):
        result = quantize_probe(
            list(checkpoints),
            list(val_paths),
            quant=cfgs,
            labels=list(labels),
            seq_len=seq_len,
            batch_size=batch_size,
            max_sequences=max_sequences,
            device=device,
            out=Path(out_dir) / "quantize.json",
            overwrite=overwrite,
        )
    for r in result["records"]:
        click.echo(quantize_line(r))
    _write(out_dir, "quantize", result, plot_quantize)


def quantize_line(r: dict) -> str:
    """One row of ``probe quantize``'s table: the full-precision loss, or a quantized loss and its
    degradation at 3 significant digits (degradations of ~1e-4 print as such, not "-0.0000")."""
    if r["quant"] == "none":
        return f"{r['label']:>24s}  {'none':<10s} loss {r['loss']:.6f}  (full precision)"
    proof = r["proof"]
    return (
        f"{r['label']:>24s}  {r['quant']:<10s} loss {r['loss']:.6f}  degradation {r['degradation']:+.3g}  "
        f"({proof['counts']}, {proof['compression']:.2f}x smaller)"
    )


def noise_line(s: dict) -> str:
    """One row of ``probe noise``'s table: mean loss, its increase, and the SD over noise draws."""
    n = s["n_seeds"]
    return (
        f"{s['label']:>24s}  gamma {s['gamma']:<6g} loss {s['mean']:.6f}  increase {s['increase']:+.3g}  "
        f"SD {s['std']:.2g} over {n} noise draw{'s' if n != 1 else ''}"
    )


#: printed under a table with 2/lr: the threshold is gradient descent's
EOS_NOTE = (
    "note: 2/lr is the edge of stability of gradient descent (Cohen et al. 2021). Under Adam/AdamW the edge "
    "concerns the preconditioned Hessian (Cohen et al. 2022), not the raw H measured here: lambda_max above "
    "2/lr does not by itself mean the run was unstable."
)


#: printed under a table where the finite-difference check of lambda_max failed
FD_CHECK_NOTE = (
    "warning: the finite-difference lambda_max changed by more than the power iteration's tolerance when "
    "its eigenvector's Rayleigh quotient was recomputed at 1/8 of the step (JSON: top_eigenvalue.fd_check): "
    "the loss is not quadratic over the step along the top eigendirection, so the value is not trusted. "
    "Use a smaller --fd-step (1e-5 or 1e-6; float32 round-off grows below about 1e-6) or --method double_backward."
)


def _fd_check_failed(r: dict) -> bool:
    """The finite-difference check of the record's lambda_max disagreed (JSON: ``fd_check``)."""
    check = (r.get("top_eigenvalue") or {}).get("fd_check")
    return bool(check) and not check["ok"]


def hessian_line(r: dict) -> str:
    """One row of ``probe hessian``'s table. lambda_max is the largest algebraic eigenvalue; when
    the eigenvalue of largest magnitude is negative (the JSON's ``largest_magnitude``), it is
    printed beside it with its sign."""
    line = f"{r['label']:>24s}  tr(H) {r['trace']['trace']:.4g} +- {r['trace']['stderr']:.2g}"
    if "top_eigenvalue" in r:
        eig = r["top_eigenvalue"]
        if _fd_check_failed(r):
            check = eig["fd_check"]
            line += (
                f"  lambda_max {eig['value']:.4g} (not converged: {check['value']:.4g} at fd step "
                f"{check['step']:.3g}, {100 * check['rel_diff']:.2g}% apart)"
            )
        else:
            line += f"  lambda_max {eig['value']:.4g}" + ("" if eig["converged"] else " (not converged)")
        dominant = eig.get("largest_magnitude")
        if dominant is not None and dominant < 0:
            line += f"  dominant eigenvalue {dominant:.4g} (negative, largest in magnitude)"
    if r.get("edge_of_stability"):
        line += f"  (2/lr = {r['edge_of_stability']:.4g})"
    return line


@probe.command("noise")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option(
    "--gammas",
    "gammas",
    multiple=True,
    default=[f"{g:g}" for g in paper.NOISE_GAMMAS],
    show_default=True,
    callback=comma_list(float),
    help="Noise magnitudes, comma-separated or repeated ([SAM-PT] App C.3).",
)
@click.option(
    "--seeds",
    "seeds",
    multiple=True,
    default=["0", "1", "2"],
    show_default=True,
    callback=comma_list(int),
    help="Noise seeds, comma-separated or repeated.",
)
@click.option(
    "--include",
    multiple=True,
    default=("*",),
    show_default=True,
    help="Glob of parameter names to perturb (repeatable).",
)
@click.option(
    "--exclude", multiple=True, help="Glob of parameter names to leave alone (repeatable), e.g. 'embeddings.*'."
)
@click.option("--perturb-vectors", is_flag=True, help="Also perturb 1-D parameters (norm gains, biases).")
@_common
def noise_cmd(
    checkpoints,
    gammas,
    seeds,
    include,
    exclude,
    perturb_vectors,
    val_paths,
    labels,
    seq_len,
    batch_size,
    max_sequences,
    device,
    out_dir,
    overwrite,
):
    """L_PT under Gaussian weight noise W + gamma ||W|| Z/||Z|| ([SAM-PT] Eq. 7, Fig 6d)."""
    from .plots import plot_noise
    from .runners import noise_probe

    with _flags("noise"):
        result = noise_probe(
            list(checkpoints),
            list(val_paths),
            gammas=list(gammas),
            seeds=list(seeds),
            include=list(include),
            exclude=list(exclude),
            min_ndim=1 if perturb_vectors else 2,
            labels=list(labels),
            seq_len=seq_len,
            batch_size=batch_size,
            max_sequences=max_sequences,
            device=device,
            out=Path(out_dir) / "noise.json",
            overwrite=overwrite,
        )
    for s in result["summary"]:
        click.echo(noise_line(s))
    _write(out_dir, "noise", result, plot_noise)


@probe.command("hessian")
@click.argument("checkpoints", nargs=-1)
@click.option(
    "--pair",
    "pairs",
    multiple=True,
    nargs=2,
    type=click.Path(exists=True),
    help="BASE FINETUNED checkpoints: directional sharpness and quadratic prediction (repeatable).",
)
@click.option(
    "--n-sequences",
    "n_sequences",
    type=POSITIVE_INT,
    default=8,
    show_default=True,
    help="Validation windows in the fixed Hessian batch.",
)
@click.option(
    "--probes",
    type=POSITIVE_INT,
    default=paper.HUTCHINSON_PROBES,
    show_default=True,
    help="Hutchinson probes ([WSO] App H: 50).",
)
@click.option("--rtol", type=FLOAT, default=None, help="Stop once the standard error is <= rtol * |trace|.")
@click.option(
    "--power-iters",
    type=NON_NEGATIVE_INT,
    default=100,
    show_default=True,
    help="Max power iterations for lambda_max per run (0: skip).",
)
@click.option(
    "--method",
    type=click.Choice(["double_backward", "finite_difference"]),
    default="double_backward",
    show_default=True,
    help="Hessian-vector products: exact double backward, or a finite difference of gradients.",
)
@click.option(
    "--fd-step",
    type=FLOAT,
    default=None,
    help="With --method finite_difference: the relative step (lambda_max is checked again at 1/8 of it) "
    "[default: 1e-3].",
)
@click.option(
    "--seed", type=SEED, default=0, show_default=True, help="Seed of the Hutchinson and power-iteration vectors."
)
@_common
def hessian_cmd(
    checkpoints,
    pairs,
    n_sequences,
    probes,
    rtol,
    power_iters,
    method,
    fd_step,
    seed,
    val_paths,
    labels,
    seq_len,
    batch_size,
    max_sequences,
    device,
    out_dir,
    overwrite,
):
    """tr(H), lambda_max (vs 2/lr) of each CHECKPOINT; directional sharpness and the quadratic
    prediction L_PT(theta_PT) + 1/2 Delta^T H Delta for each --pair ([SAM-PT] Sec 4, [WSO] Sec 6)."""
    from .plots import plot_hessian
    from .runners import hessian_probe

    if not checkpoints and not pairs:
        raise click.UsageError("give CHECKPOINT arguments and/or --pair BASE FINETUNED")
    with _flags("hessian"):
        result = hessian_probe(
            list(checkpoints),
            list(val_paths),
            pairs=[tuple(p) for p in pairs],
            labels=list(labels),
            seq_len=seq_len,
            n_sequences=n_sequences,
            probes=probes,
            rtol=rtol,
            power_iters=power_iters,
            method=method,
            fd_step=fd_step,
            seed=seed,
            val_max_sequences=max_sequences,
            batch_size=batch_size,
            device=device,
            out=Path(out_dir) / "hessian.json",
            overwrite=overwrite,
        )
    for r in result["records"]:
        if "trace" in r:
            click.echo(hessian_line(r))
        else:
            click.echo(
                f"{r['label']:>24s}  kappa {r['directional_sharpness']:.4g}  predicted "
                f"{r['val_predicted']:.4f} observed {r['val_loss_finetuned']:.4f}"
            )
    if any(r.get("edge_of_stability") for r in result["records"]):
        click.echo(EOS_NOTE)
    if any(_fd_check_failed(r) for r in result["records"]):
        click.echo(FD_CHECK_NOTE)
    _write(out_dir, "hessian", result, plot_hessian)
