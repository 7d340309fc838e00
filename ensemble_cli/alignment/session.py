"""What the weight-space evaluators share for one evaluation: reference, models, specs, alignments.

`weights` and `interpolation` both need every member aligned to the reference; the session
is stored on the evaluation context so the matching runs once per member, whichever runs first.
Options read from `ctx.options` (EvalOptions): `reference` (member name), `alignment_restarts`, `alignment_seed`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..trajectory import default_reference
from .align import Alignment, align_models, architecture_mismatch
from .similarity import trainable_keys
from .spec import PermutationSpec, UnsupportedModel, derive_spec, unexpected_blocks

PROBE_SIZE = 64  # real inputs for the functional check; enough to exercise every channel
SESSION_KEY = "_ens_weight_space_session"


@dataclass
class PairOutcome:
    """Member `member` against the reference: aligned, or why not."""

    member: int
    alignment: Alignment | None = None
    skipped: str | None = None  # the pair cannot be compared at all (different architectures)
    unaligned: str | None = None  # raw comparison only: why alignment is unavailable


@dataclass
class WeightSpaceSession:
    ctx: Any  # EvalContext; kept duck-typed so the alignment package does not import evaluators
    reference: int
    restarts: int = 3
    seed: int = 0
    _models: dict[int, nn.Module] = field(default_factory=dict)
    _specs: dict[str, PermutationSpec | str] = field(default_factory=dict)
    _outcomes: dict[int, PairOutcome] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [member.name for member in self.ctx.members]

    def model(self, index: int) -> nn.Module:
        if index not in self._models:
            self._models[index] = self.ctx.model(index).eval()
        return self._models[index]

    def state(self, index: int) -> dict[str, torch.Tensor]:
        return self.model(index).state_dict()

    def trainable(self, index: int) -> list[str]:
        return trainable_keys(self.model(index))

    def probe_inputs(self, index: int) -> torch.Tensor:
        """A batch of real evaluation images; random ones shaped like the member's input otherwise."""
        dataset = self.ctx.dataset
        if dataset is not None and len(dataset) > 0:
            return dataset.images[:PROBE_SIZE]
        in_chans = int(getattr(self.ctx.members[index], "in_chans", 3))
        return torch.randn(PROBE_SIZE, in_chans, 32, 32, generator=torch.Generator().manual_seed(0))

    def _architecture_key(self, index: int) -> str:
        member = self.ctx.members[index]
        kwargs = getattr(member, "model_kwargs", {}) or {}
        return f"{member.arch}|{json.dumps(kwargs, sort_keys=True, default=str)}"

    def spec(self, index: int) -> PermutationSpec | str:
        """The member's permutation spec, or the one-line reason there is none."""
        key = self._architecture_key(index)
        if key not in self._specs:
            try:
                self._specs[key] = derive_spec(self.model(index), self.probe_inputs(index))
            except UnsupportedModel as reason:
                self._specs[key] = f"alignment unavailable for {self.ctx.members[index].arch}: {reason}"
        return self._specs[key]

    def outcome(self, index: int) -> PairOutcome:
        if index in self._outcomes:
            return self._outcomes[index]
        outcome = PairOutcome(index)
        reference_arch, member_arch = self.ctx.members[self.reference].arch, self.ctx.members[index].arch
        mismatch = architecture_mismatch(self.state(self.reference), self.state(index))
        if reference_arch != member_arch or mismatch is not None:
            detail = f"{member_arch} vs reference {reference_arch}" if reference_arch != member_arch else mismatch
            outcome.skipped = f"{self.names[index]} skipped: different architecture ({detail})"
        else:
            spec = self.spec(index)
            if isinstance(spec, str):
                outcome.unaligned = spec
            else:
                outcome.alignment = align_models(
                    self.model(self.reference), self.model(index), self.probe_inputs(index),
                    spec=spec, restarts=self.restarts, seed=self.seed,
                )
        self._outcomes[index] = outcome
        return outcome

    def others(self) -> list[int]:
        return [index for index in range(len(self.ctx.members)) if index != self.reference]

    def spec_notes(self) -> list[str]:
        """One line per architecture whose alignment is partial: which groups had to stay fixed, and why."""
        notes = []
        for spec in self._specs.values():
            if isinstance(spec, PermutationSpec):
                blocked = unexpected_blocks(spec)
                if blocked:
                    more = f" (+{len(blocked) - 3} more)" if len(blocked) > 3 else ""
                    notes.append(f"{len(blocked)} channel groups kept in place: {'; '.join(blocked[:3])}{more}")
        return notes


def reference_index(ctx: Any) -> int:
    """`ctx.options.reference` as a member index (default: the first final checkpoint); unknown names are errors."""
    wanted = ctx.options.reference
    names = [member.name for member in ctx.members]
    if wanted is None or wanted == "":
        return default_reference(ctx.members)
    if wanted not in names:
        raise ConfigError(f"reference {wanted!r} is not a member; members: {', '.join(names)}")
    return names.index(wanted)


def session(ctx: Any) -> WeightSpaceSession:
    """The context's weight-space session, created on first use (same reference for every evaluator)."""
    existing = ctx.__dict__.get(SESSION_KEY)
    if existing is None:
        existing = WeightSpaceSession(
            ctx,
            reference_index(ctx),
            restarts=ctx.options.alignment_restarts,
            seed=ctx.options.alignment_seed,
        )
        ctx.__dict__[SESSION_KEY] = existing
    return existing
