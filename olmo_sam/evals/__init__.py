"""Evaluation: pretraining-loss evaluation, OLMES, the offline benchmark suite, comparisons."""

from .lm_loss import LossResult, lm_loss
from .records import BenchRecord, write_records
from .results import read_records

# OLMES: olmo_sam.evals.olmes; offline lm-eval suite: olmo_sam.evals.offline (imports lm-eval
# lazily); forgetting tables: olmo_sam.evals.compare; CLI: olmo_sam.evals.cli.
__all__ = ["LossResult", "lm_loss", "BenchRecord", "read_records", "write_records"]
