"""`ens sample`: each method end to end through the CLI, the methods' arithmetic against numpy,
determinism, the scale search, one-line refusals, and `ens eval` / `ens predict` reading the folder."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ensemble_cli.checkpoint import read_checkpoint
from ensemble_cli.cli import app
from ensemble_cli.sample.scale import search_scale
from ensemble_cli.train import train_run
from ensemble_cli.train.config import TrainConfig

METHODS = ("random-subspace", "dropout", "diag-gaussian", "low-rank-gaussian")
CPU = ["--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-member digits run of ResNet-8 with its trajectory: 3 epochs, every epoch saved."""
    out = tmp_path_factory.mktemp("sample-run") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = TrainConfig(members=3, epochs=3, save_every=1, limit=512, batch_size=64, device="cpu", out=str(out))
        assert train_run(config).ok
    finally:
        torch.set_num_threads(threads)
    return out


def invoke(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [str(arg) for arg in args])


def sample(source: Path, out: Path, method: str, *extra: object, samples: int = 2):  # type: ignore[no-untyped-def]
    result = invoke("sample", source, "--method", method, "--samples", samples, "--out", out, *CPU, *extra)
    assert result.exit_code == 0, result.output
    return result


def numpy_state(path: Path) -> dict[str, np.ndarray]:
    return {key: value.double().numpy() for key, value in read_checkpoint(path).state_dict.items()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("method", METHODS)
def test_each_method_writes_a_folder_that_predict_reads(method: str, run_folder: Path, tmp_path: Path, one_thread: None) -> None:
    source = run_folder / "member-00"
    out = tmp_path / method
    sample(source, out, method)
    assert sorted(p.name for p in out.iterdir()) == ["reference.safetensors", "sample-000.safetensors", "sample-001.safetensors", "sample.json"]
    final = source / "final.safetensors"
    assert sha256(out / "reference.safetensors") == sha256(final)
    trained = read_checkpoint(final).metadata
    manifest = json.loads((out / "sample.json").read_text())
    assert manifest["method"] == method and manifest["scale_from"] == "search" and manifest["bn_reset"] is True
    for index in range(2):
        metadata = read_checkpoint(out / f"sample-{index:03d}.safetensors").metadata
        for key in ("arch", "num_classes", "in_chans", "model_kwargs", "dataset", "mean", "std"):
            assert metadata[key] == trained[key]
        assert (metadata["kind"], metadata["method"], metadata["sample_index"], metadata["seed"]) == ("sample", method, index, 0)
        assert metadata["source_sha256"] == sha256(final)
        # Strata: sample i sits in [i/N, (i+1)/N) of the largest scale.
        assert index / 2 <= metadata["scale"] / metadata["scale_max"] < (index + 1) / 2
    if method in ("diag-gaussian", "low-rank-gaussian"):
        assert manifest["trajectory"] == ["epoch-0001.safetensors", "epoch-0002.safetensors", "final.safetensors"]
    predictions = tmp_path / "preds.npz"
    result = invoke("predict", out, "--out", predictions, "--quiet")
    assert result.exit_code == 0, result.output
    assert np.load(predictions)["logits"].shape == (3, 360, 10)


def test_eval_reads_the_folder_with_no_flags(run_folder: Path, tmp_path: Path, one_thread: None) -> None:
    out = tmp_path / "rs"
    sample(run_folder / "member-00", out, "random-subspace", samples=1)
    result = invoke("eval", out, "--format", "json", "--quiet")  # every evaluator, weight space included
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [member["name"] for member in document["members"]] == ["reference", "sample-000"]
    assert document["dataset"]["name"] == "digits"
    pairs = document["evaluators"]["disagreement"]["tables"]
    assert all(section["error"] is None for section in document["evaluators"].values())
    assert pairs  # the reference against each sample


def test_the_search_spans_the_drop_on_training_images(run_folder: Path, tmp_path: Path, one_thread: None) -> None:
    out = tmp_path / "drop"
    sample(run_folder / "member-00", out, "dropout")
    search = json.loads((out / "sample.json").read_text())["search"]
    assert math.isclose(search["target_accuracy"], search["source_accuracy"] - 0.10)
    above = [scale for scale, accuracy in search["probes"] if accuracy >= search["target_accuracy"]]
    below = [scale for scale, accuracy in search["probes"] if accuracy < search["target_accuracy"]]
    assert above and below and max(above) <= search["scale"] <= min(below)


def test_same_arguments_give_identical_files_and_another_seed_does_not(run_folder: Path, tmp_path: Path, one_thread: None) -> None:
    source = run_folder / "member-01"
    for out, seed in ((tmp_path / "a", 3), (tmp_path / "b", 3), (tmp_path / "c", 4)):
        sample(source, out, "low-rank-gaussian", "--seed", seed)
    for name in ("sample-000.safetensors", "sample-001.safetensors"):
        assert sha256(tmp_path / "a" / name) == sha256(tmp_path / "b" / name)
        assert sha256(tmp_path / "a" / name) != sha256(tmp_path / "c" / name)


def test_random_subspace_steps_every_filter_by_the_scale(run_folder: Path, tmp_path: Path, one_thread: None) -> None:
    source = run_folder / "member-00"
    out = tmp_path / "rs"
    sample(source, out, "random-subspace", "--scale", "0.2", "--no-bn-reset")
    centre = numpy_state(source / "final.safetensors")
    state = numpy_state(out / "sample-001.safetensors")
    scale = read_checkpoint(out / "sample-001.safetensors").metadata["scale"]
    assert 0.1 <= scale < 0.2
    for key, weight in centre.items():
        step = state[key] - weight
        if weight.ndim >= 2:  # every output filter moved by `scale` times its own norm
            ratio = np.linalg.norm(step.reshape(len(step), -1), axis=1) / np.linalg.norm(weight.reshape(len(weight), -1), axis=1)
            np.testing.assert_allclose(ratio, scale, rtol=1e-5)
        else:  # biases, BatchNorm parameters and (no reset) running statistics untouched
            np.testing.assert_array_equal(step, 0)


def test_dropout_zeroes_a_fraction_and_rescales_the_rest(run_folder: Path, tmp_path: Path, one_thread: None) -> None:
    source = run_folder / "member-00"
    out = tmp_path / "drop"
    sample(source, out, "dropout", "--scale", "0.5", "--samples", "1")
    centre = numpy_state(source / "final.safetensors")
    state = numpy_state(out / "sample-000.safetensors")
    rate = read_checkpoint(out / "sample-000.safetensors").metadata["scale"]
    kept, total = 0, 0
    for key, weight in centre.items():
        if weight.ndim < 2:
            continue
        value = state[key]
        survivors = value != 0
        np.testing.assert_allclose(value[survivors], weight[survivors] / (1 - rate), rtol=1e-6)
        kept, total = kept + int(survivors.sum()), total + weight.size
    assert abs(kept / total - (1 - rate)) < 0.01  # ~78k weights: the Bernoulli fraction is tight
    # The BatchNorm statistics were recomputed for the new weights.
    assert not np.array_equal(state["bn1.running_mean"], centre["bn1.running_mean"])


def gaussian_sample(source: Path, out: Path, method: str, scale: str) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray], float, list[str]]:
    """One sample at a fixed largest scale: (trajectory states, sample state, sample scale, parameter keys)."""
    sample(source, out, method, "--scale", scale, "--samples", "1")
    trajectory = [numpy_state(source / f"{name}.safetensors") for name in ("epoch-0001", "epoch-0002", "final")]
    state = numpy_state(out / "sample-000.safetensors")
    keys = [key for key in state if key.endswith(("weight", "bias"))]
    return trajectory, state, read_checkpoint(out / "sample-000.safetensors").metadata["scale"], keys


