"""The three probe drivers the CLI and the study pipeline call.

Each takes checkpoints (paths or :class:`~olmo_sam.probes.common.ModelRef`), measures, and
returns a JSON-ready dict; with ``out=PATH`` the dict is also written there (atomically) after
every measurement, and a re-run with the same ``out`` and the same settings skips what is already
recorded (so a killed probe resumes); an ``out`` of other settings is refused unless ``overwrite``.

* :func:`quantize_probe`: L_PT of the 4/8-bit model minus L_PT of the float32 model ([SAM-PT]
  Sec 3.4, Fig 8a).
* :func:`noise_probe`: L_PT under Gaussian weight noise per gamma, mean and std over seeds
  ([SAM-PT] App C.3 Eq. 7, Fig 6d / 8b).
* :func:`hessian_probe`: tr(H) (Hutchinson), lambda_max (power iteration) vs 2/lr, and for
  (base, fine-tuned) pairs the directional sharpness and quadratic prediction ([SAM-PT] Sec 4,
  Figs 10-12; [WSO] Sec 6).
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from olmo_core.exceptions import OLMoConfigurationError
from tqdm.auto import tqdm

from .. import paper
from ..config import Checked, ConfigError, decode, setting
from ..evals.lm_loss import lm_loss
from ..output import differences, logger_at_least, plain, read_json_or_none, write_json
from ..preflight import device_problem
from ..seeds import MAX_SEED
from .common import (
    ModelRef,
    check_val_paths,
    eval_seq_len,
    load_full_precision,
    model_ref,
    model_refs,
)

log = logging.getLogger(__name__)

__all__ = ["quantize_probe", "noise_probe", "hessian_probe", "hutchinson_probe", "check_probe_options"]

Checkpoints = Sequence[Union[str, Path, ModelRef]]


def _refs(checkpoints: Checkpoints, labels: Sequence[str]) -> List[ModelRef]:
    if checkpoints and all(isinstance(c, ModelRef) for c in checkpoints):
        return list(checkpoints)  # type: ignore[arg-type]
    return model_refs([c.path if isinstance(c, ModelRef) else c for c in checkpoints], labels)


class _Results:
    """The result dict of one probe, persisted after each record, resumable by key. A file of
    other settings is refused unless ``overwrite``: it may be hours of measurements. (Other
    checkpoints under the same settings are added beside the ones it holds.)"""

    def __init__(self, probe: str, settings: Dict[str, Any], out: Optional[Path], overwrite: bool = False):
        self.out = Path(out) if out is not None else None
        self.data: Dict[str, Any] = {"probe": probe, "settings": settings, "records": []}
        prev = read_json_or_none(self.out) if self.out is not None else None
        if prev and prev.get("probe") == probe and prev.get("settings") == plain(settings):
            self.data["records"] = list(prev.get("records") or [])
        elif prev and not overwrite:
            old = prev.get("settings") if isinstance(prev.get("settings"), dict) else {}
            changed = [path for path, _, _ in differences(old, plain(settings))] or ["probe"]
            raise OLMoConfigurationError(
                f"{self.out} holds {prev.get('probe', 'other')} results of other settings (changed: {', '.join(changed)}); "
                "pass --overwrite to replace them, or another --out"
            )
        self._done = {r["key"]: r for r in self.data["records"] if "key" in r}

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        return self._done.get(key)

    def add(self, record: Dict[str, Any]) -> Dict[str, Any]:
        self.data["records"].append(record)
        self._done[record["key"]] = record
        self.save()
        return record

    def save(self) -> None:
        if self.out is not None:
            write_json(self.out, self.data)


def _loss(model, ref: ModelRef, val_paths, seq_len, batch_size, max_sequences) -> Tuple[float, int]:
    # LLM.int8 casts fp32 activations to fp16 and logs it on every matmul: once is enough
    with logger_at_least("bitsandbytes.autograd._functions", logging.ERROR):
        r = lm_loss(
            model,
            val_paths,
            seq_len=seq_len,
            vocab_size=ref.vocab_size,
            batch_size=batch_size,
            max_sequences=max_sequences,
        )
    return r.loss, r.tokens


# -------------------------------------------------------------------------------------------------
# Option checks (the probes call them first; the study's plan step calls them before any compute)
# -------------------------------------------------------------------------------------------------


@dataclass
class ProbeOptions(Checked):
    """Options every probe takes (``None``: the probe function's default)."""

    seq_len: Optional[int] = setting(None, ge=1)
    batch_size: Optional[int] = setting(None, ge=1)
    device: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        for f in fields(self):
            if getattr(self, f.name) == []:
                raise ConfigError.at(f.name, "the list is empty; give at least one entry")
        problem = None if self.device is None else device_problem(self.device)
        if problem:
            raise ConfigError.at("device", problem)


@dataclass
class QuantizeOptions(ProbeOptions):
    """:func:`quantize_probe`'s options."""

    #: presets/specs (``nf4``, ``nf4:blocksize=128``), option mappings or QuantConfig objects
    quant: Optional[List[Any]] = None
    max_sequences: Optional[int] = setting(None, ge=1)

    def __post_init__(self):
        super().__post_init__()
        from .quantize import QuantConfig, parse_quant_spec

        for i, q in enumerate(self.quant or []):
            try:
                if isinstance(q, dict):
                    QuantConfig.from_dict(q)
                elif not isinstance(q, QuantConfig):
                    parse_quant_spec(str(q))
            except OLMoConfigurationError as e:
                raise ConfigError.at(f"quant[{i}]", str(e)) from None


@dataclass
class NoiseOptions(ProbeOptions):
    """:func:`noise_probe`'s options."""

    gammas: Optional[List[float]] = setting(None, gt=0)
    seeds: Optional[List[int]] = setting(None, ge=0, le=MAX_SEED)
    include: Optional[List[str]] = None
    exclude: Optional[List[str]] = None
    min_ndim: Optional[int] = setting(None, ge=0)
    max_sequences: Optional[int] = setting(None, ge=1)


def _hvp_methods():
    from .hessian import HVP_METHODS

    return HVP_METHODS


@dataclass
class HessianOptions(ProbeOptions):
    """:func:`hessian_probe`'s options."""

    n_sequences: Optional[int] = setting(None, ge=1)
    probes: Optional[int] = setting(None, ge=1)
    rtol: Optional[float] = setting(None, gt=0)
    power_iters: Optional[int] = setting(None, ge=0)
    method: Optional[str] = setting(None, choices=_hvp_methods)
    #: finite_difference only (its default: 1e-3)
    fd_step: Optional[float] = setting(None, gt=0)
    seed: Optional[int] = setting(None, ge=0, le=MAX_SEED)
    val_max_sequences: Optional[int] = setting(None, ge=1)

    def __post_init__(self):
        super().__post_init__()
        if self.fd_step is not None and self.method != "finite_difference":
            raise ConfigError.at(
                "fd_step", f"applies to method finite_difference (the method here: {self.method or 'double_backward'})"
            )


#: each probe's options (their fields are the probe function's keyword options: a test keeps them equal)
PROBE_OPTIONS = {"quantize": QuantizeOptions, "noise": NoiseOptions, "hessian": HessianOptions}


def check_probe_options(probe: str, options: Dict[str, Any]) -> None:
    """Refuse unknown or bad options of ``probe`` (quantize | noise | hessian). Errors start
    with the option's name (``quant[0]: ...``) so callers can prefix where it came from."""
    if probe not in PROBE_OPTIONS:
        raise OLMoConfigurationError(f"unknown probe {probe!r}; choose one of {sorted(PROBE_OPTIONS)}")
    decode(PROBE_OPTIONS[probe], {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()})


# -------------------------------------------------------------------------------------------------
# Quantization
# -------------------------------------------------------------------------------------------------


def quantize_probe(
    checkpoints: Checkpoints,
    val_paths: Sequence[str | Path],
    *,
    quant: Sequence[Any] = ("nf4", "nf4-dq", "int8"),
    labels: Sequence[str] = (),
    seq_len: Optional[int] = None,
    batch_size: int = 8,
    max_sequences: Optional[int] = None,
    device: str = "cpu",
    out: Optional[str | Path] = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Dict[str, Any]:
    """L_PT of each checkpoint unquantized and under each quantization setting.

    :param quant: presets/specs (``"nf4"``, ``"nf4-dq"``, ``"int8"``, ``"nf4:blocksize=128"``),
        :class:`QuantConfig` objects or option dicts.
    Records: one per (checkpoint, setting) with ``loss``, ``degradation`` (= loss minus the
    unquantized loss) and ``proof`` (:meth:`QuantReport.to_dict`).
    """
    from .quantize import (
        QuantConfig,
        load_hf_quantized,
        parse_quant_spec,
        quant_targets,
        quantize_transformer,
    )

    # (refuses an empty ``quant`` too: every list option of a probe needs an entry)
    check_probe_options("quantize", {"quant": list(quant), "batch_size": batch_size, "max_sequences": max_sequences})
    val_paths = check_val_paths(val_paths)
    cfgs: List[QuantConfig] = []
    for q in quant:
        if isinstance(q, QuantConfig):
            cfgs.append(q)
        elif isinstance(q, dict):
            cfgs.append(QuantConfig.from_dict(q))
        else:
            cfgs.append(parse_quant_spec(str(q)))
    names = [c.name for c in cfgs]
    if len(set(names)) != len(names):
        raise OLMoConfigurationError(f"duplicate quantization settings {names}")
    refs = _refs(checkpoints, labels)
    settings = {
        "val_paths": val_paths,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "max_sequences": max_sequences,
        "quant": [c.to_dict() | {"name": c.name} for c in cfgs],
    }
    res = _Results("quantize", settings, Path(out) if out else None, overwrite)
    bar = tqdm(total=len(refs) * (1 + len(cfgs)), desc="quantize probe", disable=not progress)
    for ref in refs:
        s = eval_seq_len(ref, seq_len)
        base_key = f"{ref.path}|none"
        base = res.get(base_key)
        model = None
        if base is None:
            model = load_full_precision(ref, device)
            for cfg in cfgs:  # refuse a setting this model cannot take before evaluating anything
                if ref.kind == "hf":
                    cfg.to_transformers()
                else:
                    quant_targets(model, cfg)
            loss, ntok = _loss(model, ref, val_paths, s, batch_size, max_sequences)
            base = res.add(
                {
                    **ref.describe(),
                    "key": base_key,
                    "quant": "none",
                    "config": None,
                    "loss": loss,
                    "eval_tokens": ntok,
                    "degradation": 0.0,
                }
            )
        bar.update(1)
        for cfg in cfgs:
            key = f"{ref.path}|{cfg.name}"
            if res.get(key) is None:
                t0 = time.perf_counter()
                if ref.kind == "hf":
                    dev_map = "cpu" if device == "cpu" else {"": device}
                    qmodel, report = load_hf_quantized(ref.path, cfg, device_map=dev_map)
                else:
                    if model is None:
                        model = load_full_precision(ref, device)
                    qmodel = copy.deepcopy(model)
                    report = quantize_transformer(qmodel, cfg)
                loss, ntok = _loss(qmodel, ref, val_paths, s, batch_size, max_sequences)
                del qmodel
                res.add(
                    {
                        **ref.describe(),
                        "key": key,
                        "quant": cfg.name,
                        "config": cfg.to_dict(),
                        "loss": loss,
                        "eval_tokens": ntok,
                        "degradation": loss - base["loss"],
                        "proof": report.to_dict(),
                        "seconds": time.perf_counter() - t0,
                    }
                )
            bar.update(1)
        del model
    bar.close()
    res.save()
    return res.data


# -------------------------------------------------------------------------------------------------
# Gaussian noise
# -------------------------------------------------------------------------------------------------


def noise_probe(
    checkpoints: Checkpoints,
    val_paths: Sequence[str | Path],
    *,
    gammas: Sequence[float] = paper.NOISE_GAMMAS,
    seeds: Sequence[int] = (0, 1, 2),
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    min_ndim: int = 2,
    labels: Sequence[str] = (),
    seq_len: Optional[int] = None,
    batch_size: int = 8,
    max_sequences: Optional[int] = None,
    device: str = "cpu",
    out: Optional[str | Path] = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Dict[str, Any]:
    """L_PT under Eq. 7 noise for each checkpoint, gamma and seed; ``summary`` has the mean and
    sample std over seeds per (checkpoint, gamma), and gamma 0 is the unperturbed loss."""
    from .perturb import perturbed, select_weights

    check_probe_options(
        "noise",
        {
            "gammas": list(gammas),
            "seeds": list(seeds),
            "min_ndim": min_ndim,
            "batch_size": batch_size,
            "max_sequences": max_sequences,
        },
    )
    val_paths = check_val_paths(val_paths)
    refs = _refs(checkpoints, labels)
    settings = {
        "val_paths": val_paths,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "max_sequences": max_sequences,
        "gammas": list(gammas),
        "seeds": list(seeds),
        "include": list(include),
        "exclude": list(exclude),
        "min_ndim": min_ndim,
    }
    res = _Results("noise", settings, Path(out) if out else None, overwrite)
    bar = tqdm(total=len(refs) * (1 + len(gammas) * len(seeds)), desc="noise probe", disable=not progress)
    for ref in refs:
        s = eval_seq_len(ref, seq_len)
        model = load_full_precision(ref, device)
        names = [n for n, _ in select_weights(model, include, exclude, min_ndim)]
        key0 = f"{ref.path}|0"
        if res.get(key0) is None:
            loss, _ = _loss(model, ref, val_paths, s, batch_size, max_sequences)
            res.add({**ref.describe(), "key": key0, "gamma": 0.0, "seed": None, "loss": loss, "perturbed": names})
        bar.update(1)
        for g in gammas:
            for seed in seeds:
                key = f"{ref.path}|{g}|{seed}"
                if res.get(key) is None:
                    with perturbed(model, g, seed, include=include, exclude=exclude, min_ndim=min_ndim):
                        loss, _ = _loss(model, ref, val_paths, s, batch_size, max_sequences)
                    res.add({**ref.describe(), "key": key, "gamma": g, "seed": seed, "loss": loss})
                bar.update(1)
        del model
    bar.close()
    res.data["summary"] = noise_summary(res.data["records"])
    res.save()
    return res.data


def noise_summary(records: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    groups: Dict[Tuple[str, float], List[float]] = {}
    meta: Dict[str, Dict[str, Any]] = {}
    for r in records:
        groups.setdefault((r["label"], float(r["gamma"])), []).append(float(r["loss"]))
        meta.setdefault(r["label"], {k: r.get(k) for k in ("label", "path", "step", "tokens", "lr")})
    out = []
    for (label, g), losses in sorted(groups.items()):
        base = groups.get((label, 0.0), [float("nan")])[0]
        mean = statistics.fmean(losses)
        out.append(
            {
                **meta[label],
                "gamma": g,
                "mean": mean,
                "std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                "n_seeds": len(losses),
                "increase": mean - base,
            }
        )
    return out


# -------------------------------------------------------------------------------------------------
# Hessian
# -------------------------------------------------------------------------------------------------


def _load_for_hvp(ref: ModelRef, device: str):
    """The model with an attention implementation that supports double backward."""
    if ref.kind == "hf":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(ref.path), dtype=torch.float32, attn_implementation="eager")
        return model.to(device).eval()
    from ..checkpoints import load_transformer
    from .hessian import to_hvp_model

    model, info = load_transformer(ref.path, device=device, dtype=torch.float32)
    return to_hvp_model(model, info.model_config)


def hessian_probe(
    checkpoints: Checkpoints,
    val_paths: Sequence[str | Path],
    *,
    pairs: Sequence[Tuple[str | Path, str | Path]] = (),
    labels: Sequence[str] = (),
    seq_len: Optional[int] = None,
    n_sequences: int = 8,
    probes: int = paper.HUTCHINSON_PROBES,
    rtol: Optional[float] = None,
    power_iters: int = 100,
    method: str = "double_backward",
    fd_step: Optional[float] = None,
    seed: int = 0,
    val_max_sequences: Optional[int] = None,
    batch_size: int = 8,
    device: str = "cpu",
    out: Optional[str | Path] = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Dict[str, Any]:
    """Sharpness of each checkpoint on a fixed validation batch (the first ``n_sequences``
    windows): tr(H) by Hutchinson (``probes``, early stop at ``rtol``), lambda_max by
    ``power_iters`` power iterations (0 skips it) with 2/lr for reference; and for each
    ``(base, fine-tuned)`` pair the directional sharpness along ``Delta = theta_FT - theta_PT`` and
    the quadratic prediction of L_PT(theta_FT), on the batch (exact quadratic model) and on the
    full validation files (the paper's Figs 10-11 quantity).
    """
    from .hessian import (
        FD_STEP,
        HessianVectorProduct,
        edge_of_stability,
        fixed_batch,
        hutchinson_trace,
        lm_batch_loss,
        parameter_delta,
        quadratic_prediction,
        top_eigenvalue,
    )

    check_probe_options(
        "hessian",
        {
            "n_sequences": n_sequences,
            "probes": probes,
            "rtol": rtol,
            "method": method,
            "power_iters": power_iters,
            "fd_step": fd_step,
            "batch_size": batch_size,
            "val_max_sequences": val_max_sequences,
        },
    )
    val_paths = check_val_paths(val_paths)
    refs = _refs(checkpoints, labels) if checkpoints else []
    pair_refs = [(model_ref(a), model_ref(b)) for a, b in pairs]
    if not refs and not pair_refs:
        raise OLMoConfigurationError("hessian probe: give checkpoints and/or (base, fine-tuned) pairs")
    settings = {
        "val_paths": val_paths,
        "seq_len": seq_len,
        "n_sequences": n_sequences,
        "probes": probes,
        "rtol": rtol,
        "power_iters": power_iters,
        "method": method,
        "fd_step": fd_step,
        "seed": seed,
        "val_max_sequences": val_max_sequences,
    }
    res = _Results("hessian", settings, Path(out) if out else None, overwrite)
    bar = tqdm(total=len(refs) + len(pair_refs), desc="hessian probe", disable=not progress)

    def operator(model, batch):
        params = [p for p in model.parameters() if p.requires_grad]
        return HessianVectorProduct(
            lambda: lm_batch_loss(model, batch),
            params,
            method=method,
            fd_step=FD_STEP if fd_step is None else fd_step,
            model=model if method == "double_backward" else None,
        )

    for ref in refs:
        key = f"{ref.path}|sharpness"
        if res.get(key) is None:
            s = eval_seq_len(ref, seq_len)
            model = _load_for_hvp(ref, device)
            batch = fixed_batch(val_paths, s, ref.vocab_size, n_sequences, device)
            op = operator(model, batch)
            with torch.no_grad():
                batch_loss = float(lm_batch_loss(model, batch))
            tr = hutchinson_trace(op, n_probes=probes, rtol=rtol, seed=seed, progress=progress)
            rec: Dict[str, Any] = {
                **ref.describe(),
                "key": key,
                "batch_loss": batch_loss,
                "trace": tr.to_dict(),
                "n_params": sum(p.numel() for p in op.params),
            }
            if power_iters > 0:
                eig = top_eigenvalue(op, iters=power_iters, seed=seed, progress=progress)
                rec["top_eigenvalue"] = eig.to_dict()
                if ref.lr:
                    eos = edge_of_stability(ref.lr)
                    rec["edge_of_stability"] = eos
                    rec["lambda_max_over_eos"] = eig.value / eos
            rec["hvp_products"] = op.n_products
            res.add(rec)
            del model
        bar.update(1)

    for base_ref, ft_ref in pair_refs:
        key = f"{base_ref.path}|{ft_ref.path}|quadratic"
        if res.get(key) is None:
            s = eval_seq_len(base_ref, seq_len)
            base = _load_for_hvp(base_ref, device)
            ft = load_full_precision(ft_ref, device)
            batch = fixed_batch(val_paths, s, base_ref.vocab_size, n_sequences, device)
            names = [n for n, p in base.named_parameters() if p.requires_grad]
            delta = parameter_delta(ft, base, names)
            if all(not bool(d.any()) for d in delta):  # (kappa would be 0/0)
                raise OLMoConfigurationError(
                    f"pair {base_ref.path} -> {ft_ref.path}: the two checkpoints hold the same weights, so "
                    "there is no fine-tuning direction; give the base and the model fine-tuned from it"
                )
            with torch.no_grad():
                observed_batch = float(lm_batch_loss(ft, batch))
            op = operator(base, batch)
            q = quadratic_prediction(op, delta, loss_observed=observed_batch)
            val_pt, _ = _loss(base, base_ref, val_paths, s, batch_size, val_max_sequences)
            val_ft, _ = _loss(ft, base_ref, val_paths, s, batch_size, val_max_sequences)
            res.add(
                {
                    "key": key,
                    "label": f"{base_ref.label} -> {ft_ref.label}",
                    "base": base_ref.describe(),
                    "finetuned": ft_ref.describe(),
                    "ft_lr": ft_ref.lr,
                    "batch": q.to_dict(),
                    "directional_sharpness": q.directional_sharpness,
                    "delta_norm": q.delta_sq_norm**0.5,
                    "val_loss_base": val_pt,
                    "val_loss_finetuned": val_ft,
                    "val_predicted": val_pt + q.predicted_increase,
                }
            )
            del base, ft
        bar.update(1)
    bar.close()
    res.save()
    return res.data


#: tr(H) (and lambda_max, directional sharpness) of checkpoints: the same driver.
hutchinson_probe = hessian_probe
