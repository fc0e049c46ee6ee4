"""`olmo-sam bench sam-overhead` (also under torchrun: `torchrun --nproc-per-node 2 benchmarks/sam_overhead.py --dp fsdp`)."""

from olmo_sam_tools.bench.sam_overhead import sam_overhead_command

if __name__ == "__main__":
    sam_overhead_command()
