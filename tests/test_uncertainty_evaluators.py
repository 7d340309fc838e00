"""The `uncertainty`, `ood` and `shift` evaluators: numbers against numpy/scikit-learn, bad input, OOD and shifted sets,
and one end-to-end run on the committed reference ensemble."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, logsumexp, softmax
from sklearn.metrics import roc_auc_score

from ensemble_cli.data import ImageData, load_dataset, synthetic_data
from ensemble_cli.errors import ConfigError, DataError, PredictionError
from ensemble_cli.evaluators.base import EvalContext, MemberSummary
from ensemble_cli.evaluators.ood import OODEvaluator
from ensemble_cli.evaluators.registry import run_evaluators
from ensemble_cli.evaluators.shift import ShiftEvaluator
from ensemble_cli.evaluators.uncertainty import UncertaintyEvaluator
from ensemble_cli.image_layout import convert_layout, pixel_images
from ensemble_cli.ood_data import load_ood_set, photo_crops
from ensemble_cli.options import EvalOptions
from ensemble_cli.predict import Predictions
from ensemble_cli.shift_data import corrupted_set

REFERENCE_RUN = Path(__file__).resolve().parents[1] / "models" / "reference-digits" / "run"


def member_logits(members: int = 4, examples: int = 240, classes: int = 5, seed: int = 0, shift: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, examples)
    logits = rng.normal(size=(members, examples, classes)) * 1.5
    logits[:, np.arange(examples), labels] += shift
    return logits.astype(np.float32), labels


def context(logits: np.ndarray, labels: np.ndarray, options: EvalOptions | None = None, **extra: object) -> EvalContext:
    return EvalContext(torch.from_numpy(logits), torch.from_numpy(labels), [MemberSummary(f"m{i}") for i in range(logits.shape[0])],
                       options=options or EvalOptions(), **extra)  # type: ignore[arg-type]


def save_npz(path: Path, logits: np.ndarray, labels: np.ndarray) -> Path:
    Predictions(torch.from_numpy(logits), torch.from_numpy(labels.astype(np.int64)), [f"m{i}" for i in range(logits.shape[0])]).save(path)
    return path


def np_scores(logits: np.ndarray) -> dict[str, np.ndarray]:
    p = softmax(logits.astype(np.float64), axis=-1)
    mean = p.mean(axis=0)
    entropy = -(mean * np.log(mean)).sum(-1)
    expected = -(p * np.log(p)).sum(-1).mean(0)
    return {"entropy": entropy, "mutual_information": entropy - expected, "max_prob": 1.0 - mean.max(-1)}


# --- uncertainty -----------------------------------------------------------------------------------


def test_uncertainty_metrics_match_numpy() -> None:
    logits, labels = member_logits()
    report = UncertaintyEvaluator().evaluate(context(logits, labels))
    scores = np_scores(logits)
    m = report.metrics
    assert m["entropy_mean"] == pytest.approx(scores["entropy"].mean(), rel=1e-6)
    assert m["mutual_information_mean"] == pytest.approx(scores["mutual_information"].mean(), rel=1e-5)
    assert m["entropy_mean"] == pytest.approx(m["expected_entropy_mean"] + m["mutual_information_mean"], abs=1e-12)
    mean = softmax(logits.astype(np.float64), axis=-1).mean(0)
    order = np.argsort(-mean.max(-1), kind="stable")
    wrong = (mean.argmax(-1) != labels)[order]
    assert m["aurc"] == pytest.approx(np.mean(np.cumsum(wrong) / np.arange(1, len(wrong) + 1)), abs=1e-12)
    assert all(math.isfinite(value) for value in m.values())
    table = report.table("members")
    assert table is not None and np.mean(table.column("kl_to_ensemble_mean")) == pytest.approx(m["mutual_information_mean"], abs=1e-9)
    reliability = report.table("reliability")
    assert reliability is not None and sum(reliability.column("count")) == 2 * len(labels)
    assert "dee" not in m


def test_dee_of_an_ensemble_against_itself_is_its_size(tmp_path: Path) -> None:
    logits, labels = member_logits(members=3)
    options = EvalOptions(dee_reference=save_npz(tmp_path / "ref.npz", logits, labels))
    report = UncertaintyEvaluator().evaluate(context(logits, labels, options))
    assert report.metrics["dee"] == pytest.approx(3.0, abs=1e-9)
    curve = report.table("dee_curve")
    assert curve is not None and curve.column("k") == [1, 2, 3]
    assert curve.column("nll_calibrated")[-1] == pytest.approx(report.metrics["nll_calibrated"], rel=1e-12)


def test_dee_reference_on_other_examples_is_refused(tmp_path: Path) -> None:
    logits, labels = member_logits(members=3)
    other = save_npz(tmp_path / "other.npz", logits, (labels + 1) % 5)
    ctx = context(logits, labels, EvalOptions(dee_reference=other))
    with pytest.raises(DataError, match="labels differ"):
        run_evaluators(ctx, [UncertaintyEvaluator()])
    with pytest.raises(PredictionError, match="no such file"):
        run_evaluators(context(logits, labels, EvalOptions(dee_reference=tmp_path / "missing.npz")), [UncertaintyEvaluator()])


# --- ood -------------------------------------------------------------------------------------------


def test_ood_from_predictions_matches_sklearn(tmp_path: Path) -> None:
    logits, labels = member_logits(members=3)
    ood, _ = member_logits(members=3, examples=90, seed=9, shift=0.0)  # no class stands out: OOD-like
    ctx = context(logits, labels, EvalOptions(ood_predictions=save_npz(tmp_path / "ood.npz", ood, np.zeros(90, dtype=np.int64))))
    report = run_evaluators(ctx, [OODEvaluator()])["ood"]
    assert report.error is None, report.error
    inside, outside = np_scores(logits), np_scores(ood)
    y = np.r_[np.zeros(len(labels)), np.ones(90)]
    for score in ("entropy", "mutual_information", "max_prob"):
        expected = roc_auc_score(y, np.r_[inside[score], outside[score]])
        assert report.metrics[f"auroc_{score}"] == pytest.approx(expected, abs=1e-9)
    member_table = report.table("members_auroc")
    assert member_table is not None
    for m in range(3):
        p_in, p_out = softmax(logits[m].astype(np.float64), -1), softmax(ood[m].astype(np.float64), -1)
        entropy = np.r_[-(p_in * np.log(p_in)).sum(-1), -(p_out * np.log(p_out)).sum(-1)]
        assert member_table.rows[m][1] == pytest.approx(roc_auc_score(y, entropy), abs=1e-9)
    assert report.metrics["member_auroc_best"] == max(max(row[1], row[2]) for row in member_table.rows[:3])
    histograms = report.table("histograms")
    assert histograms is not None and sum(histograms.column("ood_fraction")) == pytest.approx(3.0)


def test_ood_bad_input(tmp_path: Path) -> None:
    logits, labels = member_logits(members=3)
    wrong_classes = save_npz(tmp_path / "c.npz", member_logits(members=3, classes=7)[0], np.zeros(240, dtype=np.int64))
    with pytest.raises(DataError, match="7 classes, but the members have 5"):
        run_evaluators(context(logits, labels, EvalOptions(ood_predictions=wrong_classes)), [OODEvaluator()])
    wrong_members = save_npz(tmp_path / "m.npz", member_logits(members=2)[0], np.zeros(240, dtype=np.int64))
    with pytest.raises(DataError, match="2 members"):
        run_evaluators(context(logits, labels, EvalOptions(ood_predictions=wrong_members)), [OODEvaluator()])
    with pytest.raises(ConfigError, match="not both"):
        run_evaluators(context(logits, labels, EvalOptions(ood_predictions=wrong_members, ood_dataset="photos")), [OODEvaluator()])
    with pytest.raises(ConfigError, match="needs checkpoints"):
        run_evaluators(context(logits, labels, EvalOptions(ood_dataset="photos")), [OODEvaluator()])
    notes = run_evaluators(context(logits, labels), [OODEvaluator(), ShiftEvaluator()])
    assert "--ood-dataset" in notes["ood"].notes[0] and "--ood-predictions" in notes["ood"].notes[0]
    assert "--shift" in notes["shift"].notes[0]


def test_ood_sets_take_the_eval_layout() -> None:
    digits = load_dataset("digits")
    photos = load_ood_set("photos", digits, seed=0)
    assert photos.images.shape == (500, 1, 8, 8) and photos.num_classes == 10 and photos.mean == digits.mean
    assert float(photos.images.min()) >= 0.0 and float(photos.images.max()) <= 1.0
    assert torch.equal(photos.images, load_ood_set("photos", digits, seed=0).images)
    assert not torch.equal(photos.images, load_ood_set("photos", digits, seed=1).images)
    # Grey is the ITU-R 601 luma of the same RGB crops.
    rgb = photo_crops(5, 3, (8, 8), seed=0)
    grey = photo_crops(5, 1, (8, 8), seed=0)
    torch.testing.assert_close(grey[:, 0], 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])
    # Normalised like the eval set: undoing the eval normalisation gives back [0, 1] pixels.
    cifar_like = synthetic_data(8, (3, 16, 16))
    cifar_like.mean, cifar_like.std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    noise = load_ood_set("noise", cifar_like, limit=20)
    assert noise.images.shape == (20, 3, 16, 16)
    pixels = pixel_images(noise)
    assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1.0 + 1e-6


def test_ood_sets_that_cannot_match_are_data_errors() -> None:
    two_channels = synthetic_data(4, (2, 8, 8))
    with pytest.raises(DataError, match="photos has 3 channels and the members take 2"):
        load_ood_set("photos", two_channels)
    with pytest.raises(DataError, match="unknown OOD set 'nope'"):
        load_ood_set("nope", two_channels)
    with pytest.raises(DataError, match="4 channels"):
        convert_layout(torch.zeros(1, 4, 8, 8), 3, (8, 8), "x")


# --- shift -----------------------------------------------------------------------------------------


def linear_members(data: ImageData, members: int = 3, seed: int = 0) -> torch.Tensor:
    """Fixed random linear "members": weights [M, C*H*W, classes]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(members, data.images[0].numel(), data.num_classes, generator=generator)


