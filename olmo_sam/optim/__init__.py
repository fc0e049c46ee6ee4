"""Optimizer wrapper (SAM) and schedules; importing this registers them with OLMo-core."""

from .sam import SAM, AscentResult, SAMConfig, SAMScope, SAMVariant
from .schedules import (
    WSO,
    CosineAlpha,
    LinearAlpha,
    Midtrain,
    WSDAlpha,
    check_fits,
    decay_start,
    has_decay_phase,
)

__all__ = [
    "SAM",
    "SAMConfig",
    "SAMScope",
    "SAMVariant",
    "AscentResult",
    "WSO",
    "WSDAlpha",
    "LinearAlpha",
    "CosineAlpha",
    "Midtrain",
    "decay_start",
    "has_decay_phase",
    "check_fits",
]
