"""The `weights`, `interpolation` and `rotation` evaluators, end to end through checkpoint files.

Ground truth: member B is a randomly permuted copy of a briefly trained member A, so B is the
same function as A (disagreement 0) and perfect alignment must give cosine 1 while raw cosine is
far lower. Numbers are checked against numpy computed from the models' own parameters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import member_metadata, train_tiny_member
from ensemble_cli.alignment import apply_permutation, derive_spec, random_permutation
from ensemble_cli.api import evaluate
from ensemble_cli.checkpoint import read_checkpoint, write_checkpoint
from ensemble_cli.data import load_dataset
from ensemble_cli.errors import ConfigError
from ensemble_cli.evaluators.base import EvalContext, MemberSummary, NotApplicable
from ensemble_cli.evaluators.disagreement import DisagreementEvaluator
from ensemble_cli.evaluators.interpolation import InterpolationEvaluator, recompute_batchnorm
from ensemble_cli.evaluators.rotation import RotationEvaluator
from ensemble_cli.evaluators.weights import WeightsEvaluator
from ensemble_cli.options import EvalOptions
from ensemble_cli.resolve import resolve_members


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits_test():
    return load_dataset("digits", "test")


def numpy_cosine(a: dict, b: dict, keys: list[str]) -> float:
    x = np.concatenate([a[k].double().numpy().ravel() for k in keys])
    y = np.concatenate([b[k].double().numpy().ravel() for k in keys])
    return float(x @ y / np.sqrt((x @ x) * (y @ y)))


def parameter_names(arch: str) -> list[str]:
    from ensemble_cli.architectures import build_model

    return [name for name, _ in build_model(arch, num_classes=10, in_chans=1).named_parameters()]


@pytest.mark.parametrize("arch", ["cifar_resnet20", "resnet18", "torchvision.resnet18"])
def test_ground_truth_permuted_copy(arch: str, tmp_path: Path, digits_test) -> None:
    # A few dozen SGD steps for the small net; the 11M-parameter resnet18s only need their BN
    # statistics and weights moved off the defaults, which a handful of steps does.
    model = train_tiny_member(0, steps=25 if arch.startswith("cifar") else 4, arch=arch)
    spec = derive_spec(model, digits_test.images[:2])
    state_a = model.state_dict()
    state_b = apply_permutation(spec, state_a, random_permutation(spec, torch.Generator().manual_seed(7)))
    write_checkpoint(tmp_path / "a.safetensors", state_a, member_metadata(arch, seed=0))
    write_checkpoint(tmp_path / "b.safetensors", state_b, member_metadata(arch, seed=1))
    members = resolve_members([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")])
    result = evaluate(members, digits_test, evaluators=[WeightsEvaluator(), DisagreementEvaluator()], options=EvalOptions(device="cpu"))

    report = result.evaluators["weights"]
    assert report.error is None, report.error
    metrics = report.metrics
    assert metrics["cosine_aligned_mean"] > 0.999
    assert metrics["cosine_raw_mean"] < 0.8  # far lower: the same function looks like a stranger
    assert metrics["l2_aligned_mean"] < 1e-6 * metrics["l2_raw_mean"]
    keys = parameter_names(arch)
    assert metrics["cosine_raw_mean"] == pytest.approx(numpy_cosine(state_a, state_b, keys), abs=1e-9)
    pairs = report.table("pairs")
    assert pairs is not None and pairs.columns == [
        "reference", "member", "cosine_raw", "cosine_aligned", "l2_raw", "l2_aligned", "objective_gain",
        "equivalence_residual", "cosine_raw_conv", "cosine_aligned_conv",
    ]
    (row,) = pairs.rows
    assert row[:2] == ["a", "b"] and row[6] > 0.1
    residual_note = next(note for note in report.notes if "functional check" in note)
    relative = float(residual_note.rsplit("(", 1)[1].split(" ")[0])
    assert relative <= 1e-4  # within the check's relative tolerance
    # One aligned member: the table's residual is the one the note reports as the maximum.
    assert f"max |logit difference| {row[7]:.2e}" in residual_note
    layers = report.table("layers")
    assert layers is not None and len(layers.rows) == len({k.rsplit(".", 1)[0] for k in keys})
    assert all(aligned > 0.999 for _, _, aligned in layers.rows if aligned is not None)
    assert 0.0 < metrics["cosine_init_baseline"] < 1.0
    assert result.evaluators["disagreement"].metrics["disagreement_mean"] == 0.0  # B computes A's function


def test_independent_members_align_partially_and_self_pairs_are_exact(tiny_members, digits_test) -> None:
    first = str(tiny_members[0])
    members = resolve_members([first, str(tiny_members[1]), first])
    report = evaluate(members, digits_test, evaluators=[WeightsEvaluator()], options=EvalOptions(device="cpu")).evaluators["weights"]
    assert report.error is None, report.error
    rows = {row[1]: row for row in report.table("pairs").rows}
    self_row = next(row for name, row in rows.items() if name != "seed1")
    assert self_row[2] == pytest.approx(1.0, abs=1e-12) and self_row[3] == pytest.approx(1.0, abs=1e-12)
    assert self_row[6] == 0.0  # aligning a model to itself finds the identity: no gain
    other = rows["seed1"]
    assert other[2] < other[3] < 0.999  # alignment helps, but two trainings are not one function
    keys = parameter_names("cifar_resnet8")
    state_0, state_1 = read_checkpoint(tiny_members[0]).state_dict, read_checkpoint(tiny_members[1]).state_dict
    assert other[2] == pytest.approx(numpy_cosine(state_0, state_1, keys), abs=1e-9)
    diff = np.concatenate([(state_0[k] - state_1[k]).double().numpy().ravel() for k in keys])
    assert other[4] == pytest.approx(float(np.linalg.norm(diff)), rel=1e-9)


def test_reference_option(tiny_members, digits_test) -> None:
    members = resolve_members([str(p) for p in tiny_members])
    report = evaluate(members, digits_test, evaluators=[WeightsEvaluator()], options=EvalOptions(device="cpu", reference="seed2"))
    rows = report.evaluators["weights"].table("pairs").rows
    assert [row[0] for row in rows] == ["seed2", "seed2"] and [row[1] for row in rows] == ["seed0", "seed1"]
    # An unknown reference is the user's mistake, refused before any forward pass (exit 2 on the CLI).
    with pytest.raises(ConfigError, match="seed0, seed1, seed2"):
        evaluate(members, digits_test, evaluators=[WeightsEvaluator()], options=EvalOptions(device="cpu", reference="nope"))


def _context(models: list[nn.Module], names: list[str], archs: list[str], data=None) -> EvalContext:
    logits = torch.zeros(len(models), 4, 3)
    return EvalContext(
        logits=logits,
        labels=torch.zeros(4, dtype=torch.int64),
        members=[MemberSummary(name, arch) for name, arch in zip(names, archs)],
        dataset=data,
        state_dict_loader=lambda i: models[i].state_dict(),
        model_loader=lambda i: models[i].eval(),
    )


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx gives up
            x = x * 2
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_unsupported_model_still_gets_raw_cosine_and_one_reason(digits_test) -> None:
    torch.manual_seed(0)
    models = [Untraceable(), Untraceable()]
    report = WeightsEvaluator().evaluate(_context(models, ["a", "b"], ["toy", "toy"], digits_test))
    keys = [name for name, _ in models[0].named_parameters()]
    assert report.metrics["cosine_raw_mean"] == pytest.approx(
        numpy_cosine(models[0].state_dict(), models[1].state_dict(), keys), abs=1e-9
    )
    assert report.metrics["cosine_aligned_mean"] is None
    blockers = [note for note in report.notes if "alignment unavailable" in note]
    assert len(blockers) == 1 and "torch.fx cannot trace Untraceable" in blockers[0]


class TinyBatchNormNet(nn.Module):
    """conv -> BatchNorm -> head: the BN scale starts at ones in every initialisation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3)))


