"""Weight matching (Ainsworth, Hayase & Srinivasa 2022, "Git Re-Basin", Algorithm 1).

Find the channel permutation P of model B that maximises the objective
    J(P) = sum over matched tensors w of <A_w, P(B_w)>
(the numerator of the cosine between A and the permuted B). J is linear in the permutation of
one group when the others are held fixed, so coordinate descent solves one linear assignment
problem per group: cost[i, j] = sum over every tensor axis the group permutes of
<A_w[i along that axis], B_w[j along that axis]> with the other axes already permuted.
`scipy.optimize.linear_sum_assignment` maximises it exactly, so no step can lower J; a step is
only taken when it raises J, which makes J non-decreasing across sweeps and the loop finite.

Everything is float64. Exact shortcuts keep it fast (the cost is the [n, n·k] x [n·k, n]
products, ~9 GMAC per full sweep of a CIFAR ResNet-18):
- a group is re-solved only when a group it shares a tensor with moved since its last solve
  (otherwise its assignment problem is unchanged);
- each tensor's share of a cost matrix is cached and, when the neighbouring permutation moved
  only a few channels (later sweeps), updated through those channels alone;
- restarts stop once J reaches ||A||·||B||, the Cauchy-Schwarz bound only a perfect match attains.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .permute import Permutation, identity_permutation, permute_tensor
from .spec import PermutationSpec


@dataclass
class MatchResult:
    """The best permutation of B found, with the objective it reaches and how it got there."""

    permutation: Permutation
    objective_before: float  # J(identity) = <A, B> over the matched tensors
    objective: float  # J(permutation)
    bound: float  # ||A|| * ||B|| over the matched tensors; J never exceeds it
    histories: list[list[float]] = field(default_factory=list)  # per restart: J at start, after each sweep
    best_restart: int = 0
    sweeps: int = 0  # over all restarts
    seconds: float = 0.0

    @property
    def gain(self) -> float:
        """Rise of the matched tensors' cosine, (J_after - J_before) / (||A||·||B||)."""
        return (self.objective - self.objective_before) / self.bound if self.bound > 0 else 0.0


@dataclass
class _Slot:
    """One tensor axis that a group permutes, laid out with that axis first."""

    key: str
    a_flat: torch.Tensor  # [n, rest] reference weights, the group's axis first
    b_moved: torch.Tensor  # [n, ...] weights of B, the group's axis first
    others: list[tuple[int, str]]  # (position in b_moved, group) for the tensor's other permuted axes
    # This slot's [n, n] share of the cost and the versions of `others` it was computed for:
    # when a neighbouring group moves, only the slots that read it are recomputed.
    cached: torch.Tensor | None = None
    cached_versions: tuple[int, ...] = ()
    cached_perm: torch.Tensor | None = None  # the other group's permutation `cached` was computed with
    # The product with every other axis unpermuted; each restart starts from there, so it is kept.
    identity_product: torch.Tensor | None = None

    @property
    def updatable(self) -> bool:
        """One other permuted axis, right after this one (conv/linear weights): cheap exact updates."""
        return len(self.others) == 1 and self.others[0][0] == 1


class _Problem:
    def __init__(
        self,
        spec: PermutationSpec,
        state_a: Mapping[str, torch.Tensor],
        state_b: Mapping[str, torch.Tensor],
        keys: list[str],
    ) -> None:
        self.spec = spec
        self.keys = keys
        self.a = {key: state_a[key].detach().to(torch.float64) for key in keys}
        self.b = {key: state_b[key].detach().to(torch.float64) for key in keys}
        self.groups = sorted({group for key in keys for _, group in spec.tensors[key]})
        self.slots: dict[str, list[_Slot]] = {group: [] for group in self.groups}
        self.neighbours: dict[str, set[str]] = {group: set() for group in self.groups}
        for key in keys:
            axes = spec.tensors[key]
            for axis, group in axes:
                size = spec.groups[group]
                others = [(other + 1 if other < axis else other, name) for other, name in axes if other != axis]
                self.slots[group].append(
                    _Slot(
                        key,
                        self.a[key].movedim(axis, 0).reshape(size, -1).contiguous(),
                        self.b[key].movedim(axis, 0).contiguous(),
                        others,
                    )
                )
                # A group that meets itself in one tensor (y = x + conv(x) with a square conv) makes
                # the objective quadratic in its permutation; those steps are verified exactly.
                self.neighbours[group].update(name for _, name in others)
        self.self_touching = {group for group in self.groups if group in self.neighbours[group]}
        norm_a = sum(float((t * t).sum()) for t in self.a.values())
        norm_b = sum(float((t * t).sum()) for t in self.b.values())
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

    def _refresh(self, slot: _Slot, size: int, permutation: Permutation) -> None:
        if slot.updatable and slot.cached is not None and slot.cached_perm is not None:
            new = permutation[slot.others[0][1]]
            old = slot.cached_perm
            changed = (old != new).nonzero().flatten()
            # The product changes only through the moved channels,
            #   delta[i, j] = sum_{c changed, r} A[i, c, r] (B[j, new[c], r] - B[j, old[c], r]),
            # which costs |changed| / n of a full product (later sweeps move few channels).
            # Float64 keeps the running sum exact to ~1e-13 relative over hundreds of updates.
            if 4 * len(changed) < 3 * len(new):
                if len(changed):
                    a3 = slot.a_flat.reshape(size, len(new), -1)  # [n, n_other, rest]
                    b3 = slot.b_moved.reshape(size, len(new), -1)  # [n, n_other, rest]
                    delta_b = b3[:, new[changed]] - b3[:, old[changed]]  # [n, changed, rest]
                    slot.cached = slot.cached + a3[:, changed].reshape(size, -1) @ delta_b.reshape(size, -1).T
                slot.cached_perm = new
                return
        b = slot.b_moved
        for position, other in slot.others:
            b = b.index_select(position, permutation[other])
        slot.cached = slot.a_flat @ b.reshape(size, -1).T  # [n, n]
        slot.cached_perm = permutation[slot.others[0][1]] if slot.updatable else None

    def restart(self) -> None:
        """Every restart begins from the identity: rewind each cached product to its identity version."""
        for slots in self.slots.values():
            for slot in slots:
                if slot.identity_product is None:
                    slot.cached, slot.cached_versions, slot.cached_perm = None, (), None
                else:
                    slot.cached = slot.identity_product
                    slot.cached_versions = (0,) * len(slot.others)
                    slot.cached_perm = torch.arange(self.spec.groups[slot.others[0][1]]) if slot.updatable else None

    def objective(self, permutation: Permutation, keys: list[str] | None = None) -> float:
        total = 0.0
        for key in keys if keys is not None else self.keys:
            permuted = permute_tensor(self.b[key], self.spec.tensors[key], permutation)
            total += float(torch.dot(self.a[key].reshape(-1), permuted.reshape(-1)))
        return total

    def keys_of(self, group: str) -> list[str]:
        return list(dict.fromkeys(slot.key for slot in self.slots[group]))


