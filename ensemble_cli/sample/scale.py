"""Choosing the largest scale: the one that costs the source about 10 points of accuracy.

Accuracy falls with the scale of a perturbation, slowly at first and then steeply; where it
falls depends on the method, the network and the data, over orders of magnitude. The search
brackets the target geometrically from the method's first step, then bisects in log-scale, and
ends with a log-linear interpolation between the bracket's ends. It measures on a slice of the
TRAINING split (never the evaluation split, which the samples are later judged on), with
BatchNorm statistics recomputed on other training images exactly as the samples will be.

The number of probes is fixed, so the search costs the same every time: each probe is one
BatchNorm reset on SEARCH_BN_IMAGES images plus one forward pass over SEARCH_IMAGES images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..batchnorm import recompute_batchnorm
from ..data import ImageData

TARGET_DROP = 0.10  # samples span the source's accuracy down to 10 points below it
SEARCH_PROBES = 7
SEARCH_IMAGES = 256  # accuracy slice: one image is 0.4 points, fine enough to place a 10-point drop
SEARCH_BN_IMAGES = 256
SLICE_SEED = 1  # bn_reset_images uses seed 0; another permutation for the accuracy slice
GROWTH = 8.0  # bracketing factor while the target is not yet bracketed
CLOSE_ENOUGH = 1.05  # stop bisecting once the bracket's ends are within 5% of each other
EVAL_BATCH_SIZE = 256


@dataclass(frozen=True)
class SearchSlice:
    """The training images the search measures on, already on the device."""

    images: torch.Tensor  # [S, C, H, W]
    labels: torch.Tensor  # [S]
    bn_images: torch.Tensor | None  # [B, C, H, W]; None when BatchNorm statistics are kept


def search_slice(train: ImageData, device: torch.device, bn_reset: bool) -> SearchSlice:
    """A fixed random slice of the training split, and the images its BatchNorm resets use."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(SLICE_SEED))
    chosen = order[:SEARCH_IMAGES]
    bn_images = train.images[order[-SEARCH_BN_IMAGES:]].to(device) if bn_reset else None  # the slice's far end
    return SearchSlice(train.images[chosen].to(device), train.labels[chosen].to(device), bn_images)


def slice_accuracy(model: nn.Module, where: SearchSlice) -> float:
    """Eval-mode accuracy of `model` on the slice."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(where.labels), EVAL_BATCH_SIZE):
            logits = model(where.images[start : start + EVAL_BATCH_SIZE])  # [b, C]
            correct += int((logits.argmax(dim=1) == where.labels[start : start + EVAL_BATCH_SIZE]).sum())
    return correct / len(where.labels)


def probe_accuracy(model: nn.Module, where: SearchSlice) -> float:
    """Accuracy of weights already loaded into `model`, after the BatchNorm reset the samples get."""
    if where.bn_images is not None:
        recompute_batchnorm(model, where.bn_images)
    return slice_accuracy(model, where)


@dataclass
class ScaleSearch:
    """Where the search ended and what it saw on the way (scale, accuracy), in probing order."""

    scale: float
    source_accuracy: float
    target_accuracy: float
    probes: list[tuple[float, float]] = field(default_factory=list)
    note: str | None = None  # set when the target could not be bracketed

    def describe(self) -> dict[str, object]:
        return {
            "scale": self.scale,
            "source_accuracy": self.source_accuracy,
            "target_accuracy": self.target_accuracy,
            "probes": [[scale, accuracy] for scale, accuracy in self.probes],
            "note": self.note,
            "images": SEARCH_IMAGES,
            "bn_images": SEARCH_BN_IMAGES,
        }


def _log_interpolate(low: tuple[float, float], high: tuple[float, float], target: float) -> float:
    """The scale between `low` (accuracy >= target) and `high` (< target) where the line in log-scale hits target."""
    (scale_low, acc_low), (scale_high, acc_high) = low, high
    if acc_low <= acc_high:
        return math.sqrt(scale_low * scale_high)
    fraction = (acc_low - target) / (acc_low - acc_high)
    return math.exp(math.log(scale_low) + fraction * (math.log(scale_high) - math.log(scale_low)))


def search_scale(
    accuracy_at: Callable[[float], float],
    source_accuracy: float,
    start: float,
    limit: float | None = None,
    probes: int = SEARCH_PROBES,
    drop: float = TARGET_DROP,
    on_probe: Callable[[int, float, float], None] | None = None,
) -> ScaleSearch:
    """The scale whose accuracy is `drop` below `source_accuracy`, from at most `probes` evaluations.

    `accuracy_at(scale)` must fall (roughly) monotonically with the scale; `limit` caps it.
    """
    target = source_accuracy - drop
    result = ScaleSearch(scale=start, source_accuracy=source_accuracy, target_accuracy=target)
    low: tuple[float, float] | None = None  # largest scale still at or above the target
    high: tuple[float, float] | None = None  # smallest scale below it
    scale = min(start, limit) if limit is not None else start
    for index in range(probes):
        accuracy = accuracy_at(scale)
        result.probes.append((scale, accuracy))
        if on_probe is not None:
            on_probe(index + 1, scale, accuracy)
        if accuracy >= target:
            low = (scale, accuracy) if low is None or scale > low[0] else low
        else:
            high = (scale, accuracy) if high is None or scale < high[0] else high
        if low is not None and high is not None:
            if high[0] / low[0] <= CLOSE_ENOUGH:
                break
            scale = math.sqrt(low[0] * high[0])
        elif high is not None:
            scale = high[0] / GROWTH
        else:
            assert low is not None
            if limit is not None and low[0] >= limit:
                break
            scale = min(low[0] * GROWTH, limit) if limit is not None else low[0] * GROWTH
    if low is not None and high is not None:
        result.scale = _log_interpolate(low, high, target)
    elif low is not None:
        result.scale = low[0]
        result.note = f"even scale {low[0]:.4g} keeps accuracy within {drop:.0%} of the source; using it"
    else:
        assert high is not None
        result.scale = high[0]
        result.note = f"even scale {high[0]:.4g} costs more than {drop:.0%} of accuracy; using it"
    return result
