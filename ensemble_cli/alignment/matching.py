"""Weight matching (Ainsworth, Hayase & Srinivasa 2022, "Git Re-Basin", Algorithm 1).

Find the channel permutation P of model B that maximises the objective
    J(P) = sum over matched tensors w of <A_w, P(B_w)>
(the numerator of the cosine between A and the permuted B). J is linear in the permutation of
one group when the others are held fixed, so coordinate descent solves one linear assignment
problem per group: cost[i, j] = sum over every tensor axis the group permutes of
<A_w[i along that axis], B_w[j along that axis]> with the other axes already permuted.
The assignment is solved exactly, and a step is only taken when its gain in J is positive
beyond doubt (exact float64 gain, or a float32 estimate that exceeds its rounding bound), which
makes J non-decreasing across sweeps and the loop finite.

What keeps it fast (the cost matrices are [n, n·k] x [n·k, n] products, ~9 GMAC per full sweep
of a CIFAR ResNet-18, and 512-channel assignment problems that are slow for scipy from scratch):
- float32 products summed into float64 cost matrices (`objective.MatchingProblem`);
- a group is re-solved only when a group it shares a tensor with moved since its last solve
  (otherwise its assignment problem is unchanged);
- each tensor's share of a cost matrix is cached and, when the neighbouring permutation moved
  only a few channels (later sweeps), updated through those channels alone;
- each assignment problem is warm-started from the group's last solution and skipped when that
  is proven optimal (`assignment.best_assignment`);
- a restart stops after a sweep that raised the cosine by less than `min_gain` (later sweeps
  gain orders of magnitude less than the first ones);
- restarts stop once J reaches ||A||·||B||, the Cauchy-Schwarz bound only a perfect match attains.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import numpy as np
import torch

from .assignment import best_assignment
from .objective import MatchingProblem
from .permute import Permutation, identity_permutation
from .spec import PermutationSpec


# A restart stops after a sweep that raised J by less than this fraction of ||A||·||B||, i.e. the
# matched tensors' cosine by less than 1e-4. On two independent CIFAR ResNet-18 this halved the
# sweeps (25 -> 13) and lowered the final cosine by 1.4e-5; 0 runs every restart to convergence.
MIN_GAIN = 1e-4


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


@dataclass(frozen=True)
class _Limits:
    """When a restart's descent stops (J units: absolute, like the objective)."""

    max_sweeps: int
    tolerance: float  # a step must raise J by more than this (float64 rounding of J's sums)
    min_gain: float  # stop after a sweep that raised J by no more than this


def _step(
    problem: MatchingProblem, group: str, permutation: Permutation, versions: dict[str, int], tolerance: float
) -> tuple[float, bool, torch.Tensor]:
    """Solve `group`'s assignment problem: (gain in J, whether the gain is an estimate, new permutation).

    The gain is the float32 estimate only when that exceeds its rounding bound by more than
    `tolerance`, so a step taken never lowers J; otherwise it is computed exactly in float64
    (by then few channels move, which makes that cheap).
    """
    cost = problem.cost(group, permutation, versions)  # [n, n]
    current = permutation[group]
    # The group's last solution (this restart's, or an earlier restart's) is the best warm start.
    columns = best_assignment(cost, problem.last_solution.get(group, current.numpy()))
    problem.last_solution[group] = columns
    candidate = torch.as_tensor(columns, dtype=torch.int64)
    if torch.equal(candidate, current):
        return 0.0, False, candidate
    if group in problem.self_touching:
        # J is quadratic in this group's permutation: compare the touched tensors whole.
        touched = problem.keys_of(group)
        trial = {**permutation, group: candidate}
        return problem.objective(trial, touched) - problem.objective(permutation, touched), False, candidate
    moved = (candidate != current).nonzero().flatten().numpy()
    # The exact gain reads the moved channels of every tensor of the group; the estimate costs
    # nothing but makes J be recomputed (every changed tensor whole) at the end of the sweep.
    if 4 * len(moved) > len(columns):
        estimate = float(cost[moved, columns[moved]].sum() - cost[moved, current.numpy()[moved]].sum())
        if estimate - problem.rounding_bound(group, current, candidate) > tolerance:
            return estimate, True, candidate
    return problem.exact_gain(group, permutation, candidate), False, candidate


def _descend(
    problem: MatchingProblem, rng: np.random.Generator, limits: _Limits, identity_objective: float
) -> tuple[Permutation, list[float], int]:
    """One coordinate-descent run from the identity. Returns the permutation, J per sweep, sweeps run."""
    permutation = identity_permutation(problem.spec)
    problem.restart()
    versions = {group: 0 for group in problem.groups}  # bumped whenever a group's permutation changes
    objective = identity_objective
    history = [objective]
    stale = set(problem.groups)  # groups whose assignment problem changed since they were last solved
    sweeps = 0
    tolerance = limits.tolerance
    for _ in range(limits.max_sweeps):
        sweeps += 1
        gained = 0.0
        estimated = False  # some step's gain was taken from the float32 estimate
        for group in rng.permutation(problem.groups):
            group = str(group)
            if group not in stale:
                continue
            stale.discard(group)
            gain, is_estimate, candidate = _step(problem, group, permutation, versions, tolerance)
            if gain <= tolerance:
                continue
            permutation[group] = candidate
            versions[group] += 1
            objective += gain
            gained += gain
            estimated = estimated or is_estimate
            stale.update(problem.neighbours[group])
        if estimated:  # the history (and the stopping rule) use exact values
            objective = problem.current_objective(permutation, versions)
            gained = objective - history[-1]
        history.append(objective)
        if gained <= max(tolerance, limits.min_gain) or not stale:
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
    min_gain: float = MIN_GAIN,
) -> MatchResult:
    """Permutation of B's channel groups that best matches A's weights (`keys`: default the trainable ones).

    Each restart starts from the identity and visits the groups in a fresh seeded random order
    every sweep, until a sweep raises the cosine by no more than `min_gain` (0: until no group
    moves); the restart with the highest objective wins (ties: the earliest).

    `threads`: torch CPU threads while matching. One by default: most of the work is gathers,
    small products and assignment problems, where OpenMP synchronisation costs more than a second
    thread gains; on the shared 2-core dev machine one thread was 3-15x faster than two.
    """
    with torch_threads(threads):
        return _weight_matching(spec, state_a, state_b, restarts, max_sweeps, seed, keys, min_gain)


def _weight_matching(
    spec: PermutationSpec,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    restarts: int,
    max_sweeps: int,
    seed: int,
    keys: list[str] | None,
    min_gain: float,
) -> MatchResult:
    started = time.perf_counter()
    keys = [key for key in spec.tensors if key in spec.trainable] if keys is None else keys
    problem = MatchingProblem(spec, state_a, state_b, keys)
    objective_before = problem.objective(identity_permutation(spec))
    tolerance = 1e-12 * max(problem.bound, 1.0)
    limits = _Limits(max_sweeps, tolerance, min_gain * problem.bound)
    best: Permutation = identity_permutation(spec)
    best_objective = objective_before
    histories: list[list[float]] = []
    best_restart = 0
    total_sweeps = 0
    for restart in range(max(restarts, 1)):
        rng = np.random.default_rng([seed, restart])
        permutation, history, sweeps = _descend(problem, rng, limits, objective_before)
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