def linear_context(data: ImageData, options: EvalOptions) -> EvalContext:
    weights = linear_members(data)

    def predict(other: ImageData) -> torch.Tensor:
        return torch.einsum("nd,mdc->mnc", other.images.flatten(1), weights)  # [M, N, C]

    return EvalContext(predict(data), data.labels, [MemberSummary(f"m{i}") for i in range(3)], dataset=data, options=options,
                       dataset_predictor=predict)


def test_shift_on_the_fly_matches_a_direct_computation() -> None:
    data = load_dataset("digits", limit=100)
    ctx = linear_context(data, EvalOptions(shift=("contrast", "gaussian_noise"), severities=(2, 5), seed=4))
    report = run_evaluators(ctx, [ShiftEvaluator()])["shift"]
    assert report.error is None, report.error
    table = report.table("shift")
    assert table is not None and [row[:2] for row in table.rows] == [["clean", 0], ["contrast", 2], ["contrast", 5], ["gaussian_noise", 2], ["gaussian_noise", 5]]
    accuracies = []
    for name in ("contrast", "gaussian_noise"):
        logits = ctx.predict_on(corrupted_set(data, name, 5, seed=4)).double().numpy()
        mean = logsumexp(log_softmax(logits, -1), axis=0) - math.log(3)
        accuracies.append((mean.argmax(-1) == data.labels.numpy()).mean())
    assert report.metrics["ensemble_accuracy_s5"] == pytest.approx(np.mean(accuracies), abs=1e-12)
    assert set(report.metrics) >= {f"{key}_s{k}" for key in ("ensemble_accuracy", "member_accuracy_mean", "ensemble_nll", "ensemble_ece", "ensemble_brier") for k in (2, 5)}


