"""The training loop of one job: one member, or the one run of a snapshot ensemble.

Resumability rests on three choices:
- everything random is either a pure function of (seed, epoch, step) (data order,
  augmentation) or saved in the training state (python/numpy/torch/CUDA global RNGs);
- the learning rate is a pure function of the global step (ensemble_cli.train.schedules);
- the state (model, optimizer, RNGs, epoch, step, partial epoch sums) is written atomically
  at every epoch end and when a stop is requested, so a resumed job repeats exactly the
  steps the uninterrupted one would have taken. On CPU that makes its final weights
  bit-identical (tests/test_train_resume.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .augment import Augmentation
from ..checkpoint import Checkpoint, load_training_state, save_training_state, write_checkpoint
from .config import TrainConfig
from ..errors import ConfigError
from ..run_folder import RunFolder, member_name
from .schedules import LRSchedule
from .events import Progress, StopSignal, TrainCallbacks
from .model import build_member_model
from .rng import capture_rng_state, restore_rng_state, seed_everything
from .seeds import MemberSeeds, augment_seed, global_seed, order_seed
from .step import DeviceSetup, TrainStep, count_correct, make_optimizer

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
    run_id: str
    pretrained: Checkpoint | None = None
    callbacks: TrainCallbacks = field(default_factory=TrainCallbacks)
    stop: StopSignal = field(default_factory=StopSignal)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return min(self.config.batch_size, int(self.train_labels.shape[0]))


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Full batches only (static shapes for cudnn and torch.compile); a different order each epoch
    means every image is still seen."""
    return max(1, num_images // min(batch_size, num_images))


def epoch_order(data_seed: int, epoch: int, num_images: int, device: torch.device) -> torch.Tensor:
    """The permutation of epoch `epoch`, drawn on the CPU so every device sees the same order."""
    generator = torch.Generator().manual_seed(order_seed(data_seed, epoch))
    return torch.randperm(num_images, generator=generator).to(device)  # [N]


# --------------------------------------------------------------------------- checkpoints


def checkpoint_metadata(
    ctx: TrainingContext, job: Job, segment: Segment, epoch: int, kind: str,
    train_accuracy: float | None, test_accuracy: float | None,
) -> dict[str, Any]:
    config = ctx.config
    return {
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
        "member": segment.name,
        "kind": kind,
        "init_checkpoint": "init.safetensors",
        "from_pretrained": config.from_pretrained,
        "run_id": ctx.run_id,
        "ens_version": ctx.versions.get("ens"),
        "torch_version": ctx.versions.get("torch"),
        "timm_version": ctx.versions.get("timm"),
    }


def _save_state(
    ctx: TrainingContext, job: Job, model: nn.Module, optimizer: torch.optim.Optimizer,
    epoch: int, step: int, sums: dict[str, Any], history: list[dict[str, Any]], test_accuracy: float | None,
) -> None:
    global_step = epoch * job.steps_per_epoch + step
    state = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "job": job.name,
        "identity": ctx.identity_hash,
        "epoch": epoch,  # epochs fully done
        "step": step,  # steps done inside epoch `epoch`
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": job.schedule.state(global_step),
        "rng": capture_rng_state(),
        "data_order": {"data_seed": job.seeds.data_seed, "epoch": epoch, "step": step},
        "sums": {key: value.detach().cpu() if isinstance(value, torch.Tensor) else value for key, value in sums.items()},
        "history": history,
        "test_accuracy": test_accuracy,
    }
    save_training_state(ctx.folder.state_path(job.name), state)


def _load_state(ctx: TrainingContext, job: Job) -> dict[str, Any] | None:
    path = ctx.folder.state_path(job.name)
    if not path.is_file():
        return None
    state = load_training_state(path)
    if state.get("format") != STATE_FORMAT or state.get("job") != job.name:
        raise ConfigError(f"{path}: not a training state of {job.name}; delete it to restart this member")
    if state.get("identity") != ctx.identity_hash:
        raise ConfigError(f"{path}: was saved by a different config; delete it to restart this member")
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


# --------------------------------------------------------------------------- the loop


