"""Run an experiment config (YAML) with olmo-sam; optionally SIGKILL itself at a step.

Used by the resume and distributed tests:
    python train_worker.py CONFIG.yaml [CONFIG.yaml ...] [--kill-before-step N] [--override k=v]
    torchrun --nproc-per-node 2 train_worker.py A.yaml B.yaml   (runs them one after another)
"""

import argparse
import os
import signal
import sys
from dataclasses import dataclass

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("configs", nargs="+")
    p.add_argument("--kill-before-step", type=int, default=None)
    p.add_argument("--override", action="append", default=[])
    args = p.parse_args()

    for path in args.configs:
        run_one(path, args)
    from olmo_core.train import teardown_training_environment

    teardown_training_environment()


def run_one(path, args):
    from olmo_core.script_utils import ExperimentConfig
    from olmo_core.train.callbacks import Callback

    from olmo_sam.files import load_config
    from olmo_sam.train import build_trainer

    cfg = load_config(ExperimentConfig, path, overrides=args.override or None)
    trainer = build_trainer(cfg)

    if args.kill_before_step is not None:

        @dataclass
        class KillSwitch(Callback):
            at: int = 0

            def pre_step(self, batch):
                if self.step >= self.at:
                    # the previous step is complete: checkpointed and its metrics flushed
                    os.kill(os.getpid(), signal.SIGKILL)

        trainer.add_callback("kill_switch", KillSwitch(at=args.kill_before_step))
    trainer.fit()
    # OLMo-core keeps one world mesh per process; the next experiment of this launch builds anew
    import olmo_core.distributed.parallel as parallel

    parallel._WORLD_MESH = None


if __name__ == "__main__":
    sys.exit(main())
