"""Learning-rate schedules of every method: :func:`with_schedule` gives one optimiser or several
(a generator and a critic) a per-step schedule: ``"cosine"`` over the run's steps
(:class:`CosineSchedule`, which a resumed run with a larger ``max_steps`` extends), ``"cosine-time"``
over the time budget ``max_time``, or ``"none"``."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Union

import torch
from lightning.pytorch.callbacks import Timer

__all__ = ["SCHEDULERS", "CosineSchedule", "cosine_factor", "with_schedule"]

SCHEDULERS = ("cosine", "cosine-time", "none")


def cosine_factor(fraction: float) -> float:
    """The cosine annealing factor at ``fraction`` of the way (1 at the start, 0 at and after the end)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, fraction)))


class CosineSchedule(torch.optim.lr_scheduler.LambdaLR):
    """The learning rate annealed to 0 by a cosine over ``total`` steps (flat at 0 after them).

    ``total`` is the run's, not the checkpoint's: a run resumed with a larger ``max_steps`` follows
    the cosine over the new total from the step it resumes at (the rate rises once, to that longer
    curve's value, then anneals to 0 at the new end), instead of climbing the old cosine's next
    period. Checkpoints hold only the step (and those of ``CosineAnnealingLR`` before it load too)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total: int):
        self.total = max(1, int(total))
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        return cosine_factor(step / self.total)

    def state_dict(self) -> Dict[str, Any]:
        return {key: value for key, value in super().state_dict().items() if key not in ("total", "lr_lambdas")}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        kept = {key: value for key, value in state_dict.items() if key not in ("total", "T_max", "eta_min")}
        kept["lr_lambdas"] = [None] * len(self.lr_lambdas)
        super().load_state_dict(kept)
        # the restored optimiser holds the old schedule's rate: continue on this run's curve at once
        rates = [base * self.factor(self.last_epoch) for base in self.base_lrs]
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["lr"] = rate
        self._last_lr = rates


def with_schedule(optimizers: Union[torch.optim.Optimizer, Sequence[torch.optim.Optimizer]], scheduler: str, trainer,
                  steps: Optional[Sequence[int]] = None) -> Any:
    """Optimiser(s) with a per-step learning-rate schedule, in the form ``configure_optimizers`` returns.

    ``"none"``: the optimiser(s) alone; ``"cosine"``: each annealed to 0 over its number of steps
    (``steps``, one per optimiser; default: the run's ``estimated_stepping_batches``);
    ``"cosine-time"``: each annealed to 0 over the training-time budget ``max_time``, whatever the
    speed. One optimiser gives ``{"optimizer", "lr_scheduler"}``, several ``([optimizers], [schedulers])``.
    """
    if scheduler == "none":
        return optimizers
    single = isinstance(optimizers, torch.optim.Optimizer)
    optimizer_list = [optimizers] if single else list(optimizers)
    if scheduler == "cosine-time":
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is None or timer.time_remaining("train") is None:
            raise ValueError("scheduler 'cosine-time' anneals over the time budget: set trainer.max_time")

        def factor(_step: int) -> float:
            elapsed, remaining = timer.time_elapsed("train"), timer.time_remaining("train")
            return cosine_factor(elapsed / max(elapsed + remaining, 1e-9))

        schedules = [torch.optim.lr_scheduler.LambdaLR(optimizer, factor) for optimizer in optimizer_list]
    else:
        if steps is None:
            steps = [max(1, trainer.estimated_stepping_batches)] * len(optimizer_list)
        schedules = [CosineSchedule(optimizer, count) for optimizer, count in zip(optimizer_list, steps)]
    configs = [{"scheduler": schedule, "interval": "step"} for schedule in schedules]
    if single:
        return {"optimizer": optimizers, "lr_scheduler": configs[0]}
    return optimizer_list, configs
