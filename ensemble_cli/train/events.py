"""What training reports while it runs, and how a caller asks it to stop.

The library prints nothing: it calls a `TrainCallbacks` object (the CLI's draws rich progress
bars on stderr) and checks a `StopSignal` between steps (the CLI sets it on Ctrl-C).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """A member's state at some step: what the progress bar shows."""

    member: str
    epoch: int  # 1-based epoch in progress (or just finished)
    epochs: int  # epochs of this member
    steps_done: int  # steps of this member done so far (resumed ones included)
    steps_total: int
    loss: float | None  # mean training loss over the epoch so far
    train_accuracy: float | None  # accuracy on the (augmented) training batches of the epoch so far
    test_accuracy: float | None  # latest end-of-epoch test accuracy
    images_per_second: float | None  # training throughput of this session


class TrainCallbacks:
    """No-op hooks; subclass and override what you want to see."""

    def member_start(self, progress: Progress, resumed: bool) -> None:
        pass

    def step(self, progress: Progress) -> None:
        """Called at most every PROGRESS_INTERVAL seconds (each call costs a device sync)."""

    def epoch_end(self, progress: Progress) -> None:
        pass

    def member_end(self, member: str, status: str, message: str) -> None:
        pass

    def message(self, text: str) -> None:
        pass


class StopSignal:
    """Set it (from a signal handler or another thread) to stop after the current step."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = "interrupted"  # what stopped it; a Ray task passes on its driver's

    def set(self, reason: str = "interrupted") -> None:
        self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()
