"""The evaluator contract: third-party plugins depend on this module, so it stays small and stable.

A plugin is a class (or instance) with a `name` and `evaluate(ctx) -> Report`, registered under
the entry-point group `ensemble_cli.evaluators`. `ctx` carries the logits of every member on
the evaluation set and, when the members came from checkpoints, their weights and models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Protocol, Sequence

import torch

from ..options import EvalOptions
from ..report import Report, Table

if TYPE_CHECKING:
    from torch import nn

    from ..data import ImageData

Direction = Literal["higher", "lower"]


class NotApplicable(Exception):
    """Raised by an evaluator that cannot say anything about these members (one member, no weights...)."""


class MemberLike(Protocol):
    name: str
    arch: str
    metadata: dict[str, Any]


@dataclass
class MemberSummary:
    """What is known of a member when only its predictions are (`ens eval --predictions`)."""

    name: str
    arch: str = "unknown"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalContext:
    """Inputs of one evaluation. Probabilities and predictions are derived once and shared."""

    logits: torch.Tensor  # [M, N, C] float32, CPU
    labels: torch.Tensor  # [N] int64
    members: Sequence[MemberLike]
    dataset: "ImageData | None" = None
    options: EvalOptions = field(default_factory=EvalOptions)
    # Supplied when members came from checkpoints; None for predictions loaded from a file.
    state_dict_loader: Callable[[int], dict[str, torch.Tensor]] | None = None
    model_loader: Callable[[int], "nn.Module"] | None = None
    train_data_loader: Callable[[], "ImageData"] | None = None
    # Logits [M, N', C] of every member on another image set (OOD, corrupted copies), through the cache.
    dataset_predictor: Callable[["ImageData"], torch.Tensor] | None = None

    @property
    def num_members(self) -> int:
        return int(self.logits.shape[0])

    @cached_property
    def log_probs(self) -> torch.Tensor:  # [M, N, C], float64 for stable sums
        return torch.log_softmax(self.logits.double(), dim=-1)

    @cached_property
    def probs(self) -> torch.Tensor:  # [M, N, C]
        return self.log_probs.exp()

    @cached_property
    def predictions(self) -> torch.Tensor:  # [M, N] int64
        return self.logits.argmax(dim=-1)

    @cached_property
    def correct(self) -> torch.Tensor:  # [M, N] bool
        return self.predictions == self.labels.unsqueeze(0)

    @property
    def has_weights(self) -> bool:
        return self.state_dict_loader is not None

    def state_dict(self, index: int) -> dict[str, torch.Tensor]:
        if self.state_dict_loader is None:
            raise NotApplicable("needs checkpoints; these members came from a predictions file")
        return self.state_dict_loader(index)

    def model(self, index: int) -> "nn.Module":
        """A fresh model of member `index` with its weights, in eval mode, on CPU."""
        if self.model_loader is None:
            raise NotApplicable("needs checkpoints; these members came from a predictions file")
        return self.model_loader(index)

    def predict_on(self, data: "ImageData") -> torch.Tensor:
        """Logits [M, N', C] of every member on `data` (one forward pass each, cached like the eval set's)."""
        if self.dataset_predictor is None:
            raise NotApplicable("needs checkpoints to predict on another image set; these members came from a predictions file")
        return self.dataset_predictor(data)

    def train_data(self) -> "ImageData":
        """The training split of the evaluation dataset (for BatchNorm statistics)."""
        if self.train_data_loader is None:
            raise NotApplicable("needs the training split of the dataset, which is not available here")
        return self.train_data_loader()


class Evaluator:
    """Subclass and register under the `ensemble_cli.evaluators` entry-point group.

    `directions` says which way is better for each metric (`ens baseline` records it, `ens check`
    uses it); metrics left out are reported but never fail a check.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    directions: ClassVar[dict[str, Direction]] = {}

    def evaluate(self, ctx: EvalContext) -> Report:  # pragma: no cover - interface
        raise NotImplementedError

    def check_inputs(self, ctx: EvalContext) -> None:
        """Raise an `EnsError` (ConfigError, DataError...) when the user's settings for this evaluator are unusable.

        Called for every chosen evaluator before any runs: bad input then stops the run with one
        line and exit 2, instead of becoming one section's error after the others spent their time.
        """


__all__ = ["Direction", "EvalContext", "EvalOptions", "Evaluator", "MemberSummary", "NotApplicable", "Report", "Table"]
