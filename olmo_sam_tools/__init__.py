"""Tooling around the olmo-sam plugin, kept out of ``import olmo_sam``.

* :mod:`olmo_sam_tools.bench` -- ``olmo-sam bench <name>``: benchmarks that print ratios measured
  in one run (also launched by ``benchmarks/*.py``).
* :mod:`olmo_sam_tools.gpucheck` -- ``bash scripts/gpu-check.sh``: the one-shot GPU check.

Both use only the plugin's public modules; nothing in ``olmo_sam`` imports them.
"""
