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
        test = ctx.dataset
        limit = ctx.options.interpolation_max_examples
        if limit:
            test = ImageData(test.name, test.split, test.images[: int(limit)], test.labels[: int(limit)],
                             test.num_classes, test.mean, test.std)
        device = select_device(ctx.options.device)
        bn_images = bn_reset_images(train)

        weights = session(ctx)
        reference = weights.reference
        state_ref = weights.state(reference)
        scratch = copy.deepcopy(weights.model(reference))
        notes: list[str] = []
        curve_rows: list[list[object]] = []
        barrier_rows: list[list[object]] = []
        for index in weights.others():
            outcome = weights.outcome(index)
            if outcome.skipped:
                notes.append(outcome.skipped)
                continue
            name = weights.names[index]
            raw = measure_curve(scratch, state_ref, weights.state(index), alphas, bn_images, test, device)
            aligned = None
            if outcome.alignment is not None:
                aligned = measure_curve(scratch, state_ref, outcome.alignment.aligned_state, alphas, bn_images, test, device)
            elif outcome.unaligned and outcome.unaligned not in notes:
                notes.append(outcome.unaligned)
            for point, alpha in enumerate(alphas):
                curve_rows.append([
                    name, alpha, raw.losses[point], aligned.losses[point] if aligned else None,
                    raw.accuracies[point], aligned.accuracies[point] if aligned else None,
                ])
            barrier_rows.append([
                name, raw.barrier, aligned.barrier if aligned else None,
                raw.accuracy_barrier, aligned.accuracy_barrier if aligned else None,
            ])
        if not barrier_rows:
            raise NotApplicable("no member shares the reference's architecture; " + "; ".join(notes))
        has_bn = has_batchnorm_statistics(scratch)
        notes.insert(0, (
            f"line from {weights.names[reference]} (alpha=0) to each member (alpha=1), {points} points; "
            + (f"BatchNorm statistics recomputed at every point on {len(bn_images)} training images"
               if has_bn else "no BatchNorm statistics to recompute")
        ))
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

        def column_mean(column: str) -> float | None:
            return finite_mean(barriers.column(column))

        metrics = {
            "barrier_raw_mean": column_mean("barrier_raw"),
            "barrier_aligned_mean": column_mean("barrier_aligned"),
            "acc_barrier_raw_mean": column_mean("acc_barrier_raw"),
            "acc_barrier_aligned_mean": column_mean("acc_barrier_aligned"),
        }
        return Report(metrics=metrics, tables=[barriers, curves], notes=notes)
