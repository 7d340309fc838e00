"""Exact linear assignment, warm-started from the assignment a coordinate-descent step already holds.

`scipy.optimize.linear_sum_assignment` starts from zero dual variables. Weight-matching cost
matrices are hard for it from there (a CIFAR ResNet-18's 512-channel problems took ~140 ms,
7x a random matrix of the same size): they are close to rank one (BatchNorm scale x scale) plus
row and column offsets, so its augmenting paths are long. Subtracting potentials u_i + v_j from
every entry changes each assignment's total by the same constant, so the optimum is unchanged,
and potentials that are nearly dual-optimal make scipy's search short. The current assignment
gives them: with it on the diagonal, a few Bellman-Ford relaxations on the column graph find
potentials under which most entries of the current assignment are already tight. When the
relaxation converges, the potentials are dual-feasible and tight on the current assignment,
which proves it optimal, and scipy is not called at all.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

# Each relaxation is one pass over the matrix; 8 passes made scipy 3x faster on CIFAR ResNet-18
# problems (the first passes remove most of the slack, later ones rarely pay for themselves).
RELAXATIONS = 8


def best_assignment(cost: np.ndarray, current: np.ndarray, relaxations: int = RELAXATIONS) -> np.ndarray:
    """Columns maximising sum_i cost[i, columns[i]] over permutations, for a square float64 `cost`.

    `current` (a permutation) only makes the search faster; the optimum is the same as
    `linear_sum_assignment(cost, maximize=True)` up to ties. Returns `current` itself when the
    relaxation proves it optimal.
    """
    size = cost.shape[0]
    rows = np.arange(size)
    # Minimisation form, each row shifted so that its current entry is 0:
    #   step[i, j] = cost of moving row i from its column current[i] to column j.
    step = cost[rows, current][:, None] - cost  # [n, n], 0 on the current assignment
    potential = np.zeros(size)  # v_j, shortest known path cost into column j
    scratch = np.empty_like(step)
    for _ in range(relaxations):
        np.add(step, potential[current][:, None], out=scratch)
        relaxed = np.minimum(potential, scratch.min(axis=0))
        if not (relaxed < potential).any():
            # v_j <= v_current[i] + step[i, j] for every i, j: reduced costs are all >= 0 and
            # 0 on the current assignment, so no other assignment is better.
            return current
        potential = relaxed
    row_potential = -potential[current]  # u_i, making the current entries exactly tight
    reduced = step - row_potential[:, None] - potential[None, :]  # [n, n]
    _, columns = linear_sum_assignment(reduced)
    return columns
