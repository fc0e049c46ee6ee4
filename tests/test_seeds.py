"""The pretraining seed reaches the initial weights (OLMo-core takes them from the model config's
own ``init_seed``, not the experiment's): different seeds start from different weights, the same
seed from the same ones."""

from __future__ import annotations

import torch
from helpers import adamw, tiny_experiment


def _initial_weights(corpus, folder, seed):
    from olmo_sam.train import build_experiment  # noqa: F401  (registers the plugin)

    cfg = tiny_experiment(corpus, folder, adamw(), seed=seed)
    assert cfg.model.init_seed == seed
    model = cfg.model.build(init_device="cpu")
    model.init_weights(device=torch.device("cpu"))
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_seed_sets_the_initial_weights(tiny_corpus, tmp_path):
    a = _initial_weights(tiny_corpus, tmp_path / "a", 1)
    a2 = _initial_weights(tiny_corpus, tmp_path / "a2", 1)
    b = _initial_weights(tiny_corpus, tmp_path / "b", 2)
    assert all(torch.equal(a[n], a2[n]) for n in a)
    differing = [n for n in a if a[n].numel() > 1 and a[n].std() > 0 and not torch.equal(a[n], b[n])]
    assert "embeddings.weight" in differing, differing
    assert len(differing) >= len(a) // 2, (len(differing), len(a))


def test_a_study_seed_reaches_the_model_init_once():
    """Pretraining seed s of a study initialises the model with 12536 + s and orders the data with
    34521 + s (the values before the seeds were defined in one place): the offset is applied once,
    by the plan, and arrives unchanged in OLMo-core's model and data-loader configs."""
    from olmo_sam.study.plan import build_plan
    from olmo_sam.study.spec import parse_study
    from olmo_sam.study.stages.pretrain import build_run, run_spec

    study = {
        "name": "seeds",
        "data": {"demo": {"vocab_size": 384}},
        "pretrain": {"size": "micro", "lr": 3e-3, "seeds": [0, 1, 2], "steps": 2},
        "arms": [{"name": "adamw", "optimizer": "adamw"}, {"name": "sam", "optimizer": "sam", "rho": 0.01}],
    }
    data = {
        "train": ["train.npy"],
        "val": ["val.npy"],
        "tokenizer": {"vocab_size": 384, "eos_token_id": 0, "pad_token_id": 1},
    }
    jobs = [j for j in build_plan(parse_study(study)).jobs if j.stage == "pretrain"]
    assert len(jobs) == 6
    for job in jobs:
        s = job.params["seed"]
        cfg, _ = build_run(job, run_spec(job, data, "run", check_paths=False))
        assert (cfg.model.init_seed, cfg.init_seed, cfg.data_loader.seed) == (12536 + s, 12536 + s, 34521 + s)
