"""``olmo-sam bench <name>``: the project's benchmarks, one module each, all in this package.

=================  =====================================================================
``sam-overhead``   SAM vs AdamW step time, annealing-switch run time, extra memory
                   (:mod:`.sam_overhead`)
``hessian-probe``  cost of one Hutchinson probe vs one forward+backward (:mod:`.hessian_probe`)
``cfs-generation`` tokens/s of context-free generation, vLLM vs transformers
                   (:mod:`.cfs_generation`)
``flatness-cost``  how much of SAM's flatness gain each cheaper variant keeps, per unit of
                   cost (:mod:`.flatness_cost`)
``finetune-        a fine-tuning LR sweep checkpointed vs in memory vs batched, against pure
throughput``       training (:mod:`.finetune_throughput`)
=================  =====================================================================

``benchmarks/*.py`` are launchers of these modules for a source checkout.
"""

from __future__ import annotations

import click

from . import cfs_generation, finetune_throughput, flatness_cost, hessian_probe, sam_overhead

__all__ = ["bench"]

_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@click.group()
def bench():
    """Benchmarks that print ratios measured in one run.

    \b
    Example:
      olmo-sam bench sam-overhead --steps 30 --json
      olmo-sam bench flatness-cost --n-seeds 3 --tokens-per-param 100
    """


bench.add_command(sam_overhead.sam_overhead_command, "sam-overhead")
bench.add_command(flatness_cost.flatness_cost_command, "flatness-cost")
bench.add_command(finetune_throughput.finetune_throughput_command, "finetune-throughput")


@bench.command("hessian-probe", context_settings=_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def hessian_probe_command(args):
    """Cost of one Hutchinson probe vs one forward+backward (options: --help)."""
    hessian_probe.main(list(args))


@bench.command("cfs-generation", context_settings=_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def cfs_generation_command(args):
    """Tokens/s of context-free generation, vLLM vs transformers (options: --help)."""
    raise SystemExit(cfs_generation.main(list(args)))
