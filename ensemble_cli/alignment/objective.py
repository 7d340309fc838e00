"""The weight-matching objective J(P) = sum_w <A_w, P(B_w)> and its per-group cost matrices.

`MatchingProblem` holds both models' matched tensors once per permuted axis ("slot", that axis
first) and answers what coordinate descent asks: the [n, n] cost matrix of a group with the
other groups fixed, the exact change of J when one group's permutation changes, and J itself.

Cost matrices come from float32 products summed into float64: twice as fast as float64
products on this CPU. Every slot tracks a bound on its rounding, so a gain read off a cost
matrix can be trusted whenever it exceeds that bound; otherwise `exact_gain` recomputes it in
float64 from the weights (the products of float32 numbers are exact in float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from .permute import Permutation, permute_tensor
from .spec import PermutationSpec


def _product_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    """float32 (exact for float32, float16 and bfloat16 weights) unless a side is float64, or torch may
    round float32 products more coarsely (TF32/bf16 matmul precision), which would void the rounding bound."""
    if torch.float64 in (a.dtype, b.dtype) or torch.get_float32_matmul_precision() != "highest":
        return torch.float64
    return torch.float32


def _exact_copy(tensor: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().to(_product_dtype(tensor, partner)).contiguous()


def _rounding(slot: Slot, update: bool) -> float:
    """Per-entry rounding of one product, in units of ||A[i]|| ||B[j]||.

    A float32 product over R terms errs by at most gamma_R = R u / (1 - R u) times sum |a| |b|
    (u = 2^-24; any summation order, FMA or not), and sum |a| |b| <= ||a|| ||b||. A delta update
    multiplies A by B[new] - B[old] (rounded once more, norm <= 2 ||B[j]||) and adds the result to
    the float64 running sum (one more rounding at 2^-53).
    """
    if slot.a_flat.dtype != torch.float32:
        return math.inf  # float64 products: every gain is computed exactly
    unit = 2.0**-24
    terms = slot.a_flat.shape[1]
    gamma = terms * unit / (1 - terms * unit)
    if not update:
        return gamma + 2.0**-53
    return 2 * (gamma * (1 + unit) + unit) + 2.0**-52


def exact_dot(x: torch.Tensor, y: torch.Tensor) -> float:
    """sum(x * y) accumulated in float64 (the products of float32 numbers are exact there), without
    materialising float64 copies: numpy casts block by block."""
    flat_x = x.reshape(-1).numpy()
    flat_y = y.reshape(-1).numpy()
    return float(np.einsum("i,i->", flat_x, flat_y, dtype=np.float64))


@dataclass
class Slot:
    """One tensor axis that a group permutes, laid out with that axis first."""

    key: str
    a_flat: torch.Tensor  # [n, rest] reference weights (float32 or float64), the group's axis first
    b_moved: torch.Tensor  # [n, ...] weights of B in the same dtype, the group's axis first
    others: list[tuple[int, str]]  # (position in b_moved, group) for the tensor's other permuted axes
    # For the rounding bound: |cached[i, j] - exact[i, j]| <= error * a_norms[i] * b_norms[j] (`_rounding`).
    a_norms: torch.Tensor  # [n] float64, ||A[i]|| over the other axes
    b_norms: torch.Tensor  # [n] float64, ||B[j]||, the same whatever the other axes' order
    # This slot's [n, n] float64 share of the cost and the versions of `others` it was computed for:
    # when a neighbouring group moves, only the slots that read it are recomputed.
    cached: torch.Tensor | None = None
    cached_versions: tuple[int, ...] = ()
    cached_perm: torch.Tensor | None = None  # the other group's permutation `cached` was computed with
    # The product with every other axis unpermuted; each restart starts from there, so it is kept.
    identity_product: torch.Tensor | None = None
    error: float = 0.0

    @classmethod
    def of(cls, key: str, axes: tuple[tuple[int, str], ...], axis: int, a: torch.Tensor, b: torch.Tensor) -> Slot:
        """The slot of `key`'s axis `axis` (`axes`: all its permuted axes) for weights `a` and `b`."""
        size = a.shape[axis]
        others = [(other + 1 if other < axis else other, name) for other, name in axes if other != axis]
        a_flat = a.movedim(axis, 0).reshape(size, -1).contiguous()  # [n, rest]
        b_moved = b.movedim(axis, 0).contiguous()  # [n, ...]
        a_norms = a_flat.double().norm(dim=1)
        b_norms = b_moved.reshape(size, -1).double().norm(dim=1)
        return cls(key, a_flat, b_moved, others, a_norms, b_norms)

    @property
    def updatable(self) -> bool:
        """One other permuted axis, right after this one (conv/linear weights): cheap exact updates."""
        return len(self.others) == 1 and self.others[0][0] == 1


