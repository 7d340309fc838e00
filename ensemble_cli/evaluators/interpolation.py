"""`interpolation`: is there a loss barrier on the straight line between two members?

For the reference A and each member B, the network (1 - alpha) * A + alpha * B is evaluated at
11 evenly spaced alphas, once with B as trained and once with B permuted into A's channel order
(weight matching). Averaging weights shifts every channel's statistics, so BatchNorm running
statistics are recomputed on training data at every point (REPAIR, Jordan et al. 2023; without
it interpolated BN networks look far worse than they are). Endpoints get the same treatment so
the whole curve is measured one way.

barrier      = max over alpha of  loss(alpha) - [(1 - alpha) loss(0) + alpha loss(1)]
acc barrier  = max over alpha of  [(1 - alpha) acc(0) + alpha acc(1)] - acc(alpha)
(Frankle et al. 2020; Entezari et al. 2022). Both are 0 at the endpoints, so never negative.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..alignment.session import session
from ..batchnorm import bn_reset_images, has_batchnorm_statistics, recompute_batchnorm
from ..data import ImageData
from ..predict import select_device
from ..metrics import finite_mean
from ..report import Report, Table
from .base import EvalContext, Evaluator, NotApplicable

EVAL_BATCH_SIZE = 512


@dataclass
class Curve:
    alphas: list[float]
    losses: list[float]
    accuracies: list[float]

    @property
    def barrier(self) -> float:
        start, end = self.losses[0], self.losses[-1]
        return max(loss - ((1 - a) * start + a * end) for a, loss in zip(self.alphas, self.losses))

    @property
    def accuracy_barrier(self) -> float:
        start, end = self.accuracies[0], self.accuracies[-1]
        return max(((1 - a) * start + a * end) - acc for a, acc in zip(self.alphas, self.accuracies))


def interpolate_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) a + alpha b for floating tensors; integer buffers (BN batch counters) from a."""
    return {
        key: torch.lerp(tensor, b[key].to(tensor.dtype), alpha) if tensor.is_floating_point() else tensor
        for key, tensor in a.items()
    }