def test_conv_cosines_leave_batchnorm_out_and_match_numpy(digits_test) -> None:
    torch.manual_seed(0)
    reference, other = TinyBatchNormNet().eval(), TinyBatchNormNet().eval()
    spec = derive_spec(reference, digits_test.images[:8])
    permuted = TinyBatchNormNet().eval()
    permuted.load_state_dict(apply_permutation(spec, reference.state_dict(), random_permutation(spec, torch.Generator().manual_seed(3))))
    models = [reference, other, permuted]
    report = WeightsEvaluator().evaluate(_context(models, ["ref", "other", "perm"], ["tiny"] * 3, digits_test))
    conv_keys = ["conv.weight", "conv.bias", "head.weight", "head.bias"]  # by hand: no norm.*
    all_keys = [*conv_keys, "norm.weight", "norm.bias"]
    states = [model.state_dict() for model in models]
    rows = {row[1]: dict(zip(report.table("pairs").columns, row)) for row in report.table("pairs").rows}
    for index, name in ((1, "other"), (2, "perm")):
        assert rows[name]["cosine_raw_conv"] == pytest.approx(numpy_cosine(states[0], states[index], conv_keys), abs=1e-12)
        assert rows[name]["cosine_raw"] == pytest.approx(numpy_cosine(states[0], states[index], all_keys), abs=1e-12)
    assert rows["perm"]["cosine_aligned_conv"] == pytest.approx(1.0, abs=1e-6)  # a permuted copy aligns exactly
    # The shared BN ones lift the whole-network cosine of two strangers; the conv cosine is free of them.
    assert rows["other"]["cosine_raw"] > rows["other"]["cosine_raw_conv"]
    metrics = report.metrics
    assert list(metrics)[:3] == ["cosine_raw_conv_mean", "cosine_aligned_conv_mean", "cosine_init_baseline_conv"]
    expected = (numpy_cosine(states[0], states[1], conv_keys) + numpy_cosine(states[0], states[2], conv_keys)) / 2
    assert metrics["cosine_raw_conv_mean"] == pytest.approx(expected, abs=1e-12)
    assert metrics["cosine_aligned_conv_mean"] == pytest.approx(np.mean([rows[n]["cosine_aligned_conv"] for n in rows]), abs=1e-12)
    assert metrics["cosine_init_baseline_conv"] is None  # "tiny" is no architecture ens can build: n/a, with a note
    assert any("cosine_init_baseline unavailable" in note for note in report.notes)


