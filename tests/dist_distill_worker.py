"""torchrun worker of tests/test_distill_dist.py: one distillation step per mode (heads, features) under DDP on
this rank's half of a fixed batch; rank 0 saves student and EMA weights."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from helpers.training import distill_overrides, fixed_batch, split_batch


def main() -> int:
    from franca.train.checkpoint import prefixed_state_dict
    from franca.train.config import load_config
    from franca.train.loop import Trainer
    from franca.utils import distributed as du

    data_dir, out_file, headed, plain = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    full = fixed_batch(8, 16, 8, 2, 4)
    results = {}
    for mode, teacher in (("heads", headed), ("features", plain)):
        cfg = load_config("tiny", distill_overrides(out_file.parent / mode, data_dir, teacher, mode, batch=4))
        trainer = Trainer(cfg, quiet=True)
        trainer.step(split_batch(full, du.rank(), du.world_size()), 0)
        results[mode] = {
            "student": prefixed_state_dict(trainer.student),
            "teacher": prefixed_state_dict(trainer.teacher),
        }
    if du.is_main():
        torch.save(results, out_file)
    du.barrier()
    du.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
