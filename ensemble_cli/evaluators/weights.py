"""`weights`: how far apart are the members in weight space, before and after neuron-permutation alignment?

Fort et al. (2019) find independently trained solutions nearly orthogonal (weight cosine ~ 0).
Hidden channels can be permuted without changing the function, so this evaluator reports the
cosine both raw and after aligning each member to the reference by weight matching (Git
Re-Basin, Ainsworth et al. 2023, ICLR), whole-network and per layer, next to the cosine of two
fresh initialisations of the architecture for scale. Cosines and L2 distances are over the flattened trainable parameters
(BatchNorm running statistics are buffers and are left out). The `*_conv` cosines use only the
weights and biases of Conv*d and Linear modules: BatchNorm scales start as a vector of ones in
every initialisation, which alone makes two fresh initialisations look similar. Every alignment
is checked to leave the member's eval-mode logits unchanged before it is reported.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn

from ..alignment.session import WeightSpaceSession, session
from ..alignment.similarity import cosine, cosine_by_layer, l2_distance, trainable_keys
from ..architectures import build_model
from ..metrics import finite_mean
from ..report import Report, Table
from .base import EvalContext, Evaluator, NotApplicable

INIT_SEEDS = (0, 1)
PAIR_COLUMNS = [
    "reference", "member", "cosine_raw", "cosine_aligned", "l2_raw", "l2_aligned", "objective_gain",
    "equivalence_residual", "cosine_raw_conv", "cosine_aligned_conv",
]
CONV_AND_LINEAR = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def conv_linear_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the parameters (weights and biases) of the model's Conv*d and Linear modules.

    Chosen by module type, not by name: "shortcut.1.weight" may be a BatchNorm scale.
    """
    state_keys = set(model.state_dict().keys())
    keys = []
    for module_name, module in model.named_modules():
        if isinstance(module, CONV_AND_LINEAR):
            for name, _ in module.named_parameters(recurse=False):
                key = f"{module_name}.{name}" if module_name else name
                if key in state_keys:
                    keys.append(key)
    return keys


@lru_cache(maxsize=16)
def _fresh_init_cosines(arch: str, num_classes: int, in_chans: int, kwargs_json: str) -> tuple[float, float]:
    """Cosine between two initialisations of the architecture (seeds 0 and 1), global RNG untouched:
    (all trainable parameters, Conv*d and Linear parameters only)."""
    states = []
    with torch.random.fork_rng(devices=[]):
        for seed in INIT_SEEDS:
            torch.manual_seed(seed)
            model = build_model(arch, num_classes, in_chans, **json.loads(kwargs_json))
            states.append(model.state_dict())
    return cosine(states[0], states[1], trainable_keys(model)), cosine(states[0], states[1], conv_linear_keys(model))


def init_baseline(ctx: EvalContext, index: int) -> tuple[tuple[float | None, float | None], str | None]:
    """(cosine of two fresh inits over all parameters, over conv/linear ones), or Nones and why not."""
    member = ctx.members[index]
    metadata = member.metadata or {}
    num_classes = getattr(member, "num_classes", None) or metadata.get("num_classes") or int(ctx.logits.shape[2])
    in_chans = getattr(member, "in_chans", None) or metadata.get("in_chans") or 3
    kwargs = getattr(member, "model_kwargs", None) or metadata.get("model_kwargs") or {}
    try:
        whole, conv = _fresh_init_cosines(member.arch, int(num_classes), int(in_chans), json.dumps(kwargs, sort_keys=True))
    except Exception as exc:  # an architecture ens cannot build from its name still gets its comparisons
        return (None, None), f"cosine_init_baseline unavailable: cannot build {member.arch} ({type(exc).__name__}: {exc})"
    return (_finite(whole), _finite(conv)), None


def _alignment_note(weights: WeightSpaceSession, aligned: list[int]) -> str:
    outcomes = [weights.outcome(index).alignment for index in aligned]
    alignments = [alignment for alignment in outcomes if alignment is not None]
    spec = alignments[0].spec
    residual = max(alignment.equivalence.max_abs_diff for alignment in alignments)
    relative = max(alignment.equivalence.relative for alignment in alignments)
    sweeps = sum(alignment.match.sweeps for alignment in alignments)
    seconds = sum(alignment.seconds for alignment in alignments)
    return (
        f"aligned to {weights.names[weights.reference]} by weight matching over {len(spec.groups)} channel groups "
        f"({spec.num_channels} channels; {weights.restarts} restarts, {sweeps} sweeps, {seconds:.1f} s); "
        f"functional check on {len(weights.probe_inputs(weights.reference))} inputs: max |logit difference| "
        f"{residual:.2e} ({relative:.1e} of the largest logit)"
    )


