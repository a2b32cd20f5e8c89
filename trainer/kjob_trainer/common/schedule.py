"""The learning-rate schedule: a pure function of the optimizer step, shared by both loops.

Framework-free. Resuming needs nothing but the step (no scheduler state in a checkpoint),
and the PyTorch loop (which sets the lr before each step) and the MindSpore loop (which
hands the optimizer a table of every step's lr) read the same numbers from `lr_at`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kjob_trainer.common.config import TrainConfig


@dataclass(frozen=True)
class LrSchedule:
    """Linear warm-up from start_factor x base, then cosine to min_lr or step decay.

    `base_lr` is the config's lr already scaled to the global batch (TrainConfig.scaled_lr);
    milestones are in epochs, every other count in optimizer steps."""

    base_lr: float
    total_steps: int
    steps_per_epoch: int
    warmup_steps: int
    kind: str
    milestones: tuple[int, ...]
    gamma: float
    min_lr: float
    start_factor: float

    @classmethod
    def from_config(cls, cfg: TrainConfig, world_size: int, steps_per_epoch: int,
                    total_steps: int | None = None) -> "LrSchedule":
        """The run's schedule; total_steps defaults to epochs x steps_per_epoch (max_steps
        only stops the run early, it does not squeeze the schedule)."""
        total = cfg.epochs * steps_per_epoch if total_steps is None else total_steps
        return cls(cfg.scaled_lr(world_size), total, steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch),
                   cfg.lr_schedule, cfg.lr_milestones, cfg.lr_gamma, cfg.min_lr, cfg.warmup_start_factor)

    def lr_at(self, step: int) -> float:
        """The lr of optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            frac = step / self.warmup_steps
            return self.base_lr * (self.start_factor + (1 - self.start_factor) * frac)
        if self.kind == "step":
            passed = sum(1 for m in self.milestones if step >= m * self.steps_per_epoch)
            return self.base_lr * self.gamma ** passed
        span = max(1, self.total_steps - self.warmup_steps)
        frac = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))

    __call__ = lr_at

    def table(self) -> list[float]:
        """lr_at(s) for every step of the run (what a MindSpore optimizer takes)."""
        return [self.lr_at(s) for s in range(self.total_steps)]