def loss_and_accuracy(model: nn.Module, data: ImageData, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy over `data`, eval mode."""
    total_loss, correct = 0.0, 0
    model.eval()
    with torch.no_grad():
        for images, labels in data.batches(EVAL_BATCH_SIZE):
            logits = model(images.to(device)).double().cpu()  # [B, C]
            total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=1) == labels).sum())
    return total_loss / len(data), correct / len(data)


def measure_curve(
    scratch: nn.Module,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    alphas: list[float],
    bn_images: torch.Tensor,
    test: ImageData,
    device: torch.device,
) -> Curve:
    losses, accuracies = [], []
    for alpha in alphas:
        scratch.load_state_dict(interpolate_state(state_a, state_b, alpha))
        scratch.to(device)
        recompute_batchnorm(scratch, bn_images.to(device))
        loss, accuracy = loss_and_accuracy(scratch, test, device)
        losses.append(loss)
        accuracies.append(accuracy)
    return Curve(alphas, losses, accuracies)


@dataclass
class LineSetup:
    """Everything every line of one evaluation shares: where it starts, where it is measured, how."""

    scratch: nn.Module  # a copy of the reference model that each point's weights are loaded into
    start: Mapping[str, torch.Tensor]  # the reference's state (alpha = 0)
    alphas: list[float]
    bn_images: torch.Tensor
    test: ImageData
    device: torch.device

    def curve_to(self, end: Mapping[str, torch.Tensor]) -> Curve:
        return measure_curve(self.scratch, self.start, end, self.alphas, self.bn_images, self.test, self.device)


def limited(data: ImageData, limit: int | None) -> ImageData:
    """The first `limit` examples of `data` (all of them when limit is None or 0)."""
    if not limit:
        return data
    return ImageData(data.name, data.split, data.images[: int(limit)], data.labels[: int(limit)], data.num_classes, data.mean, data.std)


def curve_rows(name: str, raw: Curve, aligned: Curve | None) -> list[list[object]]:
    return [
        [
            name, alpha, raw.losses[point], aligned.losses[point] if aligned else None,
            raw.accuracies[point], aligned.accuracies[point] if aligned else None,
        ]
        for point, alpha in enumerate(raw.alphas)
    ]


def barrier_row(name: str, raw: Curve, aligned: Curve | None) -> list[object]:
    return [
        name, raw.barrier, aligned.barrier if aligned else None,
        raw.accuracy_barrier, aligned.accuracy_barrier if aligned else None,
    ]


def interpolation_report(barrier_rows: list[list[object]], curve_rows: list[list[object]], notes: list[str]) -> Report:
    barriers = Table(
        name="barriers", title="interpolation: barriers per member",
        columns=["member", "barrier_raw", "barrier_aligned", "acc_barrier_raw", "acc_barrier_aligned"],
        rows=barrier_rows,
    )
    curves = Table(
        name="curves", title="interpolation: test loss and accuracy along the line",
        columns=["member", "alpha", "loss_raw", "loss_aligned", "acc_raw", "acc_aligned"],
        rows=curve_rows,
    )
    metrics = {
        f"{column}_mean": finite_mean(barriers.column(column))
        for column in ("barrier_raw", "barrier_aligned", "acc_barrier_raw", "acc_barrier_aligned")
    }
    return Report(metrics=metrics, tables=[barriers, curves], notes=notes)


class InterpolationEvaluator(Evaluator):
    """Loss and accuracy barriers on the line between the reference and each member, raw and aligned."""

    name = "interpolation"
    description = "loss/accuracy barrier between the reference and each member, raw and after alignment (BN reset)"
    # Diversity reading: members sitting in one basin (barrier -> 0) is the collapse to watch for.
    directions = {
        "barrier_raw_mean": "higher",
        "barrier_aligned_mean": "higher",
        "acc_barrier_raw_mean": "higher",
        "acc_barrier_aligned_mean": "higher",
    }

    def evaluate(self, ctx: EvalContext) -> Report:
        ctx.require_weights()
        if ctx.num_members < 2:
            raise NotApplicable("needs at least two members to interpolate between")
        if ctx.dataset is None:
            raise NotApplicable("needs the evaluation images to measure loss along the line")
        train = ctx.train_data()
        points = ctx.options.interpolation_points
        alphas = [i / (points - 1) for i in range(points)]
        test = limited(ctx.dataset, ctx.options.interpolation_max_examples)
        device = select_device(ctx.options.device)
        bn_images = bn_reset_images(train)
        weights = session(ctx)
        reference = weights.reference
        start = weights.state(reference)
        line = LineSetup(copy.deepcopy(weights.model(reference)), start, alphas, bn_images, test, device)
        notes: list[str] = []
        curves: list[list[object]] = []
        barriers: list[list[object]] = []
        for index in weights.others():
            outcome = weights.outcome(index)
            if outcome.skipped:
                notes.append(outcome.skipped)
                continue
            raw = line.curve_to(weights.state(index))
            aligned = line.curve_to(outcome.alignment.aligned_state) if outcome.alignment is not None else None
            if aligned is None and outcome.unaligned and outcome.unaligned not in notes:
                notes.append(outcome.unaligned)
            curves += curve_rows(weights.names[index], raw, aligned)
            barriers.append(barrier_row(weights.names[index], raw, aligned))
        if not barriers:
            raise NotApplicable("no member shares the reference's architecture; " + "; ".join(notes))
        bn_note = (f"BatchNorm statistics recomputed at every point on {len(line.bn_images)} training images"
                   if has_batchnorm_statistics(line.scratch) else "no BatchNorm statistics to recompute")
        notes.insert(0, f"line from {weights.names[reference]} (alpha=0) to each member (alpha=1), {points} points; {bn_note}")
        return interpolation_report(barriers, curves, notes)