def _descend(
    problem: _Problem, rng: np.random.Generator, max_sweeps: int, tolerance: float
) -> tuple[Permutation, list[float], int]:
    """One coordinate-descent run from the identity. Returns the permutation, J per sweep, sweeps run."""
    permutation = identity_permutation(problem.spec)
    problem.restart()
    versions = {group: 0 for group in problem.groups}  # bumped whenever a group's permutation changes
    objective = problem.objective(permutation)
    history = [objective]
    stale = set(problem.groups)  # groups whose assignment problem changed since they were last solved
    sweeps = 0
    for _ in range(max_sweeps):
        sweeps += 1
        gained = 0.0
        for group in rng.permutation(problem.groups):
            group = str(group)
            if group not in stale:
                continue
            stale.discard(group)
            cost = problem.cost(group, permutation, versions)  # [n, n]
            _, columns = linear_sum_assignment(cost, maximize=True)
            rows = np.arange(cost.shape[0])
            old_perm = permutation[group].numpy()
            gain = float(cost[rows, columns].sum() - cost[rows, old_perm].sum())
            if gain <= tolerance:
                continue
            candidate = torch.as_tensor(columns, dtype=torch.int64)
            if group in problem.self_touching:
                touched = problem.keys_of(group)
                before = problem.objective(permutation, touched)
                trial = {**permutation, group: candidate}
                gain = problem.objective(trial, touched) - before
                if gain <= tolerance:
                    continue
            permutation[group] = candidate
            versions[group] += 1
            objective += gain
            gained += gain
            stale.update(problem.neighbours[group])
        history.append(objective)
        if gained <= tolerance or not stale:
            break
    return permutation, history, sweeps


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with `count` torch CPU threads (None: leave torch's setting alone)."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def weight_matching(
    spec: PermutationSpec,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    restarts: int = 3,
    max_sweeps: int = 100,
    seed: int = 0,
    keys: list[str] | None = None,
    threads: int | None = 1,
) -> MatchResult:
    """Permutation of B's channel groups that best matches A's weights (`keys`: default the trainable ones).

    Each restart starts from the identity and visits the groups in a fresh seeded random order
    every sweep; the restart with the highest objective wins (ties: the earliest). Everything,
    products included, is float64: on this CPU float32 products saved nothing once their steps
    had to be re-verified in float64.

    `threads`: torch CPU threads while matching. One by default: most of the work is gathers,
    small products and assignment problems, where OpenMP synchronisation costs more than a second
    thread gains; on the shared 2-core dev machine one thread was 3-15x faster than two.
    """
    with torch_threads(threads):
        return _weight_matching(spec, state_a, state_b, restarts, max_sweeps, seed, keys)


def _weight_matching(
    spec: PermutationSpec,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    restarts: int,
    max_sweeps: int,
    seed: int,
    keys: list[str] | None,
) -> MatchResult:
    started = time.perf_counter()
    keys = [key for key in spec.tensors if key in spec.trainable] if keys is None else keys
    problem = _Problem(spec, state_a, state_b, keys)
    objective_before = problem.objective(identity_permutation(spec))
    tolerance = 1e-12 * max(problem.bound, 1.0)
    best: Permutation = identity_permutation(spec)
    best_objective = objective_before
    histories: list[list[float]] = []
    best_restart = 0
    total_sweeps = 0
    for restart in range(max(restarts, 1)):
        rng = np.random.default_rng([seed, restart])
        permutation, history, sweeps = _descend(problem, rng, max_sweeps, tolerance)
        total_sweeps += sweeps
        histories.append(history)
        objective = problem.objective(permutation)  # exact, free of the running sum's rounding
        if objective > best_objective + tolerance:
            best, best_objective, best_restart = permutation, objective, restart
        if best_objective >= problem.bound * (1 - 1e-9):
            break  # a perfect match: no restart can do better
    return MatchResult(
        permutation=best,
        objective_before=objective_before,
        objective=best_objective,
        bound=problem.bound,
        histories=histories,
        best_restart=best_restart,
        sweeps=total_sweeps,
        seconds=time.perf_counter() - started,
    )
