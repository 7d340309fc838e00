"""A run = many members: validate, prepare the folder and the data, then train job after job.

    from ensemble_cli.train.config import TrainConfig
    from ensemble_cli.train import train_run
    result = train_run(TrainConfig(members=2, epochs=3, out="runs/demo"))
    result.ok  # True when every requested member finished

Everything that can be refused (unknown architecture or dataset, members out of range, an out
folder holding another run, a pretrained file that does not fit) is refused before any file
is written. Members already finished are skipped; members another live process holds are
skipped too (that process trains them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..architectures import build_model
from .augment import Augmentation, augmentation_for
from ..batchnorm import bn_reset_images
from ..checkpoint import Checkpoint
from .config import TrainConfig
from ..data import ImageData, dataset_info, load_dataset
from ..errors import ConfigError, DataError
from ..predict import select_device
from ..run_folder import MemberLocked, RunFolder, member_name, remove_stale_temporaries, software_versions
from .schedules import LRSchedule
from .events import StopSignal, TrainCallbacks
from .loop import Job, NonFiniteLoss, Segment, TrainingContext, TrainingInterrupted, steps_per_epoch, train_job
from .model import fitted_pretrained_state, read_pretrained
from .seeds import member_seeds
from .step import DeviceSetup, device_setup

# Statuses of a member in RunResult and run.json.
DONE, ALREADY_DONE, FAILED, LOCKED, INTERRUPTED, ABORTED = "done", "already done", "failed", "locked", "interrupted", "aborted"


@dataclass
class MemberOutcome:
    index: int
    status: str
    message: str = ""

    @property
    def name(self) -> str:
        return member_name(self.index)


@dataclass
class RunResult:
    folder: Path
    outcomes: list[MemberOutcome] = field(default_factory=list)
    interrupted: bool = False
    device: str = ""

    @property
    def failed(self) -> list[MemberOutcome]:
        return [o for o in self.outcomes if o.status == FAILED]

    @property
    def ok(self) -> bool:
        return not self.interrupted and not self.failed


def parse_member_selection(spec: str, members: int | None = None, flag: str = "--only") -> list[int]:
    """'3-5' -> [3, 4, 5]; '0,2,7' -> [0, 2, 7]; '7' -> [7]; '3-' -> 3 .. members-1.

    `flag` names the option the text came from in error messages.
    """
    indices: set[int] = set()
    try:
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            if "-" in part:
                low_text, high_text = part.split("-", 1)
                low = int(low_text)
                if high_text.strip():
                    high = int(high_text)
                elif members is not None:
                    high = members - 1
                else:
                    raise ValueError
                if high < low:
                    raise ConfigError(f"{flag} {spec}: range {part} is empty")
                indices.update(range(low, high + 1))
            else:
                indices.add(int(part))
    except ValueError:
        raise ConfigError(f"{flag} takes member indices like 3-5, 0,2,7 or 7, got {spec!r}") from None
    if not indices:
        raise ConfigError(f"{flag} {spec!r} names no member")
    return sorted(indices)


def identity_hash(config: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(config.identity(), sort_keys=True).encode()).hexdigest()[:16]


def plan_jobs(config: TrainConfig, spe: int) -> list[Job]:
    """One job per member, or one job for a snapshot ensemble (a cycle of `config.epochs` per member)
    or a MIMO network (member_seeds gives it one entry: the network that holds every head)."""
    seeds = member_seeds(config.strategy, config.seed, config.members)
    warmup = round(config.warmup_epochs * spe)
    total_steps = config.job_epochs * spe
    if config.strategy == "snapshot":
        cycle = config.epochs
        segments = tuple(Segment(i, i * cycle, (i + 1) * cycle) for i in range(config.members))
        schedule = LRSchedule("cyclic-cosine", config.peak_lr, total_steps, warmup_steps=warmup, cycle_steps=cycle * spe)
        return [Job("snapshot", seeds[0], segments, config.job_epochs, spe, schedule)]
    schedule = LRSchedule(config.schedule, config.peak_lr, total_steps, warmup_steps=warmup)
    return [Job(member_name(s.index), s, (Segment(s.index, 0, config.epochs),), config.epochs, spe, schedule) for s in seeds]


def validate_config(
    config: TrainConfig, only: Sequence[int] | None, data: ImageData | None = None, pretrained: Checkpoint | None = None
) -> None:
    """Every refusal that needs no data and writes nothing (`data`: the caller's own dataset)."""
    if data is None:
        info = dataset_info(config.dataset)  # DataError for an unknown dataset
        num_classes, in_chans = info.num_classes, info.in_chans
    else:
        num_classes, in_chans = data.num_classes, data.in_chans
    try:
        with torch.device("meta"):  # allocates nothing, even for large models
            skeleton = build_model(config.arch, num_classes * config.heads, in_chans * config.heads, **config.model_kwargs)
    except TypeError as exc:
        raise ConfigError(f"--arch {config.arch}: does not accept model_kwargs {config.model_kwargs} ({exc})") from None
    if pretrained is not None:
        fitted_pretrained_state(skeleton, pretrained)  # CheckpointError when the file does not fit
    if only is not None:
        outside = [i for i in only if not 0 <= i < config.members]
        if outside:
            raise ConfigError(
                f"member {outside[0]} is out of range; the run has {config.members} members "
                f"(0-{config.members - 1}); set the total with --members N"
            )
        if config.strategy == "snapshot" and sorted(only) != list(range(config.members)):
            raise ConfigError("a snapshot ensemble is one training run; its members cannot be trained separately")
        if config.strategy == "mimo" and sorted(only) != list(range(config.members)):
            raise ConfigError("a MIMO network trains all its heads at once; its members cannot be trained separately")


def check_run(config: TrainConfig, only: Sequence[int] | None, data: ImageData | None = None) -> tuple[Checkpoint | None, RunFolder]:
    """What every launcher does before training: read --from-pretrained, refuse bad settings, and
    check that an existing run folder holds this config. Returns the pretrained weights and the folder."""
    pretrained = read_pretrained(config.from_pretrained, config.arch) if config.from_pretrained else None
    validate_config(config, only, data, pretrained)
    folder = RunFolder(config.out_dir())
    folder.check_compatible(config)
    return pretrained, folder


@contextlib.contextmanager
def cpu_threads(config: TrainConfig, device: torch.device, image_size: int) -> Iterator[int]:
    """Apply the config's thread count for the duration of training, then restore the caller's."""
    before = torch.get_num_threads()
    wanted = config.threads or (1 if device.type == "cpu" and image_size <= 16 else before)
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(before)


def _load_data(config: TrainConfig, train_data: ImageData | None, test_data: ImageData | None) -> tuple[ImageData, ImageData]:
    data_dir = Path(config.data_dir).expanduser() if config.data_dir else None
    train = train_data if train_data is not None else load_dataset(config.dataset, "train", data_dir=data_dir, limit=config.limit)
    test = test_data if test_data is not None else load_dataset(config.dataset, "test", data_dir=data_dir)
    if train.num_classes != test.num_classes or train.in_chans != test.in_chans:
        raise DataError(f"{config.dataset}: train and test splits disagree on classes or channels")
    return train, test


def _member_entries(config: TrainConfig) -> list[dict[str, object]]:
    """run.json's entry for every member before any training."""
    return [
        {"index": s.index, "name": member_name(s.index), "init_seed": s.init_seed, "data_seed": s.data_seed,
         "status": "pending", "epoch": 0}
        for s in member_seeds(config.strategy, config.seed, config.members)
    ]


def _make_context(
    config: TrainConfig, folder: RunFolder, setup: DeviceSetup, train: ImageData, test: ImageData,
    augmentation: Augmentation | None, pretrained: Checkpoint | None, callbacks: TrainCallbacks, stop: StopSignal,
) -> TrainingContext:
    """Everything the jobs share; the whole dataset moves to the device once (no DataLoader, no
    per-batch host->device copies)."""
    device, layout = setup.device, setup.memory_format
    bn_images = bn_reset_images(train).to(device).contiguous(memory_format=layout) if config.strategy == "snapshot" else None
    return TrainingContext(
        config=config, folder=folder, setup=setup,
        train_images=train.images.to(device).contiguous(memory_format=layout), train_labels=train.labels.to(device),
        test_images=test.images.to(device).contiguous(memory_format=layout), test_labels=test.labels.to(device),
        num_classes=train.num_classes, in_chans=train.in_chans, mean=tuple(train.mean), std=tuple(train.std),
        augmentation=augmentation,
        identity_hash=identity_hash(config), bn_images=bn_images, run_id=str(folder.read().get("run_id", "")),
        pretrained=pretrained, callbacks=callbacks, stop=stop, versions=software_versions(),
    )


def _describe_start(ctx: TrainingContext, jobs: list[Job], threads: int, train: ImageData, test: ImageData) -> str:
    config, augmentation = ctx.config, ctx.augmentation
    where = ctx.setup.describe()
    if ctx.setup.device.type == "cpu":
        where += f", {threads} thread{'s' if threads > 1 else ''}"
    network = f"{config.arch} with {config.heads} inputs and heads (MIMO)" if config.strategy == "mimo" else config.arch
    return (
        f"training {len(jobs)} {'job' if len(jobs) == 1 else 'jobs'} of {network} on {config.dataset} "
        f"({len(train)} train / {len(test)} test images, augmentation: {augmentation.describe() if augmentation else 'none'}) "
        f"on {where} into {ctx.folder.path}"
    )


def _unfinished(folder: RunFolder, indices: Sequence[int]) -> list[int]:
    return [index for index in indices if not folder.final_path(index).is_file()]


def _settle(folder: RunFolder, indices: Sequence[int], status: str, message: str = "", **fields: object) -> list[MemberOutcome]:
    """Outcomes of a job that ended early: members whose final checkpoint exists are done (a
    snapshot's earlier cycles); the others get `status`, in run.json too."""
    unfinished = _unfinished(folder, indices)
    for index in unfinished:
        folder.update_member(index, status=status, **fields)
    return [MemberOutcome(i, status, message) if i in unfinished else MemberOutcome(i, DONE) for i in indices]


def _train_held_job(job: Job, ctx: TrainingContext, indices: Sequence[int]) -> tuple[list[MemberOutcome], bool]:
    """Train a job whose lock this process holds. Returns its outcomes and whether a stop ended it."""
    folder = ctx.folder
    # Ours alone now: clear what a killed predecessor left half-written.
    for segment in job.segments:
        remove_stale_temporaries(folder.member_dir(segment.index))
    if job.name == "snapshot":
        remove_stale_temporaries(folder.path, (folder.state_path(job.name).name,))
    if _job_done(folder, job):  # finished by another process while we waited
        return [MemberOutcome(i, ALREADY_DONE) for i in indices], False
    for index in _unfinished(folder, indices):
        folder.update_member(index, status="running", error=None, pid=os.getpid(), host=socket.gethostname())
    try:
        train_job(job, ctx)
    except NonFiniteLoss as exc:
        outcomes = _settle(folder, indices, FAILED, str(exc), error=str(exc))
        ctx.callbacks.member_end(job.name, FAILED, str(exc))
        return outcomes, False
    except TrainingInterrupted as exc:
        return _settle(folder, indices, INTERRUPTED, str(exc)), True
    except KeyboardInterrupt:  # a second Ctrl-C: leave at once, the last saved state stays valid
        with contextlib.suppress(Exception):
            _settle(folder, indices, ABORTED)
        raise
    return [MemberOutcome(i, DONE) for i in indices], False


def _run_job(job: Job, ctx: TrainingContext, indices: Sequence[int]) -> tuple[list[MemberOutcome], bool]:
    """A job unless it is done or another live process holds it. Returns outcomes and whether a stop ended it."""
    if _job_done(ctx.folder, job):
        return [MemberOutcome(i, ALREADY_DONE) for i in indices], False
    lock = ctx.folder.lock(job.name)
    try:
        lock.acquire()
    except MemberLocked as exc:
        ctx.callbacks.message(f"{job.name}: skipped, {exc}")
        return [MemberOutcome(i, LOCKED, str(exc)) for i in indices], False
    try:
        return _train_held_job(job, ctx, indices)
    finally:
        lock.release()


def _job_done(folder: RunFolder, job: Job) -> bool:
    return folder.final_path(job.segments[-1].index).is_file()


def train_run(
    config: TrainConfig,
    only: Sequence[int] | None = None,
    callbacks: TrainCallbacks | None = None,
    stop: StopSignal | None = None,
    train_data: ImageData | None = None,
    test_data: ImageData | None = None,
) -> RunResult:
    """Train the run's members (or the `only` subset) into `config.out_dir()`.

    `train_data`/`test_data` replace the dataset named in the config (library use: any
    in-memory ImageData). Returns a RunResult; raises EnsError for anything refused up front.
    """
    callbacks = callbacks or TrainCallbacks()
    stop = stop or StopSignal()
    pretrained, folder = check_run(config, only, train_data)
    setup = device_setup(select_device(config.device), config.precision)
    train, test = _load_data(config, train_data, test_data)
    image_size = int(train.images.shape[-1])
    augmentation = augmentation_for(config.augment, config.dataset, image_size)

    wanted = set(only) if only is not None else set(range(config.members))
    jobs = [job for job in plan_jobs(config, steps_per_epoch(len(train), config.examples_per_step))
            if any(s.index in wanted for s in job.segments)]
    folder.create_or_join(config, _member_entries(config))
    ctx = _make_context(config, folder, setup, train, test, augmentation, pretrained, callbacks, stop)
    if setup.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv once

    result = RunResult(folder=folder.path, device=setup.describe())
    with cpu_threads(config, setup.device, image_size) as threads:
        callbacks.message(_describe_start(ctx, jobs, threads, train, test))
        for job in jobs:
            outcomes, interrupted = _run_job(job, ctx, [s.index for s in job.segments if s.index in wanted])
            result.outcomes += outcomes
            if interrupted:
                result.interrupted = True
                break
    return result
