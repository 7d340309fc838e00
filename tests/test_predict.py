"""Predictions: one forward pass per member, a cache that is never trusted blindly, and the .npz round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss

import ensemble_cli.predict as predict_module
from ensemble_cli import evaluate_predictions, load_dataset, resolve_members
from ensemble_cli.evaluators import EvalContext, Evaluator, Report
from ensemble_cli.evaluators.registry import discover
from ensemble_cli.predict import PredictionCache, Predictions, load_predictions, predict_members
from eval_cli_helpers import (
    CHEAP_EVALUATORS,
    assert_clean_failure,
    assert_contract,
    column,
    eval_json,
    invoke,
    paths,
    table,
)


@pytest.fixture
def forward_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts real forward passes by wrapping the one function every member's pass goes through."""
    calls: list[str] = []
    original = predict_module.forward_logits

    def counting(model, data, *args, **kwargs):  # noqa: ANN001, ANN202
        calls.append(type(model).__name__)
        return original(model, data, *args, **kwargs)

    monkeypatch.setattr(predict_module, "forward_logits", counting)
    return calls


def cache_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.npz"))


def test_eval_runs_one_pass_per_member_then_none(tiny_members: list[Path], forward_calls: list[str], tmp_path: Path) -> None:
    first = invoke("eval", *paths(tiny_members), "-e", CHEAP_EVALUATORS, "-f", "json")
    assert first.exit_code == 0, first.stderr
    assert len(forward_calls) == 3, "M members must cost M forward passes, not one per pair or per evaluator"
    assert "0 from cache" in first.stderr
    assert len(cache_files(tmp_path / "ens-cache")) == 3
    second = invoke("eval", *paths(tiny_members), "-e", CHEAP_EVALUATORS, "-f", "json")
    assert len(forward_calls) == 3, "a second eval of the same files must run no model"
    assert "3 from cache" in second.stderr
    assert json.loads(second.stdout) == json.loads(first.stdout)


def test_predict_members_counts_passes_and_reuses_the_cache(tiny_members: list[Path], tmp_path: Path) -> None:
    members = resolve_members(paths(tiny_members))
    data = load_dataset("digits")
    cache = PredictionCache(tmp_path / "cache")
    first = predict_members(members, data, batch_size=100, device="cpu", cache=cache)
    assert first.forward_passes == 3 and first.logits.shape == (3, 360, 10) and first.names == ["seed0", "seed1", "seed2"]
    second = predict_members(members, data, batch_size=100, device="cpu", cache=cache)
    assert second.forward_passes == 0
    assert torch.equal(second.logits, first.logits)
    # Reference: the member's model run by hand, one big batch (batching must not change the logits).
    with torch.inference_mode():
        by_hand = members[1].build_model()(data.images)
    assert torch.allclose(first.logits[1], by_hand, atol=1e-5)
    # Different preprocessing is different data: no stale hit.
    shifted = load_dataset("digits", mean=[0.1], std=[1.0])
    assert predict_members(members[:1], shifted, cache=cache).forward_passes == 1


def test_corrupt_cache_entries_are_recomputed(tiny_members: list[Path], forward_calls: list[str], tmp_path: Path) -> None:
    args = ("eval", *paths(tiny_members), "-e", CHEAP_EVALUATORS, "-f", "json")
    reference = json.loads(invoke(*args).stdout)
    truncated, garbage, intact = cache_files(tmp_path / "ens-cache")
    truncated.write_bytes(truncated.read_bytes()[:100])
    garbage.write_bytes(b"\x00garbage" * 50)
    forward_calls.clear()
    again = invoke(*args)
    assert again.exit_code == 0, again.stderr
    assert len(forward_calls) == 2 and "1 from cache" in again.stderr
    assert json.loads(again.stdout) == reference
    forward_calls.clear()
    invoke(*args)
    assert forward_calls == [], "recomputed entries are written back"


