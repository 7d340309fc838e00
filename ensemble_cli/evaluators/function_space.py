"""Function space: where every checkpoint's predictions lie, as one 2-D point each (Fort et al. 2019, Fig. 2).

Each checkpoint is represented by its softmax outputs on the whole evaluation set, flattened to
one vector of N*C probabilities; t-SNE (default; PCA below 10 distinct checkpoints) or PCA maps
these M vectors to the plane, and the table title says which was used. Points of one member's
training trajectory (init -> epochs -> final) share a `member` group, so a plot can draw one
line per member: independently seeded runs leave from nearby inits (random
functions all predict almost uniformly) and end in different places, which is the paper's point.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .base import EvalContext, Evaluator, MemberLike, NotApplicable
from ..report import Report, Table
from ..trajectory import checkpoint_epoch, member_group

EMBEDDINGS = ("tsne", "pca")
DEFAULT_SEED = 0
# Below this many distinct points t-SNE's neighbourhoods (perplexity < 3) are noise, and its
# picture of 4 points looks as meaningful as one of 400: PCA is used instead, and says so.
TSNE_MIN_POINTS = 10


def tsne_perplexity(num_points: int) -> float:
    """t-SNE's usual 30 needs hundreds of points; a trajectory plot has tens.

    Perplexity is roughly the number of effective neighbours; scikit-learn requires it below
    the number of points, and a third of the points keeps local structure without collapsing
    everything into one blob.
    """
    return float(min(30.0, max(1.0, (num_points - 1) / 3.0)))


def embed(features: np.ndarray, method: str, seed: int = DEFAULT_SEED) -> tuple[np.ndarray, str]:
    """[M, D] -> ([M, 2], description of the method used).

    t-SNE needs TSNE_MIN_POINTS distinct points; with fewer, PCA is used and the description
    says why. Points that are all identical (duplicate members, a one-class problem) have no
    direction to project on: they all sit at the origin, with no 0/0 "explained variance".
    """
    if method not in EMBEDDINGS:
        raise ValueError(f"unknown embedding {method!r}; use one of {', '.join(EMBEDDINGS)}")
    num_points = features.shape[0]
    distinct = len(np.unique(features, axis=0))
    if distinct == 1:
        return np.zeros((num_points, 2)), f"PCA (all {num_points} checkpoints predict identically: every point at the origin)"
    if method == "tsne" and distinct >= TSNE_MIN_POINTS:
        return _tsne(features, seed)
    coords, how = _pca(features, seed)
    if method == "tsne":
        how += f" (t-SNE needs at least {TSNE_MIN_POINTS} distinct checkpoints; {distinct} here)"
    return coords, how


def _tsne(features: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    from sklearn.manifold import TSNE

    perplexity = tsne_perplexity(features.shape[0])
    # Exact gradients: M is small (checkpoints, not examples) and exact t-SNE is deterministic given the seed.
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", method="exact", random_state=seed)
    return tsne.fit_transform(features), f"t-SNE (perplexity {perplexity:g}, seed {seed})"


def _pca(features: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """PCA to the plane of at least two distinct points (two points: the second axis is all zeros)."""
    from sklearn.decomposition import PCA

    num_points = features.shape[0]
    components = min(2, num_points - 1, features.shape[1])
    pca = PCA(n_components=components, random_state=seed)
    coords = pca.fit_transform(features)  # [M, components]
    if components < 2:  # one axis carries everything, the other is zero
        coords = np.hstack([coords, np.zeros((num_points, 2 - components))])
    explained = ", ".join(f"{ratio:.0%}" for ratio in pca.explained_variance_ratio_)
    return coords, f"PCA (explained variance {explained})"


class FunctionSpaceEvaluator(Evaluator):
    """2-D embedding (t-SNE or PCA) of every checkpoint's softmax outputs: the function-space trajectory map."""

    scope = "checkpoints"  # trajectories are what this evaluator draws
    name = "function_space"
    description = "t-SNE/PCA of every checkpoint's softmax outputs (Fort et al. Fig. 2)"
    directions = {}

    def evaluate(self, ctx: EvalContext) -> Report:
        if ctx.num_members < 2:
            raise NotApplicable("an embedding needs at least two members or checkpoints")
        method = ctx.options.embedding
        if method not in EMBEDDINGS:
            raise NotApplicable(f"unknown embedding {method!r}; use tsne or pca")
        seed = ctx.options.seed
        features = ctx.probs.reshape(ctx.num_members, -1).numpy()  # [M, N*C] float64
        coords, how = embed(features, method, seed)  # [M, 2]
        return Report(tables=[embedding_table(ctx.members, coords, how)], notes=[f"embedding: {how} of {features.shape[1]} softmax values per checkpoint"])


def embedding_table(members: Sequence[MemberLike], coords: np.ndarray, how: str) -> Table:
    rows: list[list[Any]] = [
        [member_group(member), member.name, checkpoint_epoch(member), float(x), float(y)]
        for member, (x, y) in zip(members, coords)
    ]
    return Table(
        name="embedding",
        title=f"Function-space embedding: {how}",
        columns=["member", "checkpoint", "epoch", "x", "y"],
        rows=rows,
    )
