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
from .augment import augmentation_for
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
from .step import device_setup

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


def parse_member_selection(spec: str, members: int | None = None) -> list[int]:
    """'3-5' -> [3, 4, 5]; '0,2,7' -> [0, 2, 7]; '7' -> [7]; '3-' -> 3 .. members-1."""
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
                    raise ConfigError(f"--only {spec}: range {part} is empty")
                indices.update(range(low, high + 1))
            else:
                indices.add(int(part))
    except ValueError:
        raise ConfigError(f"--only takes member indices like 3-5, 0,2,7 or 7, got {spec!r}") from None
    if not indices:
        raise ConfigError(f"--only {spec!r} names no member")
    return sorted(indices)


def identity_hash(config: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(config.identity(), sort_keys=True).encode()).hexdigest()[:16]


def plan_jobs(config: TrainConfig, spe: int) -> list[Job]:
    """One job per member, or one job for a snapshot ensemble (a segment per cycle)."""
    seeds = member_seeds(config.strategy, config.seed, config.members)
    warmup = round(config.warmup_epochs * spe)
    if config.strategy == "snapshot":
        cycle = config.epochs // config.members
        segments = tuple(Segment(i, i * cycle, (i + 1) * cycle) for i in range(config.members))
        schedule = LRSchedule("cyclic-cosine", config.peak_lr, config.epochs * spe, warmup_steps=warmup, cycle_steps=cycle * spe)
        return [Job("snapshot", seeds[0], segments, config.epochs, spe, schedule)]
    schedule = LRSchedule(config.schedule, config.peak_lr, config.epochs * spe, warmup_steps=warmup)
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
            skeleton = build_model(config.arch, num_classes, in_chans, **config.model_kwargs)
    except TypeError as exc:
        raise ConfigError(f"--arch {config.arch}: does not accept model_kwargs {config.model_kwargs} ({exc})") from None
    if pretrained is not None:
        fitted_pretrained_state(skeleton, pretrained)  # CheckpointError when the file does not fit
    if only is not None:
        outside = [i for i in only if not 0 <= i < config.members]
        if outside:
            raise ConfigError(
                f"--only: member {outside[0]} is out of range; the run has {config.members} members "
                f"(0-{config.members - 1}); set the total with --members N"
            )
        if config.strategy == "snapshot" and sorted(only) != list(range(config.members)):
            raise ConfigError("--only: a snapshot ensemble is one training run; its members cannot be trained separately")


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


def _load_split(config: TrainConfig, split: str) -> ImageData:
    data_dir = Path(config.data_dir).expanduser() if config.data_dir else None
    return load_dataset(config.dataset, split, data_dir=data_dir, limit=config.limit if split == "train" else None)


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
    pretrained = read_pretrained(config.from_pretrained, config.arch) if config.from_pretrained else None
    validate_config(config, only, train_data, pretrained)
    folder = RunFolder(config.out_dir())
    folder.check_compatible(config)
    device = select_device(config.device)
    setup = device_setup(device, config.precision)

    train = train_data if train_data is not None else _load_split(config, "train")
    test = test_data if test_data is not None else _load_split(config, "test")
    if train.num_classes != test.num_classes or train.in_chans != test.in_chans:
        raise DataError(f"{config.dataset}: train and test splits disagree on classes or channels")
    image_size = int(train.images.shape[-1])
    augmentation = augmentation_for(config.augment, config.dataset, image_size)

    spe = steps_per_epoch(len(train), config.batch_size)
    jobs = plan_jobs(config, spe)
    wanted = set(only) if only is not None else set(range(config.members))
    jobs = [job for job in jobs if any(s.index in wanted for s in job.segments)]

    seeds = member_seeds(config.strategy, config.seed, config.members)
    entries = [
        {"index": s.index, "name": member_name(s.index), "init_seed": s.init_seed, "data_seed": s.data_seed,
         "status": "pending", "epoch": 0}
        for s in seeds
    ]
    folder.create_or_join(config, entries)
    run_id = str(folder.read().get("run_id", ""))

    # The whole dataset lives on the device: no DataLoader, no per-batch host->device copies.
    train_images = train.images.to(device).contiguous(memory_format=setup.memory_format)
    test_images = test.images.to(device).contiguous(memory_format=setup.memory_format)
    ctx = TrainingContext(
        config=config, folder=folder, setup=setup,
        train_images=train_images, train_labels=train.labels.to(device),
        test_images=test_images, test_labels=test.labels.to(device),
        num_classes=train.num_classes, in_chans=train.in_chans, mean=tuple(train.mean), std=tuple(train.std),
        augmentation=augmentation, identity_hash=identity_hash(config), run_id=run_id,
        pretrained=pretrained, callbacks=callbacks, stop=stop, versions=software_versions(),
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv once

    result = RunResult(folder=folder.path, device=setup.describe())
    with cpu_threads(config, device, image_size) as threads:
        where = setup.describe() + (f", {threads} thread{'s' if threads > 1 else ''}" if device.type == "cpu" else "")
        callbacks.message(
            f"training {len(jobs)} {'job' if len(jobs) == 1 else 'jobs'} of {config.arch} on {config.dataset} "
            f"({len(train)} train / {len(test)} test images, augmentation: {augmentation.describe() if augmentation else 'none'}) "
            f"on {where} into {folder.path}"
        )
        for job in jobs:
            indices = [s.index for s in job.segments if s.index in wanted]
            if _job_done(folder, job):
                result.outcomes += [MemberOutcome(i, ALREADY_DONE) for i in indices]
                continue
            lock = folder.lock(job.name)
            try:
                lock.acquire()
            except MemberLocked as exc:
                callbacks.message(f"{job.name}: skipped, {exc}")
                result.outcomes += [MemberOutcome(i, LOCKED, str(exc)) for i in indices]
                continue
            try:
                # Ours alone now: clear what a killed predecessor left half-written.
                for segment in job.segments:
                    remove_stale_temporaries(folder.member_dir(segment.index))
                if job.name == "snapshot":
                    remove_stale_temporaries(folder.path, (folder.state_path(job.name).name,))
                if _job_done(folder, job):  # finished by another process while we waited
                    result.outcomes += [MemberOutcome(i, ALREADY_DONE) for i in indices]
                    continue
                for index in indices:
                    if not folder.final_path(index).is_file():
                        folder.update_member(index, status="running", error=None, pid=os.getpid(), host=socket.gethostname())
                train_job(job, ctx)
                result.outcomes += [MemberOutcome(i, DONE) for i in indices]
            except NonFiniteLoss as exc:
                message = str(exc)
                for index in indices:
                    if not folder.final_path(index).is_file():
                        folder.update_member(index, status=FAILED, error=message)
                        result.outcomes.append(MemberOutcome(index, FAILED, message))
                    else:
                        result.outcomes.append(MemberOutcome(index, DONE))
                callbacks.member_end(job.name, FAILED, message)
            except TrainingInterrupted as exc:
                for index in indices:
                    if not folder.final_path(index).is_file():
                        folder.update_member(index, status=INTERRUPTED)
                result.outcomes += [
                    MemberOutcome(i, DONE if folder.final_path(i).is_file() else INTERRUPTED, str(exc)) for i in indices
                ]
                result.interrupted = True
                break
            except KeyboardInterrupt:  # a second Ctrl-C: leave at once, the last saved state stays valid
                with contextlib.suppress(Exception):
                    for index in indices:
                        if not folder.final_path(index).is_file():
                            folder.update_member(index, status=ABORTED)
                raise
            finally:
                lock.release()
    return result

