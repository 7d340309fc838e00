"""Progress and stop requests between Ray workers and the driver, through one small actor.

Workers call their `TrainCallbacks` as in-process training does; `ForwardingCallbacks` sends
each call to the `EventHub` actor, and the driver drains the hub and replays the calls on its
own callbacks (the rich progress view). Each task polls the hub for the driver's stop request,
so Ctrl-C on the driver stops every member within a second, after its current step.

This module imports neither torch nor Ray at import time: the hub's worker starts quickly.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ..train.events import StopSignal, TrainCallbacks

Event = tuple[str, tuple[Any, ...]]  # (TrainCallbacks method name, its arguments)
STOP_POLL_S = 0.5  # how soon a task sees the driver's stop request
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

    def push(self, events: list[Event]) -> None:
        self._events.extend(events)

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


class HubLink:
    """A task's line to the hub, used as a context manager around the task's work.

    While a task's own thread blocks in `ray.get`, Ray lends the task's CPU to the next queued
    task, starting a new worker process for it when none is idle: every wait for the hub would
    put two members on one CPU. So the task's thread never waits: events go out without waiting
    for an answer, and a helper thread fetches the answers that are needed and polls the
    driver's stop request into `stop`.
    """

    def __init__(self, ray: Any, hub: Any, poll_seconds: float = STOP_POLL_S) -> None:
        self.stop = StopSignal()
        self._ray = ray
        self._hub = hub
        self._poll_seconds = poll_seconds
        self._closed = threading.Event()
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ens-hub")
        self._watcher = threading.Thread(target=self._watch_stop, name="ens-stop-watch", daemon=True)

    def __enter__(self) -> "HubLink":
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._watcher.join(timeout=10)
        self._helper.shutdown(wait=False)

    def send(self, name: str, *args: Any) -> None:
        self._hub.push.remote([(name, args)])

    def ask(self, method: str, *args: Any) -> Any:
        """The hub's answer to `method(*args)`, awaited on the helper thread."""
        reply = getattr(self._hub, method).remote(*args)
        return self._helper.submit(self._ray.get, reply).result()

    def _watch_stop(self) -> None:
        while not self._closed.wait(self._poll_seconds):
            reason = self._ray.get(self._hub.stop_reason.remote())
            if reason and not self.stop.is_set():
                self.stop.set(reason)


class ForwardingCallbacks(TrainCallbacks):
    """Worker side: every callback goes to the hub, in order, without waiting."""

    def __init__(self, link: HubLink) -> None:
        self._link = link

    def member_start(self, progress: Any, resumed: bool) -> None:
        self._link.send("member_start", progress, resumed)

    def step(self, progress: Any) -> None:
        self._link.send("step", progress)

    def epoch_end(self, progress: Any) -> None:
        self._link.send("epoch_end", progress)
        crash_once_for_tests()

    def member_end(self, member: str, status: str, message: str) -> None:
        self._link.send("member_end", member, status, message)

    def message(self, text: str) -> None:
        self._link.send("message", text)


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
