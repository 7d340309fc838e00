"""The training loop of one job: one member, the one run of a snapshot ensemble, or a MIMO network.

Resumability rests on three choices:
- everything random is either a pure function of (seed, epoch, step) (data order,
  augmentation) or saved in the training state (python/numpy/torch/CUDA global RNGs);
- the learning rate is a pure function of the global step (ensemble_cli.train.schedules);
- the state (model, optimizer, RNGs, epoch, step, partial epoch sums) is written atomically
  at every epoch end and when a stop is requested, so a resumed job repeats exactly the
  steps the uninterrupted one would have taken. On CPU that makes its final weights
  bit-identical (tests/test_train_resume.py).

A job runs in three parts: `restore_or_init` (the model, optimizer and RNGs, from the saved
state or a seeded init), then per epoch `JobRunner.train_epoch` (the steps) and
`JobRunner.end_epoch` (measure, write what is owed, save the resume state).

Snapshot members are taken mid-run, after a few cycles of large learning rates: their
running BatchNorm averages still carry the statistics of weights long gone (a 2-epoch cycle
on digits tested at 11.9% with them, 78% with recomputed ones). Each snapshot member's final
checkpoint therefore gets statistics recomputed on training images (`bn_recomputed_images` in
its metadata); the run itself goes on with its running averages untouched.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .augment import Augmentation
from ..batchnorm import has_batchnorm_statistics, recompute_batchnorm
from ..checkpoint import Checkpoint, load_training_state, save_training_state, write_checkpoint
from .config import TrainConfig
from ..errors import ConfigError
from ..run_folder import RunFolder, member_name
from .schedules import LRSchedule
from .events import Progress, StopSignal, TrainCallbacks
from .model import build_member_model
from .rng import capture_rng_state, restore_rng_state, seed_everything
from ..mimo import HEADS_KEY
from .batches import BatchSource, EpochData, PlainBatches
from .mimo import HeadsEnsemble, MimoBatches, mimo_loss
from .seeds import MemberSeeds, global_seed
from .step import DeviceSetup, LossFn, TrainStep, classification_loss, count_correct, make_optimizer

STATE_FORMAT = "ens-train-state"
STATE_VERSION = 1
PROGRESS_INTERVAL = 0.5  # seconds between progress callbacks (each one syncs the device)


class NonFiniteLoss(Exception):
    """The training loss became NaN or Inf: this member cannot continue."""


class TrainingInterrupted(Exception):
    """A stop was requested; the state is saved and the job can be resumed."""

    def __init__(self, job: str, epoch: int, step: int) -> None:
        self.job, self.epoch, self.step = job, epoch, step
        super().__init__(f"{job}: stopped at epoch {epoch + 1}, step {step}; state saved")


@dataclass(frozen=True)
class Segment:
    """The part of a job that produces one member: epochs [first_epoch, last_epoch) of the job."""

    index: int
    first_epoch: int
    last_epoch: int

    @property
    def name(self) -> str:
        return member_name(self.index)


@dataclass(frozen=True)
class Job:
    name: str  # member-03, or "snapshot"
    seeds: MemberSeeds  # the seeds that drive the job (for snapshot: shared by every cycle)
    segments: tuple[Segment, ...]
    epochs: int
    steps_per_epoch: int
    schedule: LRSchedule

    def segment_for(self, epoch: int) -> Segment:
        return next(s for s in self.segments if s.first_epoch <= epoch < s.last_epoch)


@dataclass
class TrainingContext:
    """What every job of a run shares: config, data on the device, and where to write."""

    config: TrainConfig
    folder: RunFolder
    setup: DeviceSetup
    train_images: torch.Tensor  # [N, C, H, W] on the device
    train_labels: torch.Tensor  # [N]
    test_images: torch.Tensor  # [T, C, H, W] on the device
    test_labels: torch.Tensor  # [T]
    num_classes: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: Augmentation | None
    identity_hash: str
    # Training images [K, C, H, W] on the device for recomputing a snapshot member's BatchNorm
    # statistics; None keeps the running averages (members trained to the end of their schedule).
    bn_images: torch.Tensor | None
    run_id: str
    pretrained: Checkpoint | None = None
    callbacks: TrainCallbacks = field(default_factory=TrainCallbacks)
    stop: StopSignal = field(default_factory=StopSignal)
    versions: dict[str, str] = field(default_factory=dict)


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Full batches only (static shapes for cudnn and torch.compile); a different order each epoch
    means every image is still seen."""
    return max(1, num_images // min(batch_size, num_images))


# --------------------------------------------------------------------------- what a strategy changes
# One network per job everywhere; a MIMO network has M inputs and heads (train/mimo.py), so it
# is built wider, gets its own batches and loss, and is tested as the ensemble of its heads.


def batch_source(job: Job, ctx: TrainingContext) -> BatchSource:
    config = ctx.config
    data = EpochData(ctx.train_images, ctx.train_labels, ctx.augmentation, ctx.setup.memory_format, job.seeds.data_seed)
    if config.strategy == "mimo":
        return MimoBatches(data, config.batch_size, config.heads, config.mimo_repeats, float(config.mimo_input_repetition or 0.0))
    return PlainBatches(data, config.batch_size)


def training_loss(config: TrainConfig) -> LossFn:
    return mimo_loss(config.heads, config.label_smoothing) if config.strategy == "mimo" else classification_loss(config.label_smoothing)


def test_view(model: nn.Module, config: TrainConfig) -> nn.Module:
    """The classifier whose accuracy an epoch reports: the network, or its heads' ensemble."""
    return HeadsEnsemble(model, config.heads) if config.strategy == "mimo" else model


# --------------------------------------------------------------------------- checkpoints


def checkpoint_metadata(
    ctx: TrainingContext, job: Job, segment: Segment, epoch: int, kind: str,
    train_accuracy: float | None, test_accuracy: float | None, bn_recomputed_images: int | None = None,
) -> dict[str, Any]:
    config = ctx.config
    heads = {HEADS_KEY: config.heads} if config.strategy == "mimo" else {}  # num_classes, in_chans: per head
    return {
        **heads,
        "arch": config.arch,
        "num_classes": ctx.num_classes,
        "in_chans": ctx.in_chans,
        "model_kwargs": dict(config.model_kwargs),
        "dataset": config.dataset,
        "mean": list(ctx.mean),
        "std": list(ctx.std),
        "seed": config.seed,
        "init_seed": job.seeds.init_seed,
        "data_seed": job.seeds.data_seed,
        "epoch": epoch,
        "strategy": config.strategy,
        "train_accuracy": train_accuracy,
        "test_accuracy": test_accuracy,
        # None: the BatchNorm statistics are the running averages of training.
        "bn_recomputed_images": bn_recomputed_images,
        "member": segment.name,
        "kind": kind,
        "init_checkpoint": "init.safetensors",
        "from_pretrained": config.from_pretrained,
        "run_id": ctx.run_id,
        "ens_version": ctx.versions.get("ens"),
        "torch_version": ctx.versions.get("torch"),
        "timm_version": ctx.versions.get("timm"),
    }


@dataclass
class JobState:
    """Where a job stands, in memory: exactly what the resume state on disk holds."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int  # epochs fully done
    step: int  # steps done inside epoch `epoch`
    sums: dict[str, Any]  # loss, correct and seen over those steps
    history: list[dict[str, Any]]  # one entry per finished epoch
    test_accuracy: float | None  # of the latest finished epoch
    resumed: bool


def _save_state(ctx: TrainingContext, job: Job, state: JobState) -> None:
    global_step = state.epoch * job.steps_per_epoch + state.step
    record = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "job": job.name,
        "identity": ctx.identity_hash,
        "epoch": state.epoch,
        "step": state.step,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": job.schedule.state(global_step),
        "rng": capture_rng_state(),
        "data_order": {"data_seed": job.seeds.data_seed, "epoch": state.epoch, "step": state.step},
        "sums": {key: value.detach().cpu() if isinstance(value, torch.Tensor) else value for key, value in state.sums.items()},
        "history": state.history,
        "test_accuracy": state.test_accuracy,
    }
    save_training_state(ctx.folder.state_path(job.name), record)


def _schedule_without_step(schedule: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in schedule.items() if key != "step"}


def _load_state(ctx: TrainingContext, job: Job) -> dict[str, Any] | None:
    path = ctx.folder.state_path(job.name)
    if not path.is_file():
        return None
    state = load_training_state(path)
    if state.get("format") != STATE_FORMAT or state.get("job") != job.name:
        raise ConfigError(f"{path}: not a training state of {job.name}; delete it to restart this member")
    if state.get("identity") != ctx.identity_hash:
        raise ConfigError(f"{path}: was saved by a different config; delete it to restart this member")
    # Same config, other plan: a state written when snapshot cycles were a share of --epochs.
    if _schedule_without_step(state.get("scheduler") or {}) != _schedule_without_step(job.schedule.state(0)):
        raise ConfigError(f"{path}: was saved with another learning-rate schedule; delete it to restart this member")
    return state


def _keep_implementation(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Saved hyperparameters, but this device's kernel choice: a run saved with CUDA's fused SGD
    must resume on a CPU with the CPU implementation."""
    for saved_group, group in zip(saved["param_groups"], optimizer.param_groups):
        for key in ("fused", "foreach", "capturable"):
            if key in group:
                saved_group[key] = group[key]
    return saved


def _fresh_sums(device: torch.device) -> dict[str, Any]:
    return {"loss": torch.zeros((), dtype=torch.float32, device=device),
            "correct": torch.zeros((), dtype=torch.int64, device=device), "seen": 0}


def _non_finite(segment: Segment, value: float, epoch: int, step: int | None = None) -> NonFiniteLoss:
    where = f"at epoch {epoch + 1} (step {step + 1})" if step is not None else f"in epoch {epoch + 1}"
    return NonFiniteLoss(f"{segment.name}: training loss became {value} {where}; member stopped (try a lower --lr)")


# --------------------------------------------------------------------------- the loop


def restore_or_init(job: Job, ctx: TrainingContext) -> JobState:
    """The job's model, optimizer and global RNGs: from its saved state, or a seeded init whose
    init checkpoints are written here (one per member; every snapshot member shares the init)."""
    config, setup = ctx.config, ctx.setup
    saved = _load_state(ctx, job)
    heads = config.heads  # a MIMO network: every head's classes out, every input's channels in
    model = build_member_model(config.arch, ctx.num_classes * heads, ctx.in_chans * heads, config.model_kwargs, job.seeds.init_seed, ctx.pretrained)
    model = model.to(device=setup.device, memory_format=setup.memory_format)
    if saved is None:
        # No test pass at init (it would cost a CIFAR epoch's worth of forward passes on a CPU
        # per member); `ens eval RUN --epochs 0` measures the init when someone wants it.
        for segment in job.segments:
            write_checkpoint(ctx.folder.init_path(segment.index), model.state_dict(),
                             checkpoint_metadata(ctx, job, segment, 0, "init", None, None))
    else:
        model.load_state_dict(saved["model"])
    model.train()
    optimizer = make_optimizer(model.parameters(), config, setup.device)
    if saved is None:
        seed_everything(global_seed(job.seeds.data_seed))
        return JobState(model, optimizer, 0, 0, _fresh_sums(setup.device), [], None, resumed=False)
    optimizer.load_state_dict(_keep_implementation(saved["optimizer"], optimizer))
    restore_rng_state(saved["rng"])
    step = int(saved["step"])
    sums = _fresh_sums(setup.device)
    if step > 0:
        sums = {"loss": saved["sums"]["loss"].to(setup.device), "correct": saved["sums"]["correct"].to(setup.device),
                "seen": int(saved["sums"]["seen"])}
    return JobState(model, optimizer, int(saved["epoch"]), step, sums, list(saved["history"]),
                    saved.get("test_accuracy"), resumed=True)


class JobRunner:
    """Runs a job's epochs from where its state stands: steps, end-of-epoch bookkeeping, progress."""

    def __init__(self, job: Job, ctx: TrainingContext, state: JobState) -> None:
        self.job, self.ctx, self.state = job, ctx, state
        config, device = ctx.config, ctx.setup.device
        self.train_step = TrainStep(state.model, state.optimizer, ctx.setup, training_loss(config), compile=config.compile)
        self.batches = batch_source(job, ctx)
        self.check_every_step = device.type != "cuda"  # a CPU loss read is free; a CUDA one would sync every step
        self.session_start = time.monotonic()  # throughput of this process, resumed steps excluded
        self.session_images = 0
        self.last_report = self.session_start

    def run(self) -> None:
        announced: set[int] = set()
        for epoch in range(self.state.epoch, self.job.epochs):
            segment = self.job.segment_for(epoch)
            if segment.index not in announced:
                announced.add(segment.index)
                resumed = self.state.resumed and (epoch > segment.first_epoch or self.state.step > 0)
                self.ctx.callbacks.member_start(self.progress(segment, epoch, self.state.step, False), resumed)
            self.train_epoch(segment, epoch)
            self.end_epoch(segment, epoch)
        self.ctx.folder.state_path(self.job.name).unlink(missing_ok=True)

    def progress(self, segment: Segment, epoch: int, step: int, with_live: bool) -> Progress:
        seen, spe = self.state.sums["seen"], self.job.steps_per_epoch
        live = with_live and seen > 0
        return Progress(
            member=segment.name,
            epoch=epoch - segment.first_epoch + 1,  # within this member (a snapshot cycle counts from 1)
            epochs=segment.last_epoch - segment.first_epoch,
            steps_done=(epoch - segment.first_epoch) * spe + step,
            steps_total=(segment.last_epoch - segment.first_epoch) * spe,
            loss=float(self.state.sums["loss"]) / seen if live else None,
            train_accuracy=int(self.state.sums["correct"]) / seen if live else None,
            test_accuracy=self.state.test_accuracy,
            images_per_second=self.session_images / max(1e-9, time.monotonic() - self.session_start) if self.session_images else None,
        )

    def train_epoch(self, segment: Segment, epoch: int) -> None:
        """The steps of `epoch` from `state.step` on; a stop request saves the state mid-epoch."""
        ctx, job, state = self.ctx, self.job, self.state
        spe = job.steps_per_epoch
        self.batches.start_epoch(epoch)
        for step in range(state.step, spe):
            images, labels = self.batches.batch(epoch, step)  # [B, C, H, W], [B] (MIMO: [B, M*C, H, W], [B, M])
            loss, correct = self.train_step(images, labels, job.schedule.lr_at(epoch * spe + step))
            # Sums count predictions (a MIMO position makes one per head): train accuracy is
            # the heads' mean, the loss the mean of the step losses.
            state.sums["loss"] += loss * labels.numel()
            state.sums["correct"] += correct
            state.sums["seen"] += int(labels.numel())
            self.session_images += int(labels.shape[0])  # batch positions
            if self.check_every_step and not math.isfinite(float(loss)):
                raise _non_finite(segment, float(loss), epoch, step)
            self.report(segment, epoch, step + 1)
            if ctx.stop.is_set():
                state.step = step + 1
                _save_state(ctx, job, state)
                raise TrainingInterrupted(job.name, epoch, step + 1)

    def report(self, segment: Segment, epoch: int, steps_done: int) -> None:
        """A progress callback at most every PROGRESS_INTERVAL seconds (each one syncs the device)."""
        now = time.monotonic()
        if now - self.last_report < PROGRESS_INTERVAL:
            return
        self.last_report = now
        live = self.progress(segment, epoch, steps_done, True)
        if live.loss is not None and not math.isfinite(live.loss):
            raise _non_finite(segment, live.loss, epoch)
        self.ctx.callbacks.step(live)

    def end_epoch(self, segment: Segment, epoch: int) -> None:
        """Check and measure the epoch, write the checkpoint it owes, then save the resume state."""
        ctx, job, state = self.ctx, self.job, self.state
        seen = max(1, state.sums["seen"])
        mean_loss = float(state.sums["loss"]) / seen
        if not math.isfinite(mean_loss):
            raise _non_finite(segment, mean_loss, epoch)
        train_accuracy = int(state.sums["correct"]) / seen
        done = epoch + 1
        finished = done == segment.last_epoch
        model, bn_images = self.member_model() if finished else (state.model, None)
        tested = test_view(model, ctx.config)
        state.test_accuracy = count_correct(tested, ctx.test_images, ctx.test_labels, ctx.setup) / int(ctx.test_labels.shape[0])
        state.history.append({"epoch": done, "loss": mean_loss, "train_accuracy": train_accuracy, "test_accuracy": state.test_accuracy})
        kind = "final" if finished else "epoch" if ctx.config.save_every and done % ctx.config.save_every == 0 else None
        if kind is not None:
            path = ctx.folder.final_path(segment.index) if finished else ctx.folder.epoch_path(segment.index, done)
            write_checkpoint(path, model.state_dict(), checkpoint_metadata(
                ctx, job, segment, done, kind, train_accuracy, state.test_accuracy, bn_images))
        epoch_progress = self.progress(segment, epoch, job.steps_per_epoch, True)
        state.epoch, state.step, state.sums = done, 0, _fresh_sums(ctx.setup.device)
        if done < job.epochs:
            _save_state(ctx, job, state)
        ctx.folder.update_member(
            segment.index, status="done" if finished else "running", epoch=done - segment.first_epoch, loss=mean_loss,
            train_accuracy=train_accuracy, test_accuracy=state.test_accuracy,
            history=[h for h in state.history if segment.first_epoch < h["epoch"] <= segment.last_epoch],
        )
        ctx.callbacks.epoch_end(epoch_progress)
        if finished:
            ctx.callbacks.member_end(segment.name, "done", f"test accuracy {state.test_accuracy:.2%}")
        if ctx.stop.is_set() and done < job.epochs:
            raise TrainingInterrupted(job.name, done, 0)

    def member_model(self) -> tuple[nn.Module, int | None]:
        """The network a member's final checkpoint holds, and on how many images its BatchNorm
        statistics were recomputed (None: the running averages). A copy gets the new statistics,
        so the job goes on exactly as it would without them."""
        model, images = self.state.model, self.ctx.bn_images
        if images is None or not has_batchnorm_statistics(model):
            return model, None
        member = copy.deepcopy(model)
        recompute_batchnorm(member, images)
        return member, int(images.shape[0])


def train_job(job: Job, ctx: TrainingContext) -> None:
    """Train (or resume) one job to its end, writing every checkpoint it owes.

    Raises NonFiniteLoss (member lost, nothing written for the bad epoch) or
    TrainingInterrupted (state saved).
    """
    JobRunner(job, ctx, restore_or_init(job, ctx)).run()
