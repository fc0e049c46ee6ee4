"""The seeds of a run, defined once.

OLMo-core's own defaults (not paper numbers): ``init_seed`` 12536 (``ExperimentConfig``) draws
the initial weights, ``seed`` 34521 (its training scripts' ``NumpyDataLoaderConfig``) orders the
data. A study's pretraining seed ``s`` offsets both (``INIT_SEED + s``, ``DATA_SEED + s``): the
study's plan (:func:`olmo_sam.study.plan.expand_units`) applies that offset, once; recipes, the
fine-tuner and :func:`olmo_sam.train.build_experiment` default to the seed-0 values.
"""

from __future__ import annotations

__all__ = ["INIT_SEED", "DATA_SEED", "MAX_SEED"]

#: model-initialisation seed of pretraining seed 0 (OLMo-core's ``ExperimentConfig.init_seed``)
INIT_SEED = 12536
#: data-order seed of pretraining seed 0 (OLMo-core's training scripts' data-loader seed)
DATA_SEED = 34521
#: the largest seed OLMo-core's ``seed_all`` (NumPy's legacy generator) accepts: seeds are in [0, 2^32 - 1]
MAX_SEED = 2**32 - 1
