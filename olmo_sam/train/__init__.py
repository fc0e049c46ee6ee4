"""SAM train module, the annealing-switch callback and the experiment runner."""

from .callbacks import SAMSwitchCallback
from .experiment import (
    MetricsLogCallback,
    RunCanceled,
    build_experiment,
    build_trainer,
    read_metrics,
    run_experiment,
    setup_environment,
)
from .train_module import SAMTrainModuleConfig, SAMTransformerTrainModule

__all__ = [
    "SAMTrainModuleConfig",
    "SAMTransformerTrainModule",
    "SAMSwitchCallback",
    "MetricsLogCallback",
    "build_experiment",
    "build_trainer",
    "run_experiment",
    "RunCanceled",
    "read_metrics",
    "setup_environment",
]
