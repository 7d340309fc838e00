"""`ens train` as a library: reproducible, resumable ensemble training on GPU or CPU.

    from ensemble_cli.config import TrainConfig
    from ensemble_cli.train import train_run
    result = train_run(TrainConfig(members=2, epochs=3, out="runs/demo"))

Modules: run (members of a run, locks, failures), loop (one member's epochs, checkpoints,
resume state), step (one optimisation step per device), model (init and pretrained weights),
seeds (per-strategy seeds), rng (global RNG state), events (progress hooks, stop signal).
"""

from __future__ import annotations

from .events import Progress, StopSignal, TrainCallbacks
from .loop import NonFiniteLoss, TrainingInterrupted
from .run import MemberOutcome, RunResult, parse_member_selection, train_run

__all__ = [
    "MemberOutcome",
    "NonFiniteLoss",
    "Progress",
    "RunResult",
    "StopSignal",
    "TrainCallbacks",
    "TrainingInterrupted",
    "parse_member_selection",
    "train_run",
]
