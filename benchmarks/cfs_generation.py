"""`olmo-sam bench cfs-generation`: vLLM vs transformers tokens/s (olmo_sam_tools/bench/cfs_generation.py)."""

from olmo_sam_tools.bench.cfs_generation import main

if __name__ == "__main__":
    raise SystemExit(main())