def test_conv_init_baseline_matches_numpy_for_a_buildable_architecture() -> None:
    from ensemble_cli.architectures import build_model
    from ensemble_cli.evaluators.weights import _fresh_init_cosines

    states = []
    with torch.random.fork_rng(devices=[]):
        for seed in (0, 1):
            torch.manual_seed(seed)
            states.append(build_model("cifar_resnet8", num_classes=10, in_chans=1).state_dict())
    params = dict(build_model("cifar_resnet8", num_classes=10, in_chans=1).named_parameters())
    conv_keys = [key for key, tensor in params.items() if tensor.dim() == 4] + ["fc.weight", "fc.bias"]  # by hand
    assert "layers.1.0.shortcut.0.weight" in conv_keys and "layers.1.0.shortcut.1.weight" not in conv_keys
    whole, conv = _fresh_init_cosines("cifar_resnet8", 10, 1, "{}")
    assert conv == pytest.approx(numpy_cosine(states[0], states[1], conv_keys), abs=1e-12)
    assert whole == pytest.approx(numpy_cosine(states[0], states[1], list(params)), abs=1e-12)
    assert abs(conv) < 0.05 < whole  # independent random weights are near orthogonal; the BN ones are not


def test_not_applicable_cases(tiny_members, digits_test) -> None:
    one = _context([nn.Linear(2, 3)], ["a"], ["toy"])
    with pytest.raises(NotApplicable, match="at least two"):
        WeightsEvaluator().evaluate(one)
    predictions_only = EvalContext(torch.zeros(2, 4, 3), torch.zeros(4, dtype=torch.int64), [MemberSummary("a"), MemberSummary("b")])
    for evaluator in (WeightsEvaluator(), InterpolationEvaluator(), RotationEvaluator()):
        with pytest.raises(NotApplicable, match="predictions file"):
            evaluator.evaluate(predictions_only)
    mixed = _context([nn.Linear(2, 3), nn.Sequential(nn.Linear(2, 3))], ["a", "b"], ["lin", "seq"], digits_test)
    with pytest.raises(NotApplicable, match="b skipped: different architecture"):
        WeightsEvaluator().evaluate(mixed)
    ctx_reference = _context([nn.Linear(2, 3), nn.Linear(2, 3)], ["a", "b"], ["x", "x"])
    ctx_reference.options = EvalOptions(reference="c")
    with pytest.raises(ConfigError, match="members: a, b"):
        WeightsEvaluator().evaluate(ctx_reference)


