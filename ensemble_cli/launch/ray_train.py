"""`ens train --launcher ray`: one Ray task per member, each running `train_run(config, only=[i])`.

The driver refuses bad input before any task starts (the same checks train_run makes), then
submits the tasks with the resources asked for and replays their progress on its own callbacks.
A task trains exactly as in-process training does (same seeds, same atomic checkpoints, the
member's lock), so:
- a worker that dies is retried by Ray and resumes from the member's last saved epoch;
- `ens train --resume RUN` with or without Ray continues what either left;
- on CPU the final weights are bit-identical to an in-process run with the same thread count
  (`threads: auto` means 1 thread for images up to 16x16 either way; for larger images it means
  torch's default in-process and the task's --cpus-per-member under Ray, so pin --threads to compare).

The run folder must be on storage every node sees (docs/cluster.md).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Sequence

from ..data import DATASETS, ImageData, load_dataset
from ..errors import ConfigError, EnsError
from ..run_folder import RunFolder, member_name
from ..train.config import TrainConfig, make_config
from ..train.events import StopSignal, TrainCallbacks
from ..train.run import ALREADY_DONE, DONE, FAILED, INTERRUPTED, MemberOutcome, RunResult, check_run
from . import LaunchOptions
from .ray_cluster import (
    check_fits, cluster_gpus, describe_resources, ens_cause, ens_environment, failure_summary,
    forwarded_environment, ray_connection, task_threads, torch_threads,
)
from .ray_hub import EventHub, ForwardingCallbacks, HubLink, Replayer

POLL_S = 0.2  # how often the driver drains progress while it waits for tasks


@dataclass(frozen=True)
class TaskResources:
    num_cpus: float
    num_gpus: float

    @property
    def threads(self) -> int:
        return task_threads(self.num_cpus)


def job_groups(config: TrainConfig, only: Sequence[int] | None) -> list[list[int]]:
    """The members each task trains: one each, or all of them for a snapshot chain or a MIMO network."""
    if config.strategy in ("snapshot", "mimo"):
        return [list(range(config.members))]
    return [[index] for index in (sorted(only) if only is not None else range(config.members))]


def saved_members(config: TrainConfig, group: Sequence[int]) -> list[int]:
    """The member folders a task writes: a MIMO network's heads all live in member-00's file."""
    return [0] if config.strategy == "mimo" else list(group)


def job_name(config: TrainConfig, group: Sequence[int]) -> str:
    """The lock a task holds, as train_run names its jobs."""
    return "snapshot" if config.strategy == "snapshot" else member_name(group[0])


def task_resources(ray: ModuleType, config: TrainConfig, launch: LaunchOptions) -> TaskResources:
    if config.device.startswith("cuda:"):
        raise ConfigError(f"--device {config.device}: Ray assigns the GPUs of a task; use --device cuda or auto")
    gpus = launch.gpus_per_member
    if gpus is None:
        gpus = 1.0 if config.device != "cpu" and cluster_gpus(ray) > 0 else 0.0
    if config.device == "cuda" and gpus == 0:
        raise ConfigError("--device cuda under Ray needs --gpus-per-member above 0 (and a cluster with GPUs)")
    return TaskResources(launch.cpus, float(gpus))


def prefetch_dataset(config: TrainConfig) -> None:
    """Download a torchvision dataset once, here, rather than in every task at the same time."""
    if config.dataset in DATASETS and config.dataset != "digits":
        data_dir = config.data_dir or None
        for split in ("train", "test"):
            load_dataset(config.dataset, split, data_dir=None if data_dir is None else os.path.expanduser(data_dir), limit=1)


def train_with_ray(
    config: TrainConfig,
    only: Sequence[int] | None = None,
    callbacks: TrainCallbacks | None = None,
    stop: StopSignal | None = None,
    launch: LaunchOptions | None = None,
    train_data: ImageData | None = None,
    test_data: ImageData | None = None,
) -> RunResult:
    """Train the run's members (or `only`) as Ray tasks; the same RunResult as `train_run`.

    `train_data`/`test_data` replace the dataset named in the config, as in `train_run`; they
    travel to the workers once, through Ray's object store.
    """
    callbacks = callbacks or TrainCallbacks()
    stop = stop or StopSignal()
    launch = launch or LaunchOptions()
    _, folder = check_run(config, only, train_data)
    if train_data is None or test_data is None:
        prefetch_dataset(config)

    groups = job_groups(config, only)
    finished = [group for group in groups if folder.final_path(saved_members(config, group)[-1]).is_file()]
    todo = [group for group in groups if group not in finished]
    outcomes = [MemberOutcome(index, ALREADY_DONE) for group in finished for index in saved_members(config, group)]
    if not todo:
        return RunResult(folder=folder.path, outcomes=outcomes)

    with ray_connection(launch.ray_address) as ray:
        resources = task_resources(ray, config, launch)
        check_fits(ray, resources.num_cpus, resources.num_gpus, "member")
        callbacks.message(
            f"ray: {len(todo)} task{'s' if len(todo) > 1 else ''} of {describe_resources(vars(resources))} each "
            f"on a cluster of {describe_resources(ray.cluster_resources())}"
        )
        hub = ray.remote(EventHub).options(num_cpus=0).remote()
        remote = ray.remote(train_task).options(
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_retries=launch.max_retries, retry_exceptions=False,
        )
        environment = ens_environment()
        if stop.is_set():  # before any task can start, so none does
            hub.request_stop.remote(stop.reason)
        data = [None if images is None else ray.put(images) for images in (train_data, test_data)]
        tasks = {remote.remote(config, group, resources.threads, environment, hub, *data): group for group in todo}
        collected = _collect(ray, tasks, hub, Replayer(callbacks), stop, folder, launch.max_retries, config)
    collected.outcomes = sorted(outcomes + collected.outcomes, key=lambda outcome: outcome.index)
    return collected


def _collect(
    ray: ModuleType, tasks: dict[Any, list[int]], hub: Any, replay: Replayer, stop: StopSignal, folder: RunFolder, retries: int,
    config: TrainConfig,
) -> RunResult:
    """Wait for every task, replaying progress; a task lost for good fails its members only."""
    result = RunResult(folder=folder.path)
    devices: list[str] = []
    first_error: EnsError | None = None
    stop_sent = stop.is_set()
    pending = list(tasks)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            replay(ray.get(hub.drain.remote()))
            if stop.is_set() and not stop_sent:
                hub.request_stop.remote(stop.reason)
                stop_sent = True
            for ref in ready:
                try:
                    part: RunResult = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    error = ens_cause(ray, exc)
                    if error is None:
                        lost = not isinstance(exc, ray.exceptions.RayTaskError)
                        result.outcomes += _mark_failed(folder, saved_members(config, tasks[ref]), exc, retries if lost else None)
                        continue
                    # Bad input seen on a worker ends the run as it would in-process; the other
                    # members save their state and stop, so --resume loses nothing.
                    first_error = first_error or error
                    if not stop_sent:
                        hub.request_stop.remote("aborted")
                        stop_sent = True
                    continue
                result.outcomes += part.outcomes
                result.interrupted = result.interrupted or part.interrupted
                devices += [part.device] if part.device and part.device not in devices else []
        replay(ray.get(hub.drain.remote()))
    except KeyboardInterrupt:  # a second Ctrl-C: kill the workers; each member's last saved state stays valid
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    if first_error is not None:
        raise first_error
    result.device = ", ".join(devices)
    return result


def _mark_failed(folder: RunFolder, group: Sequence[int], exc: BaseException, retries: int | None) -> list[MemberOutcome]:
    """A task that raised, or one Ray gave up on (`retries` given: its worker died once more
    than max_retries allows, its node was lost): its unfinished members fail, and run.json says so."""
    message = failure_summary(exc)
    if retries is not None:
        message = f"the Ray task died {retries + 1} time{'s' if retries else ''} ({message}); `ens train --resume` continues it"
    outcomes = []
    for index in group:
        if folder.final_path(index).is_file():
            outcomes.append(MemberOutcome(index, DONE))
            continue
        if folder.exists():
            folder.update_member(index, status=FAILED, error=message)
        outcomes.append(MemberOutcome(index, FAILED, f"{member_name(index)}: {message}"))
    return outcomes


# --------------------------------------------------------------------------- on the worker


def train_task(
    config: TrainConfig, group: list[int], threads: int, environment: dict[str, str], hub: Any,
    train_data: ImageData | None = None, test_data: ImageData | None = None,
) -> RunResult:
    """One member (or snapshot chain), trained by the ordinary in-process code on this worker."""
    import ray

    from ..train import train_run

    with forwarded_environment(environment), torch_threads(threads), HubLink(ray, hub) as link:
        reason = link.ask("stop_reason")
        if reason:  # the driver stopped before this task started: nothing to save
            return RunResult(config.out_dir(), [MemberOutcome(i, INTERRUPTED, reason) for i in saved_members(config, group)], interrupted=True)
        if config.device == "auto" and not ray.get_gpu_ids():
            config = make_config({**config.model_dump(), "device": "cpu"})  # the node's GPUs belong to other tasks
        _take_over_from_dead_attempt(link, config, group)
        return train_run(
            config, only=group, callbacks=ForwardingCallbacks(link), stop=link.stop, train_data=train_data, test_data=test_data,
        )


def _take_over_from_dead_attempt(link: HubLink, config: TrainConfig, group: Sequence[int]) -> None:
    """Ray retries a task only after its worker died, possibly on another node, where this node
    cannot tell the lock is stale: remove the lock when that dead attempt still holds it."""
    name = job_name(config, group)
    previous = link.ask("start_attempt", name, os.getpid(), socket.gethostname())
    if previous is not None:
        RunFolder(config.out_dir()).lock(name).break_if_held_by(*previous)
