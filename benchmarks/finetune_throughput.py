"""`olmo-sam bench finetune-throughput`: a fine-tuning LR sweep checkpointed vs in memory vs batched."""

from olmo_sam_tools.bench.finetune_throughput import finetune_throughput_command

if __name__ == "__main__":
    finetune_throughput_command()
