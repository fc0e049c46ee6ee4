"""Cost of one Hutchinson probe relative to one forward+backward pass, measured in one run.

    OMP_NUM_THREADS=1 olmo-sam bench hessian-probe [--size tiny] [--batch-size 8] [--seq-len 128] [--json]

A probe ``v^T H v`` by double backward needs the gradient graph (``create_graph=True``: one
forward+backward) and one more backward through it. :func:`hutchinson_trace` builds that graph once
and reuses it for all its probes (``reuse_graph``, same peak memory), so the per-probe cost in a
run of ``--probes`` probes (default: the paper's 50) is about one double-backward pass; that is the
headline ratio (target <= 2.5). Also printed: a cold probe (graph rebuilt for every product) and a
finite-difference probe (two gradient evaluations). Timings interleave the variants and take the
minimum over ``--repeats`` rounds of the process CPU time (``--clock wall`` for wall time; with
one thread CPU time is the compute time even on a shared machine); weights are random (the cost does
not depend on their values).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from olmo_sam import paper
from olmo_sam.models import model_config
from olmo_sam.probes.hessian import (
    HessianVectorProduct,
    dot,
    double_backward_attention,
    hutchinson_trace,
    lm_batch_loss,
    rademacher_like,
)


def _timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn()``; with one thread the process CPU time is the compute time
    even when other jobs share the cores."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        prog="olmo-sam bench hessian-probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--size", default="tiny", help="Model size (olmo_sam.models; default: tiny).")
    ap.add_argument("--vocab", type=int, default=256, help="Vocabulary size of the random model (default: 256).")
    ap.add_argument("--batch-size", dest="batch", type=int, default=8, help="Sequences per batch (default: 8).")
    ap.add_argument("--seq-len", type=int, default=128, help="Tokens per sequence (default: 128).")
    ap.add_argument("--repeats", type=int, default=5, help="Timed rounds; the minimum is kept (default: 5).")
    ap.add_argument(
        "--probes", type=int, default=paper.HUTCHINSON_PROBES, help="Hutchinson probes per estimate (default: 50)."
    )
    ap.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="Ratios from process CPU time (default; robust on a shared machine with 1 thread) or wall time.",
    )
    ap.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)

    model = model_config(args.size, vocab_size=args.vocab).build(init_device="cpu")
    model.init_weights(max_seq_len=args.seq_len, device=torch.device("cpu"))
    model.eval()
    params = [p for p in model.parameters()]
    batch = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1))
    gen = torch.Generator().manual_seed(0)
    v = rademacher_like(params, gen)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        lm_batch_loss(model, batch).backward()

    def fwd_bwd_math():
        with double_backward_attention():
            fwd_bwd()

    loss_fn = lambda: lm_batch_loss(model, batch)  # noqa: E731
    cold = HessianVectorProduct(loss_fn, params, model=model, reuse_graph=False)
    warm = HessianVectorProduct(loss_fn, params, model=model)
    fd = HessianVectorProduct(loss_fn, params, method="finite_difference")
    variants = {
        "forward_backward": fwd_bwd,
        "forward_backward_math_sdpa": fwd_bwd_math,
        "probe_cold": lambda: dot(v, cold(v)),
        "hutchinson_run": lambda: hutchinson_trace(warm, n_probes=args.probes, seed=0),
        "probe_finite_difference": lambda: dot(v, fd(v)),
    }
    for fn in variants.values():  # warm-up
        fn()
    wall = {k: float("inf") for k in variants}
    cpu = dict(wall)
    for _ in range(args.repeats):
        for k, fn in variants.items():
            w, c = _timed(fn)
            wall[k], cpu[k] = min(wall[k], w), min(cpu[k], c)
    model.zero_grad(set_to_none=True)
    clock = wall if args.clock == "wall" else cpu
    t_fb = clock["forward_backward"]
    t_probe = clock["hutchinson_run"] / args.probes
    t_cold, t_fd = clock["probe_cold"], clock["probe_finite_difference"]
    best = clock

    result = {
        "model": args.size,
        "params": sum(p.numel() for p in params),
        "batch": [args.batch, args.seq_len],
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "wall_s": wall,
        "cpu_s": cpu,
        "probes_per_run": args.probes,
        "forward_backward_s": t_fb,
        "forward_backward_math_sdpa_s": best["forward_backward_math_sdpa"],
        "probe_s": t_probe,
        "probe_cold_s": t_cold,
        "probe_finite_difference_s": t_fd,
        "ratio": t_probe / t_fb,
        "ratio_cold": t_cold / t_fb,
        "ratio_finite_difference": t_fd / t_fb,
        "target_ratio": 2.5,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"model {args.size} ({result['params']:,d} params), batch {args.batch}x{args.seq_len}, "
        f"{result['threads']} thread(s), {args.clock} time, best of {args.repeats}"
    )
    print(
        f"forward+backward                  {1e3 * t_fb:8.2f} ms  (MATH SDPA kernel: {1e3 * best['forward_backward_math_sdpa']:.2f} ms)"
    )
    print(
        f"probe in a {args.probes}-probe Hutchinson run  {1e3 * t_probe:8.2f} ms  ratio {t_probe / t_fb:.2f}  (target <= 2.5)"
    )
    print(f"cold probe (graph rebuilt)        {1e3 * t_cold:8.2f} ms  ratio {t_cold / t_fb:.2f}")
    print(f"finite-difference probe           {1e3 * t_fd:8.2f} ms  ratio {t_fd / t_fb:.2f}")


if __name__ == "__main__":
    main()
