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


class _TENoticeAtDebugLevel(_logging.Filter):
    """Re-level OLMo-core's "transformer_engine unavailable" notice to DEBUG (shown only where debug
    logging is on); every other record of its logger keeps its level."""

    def filter(self, record: _logging.LogRecord) -> bool:
        if record.levelno <= _logging.WARNING and "transformer_engine unavailable" in record.getMessage():
            record.levelno, record.levelname = _logging.DEBUG, "DEBUG"
        return True


# OLMo-core warns "transformer_engine unavailable" at import on every machine without TE (all CPU
# machines); olmo-sam never uses TE attention, so that line is debug information, not a warning.
_logging.getLogger("olmo_core.nn.attention.te_attn_api").addFilter(_TENoticeAtDebugLevel())


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
