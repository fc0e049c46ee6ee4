"""A synthetic fine-tuning sweep for the analysis tests (no training: a closed-form LR response).

For base checkpoint c and learning rate lr (x = log10(lr) + 6 in [0, 4]):

    L_FT = ft0 + 1.5 * exp(-x)                       (more LR -> more learning)
    L_PT = base_l_pt(c) + sens(c) * 0.02 * exp(x)    (more LR -> more forgetting)

plus optional noise, so a sweep traces a frontier. Arms differ in ``sens``; an arm's later
checkpoints have a lower base PT loss and (for AdamW) a higher sensitivity, as in Fig 4/5.
"""

from __future__ import annotations

import math
import random
from typing import Iterable, List, Sequence

from olmo_sam.finetune.records import FTRecord, ResultStore

DATASETS = {"code": 1.2, "math": 0.9}
#: arm -> [(checkpoint name, base PT loss, forgetting sensitivity)]
ARMS = {
    "adamw": [("step1000", 3.60, 0.8), ("step2000", 3.50, 1.0), ("step4000", 3.43, 1.4)],
    "sam": [("step1000", 3.62, 0.4), ("step2000", 3.52, 0.35), ("step4000", 3.45, 0.3)],
}
LRS = (1e-6, 4e-6, 1e-5, 4e-5, 1e-4, 2e-4, 4e-4, 1e-3, 2e-3, 4e-3, 1e-2)


def record(
    run_id, l_pt, l_ft, *, base="b", label=None, dataset="d", method="ft", lr=1e-4, base_l_pt=3.0, **kw
) -> FTRecord:
    return FTRecord(
        run_id=run_id,
        base=base,
        base_label=base if label is None else label,
        dataset=dataset,
        method=method,
        lr=lr,
        l_ft=l_ft,
        l_pt=l_pt,
        base_l_pt=base_l_pt,
        **kw,
    )


def sweep(
    arms=ARMS, datasets=DATASETS, lrs: Sequence[float] = LRS, noise: float = 0.0, seed: int = 0
) -> List[FTRecord]:
    rng = random.Random(seed)
    out = []
    for arm, ckpts in arms.items():
        for name, base_pt, sens in ckpts:
            for ds, ft0 in datasets.items():
                for lr in lrs:
                    x = math.log10(lr) + 6
                    out.append(
                        record(
                            f"{arm}-{name}-{ds}-{lr:g}",
                            base_pt + sens * 0.02 * math.exp(x) + noise * rng.random(),
                            ft0 + 1.5 * math.exp(-x) + noise * rng.random(),
                            base=f"/ckpts/{arm}/{name}",
                            label=arm,
                            dataset=ds,
                            lr=lr,
                            base_l_pt=base_pt,
                        )
                    )
    return out


def write_store(path, records: Iterable[FTRecord]) -> ResultStore:
    store = ResultStore(path)
    store.extend(records)
    return store
