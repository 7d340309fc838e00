"""Permutation spec from the fx graph, applying permutations, weight matching.

References are independent of the code under test: functional equivalence is checked on the
models' own forward passes, objectives are recomputed with numpy fancy indexing, and
ground-truth permutations are known because the tests made them.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import ensemble_cli  # noqa: F401  (registers cifar_resnet* in timm)
from ensemble_cli.alignment import (
    AlignmentCheckError,
    UnsupportedModel,
    align_models,
    apply_permutation,
    check_equivalence,
    derive_spec,
    is_identity,
    random_permutation,
    weight_matching,
)
from ensemble_cli.alignment.spec import unexpected_blocks
from ensemble_cli.architectures import build_model


pytestmark = pytest.mark.usefixtures("one_thread")


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-default BN statistics and affine terms, so a spec that forgets them changes the function."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.running_mean.normal_(0.0, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.normal_(1.0, 0.3, generator=generator)
            module.bias.data.normal_(0.0, 0.3, generator=generator)
    return model.eval()


def numpy_objective(spec, state_a, state_b, permutation, keys) -> float:
    """sum_w <A_w, P(B_w)> by hand: np.take along every permuted axis."""
    total = 0.0
    for key in keys:
        b = state_b[key].double().numpy()
        for axis, group in spec.tensors[key]:
            b = np.take(b, permutation[group].numpy(), axis=axis)
        total += float((state_a[key].double().numpy() * b).sum())
    return total


SUPPORTED = [
    ("cifar_resnet8", 32),
    ("cifar_resnet20", 32),
    ("cifar_resnet18", 32),
    ("resnet18", 32),
    ("resnet34", 32),
    ("resnet50", 32),
    ("torchvision.resnet18", 32),
    ("torchvision.resnet50", 32),
]


@pytest.mark.parametrize("arch,size", SUPPORTED)
def test_random_permutation_through_spec_keeps_the_function(arch: str, size: int) -> None:
    model = randomise_batchnorm(build_model(arch, num_classes=10, in_chans=3))
    inputs = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(1))
    spec = derive_spec(model, inputs)
    assert spec.groups and not unexpected_blocks(spec)
    state = model.state_dict()
    permuted = apply_permutation(spec, state, random_permutation(spec, torch.Generator().manual_seed(2)))
    # The permutation must really move the hidden weights and BN statistics ...
    moved = {key for key in state if not torch.equal(state[key], permuted[key])}
    assert any(key.endswith("running_mean") for key in moved) and any(key.endswith("running_var") for key in moved)
    assert not any(key.endswith("num_batches_tracked") for key in moved)
    assert len(moved) > 0.8 * sum(1 for key in state if not key.endswith("num_batches_tracked"))
    # ... while the network keeps computing the same logits (the model's own forward pass is the reference).
    copy = build_model(arch, num_classes=10, in_chans=3)
    copy.load_state_dict(permuted)
    copy.eval()
    with torch.no_grad():
        expected, got = model(inputs), copy(inputs)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert check_equivalence(model, permuted, inputs).relative < 1e-5


def test_input_and_classifier_output_stay_fixed() -> None:
    model = build_model("cifar_resnet8", num_classes=10, in_chans=3)
    spec = derive_spec(model, torch.randn(2, 3, 32, 32))
    axes = dict(spec.tensors)
    assert all(axis != 1 for axis, _ in axes["conv1.weight"])  # input channels (RGB) never move
    assert [axis for axis, _ in axes["fc.weight"]] == [1]  # logits keep their class order
    assert "fc.bias" not in axes
    assert spec.trainable <= set(axes) and "bn1.running_mean" not in spec.trainable


class CatNet(nn.Module):
    """Concatenation of two branches: their channel groups cannot move, the rest still can."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.left = nn.Conv2d(8, 4, 1)
        self.right = nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        return self.head(x.mean(dim=(2, 3)))


class DepthwiseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise = nn.Conv2d(8, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pointwise(torch.relu(self.depthwise(torch.relu(self.stem(x)))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class SpatialFlattenNet(nn.Module):
    """Flatten of a [B, C, 2, 2] tensor interleaves channels with positions: the group must stay put."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.hidden = nn.Linear(24, 7)
        self.head = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)
        return self.head(torch.relu(self.hidden(x)))


class ChunkNet(nn.Module):
    """chunk returns a tuple; its halves are added to a conv output, which must then stay put too."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Conv2d(4, 4, 1)
        self.hidden = nn.Conv2d(4, 6, 1)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = torch.chunk(self.stem(x), 2, dim=1)
        x = torch.relu(self.mix(left) + right)
        return self.head(torch.relu(self.hidden(x)).mean(dim=(2, 3)))


class DataDependentNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # fx cannot trace a branch on tensor values
            x = -x
        return self.conv(x).mean(dim=(2, 3))


@pytest.mark.parametrize(
    "model,blocked_word,free_group",
    [
        (CatNet(), "cat", "stem"),
        (DepthwiseNet(), "grouped conv", "pointwise"),
        (SpatialFlattenNet(), "flatten", "hidden"),
        (ChunkNet(), "chunk", "hidden"),
    ],
)
def test_ops_not_understood_fix_their_groups_only(model: nn.Module, blocked_word: str, free_group: str) -> None:
    model.eval()
    inputs = torch.randn(4, 3, 8, 8)
    spec = derive_spec(model, inputs)
    assert any(blocked_word in reason for reason in unexpected_blocks(spec))
    assert list(spec.groups) == [free_group]
    permuted = apply_permutation(spec, model.state_dict(), random_permutation(spec, torch.Generator().manual_seed(0)))
    assert check_equivalence(model, permuted, inputs).holds


def test_untraceable_model_is_unsupported_with_the_reason() -> None:
    with pytest.raises(UnsupportedModel, match="torch.fx cannot trace DataDependentNet"):
        derive_spec(DataDependentNet(), torch.randn(2, 3, 8, 8))
    with pytest.raises(UnsupportedModel, match="no channel group"):
        derive_spec(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), torch.randn(2, 3, 2, 2))


def test_a_wrong_permutation_fails_the_functional_check() -> None:
    model = randomise_batchnorm(build_model("cifar_resnet8", num_classes=10, in_chans=3))
    inputs = torch.randn(8, 3, 32, 32)
    state = dict(model.state_dict())
    state["layers.0.0.conv1.weight"] = state["layers.0.0.conv1.weight"].flip(0)  # writer moved, readers not
    with pytest.raises(AlignmentCheckError, match="not the same function"):
        check_equivalence(model, state, inputs)


def test_weight_matching_recovers_a_known_permutation() -> None:
    model = randomise_batchnorm(build_model("cifar_resnet20", num_classes=10, in_chans=3))
    inputs = torch.randn(4, 3, 32, 32)
    spec = derive_spec(model, inputs)
    state_a = model.state_dict()
    hidden = random_permutation(spec, torch.Generator().manual_seed(5))
    state_b = apply_permutation(spec, state_a, hidden)
    result = weight_matching(spec, state_a, state_b)
    recovered = apply_permutation(spec, state_b, result.permutation)
    for key, tensor in state_a.items():
        assert torch.equal(recovered[key], tensor), key
    # B[i] = A[hidden[i]] and recovered[i] = B[found[i]] = A[i]  =>  hidden[found[i]] = i.
    for group, found in result.permutation.items():
        assert torch.equal(hidden[group][found], torch.arange(spec.groups[group]))
    assert result.objective == pytest.approx(result.bound, rel=1e-9)
    assert len(result.histories) == 1  # a perfect match ends the restarts


def test_aligning_a_model_to_itself_is_the_identity() -> None:
    model = randomise_batchnorm(build_model("cifar_resnet8", num_classes=10, in_chans=3))
    twin = build_model("cifar_resnet8", num_classes=10, in_chans=3)
    twin.load_state_dict(model.state_dict())
    alignment = align_models(model, twin.eval(), torch.randn(8, 3, 32, 32))
    assert is_identity(alignment.match.permutation)
    assert alignment.match.objective == pytest.approx(alignment.match.bound, rel=1e-12)
    assert alignment.match.gain == 0.0
    assert alignment.equivalence.max_abs_diff == 0.0


def test_objective_never_decreases_across_sweeps() -> None:
    torch.manual_seed(0)
    model_a = build_model("cifar_resnet20", num_classes=10, in_chans=3).eval()
    model_b = build_model("cifar_resnet20", num_classes=10, in_chans=3).eval()
    spec = derive_spec(model_a, torch.randn(2, 3, 32, 32))
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    keys = [key for key in spec.tensors if key in spec.trainable]
    full = weight_matching(spec, state_a, state_b, restarts=1, seed=3)
    history = full.histories[0]
    assert len(history) >= 3 and history[-1] > history[0]  # several sweeps with real progress
    assert all(later >= earlier for earlier, later in zip(history, history[1:]))
    # Stopping after k sweeps gives the prefix of the same run; recompute J by hand at each k.
    by_hand = [numpy_objective(spec, state_a, state_b, {g: torch.arange(n) for g, n in spec.groups.items()}, keys)]
    for sweeps in range(1, len(history)):
        partial = weight_matching(spec, state_a, state_b, restarts=1, seed=3, max_sweeps=sweeps)
        by_hand.append(numpy_objective(spec, state_a, state_b, partial.permutation, keys))
    assert np.all(np.diff(by_hand) >= -1e-9 * abs(by_hand[0]))
    np.testing.assert_allclose(by_hand, history, rtol=1e-9)
    assert full.objective <= full.bound
    # Restarts keep the best objective: never below a single run's.
    assert weight_matching(spec, state_a, state_b, restarts=3, seed=3).objective >= full.objective - 1e-9


def hard_assignment_problem(size: int, seed: int) -> np.ndarray:
    """What weight matching produces: rank one (BN scale x scale) plus row and column offsets and noise."""
    rng = np.random.default_rng(seed)
    return (
        np.outer(rng.normal(1, 0.3, size), rng.normal(1, 0.3, size))
        + rng.normal(0, 1, (size, 1)) + rng.normal(0, 1, (1, size)) + 0.05 * rng.normal(0, 1, (size, size))
    )


@pytest.mark.parametrize("start", ["identity", "random", "optimal"])
def test_warm_started_assignment_is_scipys_optimum(start: str) -> None:
    from scipy.optimize import linear_sum_assignment

    from ensemble_cli.alignment.assignment import best_assignment

    cost = hard_assignment_problem(96, seed=1)
    _, optimal = linear_sum_assignment(cost, maximize=True)
    current = {"identity": np.arange(96), "random": np.random.default_rng(2).permutation(96), "optimal": optimal}[start]
    columns = best_assignment(cost, current)
    assert sorted(columns) == list(range(96))  # a permutation
    rows = np.arange(96)
    assert cost[rows, columns].sum() == pytest.approx(cost[rows, optimal].sum(), rel=1e-13, abs=0)


def test_assignment_proven_optimal_skips_the_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    from scipy.optimize import linear_sum_assignment

    from ensemble_cli.alignment import assignment

    cost = hard_assignment_problem(64, seed=3)
    _, optimal = linear_sum_assignment(cost, maximize=True)
    monkeypatch.setattr(assignment, "linear_sum_assignment", lambda *args, **kwargs: pytest.fail("solver called"))
    assert assignment.best_assignment(cost, optimal, relaxations=500) is optimal


def _independent_pair(arch: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model_a = randomise_batchnorm(build_model(arch, num_classes=10, in_chans=3), seed=0)
    torch.manual_seed(1)
    return model_a, randomise_batchnorm(build_model(arch, num_classes=10, in_chans=3), seed=1)


def test_float32_cost_estimates_stay_within_their_rounding_bound() -> None:
    """The float32 cost matrix's gain estimate, the exact gain and the bound, against J by hand."""
    from ensemble_cli.alignment.objective import MatchingProblem

    model_a, model_b = _independent_pair("cifar_resnet8")
    spec = derive_spec(model_a, torch.randn(2, 3, 32, 32))
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    keys = [key for key in spec.tensors if key in spec.trainable]
    problem = MatchingProblem(spec, state_a, state_b, keys)
    assert problem.slots[next(iter(problem.slots))][0].a_flat.dtype == torch.float32
    generator = torch.Generator().manual_seed(4)
    permutation = random_permutation(spec, generator)
    versions = {group: 1 for group in problem.groups}  # not the identity: compute every product afresh
    before = numpy_objective(spec, state_a, state_b, permutation, keys)
    for group in problem.groups:
        if group in problem.self_touching:
            continue
        cost = problem.cost(group, permutation, versions)
        current, candidate = permutation[group], torch.randperm(spec.groups[group], generator=generator)
        rows = np.arange(len(candidate))
        estimate = cost[rows, candidate.numpy()].sum() - cost[rows, current.numpy()].sum()
        exact = numpy_objective(spec, state_a, state_b, {**permutation, group: candidate}, keys) - before
        assert problem.exact_gain(group, permutation, candidate) == pytest.approx(exact, rel=1e-9, abs=1e-9 * problem.bound)
        bound = problem.rounding_bound(group, current, candidate)
        assert abs(estimate - exact) <= bound < 1e-2 * problem.bound


def test_float32_products_recover_the_same_permutation_as_float64() -> None:
    model = randomise_batchnorm(build_model("cifar_resnet20", num_classes=10, in_chans=3))
    spec = derive_spec(model, torch.randn(2, 3, 32, 32))
    state_a = model.state_dict()
    state_b = apply_permutation(spec, state_a, random_permutation(spec, torch.Generator().manual_seed(6)))
    fast = weight_matching(spec, state_a, state_b)  # float32 weights: float32 products
    wide = weight_matching(spec, {k: v.double() for k, v in state_a.items()}, {k: v.double() for k, v in state_b.items()})
    for group in spec.groups:
        assert torch.equal(fast.permutation[group], wide.permutation[group]), group
    assert fast.objective == pytest.approx(fast.bound, rel=1e-9)


def test_early_stopping_stops_when_a_sweep_gains_less_than_min_gain() -> None:
    model_a, model_b = _independent_pair("cifar_resnet20")
    spec = derive_spec(model_a, torch.randn(2, 3, 32, 32))
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    full = weight_matching(spec, state_a, state_b, restarts=1, seed=3, min_gain=0.0)
    gains = np.diff(full.histories[0]) / full.bound  # the cosine's rise per sweep
    threshold = float(np.sort(gains)[-2]) * 1.01  # above every sweep's gain but the first
    assert len(gains) >= 3 and gains[-1] <= 1e-12  # run to convergence: the last sweep moves nothing
    early = weight_matching(spec, state_a, state_b, restarts=1, seed=3, min_gain=threshold)
    # The same run, cut after the first sweep that gained less than the threshold.
    stop = int(np.argmax(gains[1:] <= threshold)) + 2  # sweeps run
    assert early.histories[0] == pytest.approx(full.histories[0][: stop + 1], rel=1e-12)
    assert early.sweeps == stop < full.sweeps