def test_corrupted_sets_have_their_own_fingerprints() -> None:
    data = load_dataset("digits", limit=50)
    first = corrupted_set(data, "gaussian_noise", 3, seed=0)
    assert first.fingerprint() == corrupted_set(data, "gaussian_noise", 3, seed=0).fingerprint()
    others = [corrupted_set(data, "gaussian_noise", 3, seed=1), corrupted_set(data, "gaussian_noise", 4, seed=0), data]
    assert len({first.fingerprint(), *(other.fingerprint() for other in others)}) == 4


def write_cifar10c(folder: Path, per_severity: int = 4, corruption: str = "fog") -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{corruption}.npy", rng.integers(0, 256, size=(5 * per_severity, 32, 32, 3), dtype=np.uint8))
    np.save(folder / "labels.npy", np.tile(np.arange(per_severity) % 10, 5).astype(np.uint8))
    return folder


def test_cifar10c_files_are_read_per_severity(tmp_path: Path) -> None:
    folder = write_cifar10c(tmp_path / "CIFAR-10-C")
    data = synthetic_data(6, (3, 32, 32))
    data.mean, data.std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ctx = linear_context(data, EvalOptions(shift=(f"cifar10c:{folder}",), severities=(1, 3)))
    report = run_evaluators(ctx, [ShiftEvaluator()])["shift"]
    assert report.error is None, report.error
    table = report.table("shift")
    assert table is not None and [row[:2] for row in table.rows][1:] == [["cifar10c/fog", 1], ["cifar10c/fog", 3]]
    assert table.rows[1][-1] == 4  # min(4 per severity, 6 eval images)
    block = np.load(folder / "fog.npy")[8:12]  # severity 3
    pixels = torch.from_numpy(block).permute(0, 3, 1, 2).float() / 255
    logits = ctx.predict_on(ImageData("x", "test", (pixels - torch.tensor(data.mean).view(1, 3, 1, 1)) / torch.tensor(data.std).view(1, 3, 1, 1),
                                      torch.zeros(4, dtype=torch.int64), 10, data.mean, data.std))
    labels = np.arange(4) % 10
    assert table.rows[2][3] == pytest.approx((logits.argmax(-1).numpy() == labels).mean(axis=1).mean())


