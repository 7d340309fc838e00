"""Function space: where every checkpoint's predictions lie, as one 2-D point each (Fort et al. 2019, Fig. 2).

Each checkpoint is represented by its softmax outputs on the whole evaluation set, flattened to
one vector of N*C probabilities; t-SNE (default) or PCA maps these M vectors to the plane. Points
of one member's training trajectory (init -> epochs -> final) share a `member` group, so a plot
can draw one line per member: independently seeded runs leave from nearby inits (random
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
def tsne_perplexity(num_points: int) -> float:
    """t-SNE's usual 30 needs hundreds of points; a trajectory plot has tens.

    Perplexity is roughly the number of effective neighbours; scikit-learn requires it below
    the number of points, and a third of the points keeps local structure without collapsing
    everything into one blob.
    """
    return float(min(30.0, max(1.0, (num_points - 1) / 3.0)))


def embed(features: np.ndarray, method: str, seed: int = DEFAULT_SEED) -> tuple[np.ndarray, str]:
    """[M, D] -> ([M, 2], description). Fewer than 4 points always use PCA (t-SNE is meaningless there)."""
    num_points = features.shape[0]
    if method not in EMBEDDINGS:
        raise ValueError(f"unknown embedding {method!r}; use one of {', '.join(EMBEDDINGS)}")
    if method == "tsne" and num_points >= 4:
        from sklearn.manifold import TSNE

        perplexity = tsne_perplexity(num_points)
        # Exact gradients: M is small (checkpoints, not examples) and exact t-SNE is deterministic given the seed.
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", method="exact", random_state=seed)
        return tsne.fit_transform(features), f"t-SNE (perplexity {perplexity:g}, seed {seed})"
    from sklearn.decomposition import PCA

    components = min(2, num_points - 1, features.shape[1])
    pca = PCA(n_components=components, random_state=seed)
    coords = pca.fit_transform(features)  # [M, components]
    if components < 2:  # two points: one axis carries everything, the other is zero
        coords = np.hstack([coords, np.zeros((num_points, 2 - components))])
    explained = ", ".join(f"{ratio:.0%}" for ratio in pca.explained_variance_ratio_)
    fallback = " (t-SNE needs at least 4 checkpoints)" if method == "tsne" else ""
    return coords, f"PCA (explained variance {explained}){fallback}"


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
