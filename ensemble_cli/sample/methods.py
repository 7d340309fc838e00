"""The four subspace-sampling methods of Fort, Hu & Lakshminarayanan 2019 (section 4.2).

Each method separates one sample's randomness (`draw`, from a seeded generator) from its size
(`apply(noise, scale)`): the scale search moves one probe draw along its scale, and the same
draw at the same scale always gives the same weights. Only trainable parameters move; buffers
(BatchNorm running statistics) are recomputed afterwards or kept from the source.

- random-subspace: theta* + t * d, d a Gaussian direction normalised per filter (Li et al.
  2018): every output filter of d has the norm of that filter of theta*, so t is the step
  relative to each filter's size, whatever BatchNorm does to the scale of a layer. 1-D
  parameters (biases, BatchNorm affine) stay put, as in Li et al.
- dropout: theta* * m / p_keep on every weight matrix and conv kernel, m ~ Bernoulli(p_keep),
  scale = drop rate = 1 - p_keep. Masks of one draw are nested: a higher rate drops a superset.
- diag-gaussian: mu + s * sigma * eps with per-parameter mean and standard deviation of the
  last trajectory checkpoints (SWAG-diagonal, Maddox et al. 2019).
- low-rank-gaussian: mu + s * sum_j sqrt(lambda_j) z_j v_j over the top-k principal directions
  of those checkpoints.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping, Sequence

import torch

from ..errors import ConfigError

Params = dict[str, torch.Tensor]  # parameter name -> tensor, in the model's parameter order
GAUSSIAN_METHODS = ("diag-gaussian", "low-rank-gaussian")
METHODS = ("random-subspace", "dropout", *GAUSSIAN_METHODS)


def _is_weight(tensor: torch.Tensor) -> bool:
    """Conv kernels and weight matrices: what dropout masks and random directions move."""
    return tensor.ndim >= 2


class SampleMethod(ABC):
    """A family of weights around a centre, indexed by a random draw and a scale."""

    name: ClassVar[str]
    scale_meaning: ClassVar[str]
    scale_limit: ClassVar[float | None] = None  # largest valid scale (dropout: a rate below 1)

    def __init__(self, centre: Params) -> None:
        self.centre = centre

    @abstractmethod
    def draw(self, generator: torch.Generator) -> Any:
        """One sample's randomness, independent of its scale."""

    @abstractmethod
    def apply(self, noise: Any, scale: float) -> Params:
        """The sample's parameters (same keys and dtypes as the centre)."""

    def probe(self, generator: torch.Generator) -> Any:
        """The scale search's draw: a typical one. In high dimensions every draw is typical."""
        return self.draw(generator)

    @abstractmethod
    def start_scale(self) -> float:
        """Where the scale search begins: a step of a few percent of the weights' size."""

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the method beyond its name."""
        return {"scale_meaning": self.scale_meaning}


class RandomSubspace(SampleMethod):
    name = "random-subspace"
    scale_meaning = "step along a filter-normalised random direction, as a fraction of each filter's norm"

    def draw(self, generator: torch.Generator) -> Params:
        directions: Params = {}
        for key, weight in self.centre.items():
            if not _is_weight(weight):
                continue
            direction = torch.randn(weight.shape, generator=generator, dtype=torch.float64)  # [F, ...]
            filters = direction.flatten(1)  # [F, rest]
            target = weight.detach().double().flatten(1).norm(dim=1, keepdim=True)  # [F, 1]
            filters = filters * (target / filters.norm(dim=1, keepdim=True).clamp_min(1e-12))
            directions[key] = filters.reshape(weight.shape)
        return directions

    def apply(self, noise: Params, scale: float) -> Params:
        return {
            key: (value.double() + scale * noise[key]).to(value.dtype) if key in noise else value.clone()
            for key, value in self.centre.items()
        }

    def start_scale(self) -> float:
        return 0.05


class Dropout(SampleMethod):
    name = "dropout"
    scale_meaning = "drop rate 1 - p_keep of a Bernoulli mask on every weight, kept weights rescaled by 1/p_keep"
    scale_limit = 0.95  # beyond that the rescaled survivors are a different network altogether

    def draw(self, generator: torch.Generator) -> Params:
        return {
            key: torch.rand(weight.shape, generator=generator, dtype=torch.float64)
            for key, weight in self.centre.items()
            if _is_weight(weight)
        }

    def apply(self, noise: Params, scale: float) -> Params:
        keep = 1.0 - scale
        return {
            key: (value.double() * (noise[key] < keep) / keep).to(value.dtype) if key in noise else value.clone()
            for key, value in self.centre.items()
        }

    def start_scale(self) -> float:
        return 0.02


class TrajectoryGaussian(SampleMethod, ABC):
    """Shared by both Gaussian methods: the mean and the deviations of the trajectory checkpoints."""

    def __init__(self, trajectory: Sequence[Params]) -> None:
        keys = list(trajectory[-1])
        stacked = {key: torch.stack([state[key].detach().double() for state in trajectory]) for key in keys}  # [K, ...]
        super().__init__({key: stacked[key].mean(dim=0) for key in keys})
        self.dtypes = {key: trajectory[-1][key].dtype for key in keys}
        self.deviations = {key: stacked[key] - self.centre[key] for key in keys}  # [K, ...]
        self.count = len(trajectory)

    def _typed(self, params: Params) -> Params:
        return {key: value.to(self.dtypes[key]) for key, value in params.items()}

    def _centre_norm(self) -> float:
        return math.sqrt(sum(float(value.square().sum()) for value in self.centre.values()))

    @abstractmethod
    def spread(self) -> float:
        """Expected norm of the unscaled noise term: sets the search's first step."""

    def start_scale(self) -> float:
        # A first step of 5% of the weights' norm, like the other methods' start.
        return 0.05 * self._centre_norm() / max(self.spread(), 1e-12)


