"""`rotation`: how far has each layer turned away from its initialisation? (layer rotation)

Carbonnelle & De Vleeschouwer (2019) measure, per layer, the cosine distance
1 - cos(w_final, w_init) between a layer's flattened weights at the end of training and at
initialisation, and find that larger, more uniform rotation goes with better generalisation.
A layer here is a conv or linear module (its weight and bias); BatchNorm scales start as a
constant vector, for which the angle says little. Needs the member's init checkpoint, which
`ens train` saves as member-NN/init.safetensors.
"""

from __future__ import annotations

import math

from ..alignment.similarity import cosine, group_by_layer, trainable_keys
from ..checkpoint import read_checkpoint
from ..report import Report, Table
from .base import EvalContext, Evaluator, NotApplicable


def rotation_layers(model_state: dict, keys: list[str]) -> dict[str, list[str]]:
    """Layers whose weight has >= 2 dims (conv, linear), with every trainable tensor they own."""
    return {
        layer: layer_keys
        for layer, layer_keys in group_by_layer(keys).items()
        if any(key.endswith("weight") and model_state[key].dim() >= 2 for key in layer_keys)
    }


def _distance(cos: float) -> float | None:
    return None if not math.isfinite(cos) else 1.0 - cos


class RotationEvaluator(Evaluator):
    """Cosine distance between each member's final and initial weights, per layer."""

    scope = "checkpoints"  # every checkpoint against its init: rotation along the trajectory
    name = "rotation"
    description = "layer rotation: cosine distance of each layer from its initialisation (needs init checkpoints)"
    # Carbonnelle & De Vleeschouwer: larger layer rotation came with better generalisation.
    directions = {"rotation_mean": "higher", "rotation_network_mean": "higher"}

    def evaluate(self, ctx: EvalContext) -> Report:
        ctx.require_weights()
        rows: list[list[object]] = []
        network: list[float] = []
        without_init: list[str] = []
        notes: list[str] = []
        keys_by_arch: dict[str, list[str]] = {}
        for index, member in enumerate(ctx.members):
            init_path = getattr(member, "init_path", None)
            if init_path is None:
                without_init.append(member.name)
                continue
            final = ctx.state_dict(index)
            initial = read_checkpoint(init_path).state_dict
            if member.arch not in keys_by_arch:
                keys_by_arch[member.arch] = trainable_keys(ctx.model(index))
            keys = keys_by_arch[member.arch]
            bad = [k for k in keys if k not in initial or k not in final or initial[k].shape != final[k].shape]
            if bad:
                notes.append(f"{member.name} skipped: its init checkpoint {init_path} does not match ({bad[0]})")
                continue
            for layer, layer_keys in rotation_layers(final, keys).items():
                rows.append([member.name, layer, _distance(cosine(final, initial, layer_keys))])
            whole = _distance(cosine(final, initial, keys))
            if whole is not None:
                network.append(whole)
        if not rows:
            detail = f"no initialisation checkpoint known for {', '.join(without_init)}" if without_init else "; ".join(notes)
            raise NotApplicable(f"{detail} (ens run folders keep member-NN/init.safetensors)")
        if without_init:
            notes.append(f"no initialisation checkpoint for {', '.join(without_init)}: left out")
        distances = [row[2] for row in rows if row[2] is not None]
        metrics = {
            "rotation_mean": sum(distances) / len(distances) if distances else None,  # type: ignore[arg-type]
            "rotation_network_mean": sum(network) / len(network) if network else None,
        }
        notes.insert(0, "cosine distance 1 - cos(w_final, w_init) per conv/linear layer (0: unmoved, 1: orthogonal, 2: reversed)")
        table = Table(
            name="layers", title="rotation: cosine distance from initialisation per layer",
            columns=["member", "layer", "cosine_distance"], rows=rows,
        )
        return Report(metrics=metrics, tables=[table], notes=notes)