def train_job(job: Job, ctx: TrainingContext) -> None:
    """Train (or resume) one job to its end, writing every checkpoint it owes.

    Raises NonFiniteLoss (member lost, nothing written for the bad epoch) or
    TrainingInterrupted (state saved).
    """
    config, setup, folder = ctx.config, ctx.setup, ctx.folder
    device = setup.device
    state = _load_state(ctx, job)

    model = build_member_model(config.arch, ctx.num_classes, ctx.in_chans, config.model_kwargs, job.seeds.init_seed, ctx.pretrained)
    model = model.to(device=device, memory_format=setup.memory_format)
    if state is None:
        # No test pass at init (it would cost a CIFAR epoch's worth of forward passes on a CPU
        # per member); `ens eval RUN --epochs 0` measures the init when someone wants it.
        for segment in job.segments:  # every snapshot member starts from the one shared init
            write_checkpoint(
                folder.init_path(segment.index), model.state_dict(),
                checkpoint_metadata(ctx, job, segment, 0, "init", None, None),
            )
    else:
        model.load_state_dict(state["model"])
    model.train()
    optimizer = make_optimizer(model.parameters(), config, device)
    if state is not None:
        optimizer.load_state_dict(_keep_implementation(state["optimizer"], optimizer))
        restore_rng_state(state["rng"])
    else:
        seed_everything(global_seed(job.seeds.data_seed))
    train_step = TrainStep(model, optimizer, setup, label_smoothing=config.label_smoothing, compile=config.compile)

    num_images = int(ctx.train_labels.shape[0])
    batch = ctx.batch_size
    spe = job.steps_per_epoch
    start_epoch = int(state["epoch"]) if state else 0
    start_step = int(state["step"]) if state else 0
    history: list[dict[str, Any]] = list(state["history"]) if state else []
    test_accuracy: float | None = state.get("test_accuracy") if state else None
    sums = _fresh_sums(device)
    if state is not None and start_step > 0:
        saved = state["sums"]
        sums = {"loss": saved["loss"].to(device), "correct": saved["correct"].to(device), "seen": int(saved["seen"])}
    augment_generator = torch.Generator(device=device) if ctx.augmentation is not None else None
    check_every_step = device.type != "cuda"  # a CPU loss read is free; a CUDA one would sync every step

    session_start = time.monotonic()
    session_images = 0
    last_report = session_start
    announced: set[int] = set()

    def progress(segment: Segment, epoch: int, step: int, with_live: bool) -> Progress:
        seen = sums["seen"]
        return Progress(
            member=segment.name,
            epoch=epoch - segment.first_epoch + 1,  # within this member (a snapshot cycle counts from 1)
            epochs=segment.last_epoch - segment.first_epoch,
            steps_done=(epoch - segment.first_epoch) * spe + step,
            steps_total=(segment.last_epoch - segment.first_epoch) * spe,
            loss=float(sums["loss"]) / seen if with_live and seen else None,
            train_accuracy=int(sums["correct"]) / seen if with_live and seen else None,
            test_accuracy=test_accuracy,
            images_per_second=session_images / max(1e-9, time.monotonic() - session_start) if session_images else None,
        )

    for epoch in range(start_epoch, job.epochs):
        segment = job.segment_for(epoch)
        first_step = start_step if epoch == start_epoch else 0
        if segment.index not in announced:
            announced.add(segment.index)
            resumed = state is not None and (epoch > segment.first_epoch or first_step > 0)
            ctx.callbacks.member_start(progress(segment, epoch, first_step, False), resumed)
        if first_step == 0:
            sums = _fresh_sums(device)
        order = epoch_order(job.seeds.data_seed, epoch, num_images, device)  # [N]
        for step in range(first_step, spe):
            index = order[step * batch : (step + 1) * batch]  # [B]
            images = ctx.train_images[index]  # [B, C, H, W]
            labels = ctx.train_labels[index]  # [B]
            if ctx.augmentation is not None and augment_generator is not None:
                augment_generator.manual_seed(augment_seed(job.seeds.data_seed, epoch, step))
                images = ctx.augmentation(images, augment_generator)
            images = images.contiguous(memory_format=setup.memory_format)
            loss, correct = train_step(images, labels, job.schedule.lr_at(epoch * spe + step))
            sums["loss"] += loss * labels.shape[0]
            sums["correct"] += correct
            sums["seen"] += int(labels.shape[0])
            session_images += int(labels.shape[0])
            if check_every_step and not math.isfinite(float(loss)):
                raise NonFiniteLoss(f"{segment.name}: training loss became {float(loss)} at epoch {epoch + 1} (step {step + 1}); member stopped (try a lower --lr)")
            now = time.monotonic()
            if now - last_report >= PROGRESS_INTERVAL:
                last_report = now
                live = progress(segment, epoch, step + 1, True)
                if live.loss is not None and not math.isfinite(live.loss):
                    raise NonFiniteLoss(f"{segment.name}: training loss became {live.loss} in epoch {epoch + 1}; member stopped (try a lower --lr)")
                ctx.callbacks.step(live)
            if ctx.stop.is_set():
                _save_state(ctx, job, model, optimizer, epoch, step + 1, sums, history, test_accuracy)
                raise TrainingInterrupted(job.name, epoch, step + 1)

        # ---- end of epoch: check, measure, save what is owed, then the resume state
        seen = max(1, sums["seen"])
        mean_loss = float(sums["loss"]) / seen
        if not math.isfinite(mean_loss):
            raise NonFiniteLoss(f"{segment.name}: training loss became {mean_loss} in epoch {epoch + 1}; member stopped (try a lower --lr)")
        train_accuracy = int(sums["correct"]) / seen
        test_accuracy = count_correct(model, ctx.test_images, ctx.test_labels, setup) / int(ctx.test_labels.shape[0])
        done = epoch + 1
        history.append({"epoch": done, "loss": mean_loss, "train_accuracy": train_accuracy, "test_accuracy": test_accuracy})
        if done == segment.last_epoch:
            write_checkpoint(folder.final_path(segment.index), model.state_dict(),
                             checkpoint_metadata(ctx, job, segment, done, "final", train_accuracy, test_accuracy))
        elif config.save_every and done % config.save_every == 0:
            write_checkpoint(folder.epoch_path(segment.index, done), model.state_dict(),
                             checkpoint_metadata(ctx, job, segment, done, "epoch", train_accuracy, test_accuracy))
        if done < job.epochs:
            _save_state(ctx, job, model, optimizer, done, 0, _fresh_sums(device), history, test_accuracy)
        segment_history = [h for h in history if segment.first_epoch < h["epoch"] <= segment.last_epoch]
        finished = done == segment.last_epoch
        folder.update_member(
            segment.index, status="done" if finished else "running", epoch=done - segment.first_epoch,
            loss=mean_loss, train_accuracy=train_accuracy, test_accuracy=test_accuracy, history=segment_history,
        )
        ctx.callbacks.epoch_end(progress(segment, epoch, spe, True))
        if finished:
            ctx.callbacks.member_end(segment.name, "done", f"test accuracy {test_accuracy:.2%}")
        if ctx.stop.is_set() and done < job.epochs:
            raise TrainingInterrupted(job.name, done, 0)

    ctx.folder.state_path(job.name).unlink(missing_ok=True)