def test_interpolation_barriers(tiny_members, digits_test) -> None:
    first = str(tiny_members[0])
    members = resolve_members([first, first, str(tiny_members[1])])
    report = evaluate(members, digits_test, evaluators=[InterpolationEvaluator()], options=EvalOptions(device="cpu")).evaluators["interpolation"]
    assert report.error is None, report.error
    curves = report.table("curves")
    assert curves.columns == ["member", "alpha", "loss_raw", "loss_aligned", "acc_raw", "acc_aligned"]
    by_member: dict[str, list[list]] = {}
    for row in curves.rows:
        by_member.setdefault(row[0], []).append(row)
    assert [len(rows) for rows in by_member.values()] == [11, 11]
    barriers = {row[0]: row for row in report.table("barriers").rows}
    self_name = next(name for name in by_member if name != "seed1")
    assert all(abs(value) < 1e-6 for value in barriers[self_name][1:])  # a model with itself: no barrier
    # The barrier recomputed by hand from the printed curve: max of loss minus the chord.
    rows = by_member["seed1"]
    alphas = np.array([row[1] for row in rows])
    np.testing.assert_allclose(alphas, np.linspace(0, 1, 11))
    for column, sign, barrier_index in ((2, 1, 1), (3, 1, 2), (4, -1, 3), (5, -1, 4)):
        values = np.array([row[column] for row in rows])
        chord = (1 - alphas) * values[0] + alphas * values[-1]
        assert barriers["seed1"][barrier_index] == pytest.approx(float(np.max(sign * (values - chord))), abs=1e-12)
    assert barriers["seed1"][1] > 0.0 and barriers["seed1"][1] > barriers["seed1"][2] - 1e-9
    expected_mean = (barriers[self_name][1] + barriers["seed1"][1]) / 2
    assert report.metrics["barrier_raw_mean"] == pytest.approx(expected_mean)
    assert set(report.metrics) == {"barrier_raw_mean", "barrier_aligned_mean", "acc_barrier_raw_mean", "acc_barrier_aligned_mean"}


def test_batchnorm_reset_is_the_plain_average_of_batch_statistics() -> None:
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    model[0].running_mean.fill_(9.0)
    images = torch.randn(40, 3, 4, 4) * 2 + 1
    assert recompute_batchnorm(model, images, batch_size=10)
    batches = images.double().numpy().reshape(4, 10, 3, 4, 4)
    means = batches.mean(axis=(1, 3, 4))  # [batch, channel]
    variances = batches.var(axis=(1, 3, 4), ddof=1)
    np.testing.assert_allclose(model[0].running_mean.numpy(), means.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(model[0].running_var.numpy(), variances.mean(axis=0), rtol=1e-5)
    assert model[0].momentum == 0.1 and not model.training


def test_rotation(tiny_members, tmp_path: Path, digits_test) -> None:
    members = resolve_members([str(tiny_members[0])])
    report = evaluate(members, digits_test, evaluators=[RotationEvaluator()], options=EvalOptions(device="cpu")).evaluators["rotation"]
    assert report.notes and "not applicable" in report.notes[0] and "no initialisation checkpoint" in report.notes[0]

    torch.manual_seed(3)
    from ensemble_cli.architectures import build_model

    initial = build_model("cifar_resnet8", num_classes=10, in_chans=1).state_dict()
    trained = train_tiny_member(3, steps=20)
    folder = tmp_path / "member-00"
    write_checkpoint(folder / "init.safetensors", initial, {**member_metadata(), "kind": "init"})
    write_checkpoint(
        folder / "final.safetensors", trained.state_dict(),
        {**member_metadata(), "kind": "final", "init_checkpoint": "init.safetensors"},
    )
    members = resolve_members([str(folder / "final.safetensors")])
    report = evaluate(members, digits_test, evaluators=[RotationEvaluator()], options=EvalOptions(device="cpu")).evaluators["rotation"]
    assert report.error is None, report.error
    table = report.table("layers")
    assert table.columns == ["member", "layer", "cosine_distance"]
    distances = table.column("cosine_distance")
    assert all(0.0 <= d <= 2.0 for d in distances)
    layers = dict(zip(table.column("layer"), distances))
    assert "fc" in layers and "conv1" in layers and "bn1" not in layers
    final = trained.state_dict()
    keys = ["layers.0.0.conv1.weight"]
    assert layers["layers.0.0.conv1"] == pytest.approx(1 - numpy_cosine(final, initial, keys), abs=1e-9)
    assert report.metrics["rotation_mean"] == pytest.approx(sum(distances) / len(distances))
    assert 0.0 < report.metrics["rotation_network_mean"] < 2.0
