"""The torchrun worker of tests/test_train_dist.py (`torchrun --nproc-per-node=2 tests/dist_train_worker.py DATA_DIR
OUT_FILE`): every rank builds the same tiny trainer, the same full collated batch, takes its half and runs one
training step, once with DDP and once with FSDP2; rank 0 saves the student and teacher weights after each.
Its helpers are in tests/helpers/training.py."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from helpers.training import DIST_EXTRA, fixed_batch, split_batch, tiny_overrides


def main() -> int:
    from franca.train.checkpoint import prefixed_state_dict
    from franca.train.config import load_config
    from franca.train.loop import Trainer
    from franca.utils import distributed as du

    data_dir, out_file = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = load_config("tiny", tiny_overrides(out_file.parent / "run", data_dir, iterations=1, batch=4) + DIST_EXTRA)
    full = fixed_batch(8, 16, 8, 2, 4)
    results = {}
    for name in ("ddp", "fsdp", "fsdp+ac"):  # fsdp+ac: FSDP2 with model.activation_checkpointing
        parallel = name.split("+")[0]
        cfg.train.parallel = parallel
        cfg.model.activation_checkpointing = name.endswith("+ac")
        trainer = Trainer(cfg, quiet=True)
        trainer.step(split_batch(full, du.rank(), du.world_size()), 0)
        # full tensors on every rank (FSDP2 shards are gathered: a collective)
        student = {k: v for k, v in prefixed_state_dict(trainer.student).items()}
        teacher = {k: v for k, v in prefixed_state_dict(trainer.teacher).items()}
        results[name] = {"student": student, "teacher": teacher}
    if du.is_main():
        torch.save(results, out_file)
    du.barrier()
    du.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
