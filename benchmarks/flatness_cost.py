"""`olmo-sam bench flatness-cost`: SAM's flatness gain kept per unit of cost (olmo_sam_tools/bench/flatness_cost.py)."""

from olmo_sam_tools.bench.flatness_cost import flatness_cost_command

if __name__ == "__main__":
    flatness_cost_command()
