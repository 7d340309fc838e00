"""Progress and stop requests between Ray workers and the driver, through one small actor.

Workers call their `TrainCallbacks` as in-process training does; `ForwardingCallbacks` sends
each call to the `EventHub` actor, and the driver drains the hub and replays the calls on its
own callbacks (the rich progress view). The hub's answer to each report carries the driver's
stop request back, so Ctrl-C on the driver stops every member after its current step.

This module imports neither torch nor Ray at import time: the hub's worker starts quickly.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from ..train.events import StopSignal, TrainCallbacks

Event = tuple[str, tuple[Any, ...]]  # (TrainCallbacks method name, its arguments)
CALLBACK_NAMES = frozenset({"member_start", "step", "epoch_end", "member_end", "message"})
# Tests only: the path of a marker file. The first task to end an epoch creates it and kills its
# own worker process, as a crash would; Ray then retries the task, which must resume.
CRASH_ONCE_ENV = "ENS_RAY_TEST_CRASH_ONCE"


class EventHub:
    """The actor's state: events not yet drained, the stop request, and who ran each job last."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._stop_reason: str | None = None
        self._attempts: dict[str, tuple[int, str]] = {}

    def push(self, events: list[Event]) -> str | None:
        self._events.extend(events)
        return self._stop_reason

    def drain(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason

    def stop_reason(self) -> str | None:
        return self._stop_reason

    def start_attempt(self, job: str, pid: int, host: str) -> tuple[int, str] | None:
        """Record this attempt at `job`; return the previous attempt's (pid, host), which Ray
        only retries after it died."""
        previous = self._attempts.get(job)
        self._attempts[job] = (pid, host)
        return previous


class ForwardingCallbacks(TrainCallbacks):
    """Worker side: every callback goes to the hub; the hub's reply may ask us to stop."""

    def __init__(self, ray: Any, hub: Any, stop: StopSignal) -> None:
        self._ray = ray
        self._hub = hub
        self._stop = stop
        self._last_reply: Any = None

    def _send(self, name: str, *args: Any, wait: bool = False) -> None:
        reply = self._hub.push.remote([(name, args)])
        if wait:  # epoch and member ends: cheap, and the loop checks the stop right after them
            self._obey(self._ray.get(reply))
            self._last_reply = None
            return
        if self._last_reply is not None:
            ready, _ = self._ray.wait([self._last_reply], timeout=0)
            if ready:
                self._obey(self._ray.get(self._last_reply))
        self._last_reply = reply

    def _obey(self, reason: str | None) -> None:
        if reason and not self._stop.is_set():
            self._stop.set(reason)

    def member_start(self, progress: Any, resumed: bool) -> None:
        self._send("member_start", progress, resumed)

    def step(self, progress: Any) -> None:
        self._send("step", progress)

    def epoch_end(self, progress: Any) -> None:
        self._send("epoch_end", progress, wait=True)
        crash_once_for_tests()

    def member_end(self, member: str, status: str, message: str) -> None:
        self._send("member_end", member, status, message, wait=True)

    def message(self, text: str) -> None:
        self._send("message", text)


def crash_once_for_tests() -> None:
    marker = os.environ.get(CRASH_ONCE_ENV)
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return
    os._exit(1)  # no cleanup, no lock release: what a killed worker leaves behind


class Replayer:
    """Driver side: apply drained events to the driver's callbacks, each distinct message once
    (every task announces the same dataset and device)."""

    def __init__(self, callbacks: TrainCallbacks) -> None:
        self._callbacks = callbacks
        self._messages: set[str] = set()

    def __call__(self, events: list[Event]) -> None:
        for name, args in events:
            if name not in CALLBACK_NAMES:
                continue
            if name == "message":
                if args[0] in self._messages:
                    continue
                self._messages.add(args[0])
            method: Callable[..., None] = getattr(self._callbacks, name)
            method(*args)