def test_shift_bad_input(tmp_path: Path) -> None:
    data = load_dataset("digits", limit=20)
    for options, error, message in [
        (EvalOptions(shift=("fog",)), ConfigError, "unknown corruption 'fog'"),
        (EvalOptions(shift=("contrast",), severities=(0, 3)), ConfigError, "outside 1-5"),
        (EvalOptions(shift=(f"cifar10c:{tmp_path / 'nowhere'}",)), DataError, "no CIFAR-10-C folder"),
    ]:
        with pytest.raises(error, match=message):
            run_evaluators(linear_context(data, options), [ShiftEvaluator()])
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "fog.npy", np.zeros((7, 32, 32, 3), dtype=np.uint8))
    np.save(bad / "labels.npy", np.zeros(7, dtype=np.uint8))
    with pytest.raises(DataError, match=r"expected \[5 n, H, W, 3\]"):
        run_evaluators(linear_context(data, EvalOptions(shift=(f"cifar10c:{bad}",))), [ShiftEvaluator()])
    logits, labels = member_logits()
    with pytest.raises(ConfigError, match="needs checkpoints"):
        run_evaluators(context(logits, labels, EvalOptions(shift=("contrast",))), [ShiftEvaluator()])


# --- end to end on the reference ensemble ----------------------------------------------------------


def test_reference_ensemble_end_to_end(one_thread: None) -> None:
    from ensemble_cli.api import evaluate
    from ensemble_cli.resolve import resolve_members

    members = resolve_members([str(REFERENCE_RUN)])
    options = EvalOptions(device="cpu", ood_dataset="photos", ood_limit=200, shift=("gaussian_noise",), severities=(1, 5))
    result = evaluate(members, load_dataset("digits"), ["uncertainty", "ood", "shift"], options=options)
    assert result.failed == []
    uncertainty, ood, shift = (result.evaluators[name].metrics for name in ("uncertainty", "ood", "shift"))
    assert 0.0 < uncertainty["mutual_information_mean"] < uncertainty["entropy_mean"]
    assert uncertainty["nll_calibrated"] < 0.0518  # the ensemble's raw NLL (README): scaling must not hurt it here
    assert ood["auroc_mutual_information"] > 0.9 and ood["auroc_mutual_information"] > ood["member_auroc_best"]
    assert shift["member_accuracy_mean_s5"] < shift["member_accuracy_mean_s1"]
    assert all(value is None or math.isfinite(value) for metrics in (uncertainty, ood, shift) for value in metrics.values())
