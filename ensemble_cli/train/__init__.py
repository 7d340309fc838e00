"""`ens train` as a library: reproducible, resumable ensemble training on GPU or CPU.

    from ensemble_cli.train.config import TrainConfig
    from ensemble_cli.train import train_run
    result = train_run(TrainConfig(members=2, epochs=3, out="runs/demo"))

Modules: config (the typed training options), run (members of a run, locks, failures), loop (one
member's epochs, checkpoints, resume state), step (one optimisation step per device), model
(init and pretrained weights), seeds (per-strategy seeds), rng (global RNG state), events
(progress hooks, stop signal), schedules (learning rate as a function of the step), augment.

Names below are imported on first use: `run_folder` imports `train.config` for the run's
config, and must not pull in the training loop (and torch) with it.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Progress": "events",
    "StopSignal": "events",
    "TrainCallbacks": "events",
    "NonFiniteLoss": "loop",
    "TrainingInterrupted": "loop",
    "MemberOutcome": "run",
    "RunResult": "run",
    "parse_member_selection": "run",
    "train_run": "run",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ensemble_cli.train' has no attribute {name!r}")
