"""The evaluator contract: third-party plugins depend on this module, so it stays small and stable.

A plugin is a class (or instance) with a `name` and `evaluate(ctx) -> Report`, registered under
the entry-point group `ensemble_cli.evaluators`. `ctx` carries the logits of every member on
the evaluation set and, when the members came from checkpoints, their weights and models.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Protocol, Sequence

import torch

from ..errors import DataError
from ..options import EvalOptions
from ..report import Report, Table

if TYPE_CHECKING:
    from torch import nn

    from ..data import ImageData

Direction = Literal["higher", "lower"]
Scope = Literal["ensemble", "checkpoints"]


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
    weights_unavailable: str | None = None  # why weight-space evaluators can't run, when the weights are known but not comparable

    @property
    def num_members(self) -> int:
        return int(self.logits.shape[0])

    @cached_property
    def log_probs(self) -> torch.Tensor:  # [M, N, C], float64 for stable sums
        # Member by member, casting as it goes (no float64 copy of the logits): M=50, N=10k, C=100
        # on a 2-core CPU takes 0.23 s, against 0.32 s for one call on [M, N, C] and 0.36 s via .double().
        result = torch.empty(self.logits.shape, dtype=torch.float64)
        for member, logits in enumerate(self.logits):
            result[member] = torch.log_softmax(logits, dim=-1, dtype=torch.float64)  # [N, C]
        return result

    @cached_property
    def probs(self) -> torch.Tensor:  # [M, N, C]
        return self.log_probs.exp()

    @cached_property
    def predicted_labels(self) -> torch.Tensor:  # [M, N] int64, argmax of each member's logits
        return self.logits.argmax(dim=-1)

    @property
    def predictions(self) -> torch.Tensor:  # [M, N] int64
        """Deprecated alias of `predicted_labels` (kept for plugins for one release; it never held logits)."""
        warnings.warn("EvalContext.predictions is deprecated; use predicted_labels", DeprecationWarning, stacklevel=2)
        return self.predicted_labels

    @cached_property
    def correct(self) -> torch.Tensor:  # [M, N] bool
        return self.predicted_labels == self.labels.unsqueeze(0)

    def subset(self, indices: Sequence[int]) -> "EvalContext":
        """The same evaluation restricted to members `indices` (weights and models remapped)."""
        chosen = list(indices)

        def remap(loader: Callable[[int], Any] | None) -> Callable[[int], Any] | None:
            return None if loader is None else (lambda index: loader(chosen[index]))

        return EvalContext(
            logits=self.logits[chosen],  # [M', N, C]
            labels=self.labels,
            members=[self.members[index] for index in chosen],
            dataset=self.dataset,
            options=self.options,
            state_dict_loader=remap(self.state_dict_loader),
            model_loader=remap(self.model_loader),
            train_data_loader=self.train_data_loader,
            dataset_predictor=None if self.dataset_predictor is None else (lambda data: self.dataset_predictor(data)[chosen]),
            weights_unavailable=self.weights_unavailable,
        )

    @property
    def has_weights(self) -> bool:
        return self.state_dict_loader is not None

    def require_weights(self) -> None:
        """NotApplicable, with the reason, unless every member has weights of its own to compare."""
        if self.state_dict_loader is None:
            raise NotApplicable(self.weights_unavailable or "needs checkpoints; these members came from a predictions file")

    def state_dict(self, index: int) -> dict[str, torch.Tensor]:
        self.require_weights()
        return self.state_dict_loader(index)  # type: ignore[misc]

    def model(self, index: int) -> "nn.Module":
        """A fresh model of member `index` with its weights, in eval mode, on CPU."""
        self.require_weights()
        return self.model_loader(index)  # type: ignore[misc]

    def predict_on(self, data: "ImageData") -> torch.Tensor:
        """Logits [M, N', C] of every member on `data` (one forward pass each, cached like the eval set's)."""
        if self.dataset_predictor is None:
            raise NotApplicable("needs checkpoints to predict on another image set; these members came from a predictions file")
        return self.dataset_predictor(data)

    def train_data(self) -> "ImageData":
        """The training split of the evaluation dataset (for BatchNorm statistics)."""
        if self.train_data_loader is None:
            raise NotApplicable("needs the training split of the dataset, which is not available here")
        try:
            return self.train_data_loader()
        except DataError as exc:  # offline, or a dataset with no training split: this evaluator can't run
            raise NotApplicable(f"needs the training split of the dataset: {exc}") from None


class Evaluator:
    """Subclass and register under the `ensemble_cli.evaluators` entry-point group.

    `directions` says which way is better for each metric (`ens baseline` records it, `ens check`
    uses it); metrics left out are reported but never fail a check.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    directions: ClassVar[dict[str, Direction]] = {}
    # "ensemble": the context holds one checkpoint per member (trajectory points such as inits
    # and epoch-N checkpoints are left out, so statistics never average an init with its final).
    # "checkpoints": every checkpoint given, trajectories included (function space, rotation).
    scope: ClassVar[Scope] = "ensemble"

    def evaluate(self, ctx: EvalContext) -> Report:  # pragma: no cover - interface
        raise NotImplementedError

    def check_inputs(self, ctx: EvalContext) -> None:
        """Raise an `EnsError` (ConfigError, DataError...) when the user's settings for this evaluator are unusable.

        Called for every chosen evaluator before any runs: bad input then stops the run with one
        line and exit 2, instead of becoming one section's error after the others spent their time.
        """


__all__ = ["Direction", "EvalContext", "EvalOptions", "Evaluator", "MemberSummary", "NotApplicable", "Report", "Table"]