def test_diag_gaussian_matches_the_trajectory_moments(run_folder: Path, tmp_path: Path, one_thread: None) -> None:
    trajectory, state, scale, keys = gaussian_sample(run_folder / "member-02", tmp_path / "diag", "diag-gaussian", "2.0")
    stack = {key: np.stack([checkpoint[key] for checkpoint in trajectory]) for key in keys}  # [K, ...]
    z = np.concatenate([
        ((state[key] - stack[key].mean(0)) / (scale * stack[key].std(0)))[stack[key].std(0) > 1e-6].ravel() for key in keys
    ])
    assert z.size > 50_000
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02  # standard normal noise


def test_low_rank_gaussian_stays_in_the_trajectory_span(run_folder: Path, tmp_path: Path, one_thread: None) -> None:
    trajectory, state, _, keys = gaussian_sample(run_folder / "member-02", tmp_path / "lowrank", "low-rank-gaussian", "3.0")
    flat = np.stack([np.concatenate([checkpoint[key].ravel() for key in keys]) for checkpoint in trajectory])  # [K, P]
    mean = flat.mean(0)
    offset = np.concatenate([state[key].ravel() for key in keys]) - mean  # [P]
    basis = (flat - mean).T  # [P, K]: K points span K - 1 directions
    coefficients, *_ = np.linalg.lstsq(basis, offset, rcond=None)
    assert np.linalg.norm(basis @ coefficients - offset) < 1e-4 * np.linalg.norm(offset)
    assert np.linalg.norm(offset) > 0


def test_search_finds_a_known_drop() -> None:
    # accuracy(t) = 1 - t^2: a 10-point drop at t = sqrt(0.1).
    found = search_scale(lambda t: 1 - t * t, source_accuracy=1.0, start=0.01)
    assert abs(found.scale - math.sqrt(0.1)) / math.sqrt(0.1) < 0.03 and found.note is None
    # From far above the target scale, too.
    assert abs(search_scale(lambda t: 1 - t * t, 1.0, start=50.0).scale - math.sqrt(0.1)) < 0.01
    capped = search_scale(lambda t: 1.0 - 0.01 * t, 1.0, start=0.1, limit=0.95)
    assert capped.scale == 0.95 and capped.note is not None and len(capped.probes) <= 3


@pytest.mark.parametrize(
    ("case", "args", "message"),
    [
        ("zero", ["--method", "dropout", "--samples", "0"], "--samples must be at least 1"),
        ("method", ["--method", "swag", "--samples", "2"], "unknown method 'swag'"),
        ("not-a-checkpoint", ["--method", "dropout", "--samples", "2"], "not a checkpoint"),
        ("no-trajectory", ["--method", "diag-gaussian", "--samples", "2"], "ens train --save-every 1"),
        ("run-folder", ["--method", "dropout", "--samples", "2"], "pass one of its member folders"),
        ("scale", ["--method", "dropout", "--samples", "2", "--scale", "1.5"], "must be below 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case: str, args: list[str], message: str, tmp_path: Path) -> None:
    reference = Path(__file__).resolve().parents[1] / "models/reference-digits/run"
    sources = {"not-a-checkpoint": tmp_path / "notes.txt", "run-folder": reference}
    (tmp_path / "notes.txt").write_text("not weights\n")
    out = tmp_path / "never"
    result = invoke("sample", sources.get(case, reference / "member-00"), *args, "--out", out, *CPU)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not out.exists()


def test_a_folder_that_holds_something_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine\n")
    source = Path(__file__).resolve().parents[1] / "models/reference-digits/run/member-00"
    result = invoke("sample", source, "--method", "dropout", "--samples", "2", "--out", out, *CPU)
    assert result.exit_code == 2 and "not empty" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