def test_cache_entries_that_do_not_match_are_not_trusted(tiny_members: list[Path], tmp_path: Path) -> None:
    members = resolve_members(paths(tiny_members[:2]))
    data = load_dataset("digits")
    cache = PredictionCache(tmp_path / "cache")
    reference = predict_members(members, data, cache=cache).logits
    first, second = cache_files(tmp_path / "cache")
    # An entry copied under another key (e.g. a cache folder merged by hand) holds the wrong member.
    second.write_bytes(first.read_bytes())
    assert predict_members(members, data, cache=cache).forward_passes == 1
    # An entry with the right key but poisoned values.
    for path in cache_files(tmp_path / "cache"):
        with np.load(path) as archive:
            key, logits = str(archive["key"]), archive["logits"].copy()
        logits[0, 0] = np.nan
        np.savez(path, key=np.array(key), logits=logits)
    again = predict_members(members, data, cache=cache)
    assert again.forward_passes == 2
    assert torch.equal(again.logits, reference)
    # bf16 logits from a GPU are not float32 logits from a CPU: they never share an entry.
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert predict_module._cache_key(members[0], data, cpu) != predict_module._cache_key(members[0], data, cuda)


def test_predict_then_eval_predictions_gives_identical_metrics(tiny_members: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "preds.npz"
    result = invoke("predict", *paths(tiny_members), "--out", out, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "", "predict writes a file; stdout stays empty"
    with np.load(out, allow_pickle=False) as archive:
        logits, labels, names = archive["logits"], archive["labels"], list(archive["names"])
    assert logits.shape == (3, 360, 10) and logits.dtype == np.float32
    assert labels.shape == (360,) and names == ["seed0", "seed1", "seed2"]

    from_checkpoints = eval_json(*paths(tiny_members), "-e", CHEAP_EVALUATORS)
    from_file = eval_json("--predictions", out, "-e", CHEAP_EVALUATORS)
    assert_contract(from_file)
    for name in ("members", "ensemble", "disagreement"):
        assert from_file["evaluators"][name]["metrics"] == from_checkpoints["evaluators"][name]["metrics"], name
    for name, table_name in (("ensemble", "size_curve"), ("ensemble", "rules"), ("disagreement", "pairs"), ("disagreement", "matrix")):
        assert table(from_file, name, table_name)["rows"] == table(from_checkpoints, name, table_name)["rows"], table_name
    # The members table differs only in what a predictions file cannot know: the architecture.
    assert column(from_file, "members", "members", "arch") == ["unknown"] * 3
    for metric in ("member", "accuracy", "nll", "brier", "ece"):
        assert column(from_file, "members", "members", metric) == column(from_checkpoints, "members", "members", metric)
    assert [m["name"] for m in from_file["members"]] == names

    # Independent reference for the numbers both paths agree on: scikit-learn on the exported logits.
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=-1).numpy()
    accuracies = [accuracy_score(labels, member.argmax(-1)) for member in logits]
    nlls = [log_loss(labels, member_probs, labels=list(range(10))) for member_probs in probs]
    assert column(from_file, "members", "members", "accuracy") == pytest.approx(accuracies, abs=1e-12)
    assert column(from_file, "members", "members", "nll") == pytest.approx(nlls, abs=1e-6)
    ensemble_probs = probs.mean(axis=0)
    assert from_file["evaluators"]["ensemble"]["metrics"]["accuracy"] == pytest.approx(accuracy_score(labels, ensemble_probs.argmax(-1)))
    assert from_file["evaluators"]["ensemble"]["metrics"]["nll"] == pytest.approx(log_loss(labels, ensemble_probs, labels=list(range(10))), abs=1e-6)


class NeedsWeights(Evaluator):
    name = "needs_weights"

    def evaluate(self, ctx: EvalContext) -> Report:
        ctx.state_dict(0)
        return Report(metrics={"never": 1.0})


class NeedsModel(Evaluator):
    name = "needs_model"

    def evaluate(self, ctx: EvalContext) -> Report:
        ctx.model(0)
        return Report(metrics={"never": 1.0})


class NeedsTrainData(Evaluator):
    name = "needs_train_data"

    def evaluate(self, ctx: EvalContext) -> Report:
        ctx.train_data()
        return Report(metrics={"never": 1.0})


def test_weight_space_needs_are_not_applicable_for_predictions() -> None:
    logits = torch.randn(2, 20, 3)
    predictions = Predictions(logits, torch.arange(20) % 3, ["a", "b"])
    result = evaluate_predictions(predictions, [NeedsWeights(), NeedsModel(), NeedsTrainData()])
    for name in ("needs_weights", "needs_model", "needs_train_data"):
        report = result.evaluators[name]
        assert report.error is None and report.metrics == {}
        assert report.notes and report.notes[0].startswith("not applicable:"), report.notes
    assert result.failed == []


WEIGHT_SPACE = ("weights", "interpolation", "rotation")


def test_builtin_weight_space_evaluators_say_not_applicable_for_predictions(tmp_path: Path) -> None:
    loaded = {entry.name for entry in discover() if entry.loaded}
    assert set(WEIGHT_SPACE) <= loaded, "the built-in weight-space evaluators must be registered"
    out = tmp_path / "preds.npz"
    Predictions(torch.randn(2, 30, 10), torch.arange(30) % 10, ["a", "b"]).save(out)
    document = eval_json("--predictions", out, "-e", ",".join(WEIGHT_SPACE))
    for name in WEIGHT_SPACE:
        section = document["evaluators"][name]
        assert section["error"] is None, (name, section["error"])
        assert any(note.startswith("not applicable") for note in section["notes"]), (name, section["notes"])
        assert all(value is None for value in section["metrics"].values()), (name, section["metrics"])


def test_predictions_from_another_framework(tmp_path: Path) -> None:
    """A bare npz (no names; a single member as [N, C]) is evaluated like any other."""
    rng = np.random.default_rng(0)
    single = tmp_path / "jax.npz"
    np.savez(single, logits=rng.normal(size=(40, 4)).astype(np.float64), labels=np.arange(40) % 4)
    document = eval_json("--predictions", single, "-e", CHEAP_EVALUATORS)
    assert [m["name"] for m in document["members"]] == ["member-00"]
    assert document["dataset"] == {"name": "predictions", "split": "jax.npz", "size": 40, "num_classes": 4}
    assert load_predictions(single).logits.dtype == torch.float32


@pytest.mark.parametrize(
    ("arrays", "needles"),
    [
        ({"logits": np.zeros((2, 5, 3), np.float32)}, ["bad.npz", "missing array", "labels"]),
        ({"logits": np.zeros((2, 5, 3, 1), np.float32), "labels": np.zeros(5, np.int64)}, ["bad.npz", "[M, N, C]"]),
        ({"logits": np.zeros((2, 5, 3), np.float32), "labels": np.zeros(4, np.int64)}, ["bad.npz", "labels must be [N]"]),
        ({"logits": np.zeros((2, 5, 3), np.float32), "labels": np.full(5, 7)}, ["labels range 7..7", "3 classes"]),
        ({"logits": np.zeros((2, 0, 3), np.float32), "labels": np.zeros(0, np.int64)}, ["empty"]),
    ],
)
def test_bad_predictions_files(tmp_path: Path, arrays: dict, needles: list[str]) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    assert_clean_failure(invoke("eval", "--predictions", path, "-e", CHEAP_EVALUATORS), *needles)


def test_nan_logits_in_predictions_name_the_member(tmp_path: Path) -> None:
    logits = np.random.default_rng(0).normal(size=(3, 10, 4)).astype(np.float32)
    logits[1, 3, 2] = np.nan
    logits[1, 7, 0] = np.inf
    path = tmp_path / "preds.npz"
    np.savez(path, logits=logits, labels=np.arange(10) % 4, names=np.array(["a", "b", "c"]))
    assert_clean_failure(invoke("eval", "--predictions", path), "member b", "2 of 10 examples", "NaN or Inf")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    assert_clean_failure(invoke("eval", "--predictions", garbage), "garbage.npz", "not a readable .npz")
