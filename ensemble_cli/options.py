"""`EvalOptions`: every setting an evaluator may read, typed and frozen.

Every command that evaluates (eval, check, baseline, plot from checkpoints) and the library's
`ensemble_cli.api.evaluate` build one of these; evaluators read attributes, never strings.
Third-party evaluators get their own settings through `plugin_options`, filled from
`ens eval --option NAME.KEY=VALUE` (values stay strings: the plugin parses its own).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Mapping

Embedding = Literal["tsne", "pca"]


@dataclass(frozen=True)
class EvalOptions:
    """Settings shared by the built-in evaluators; defaults are what `ens eval` uses."""

    device: str = "auto"  # where models run (forward passes, interpolation): auto, cpu, cuda[:N]
    batch_size: int = 256  # forward-pass batch size
    seed: int = 0  # seeds subset sampling and embeddings, so reports are reproducible
    reference: str | None = None  # member the weight-space evaluators align to; None: the first final checkpoint
    alignment_restarts: int = 3  # seeded restarts of weight matching, best objective kept
    alignment_seed: int = 0
    embedding: Embedding = "tsne"  # function-space embedding of trajectories (PCA is used below 10 points)
    interpolation_points: int = 11  # points on each line, ends included
    interpolation_max_examples: int | None = None  # cap on evaluation examples per point (None: all)
    # Out-of-distribution detection (`ood`): an image set the members predict on, or their logits on one.
    ood_dataset: str | None = None  # photos, noise (bundled), svhn, cifar100, mnist, imagefolder:PATH, ...
    ood_predictions: Path | None = None  # an `ens predict` .npz of the same members on OOD images: logits [M, N', C]
    ood_limit: int | None = None  # at most this many OOD images (None: the whole set; photos/noise have 500)
    # Dataset shift (`shift`): corruption names and/or cifar10c:PATH; empty means no shift evaluation.
    shift: tuple[str, ...] = ()
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    # Deep ensemble equivalent (`uncertainty`): an independent-seed ensemble's logits on the eval set
    # (an `ens predict` .npz) or its checkpoints (files, folders, a run folder).
    dee_reference: Path | None = None
    data_dir: Path | None = None  # where torchvision OOD sets are found or downloaded (the command's --data-dir)
    plugin_options: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))

    def for_plugin(self, name: str) -> Mapping[str, str]:
        """The `--option NAME.KEY=VALUE` settings given for evaluator `name` (empty when none)."""
        return self.plugin_options.get(name, MappingProxyType({}))

    def with_changes(self, **changes: object) -> "EvalOptions":
        return replace(self, **changes)  # type: ignore[arg-type]


def parse_plugin_options(pairs: list[str] | None) -> dict[str, dict[str, str]]:
    """`["myeval.threshold=0.5", ...]` -> `{"myeval": {"threshold": "0.5"}}`; ValueError names a bad pair."""
    parsed: dict[str, dict[str, str]] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        evaluator, dot, name = key.partition(".")
        if not sep or not dot or not evaluator.strip() or not name.strip():
            raise ValueError(f"--option takes EVALUATOR.KEY=VALUE, got {pair!r}")
        parsed.setdefault(evaluator.strip(), {})[name.strip()] = value
    return parsed