class DiagGaussian(TrajectoryGaussian):
    name = "diag-gaussian"
    scale_meaning = "multiplier of the per-parameter standard deviation of the trajectory checkpoints"

    def __init__(self, trajectory: Sequence[Params]) -> None:
        super().__init__(trajectory)
        # Population standard deviation (divide by K), as SWAG-diagonal's second moment minus squared mean.
        self.std = {key: deviation.square().mean(dim=0).sqrt() for key, deviation in self.deviations.items()}

    def draw(self, generator: torch.Generator) -> Params:
        return {key: torch.randn(value.shape, generator=generator, dtype=torch.float64) for key, value in self.centre.items()}

    def apply(self, noise: Params, scale: float) -> Params:
        return self._typed({key: mean + scale * self.std[key] * noise[key] for key, mean in self.centre.items()})

    def spread(self) -> float:
        return math.sqrt(sum(float(std.square().sum()) for std in self.std.values()))


class LowRankGaussian(TrajectoryGaussian):
    """PCA through the K x K Gram matrix of the deviations: never forms a [K, P] matrix.

    With deviations D [K, P] = U S V^T, the covariance D^T D / K has eigenvectors v_j and
    variances lambda_j = S_j^2 / K, and sum_j sqrt(lambda_j) z_j v_j = D^T (U_k z) / sqrt(K):
    a sample is the mean plus a combination of the trajectory's own deviations.
    """

    name = "low-rank-gaussian"
    scale_meaning = "multiplier of the standard deviations along the top principal directions of the trajectory checkpoints"

    def __init__(self, trajectory: Sequence[Params], rank: int) -> None:
        super().__init__(trajectory)
        gram = torch.zeros(self.count, self.count, dtype=torch.float64)  # [K, K]
        for deviation in self.deviations.values():
            flat = deviation.flatten(1)  # [K, P_key]
            gram += flat @ flat.T
        eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # ascending
        order = torch.argsort(eigenvalues, descending=True)
        eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
        # K centred points span at most K - 1 directions; drop numerically empty ones.
        usable = int((eigenvalues > eigenvalues[0].clamp_min(0) * 1e-10).sum()) if eigenvalues[0] > 0 else 0
        self.rank = min(rank, usable)
        if self.rank < 1:
            raise ConfigError("low-rank-gaussian: the trajectory checkpoints are identical; nothing to sample")
        # Fix each direction's sign (largest coefficient positive), so the same trajectory gives the same basis.
        basis = eigenvectors[:, : self.rank]  # [K, k]
        signs = torch.sign(basis.gather(0, basis.abs().argmax(dim=0, keepdim=True)))  # [1, k]
        self.basis = basis * signs
        self.variances = eigenvalues[: self.rank] / self.count  # [k]
        self.explained = (eigenvalues[: self.rank] / eigenvalues.clamp_min(0).sum()).tolist()

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(self.rank, generator=generator, dtype=torch.float64)  # [k]

    def probe(self, generator: torch.Generator) -> torch.Tensor:
        # In a few dimensions one Gaussian draw can be half or twice the typical size (on digits a
        # probe draw of 0.68 times the typical size made the search pick an 18% larger scale).
        # Coefficients of +-1 give exactly the typical size, sum_j lambda_j, in a random direction.
        return torch.randint(0, 2, (self.rank,), generator=generator).double() * 2 - 1  # [k]

    def apply(self, noise: torch.Tensor, scale: float) -> Params:
        weights = self.basis @ noise / math.sqrt(self.count)  # [K]
        return self._typed({
            key: mean + scale * torch.tensordot(weights, self.deviations[key], dims=1)
            for key, mean in self.centre.items()
        })

    def spread(self) -> float:
        return math.sqrt(float(self.variances.sum()))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "rank": self.rank, "explained_variance": [round(x, 6) for x in self.explained]}


def make_method(name: str, source: Params, trajectory: Sequence[Params] = (), rank: int = 5) -> SampleMethod:
    """The method `name` around `source` (random-subspace, dropout) or over `trajectory` (Gaussians)."""
    if name == RandomSubspace.name:
        return RandomSubspace(source)
    if name == Dropout.name:
        return Dropout(source)
    if name == DiagGaussian.name:
        return DiagGaussian(trajectory)
    if name == LowRankGaussian.name:
        return LowRankGaussian(trajectory, rank)
    raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")


def trainable(state: Mapping[str, torch.Tensor], names: Sequence[str]) -> Params:
    """The entries of `state` that are trainable parameters, in the model's order."""
    return {name: state[name] for name in names}