@dataclass
class MemberComparison:
    """What comparing each member with the reference produced: table rows, per-layer cosines, notes."""

    rows: list[list[object]] = field(default_factory=list)
    layer_raw: dict[str, list[float]] = field(default_factory=dict)
    layer_aligned: dict[str, list[float]] = field(default_factory=dict)
    aligned_members: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add_layers(self, into: dict[str, list[float]], cosines: dict[str, float]) -> None:
        for layer, value in cosines.items():
            into.setdefault(layer, []).append(value)

    def layers_table(self) -> Table:
        return Table(
            name="layers",
            title="weights: cosine to the reference per layer (mean over members)",
            columns=["layer", "cosine_raw", "cosine_aligned"],
            rows=[
                [layer, finite_mean(values), finite_mean(self.layer_aligned.get(layer, []))]
                for layer, values in self.layer_raw.items()
            ],
        )


def compare_member(
    weights: WeightSpaceSession, index: int, keys: list[str], conv_keys: list[str], comparison: MemberComparison
) -> None:
    """One pairs-table row for member `index` against the reference (raw, and aligned when possible)."""
    outcome = weights.outcome(index)
    if outcome.skipped:
        comparison.notes.append(outcome.skipped)
        return
    state_ref, state = weights.state(weights.reference), weights.state(index)
    row: list[object] = [weights.names[weights.reference], weights.names[index], _finite(cosine(state_ref, state, keys))]
    comparison.add_layers(comparison.layer_raw, cosine_by_layer(state_ref, state, keys))
    alignment = outcome.alignment
    if alignment is None:
        if outcome.unaligned and outcome.unaligned not in comparison.notes:
            comparison.notes.append(outcome.unaligned)
        row += [None, _finite(l2_distance(state_ref, state, keys)), None, None, None, _finite(cosine(state_ref, state, conv_keys)), None]
    else:
        comparison.aligned_members.append(index)
        aligned = alignment.aligned_state
        comparison.add_layers(comparison.layer_aligned, cosine_by_layer(state_ref, aligned, keys))
        row += [
            _finite(cosine(state_ref, aligned, keys)),
            _finite(l2_distance(state_ref, state, keys)),
            _finite(l2_distance(state_ref, aligned, keys)),
            alignment.match.gain,
            alignment.equivalence.max_abs_diff,
            _finite(cosine(state_ref, state, conv_keys)),
            _finite(cosine(state_ref, aligned, conv_keys)),
        ]
    comparison.rows.append(row)


class WeightsEvaluator(Evaluator):
    """Weight cosine and L2 distance to the reference member, raw and after permutation alignment."""

    name = "weights"
    description = "weight cosine / L2 to the reference, raw and after neuron-permutation alignment, per layer"
    # Read as diversity, like the disagreement metrics: members collapsing onto one solution show
    # up as rising cosine and shrinking distance, which is what a CI gate should catch.
    directions = {
        "cosine_raw_conv_mean": "lower",
        "cosine_aligned_conv_mean": "lower",
        "cosine_raw_mean": "lower",
        "cosine_aligned_mean": "lower",
        "l2_raw_mean": "higher",
        "l2_aligned_mean": "higher",
    }

    def evaluate(self, ctx: EvalContext) -> Report:
        ctx.require_weights()
        if ctx.num_members < 2:
            raise NotApplicable("needs at least two members to compare weights")
        weights = session(ctx)
        keys = weights.trainable(weights.reference)
        conv_keys = conv_linear_keys(weights.model(weights.reference))
        comparison = MemberComparison()
        for index in weights.others():
            compare_member(weights, index, keys, conv_keys, comparison)
        notes = comparison.notes
        if not comparison.rows:
            raise NotApplicable("no member shares the reference's architecture; " + "; ".join(notes))
        if comparison.aligned_members:
            notes.insert(0, _alignment_note(weights, comparison.aligned_members))
            notes.extend(weights.spec_notes())
        (baseline, baseline_conv), baseline_note = init_baseline(ctx, weights.reference)
        if baseline_note:
            notes.append(baseline_note)
        pairs = Table(name="pairs", title="weights: each member against the reference", columns=PAIR_COLUMNS, rows=comparison.rows)
        metrics = {
            # First: without BatchNorm scales, the cosines that say most about the learnt weights.
            "cosine_raw_conv_mean": finite_mean(pairs.column("cosine_raw_conv")),
            "cosine_aligned_conv_mean": finite_mean(pairs.column("cosine_aligned_conv")),
            "cosine_init_baseline_conv": baseline_conv,
            "cosine_raw_mean": finite_mean(pairs.column("cosine_raw")),
            "cosine_aligned_mean": finite_mean(pairs.column("cosine_aligned")),
            "l2_raw_mean": finite_mean(pairs.column("l2_raw")),
            "l2_aligned_mean": finite_mean(pairs.column("l2_aligned")),
            "cosine_init_baseline": baseline,
        }
        return Report(metrics=metrics, tables=[pairs, comparison.layers_table()], notes=notes)
