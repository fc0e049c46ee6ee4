"""One fine-tuning run exactly as ``python -m olmo_sam.finetune.worker WORKER_JSON`` runs it, but
SIGKILLed just before step N (the steps before it are complete and checkpointed):

    python ft_kill_worker.py WORKER_JSON --kill-before-step N
"""

import argparse
import os
import signal
import sys
from dataclasses import dataclass

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("worker_json")
    p.add_argument("--kill-before-step", type=int, required=True)
    args = p.parse_args()

    from olmo_core.train.callbacks import Callback

    import olmo_sam.finetune.engine as engine
    from olmo_sam.finetune import worker

    @dataclass
    class KillSwitch(Callback):
        at: int = 0

        def pre_step(self, batch):
            if self.step >= self.at:
                os.kill(os.getpid(), signal.SIGKILL)

    build = engine.build_ft_experiment

    def build_with_kill_switch(*a, **kw):
        exp = build(*a, **kw)
        exp.trainer.callbacks["kill_switch"] = KillSwitch(at=args.kill_before_step)
        return exp

    engine.build_ft_experiment = build_with_kill_switch
    return worker.main([args.worker_json])


if __name__ == "__main__":
    sys.exit(main())
