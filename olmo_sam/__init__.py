"""olmo-sam: sharpness-aware pretraining for OLMo-core.

``import olmo_sam`` registers, in OLMo-core's own registries:

* optimizer type ``sam`` (:class:`olmo_sam.optim.SAMConfig`),
* schedulers ``wso``, ``wsd_alpha``, ``linear_alpha``, ``cosine_alpha``, ``midtrain``,

and makes the SAM train module (:class:`olmo_sam.train.SAMTrainModuleConfig`) and the AdamW->SAM
annealing switch (:class:`olmo_sam.train.SAMSwitchCallback`) importable for configs
(OLMo-core callbacks have no registry; they round-trip through their ``_CLASS_`` field).
Import it before decoding a config that uses them.
"""

import logging as _logging


class _NoticeAtDebugLevel(_logging.Filter):
    """Re-level one notice of a library's logger to DEBUG: it passes only where that logger has
    debug logging on (a record re-levelled but passed on would still reach a handler of level
    NOTSET, as OLMo-core's own log set-up installs); every other record keeps its level."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: _logging.LogRecord) -> bool:
        if record.levelno <= _logging.WARNING and self.text in record.getMessage():
            record.levelno, record.levelname = _logging.DEBUG, "DEBUG"
            return _logging.getLogger(record.name).isEnabledFor(_logging.DEBUG)
        return True


# OLMo-core warns "transformer_engine unavailable" at import on every machine without TE (all CPU
# machines); olmo-sam never uses TE attention, so that line is debug information, not a warning.
_logging.getLogger("olmo_core.nn.attention.te_attn_api").addFilter(
    _NoticeAtDebugLevel("transformer_engine unavailable")
)
# bitsandbytes, imported on a CPU with AVX512-BF16, warns that it cannot fetch an optional faster
# 4-bit kernel (the `kernels` package downloads it from the Hugging Face hub); its own CPU kernels
# run the 4-bit layers, so that line is debug information too.
_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    _NoticeAtDebugLevel("Failed to load CPU gemm_4bit_forward from kernels-community")
)


def _refuse_the_patched_fork() -> None:
    """An OLMo-core carrying olmo-sam's fork patch (``olmo_core.sam``) registers ``sam`` and the
    schedules itself; registering the plugin's classes over them would leave the fork's train module
    with a SAM class that is not its own."""
    import importlib.util

    if importlib.util.find_spec("olmo_core.sam") is not None:
        raise ImportError(
            "this OLMo-core carries olmo-sam's fork patch (olmo_core.sam), which registers 'sam' and the "
            "schedules itself: use it without the olmo-sam plugin, or the plugin with an unpatched OLMo-core"
        )


_refuse_the_patched_fork()

from . import optim as optim  # noqa: E402, F401  (registers 'sam' and the schedules)
from . import train as train  # noqa: E402, F401

__version__ = "0.1.0"