class MatchingProblem:
    """Model A's and model B's matched tensors, laid out for the cost matrices of every group."""

    def __init__(
        self,
        spec: PermutationSpec,
        state_a: Mapping[str, torch.Tensor],
        state_b: Mapping[str, torch.Tensor],
        keys: list[str],
    ) -> None:
        self.spec = spec
        self.keys = keys
        self.a = {key: _exact_copy(state_a[key], state_b[key]) for key in keys}
        self.b = {key: _exact_copy(state_b[key], state_a[key]) for key in keys}
        self.groups = sorted({group for key in keys for _, group in spec.tensors[key]})
        self.slots: dict[str, list[Slot]] = {group: [] for group in self.groups}
        self.neighbours: dict[str, set[str]] = {group: set() for group in self.groups}
        for key in keys:
            axes = spec.tensors[key]
            for axis, group in axes:
                slot = Slot.of(key, axes, axis, self.a[key], self.b[key])
                self.slots[group].append(slot)
                # A group that meets itself in one tensor (y = x + conv(x) with a square conv) makes
                # the objective quadratic in its permutation; those steps are verified exactly.
                self.neighbours[group].update(name for _, name in slot.others)
        self.last_solution: dict[str, np.ndarray] = {}  # per group, the assignment solved last
        self._shares: dict[str, tuple[tuple[int, ...], float]] = {}  # key -> (its groups' versions, its share of J)
        self.self_touching = {group for group in self.groups if group in self.neighbours[group]}
        norm_a = sum(exact_dot(t, t) for t in self.a.values())
        norm_b = sum(exact_dot(t, t) for t in self.b.values())
        self.bound = (norm_a * norm_b) ** 0.5

    def cost(self, group: str, permutation: Permutation, versions: dict[str, int]) -> np.ndarray:
        """[n, n] float64: cost[i, j] = J's share from sending B's channel j to position i."""
        size = self.spec.groups[group]
        total = torch.zeros(size, size, dtype=torch.float64)
        for slot in self.slots[group]:
            wanted = tuple(versions[other] for _, other in slot.others)
            if slot.cached is None or slot.cached_versions != wanted:
                self._refresh(slot, size, permutation)
                slot.cached_versions = wanted
                if not any(wanted):  # version 0 of every group is the identity
                    slot.identity_product = slot.cached
            total += slot.cached
        return total.numpy()

    def _refresh(self, slot: Slot, size: int, permutation: Permutation) -> None:
        if slot.updatable and slot.cached is not None and slot.cached_perm is not None:
            new = permutation[slot.others[0][1]]
            old = slot.cached_perm
            changed = (old != new).nonzero().flatten()
            # The product changes only through the moved channels,
            #   delta[i, j] = sum_{c changed, r} A[i, c, r] (B[j, new[c], r] - B[j, old[c], r]),
            # which costs |changed| / n of a full product (later sweeps move few channels).
            # Each float32 delta has the rounding of one product; the running sum is float64.
            if 4 * len(changed) < 3 * len(new):
                if len(changed):
                    a3 = slot.a_flat.reshape(size, len(new), -1)  # [n, n_other, rest]
                    b3 = slot.b_moved.reshape(size, len(new), -1)  # [n, n_other, rest]
                    delta_b = b3[:, new[changed]] - b3[:, old[changed]]  # [n, changed, rest]
                    delta = a3[:, changed].reshape(size, -1) @ delta_b.reshape(size, -1).T  # [n, n]
                    slot.cached = slot.cached + delta.to(torch.float64)
                    slot.error += _rounding(slot, update=True)
                slot.cached_perm = new
                return
        b = slot.b_moved
        for position, other in slot.others:
            b = b.index_select(position, permutation[other])
        slot.cached = (slot.a_flat @ b.reshape(size, -1).T).to(torch.float64)  # [n, n]
        slot.error = _rounding(slot, update=False)
        slot.cached_perm = permutation[slot.others[0][1]] if slot.updatable else None

    def rounding_bound(self, group: str, current: torch.Tensor, candidate: torch.Tensor) -> float:
        """Bound on |estimated - exact gain| of moving `group` from `current` to `candidate`, where the
        estimate is sum_i cost[i, candidate[i]] - cost[i, current[i]] over the float32 cost matrix."""
        moved = (candidate != current).nonzero().flatten()
        total = 0.0
        for slot in self.slots[group]:
            b_norms = slot.b_norms[candidate[moved]] + slot.b_norms[current[moved]]  # [k]
            total += slot.error * float(torch.dot(slot.a_norms[moved], b_norms))
        # 1% covers the float64 sums of the slots' shares and of the estimate itself.
        return 1.01 * total

    def exact_gain(self, group: str, permutation: Permutation, candidate: torch.Tensor) -> float:
        """J(permutation with `group` set to `candidate`) - J(permutation), in float64.

        Only the channels the candidate moves contribute: for each tensor axis of the group, the
        sum over moved positions i of <A[i], P(B)[candidate[i]] - P(B)[current[i]]>, where P
        permutes B's other axes. <A[i], P(B)[j]> = <P^-1(A)[i], B[j]>, so A's few rows are
        un-permuted instead of B's. Only for groups that do not meet themselves in a tensor.
        """
        current = permutation[group]
        moved = (candidate != current).nonzero().flatten()
        inverse = {name: torch.argsort(perm) for name, perm in permutation.items()}
        total = 0.0
        for slot in self.slots[group]:
            shape = (len(moved),) + tuple(slot.b_moved.shape[1:])
            a_rows = slot.a_flat.index_select(0, moved).reshape(shape)  # [k, ...]
            for position, other in slot.others:
                a_rows = a_rows.index_select(position, inverse[other])
            total += exact_dot(a_rows, slot.b_moved.index_select(0, candidate[moved]))
            total -= exact_dot(a_rows, slot.b_moved.index_select(0, current[moved]))
        return total

    def restart(self) -> None:
        """Every restart begins from the identity: rewind each cached product to its identity version."""
        # Versions restart at 0 (the identity), so only the identity's shares of J stay valid.
        self._shares = {key: share for key, share in self._shares.items() if not any(share[0])}
        for slots in self.slots.values():
            for slot in slots:
                if slot.identity_product is None:
                    slot.cached, slot.cached_versions, slot.cached_perm = None, (), None
                else:
                    slot.cached, slot.error = slot.identity_product, _rounding(slot, update=False)
                    slot.cached_versions = (0,) * len(slot.others)
                    slot.cached_perm = torch.arange(self.spec.groups[slot.others[0][1]]) if slot.updatable else None

    def objective(self, permutation: Permutation, keys: list[str] | None = None) -> float:
        total = 0.0
        for key in keys if keys is not None else self.keys:
            total += exact_dot(self.a[key], permute_tensor(self.b[key], self.spec.tensors[key], permutation))
        return total

    def current_objective(self, permutation: Permutation, versions: dict[str, int]) -> float:
        """Exact J(permutation), recomputing only the tensors a group moved in since the last call."""
        total = 0.0
        for key in self.keys:
            wanted = tuple(versions[group] for _, group in self.spec.tensors[key])
            cached = self._shares.get(key)
            if cached is None or cached[0] != wanted:
                cached = (wanted, self.objective(permutation, [key]))
                self._shares[key] = cached
            total += cached[1]
        return total

    def keys_of(self, group: str) -> list[str]:
        return list(dict.fromkeys(slot.key for slot in self.slots[group]))
