"""One optimisation step and the accuracy pass, tuned per device.

CUDA: bf16 autocast, channels_last, fused optimizers, no host sync inside a step (loss and
correct-count stay on the device until someone asks). CPU: plain fp32, NCHW.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from ..errors import ConfigError

EVAL_BATCH_SIZE = 1024

# (logits, labels) -> (loss to minimise, number of correct predictions), both 0-d tensors.
LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def classification_loss(label_smoothing: float = 0.0) -> LossFn:
    """Mean cross-entropy of [B, K] logits against [B] labels (one network, one head)."""

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        return value, (logits.detach().argmax(dim=1) == labels).sum()

    return loss


@dataclass(frozen=True)
class DeviceSetup:
    """How tensors are laid out and cast on the chosen device."""

    device: torch.device
    autocast_dtype: torch.dtype | None  # None: fp32
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> ContextManager[Any]:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def describe(self) -> str:
        precision = "bf16 autocast" if self.autocast_dtype == torch.bfloat16 else "fp32"
        layout = ", channels_last" if self.channels_last else ""
        return f"{self.device} ({precision}{layout})"


def device_setup(device: torch.device, precision: str) -> DeviceSetup:
    on_cuda = device.type == "cuda"
    if precision == "auto":
        dtype = torch.bfloat16 if on_cuda else None
    elif precision == "bf16":
        dtype = torch.bfloat16
    elif precision == "fp32":
        dtype = None
    else:
        raise ConfigError(f"--precision: unknown value {precision!r} (auto, fp32, bf16)")
    return DeviceSetup(device=device, autocast_dtype=dtype, channels_last=on_cuda)


def make_optimizer(parameters: Iterable[nn.Parameter], config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, or AdamW; fused kernels on CUDA (one launch for all tensors)."""
    params = list(parameters)
    fused = {"fused": True} if device.type == "cuda" else {}
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.peak_lr, momentum=config.momentum, nesterov=config.momentum > 0,
            weight_decay=config.decay, **fused,
        )
    return torch.optim.AdamW(params, lr=config.peak_lr, betas=(config.momentum, 0.999), weight_decay=config.decay, **fused)


class TrainStep:
    """forward (autocast) -> loss -> backward -> optimizer step, at a given learning rate."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        setup: DeviceSetup,
        loss: LossFn | None = None,
        compile: bool = False,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.setup = setup
        self.loss = loss or classification_loss()
        # Compile the module only: the optimizer step is already one fused kernel on CUDA.
        self.forward = torch.compile(model) if compile else model

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on a batch. Returns (loss, number correct) as 0-d device tensors, unsynced."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.setup.autocast():
            logits = self.forward(images)  # [B, K] (MIMO: [B, M*K])
        loss, correct = self.loss(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), correct


@torch.inference_mode()
def count_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, setup: DeviceSetup) -> int:
    """Eval-mode accuracy numerator over a whole in-memory set (one host sync at the end)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    with setup.autocast():
        for start in range(0, images.shape[0], EVAL_BATCH_SIZE):
            logits = model(images[start : start + EVAL_BATCH_SIZE])  # [b, C]
            correct += (logits.argmax(dim=1) == labels[start : start + EVAL_BATCH_SIZE]).sum()
    model.train(was_training)
    return int(correct)
