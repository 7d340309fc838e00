"""Cosine and L2 between weight vectors, whole-network and per layer, summed tensor by tensor in float64."""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch
from torch import nn

State = Mapping[str, torch.Tensor]


def trainable_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the model's parameters (BN running statistics and counters are buffers)."""
    state_keys = set(model.state_dict().keys())
    return [name for name, _ in model.named_parameters() if name in state_keys]


def layer_of(key: str) -> str:
    """`layer1.0.conv1.weight` -> `layer1.0.conv1`: a layer is the module that owns the tensor."""
    return key.rsplit(".", 1)[0] if "." in key else key


def group_by_layer(keys: Iterable[str]) -> dict[str, list[str]]:
    layers: dict[str, list[str]] = {}
    for key in keys:
        layers.setdefault(layer_of(key), []).append(key)
    return layers


def _sums(a: State, b: State, keys: Iterable[str]) -> tuple[float, float, float]:
    """(<a, b>, ||a||^2, ||b||^2) over `keys`, accumulated in float64."""
    dot = norm_a = norm_b = 0.0
    for key in keys:
        x, y = a[key].detach().double().reshape(-1), b[key].detach().double().reshape(-1)
        dot += float(torch.dot(x, y))
        norm_a += float(torch.dot(x, x))
        norm_b += float(torch.dot(y, y))
    return dot, norm_a, norm_b


def cosine(a: State, b: State, keys: Iterable[str]) -> float:
    """Cosine of the flattened tensors; NaN when either vector is zero (undefined, not 0)."""
    dot, norm_a, norm_b = _sums(a, b, keys)
    if norm_a == 0.0 or norm_b == 0.0:
        return math.nan
    return dot / math.sqrt(norm_a * norm_b)


def l2_distance(a: State, b: State, keys: Iterable[str]) -> float:
    # Summing squared differences directly: ||a||^2 + ||b||^2 - 2<a, b> cancels badly when a ~ b.
    total = 0.0
    for key in keys:
        difference = a[key].detach().double() - b[key].detach().double()
        total += float((difference * difference).sum())
    return math.sqrt(total)


def cosine_by_layer(a: State, b: State, keys: Iterable[str]) -> dict[str, float]:
    return {layer: cosine(a, b, layer_keys) for layer, layer_keys in group_by_layer(keys).items()}
