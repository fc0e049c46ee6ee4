"""`olmo-sam bench hessian-probe`: cost of one Hutchinson probe (olmo_sam_tools/bench/hessian_probe.py)."""

from olmo_sam_tools.bench.hessian_probe import main

if __name__ == "__main__":
    main()
