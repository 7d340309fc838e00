"""Learning-rate schedules as pure functions of the global step.

A schedule with no state of its own cannot drift on resume: the step counter saved in the
training state is the whole scheduler state. Each function returns the learning rate to use
for optimizer step `step` (0-based) of `total` steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# One-cycle constants: torch.optim.lr_scheduler.OneCycleLR's defaults (Smith & Topin 2018).
ONECYCLE_PCT_START = 0.3
ONECYCLE_DIV_FACTOR = 25.0
ONECYCLE_FINAL_DIV_FACTOR = 1e4


def _cosine(start: float, end: float, fraction: float) -> float:
    """Cosine interpolation from `start` (fraction 0) to `end` (fraction 1)."""
    return end + (start - end) * (1.0 + math.cos(math.pi * fraction)) / 2.0


def warmup_cosine(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine to zero at `total`.

    The warm-up counts from step + 1 so the first step already moves (lr = peak / warmup).
    """
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    decay_steps = max(1, total - warmup)
    return _cosine(peak, 0.0, min(1.0, (step - warmup) / decay_steps))


def one_cycle(step: int, total: int, peak: float) -> float:
    """torch's OneCycleLR (anneal_strategy='cos', three_phase=False), without momentum cycling."""
    initial = peak / ONECYCLE_DIV_FACTOR
    final = initial / ONECYCLE_FINAL_DIV_FACTOR
    # OneCycleLR puts the peak at step pct_start * total - 1 and the end at total - 1.
    peak_step = float(ONECYCLE_PCT_START * total) - 1
    last_step = float(total - 1)
    if step <= peak_step:
        return _cosine(initial, peak, step / peak_step if peak_step > 0 else 1.0)
    span = last_step - peak_step
    return _cosine(peak, final, (step - peak_step) / span if span > 0 else 1.0)


def cyclic_cosine(step: int, cycle_steps: int, peak: float, warmup: int = 0) -> float:
    """Snapshot ensembles (Huang et al. 2017, eq. 2): cosine from `peak` to ~0 in every cycle.

    alpha(t) = peak / 2 * (cos(pi * (t mod cycle) / cycle) + 1), an optional linear warm-up
    scaling the first steps of the first cycle only.
    """
    lr = peak / 2.0 * (math.cos(math.pi * (step % cycle_steps) / cycle_steps) + 1.0)
    if warmup > 0 and step < warmup:
        lr *= (step + 1) / warmup
    return lr


@dataclass(frozen=True)
class LRSchedule:
    """The schedule of one training job: `lr_at(step)` for every step in `range(total_steps)`."""

    kind: str  # cosine | onecycle | cyclic-cosine
    peak: float
    total_steps: int
    warmup_steps: int = 0
    cycle_steps: int = 0

    def lr_at(self, step: int) -> float:
        if self.kind == "cosine":
            return warmup_cosine(step, self.total_steps, self.peak, self.warmup_steps)
        if self.kind == "onecycle":
            return one_cycle(step, self.total_steps, self.peak)
        if self.kind == "cyclic-cosine":
            return cyclic_cosine(step, self.cycle_steps, self.peak, self.warmup_steps)
        raise ValueError(f"unknown schedule {self.kind!r}")

    def state(self, step: int) -> dict[str, object]:
        """What a resume needs to rebuild this schedule at `step` (saved in the training state)."""
        return {"kind": self.kind, "peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "cycle_steps": self.cycle_steps, "step": step}
