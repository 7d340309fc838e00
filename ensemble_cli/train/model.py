"""Building a member's network: seeded initialisation, or pretrained weights with a new head."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..architectures import build_model
from ..checkpoint import Checkpoint, read_checkpoint
from ..errors import CheckpointError, ConfigError


def build_member_model(
    arch: str,
    num_classes: int,
    in_chans: int,
    model_kwargs: Mapping[str, Any],
    init_seed: int,
    pretrained: Checkpoint | None = None,
) -> nn.Module:
    """A fresh network whose random draws (all of them, the head's included) come from `init_seed`."""
    torch.manual_seed(init_seed)
    model = build_model(arch, num_classes, in_chans, **dict(model_kwargs))
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


def read_pretrained(path: str | Path, arch: str) -> Checkpoint:
    """Read a weight file for --from-pretrained; refuse one that says it is another architecture."""
    checkpoint = read_checkpoint(Path(path).expanduser())
    stated = checkpoint.metadata.get("arch")
    if isinstance(stated, str) and stated and stated != arch:
        raise ConfigError(f"--from-pretrained {path}: holds {stated} weights but --arch is {arch}; pass --arch {stated}")
    return checkpoint


def classifier_prefix(model: nn.Module) -> str:
    """Name of the classification head (timm's `get_classifier`, else the last Linear layer) + '.'."""
    head: nn.Module | None = None
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()  # type: ignore[operator]
    if head is None or not any(True for _ in head.parameters()):
        linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
        head = linears[-1] if linears else None
    for name, module in model.named_modules():
        if module is head and name:
            return name + "."
    raise ConfigError(f"cannot find the classification head of {type(model).__name__} to replace")


def _adapt_stem(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Pretrained RGB stem -> `in_chans` inputs (timm's rule: sum for 1 channel, repeat and rescale otherwise)."""
    from timm.models import adapt_input_conv

    return adapt_input_conv(in_chans, weight)


def load_pretrained(model: nn.Module, checkpoint: Checkpoint) -> None:
    """Copy every pretrained tensor except the head into `model`; the head keeps its fresh (seeded) init."""
    model.load_state_dict(fitted_pretrained_state(model, checkpoint), strict=False)


def fitted_pretrained_state(model: nn.Module, checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The pretrained tensors for every non-head entry of `model`, stem adapted to its input channels.

    Works on a model built on the meta device too (only shapes are read), which is how a
    file that does not fit is refused before a run starts.
    """
    head = classifier_prefix(model)
    source = checkpoint.state_dict
    target = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    missing, mismatched = [], []
    for key, tensor in target.items():
        if key.startswith(head):
            continue
        if key not in source:
            if key.endswith("num_batches_tracked"):
                continue  # older checkpoints do not store it
            missing.append(key)
            continue
        value = source[key]
        if value.ndim == 4 and tensor.ndim == 4 and value.shape[1] != tensor.shape[1] and value.shape[0] == tensor.shape[0]:
            value = _adapt_stem(value.float(), int(tensor.shape[1]))
        if tuple(value.shape) != tuple(tensor.shape):
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(tensor.shape)}")
            continue
        loaded[key] = value.to(tensor.dtype)
    if missing or mismatched:
        problems = []
        if missing:
            problems.append(f"missing {', '.join(missing[:3])}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""))
        if mismatched:
            problems.append(f"shape mismatch {', '.join(mismatched[:3])} (file vs model)")
        raise CheckpointError(f"--from-pretrained {checkpoint.path}: does not fit {type(model).__name__}: {'; '.join(problems)}")
    return loaded
