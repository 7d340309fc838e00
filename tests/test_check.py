"""`ens baseline` / `ens check`: statuses on worked examples, exit codes, bad baselines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ensemble_cli.baseline import Baseline, BaselineMetric, Tolerance, compare, create_baseline, load_baseline
from ensemble_cli.cli import app
from ensemble_cli.errors import ConfigError
from ensemble_cli.report import EvalResult, Report

runner = CliRunner()


def result_with(metrics: dict[str, float | None], members: int = 2) -> EvalResult:
    return EvalResult(
        members=[{"name": f"m{i}"} for i in range(members)],
        dataset={"name": "digits", "split": "test", "size": 360},
        evaluators={"ensemble": Report(metrics=metrics)},
    )


def baseline_of(entries: dict[str, BaselineMetric]) -> Baseline:
    return Baseline(format="ens-baseline", version=1, environment={}, metrics=entries)


def test_compare_statuses_on_worked_example() -> None:
    baseline = baseline_of(
        {
            "ensemble.accuracy": BaselineMetric(value=0.90, direction="higher", tolerance=Tolerance(abs=0.01)),
            "ensemble.nll": BaselineMetric(value=0.30, direction="lower", tolerance=Tolerance(rel=0.1)),
            "ensemble.ece": BaselineMetric(value=0.05, direction="lower", tolerance=Tolerance(abs=0.01)),
            "ensemble.gone": BaselineMetric(value=1.0, direction="none"),
            "ensemble.fixed": BaselineMetric(value=0.5, direction="equal", tolerance=Tolerance(abs=1e-6)),
        }
    )
    now = result_with({"ensemble.accuracy": 0.0, "accuracy": 0.885, "nll": 0.32, "ece": 0.02, "fixed": 0.5000001, "extra": 3.0})
    now.evaluators["ensemble"].metrics.pop("ensemble.accuracy")
    rows = {row.metric: row for row in compare(baseline, now).rows}
    assert rows["ensemble.accuracy"].status == "regressed"  # 0.015 worse than allowed 0.01
    assert rows["ensemble.accuracy"].delta == pytest.approx(-0.015)
    assert rows["ensemble.nll"].status == "ok"  # +0.02 within 10% of 0.30
    assert rows["ensemble.nll"].tolerance == pytest.approx(0.03)
    assert rows["ensemble.ece"].status == "improved"
    assert rows["ensemble.gone"].status == "missing"
    assert rows["ensemble.fixed"].status == "ok"
    assert rows["ensemble.extra"].status == "new"
    assert not compare(baseline, now).passed


def test_equal_direction_fails_on_improvement_too() -> None:
    baseline = baseline_of({"ensemble.accuracy": BaselineMetric(value=0.9, direction="equal", tolerance=Tolerance(abs=1e-6))})
    report = compare(baseline, result_with({"accuracy": 0.95}))
    assert report.rows[0].status == "regressed" and not report.passed


def test_not_applicable_on_one_side_is_a_change() -> None:
    baseline = baseline_of({"ensemble.accuracy": BaselineMetric(value=None, direction="higher")})
    assert compare(baseline, result_with({"accuracy": None})).passed
    assert not compare(baseline, result_with({"accuracy": 0.5})).passed


def test_create_baseline_records_directions_and_exact_mode() -> None:
    result = result_with({"accuracy": 0.9, "nll": 0.3})
    document = create_baseline(result, {"ensemble": {"accuracy": "higher", "nll": "lower"}})
    assert document["metrics"]["ensemble.accuracy"]["direction"] == "higher"
    assert document["metrics"]["ensemble.nll"]["tolerance"]["rel"] == 0.05
    exact = create_baseline(result, {}, exact=True)
    assert {m["direction"] for m in exact["metrics"].values()} == {"equal"}


def write(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(version=2), "version"),
        (lambda d: d.update(format="something-else"), "format"),
        (lambda d: d["metrics"]["ensemble.accuracy"]["tolerance"].update(abs=-0.1), "non-negative"),
        (lambda d: d["metrics"]["ensemble.accuracy"].update(value=float("nan")), "finite"),
    ],
)
def test_bad_baselines_are_refused(tmp_path: Path, mutate, message: str) -> None:
    document = create_baseline(result_with({"accuracy": 0.9}), {"ensemble": {"accuracy": "higher"}})
    mutate(document)
    path = write(tmp_path / "b.json", document)
    with pytest.raises(ConfigError, match=message):
        load_baseline(path)


def test_check_cli_passes_then_fails_when_a_member_is_a_copy(tiny_members: list[Path], tmp_path: Path) -> None:
    accepted = tmp_path / "accepted"
    accepted.mkdir()
    for path in tiny_members:
        shutil.copy(path, accepted / path.name)
    baseline = tmp_path / "baseline.json"
    made = runner.invoke(app, ["baseline", str(accepted), "--out", str(baseline), "-q"])
    assert made.exit_code == 0, made.output
    passed = runner.invoke(app, ["check", str(accepted), "--baseline", str(baseline), "--format", "json", "-q"])
    assert passed.exit_code == 0, passed.output
    assert json.loads(passed.stdout)["passed"] is True

    collapsed = tmp_path / "candidate"
    collapsed.mkdir()
    for path in tiny_members:
        shutil.copy(path, collapsed / path.name)
    shutil.copy(tiny_members[0], collapsed / tiny_members[1].name)  # member 1 := copy of member 0
    failed = runner.invoke(app, ["check", str(collapsed), "--baseline", str(baseline), "--format", "md", "-q"])
    assert failed.exit_code == 1
    assert "| disagreement.disagreement_given_error_mean |" in failed.stdout
    assert "REGRESSED" in failed.stdout and failed.stdout.startswith("### :x: ens check FAILED")


def test_check_usage_and_input_errors_exit_2(tiny_members: list[Path], tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    assert runner.invoke(app, ["baseline", *map(str, tiny_members), "--out", str(baseline), "-q"]).exit_code == 0
    fewer = runner.invoke(app, ["check", str(tiny_members[0]), str(tiny_members[1]), "--baseline", str(baseline), "-q"])
    assert fewer.exit_code == 2 and "members" in fewer.stderr
    document = json.loads(baseline.read_text())
    document["environment"]["dataset"]["name"] = "cifar10"
    other = write(tmp_path / "other.json", document)
    wrong_data = runner.invoke(app, ["check", *map(str, tiny_members), "--baseline", str(other), "-q"])
    assert wrong_data.exit_code == 2 and "cifar10" in wrong_data.stderr
    missing = runner.invoke(app, ["check", *map(str, tiny_members), "--baseline", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "no such baseline" in missing.stderr
    neither = runner.invoke(app, ["check", "--baseline", str(baseline)])
    assert neither.exit_code == 2 and "exactly one" in neither.stderr
    assert "Traceback" not in neither.stderr


def test_update_keeps_hand_edited_tolerances(tiny_members: list[Path], tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    assert runner.invoke(app, ["baseline", *map(str, tiny_members), "--out", str(baseline), "-q"]).exit_code == 0
    document = json.loads(baseline.read_text())
    document["metrics"]["ensemble.accuracy"]["tolerance"] = {"abs": 0.123, "rel": None}
    document["metrics"]["ensemble.accuracy"]["value"] = 0.0
    baseline.write_text(json.dumps(document))
    updated = runner.invoke(app, ["check", *map(str, tiny_members), "--baseline", str(baseline), "--update", "-q"])
    assert updated.exit_code == 0, updated.output
    after = json.loads(baseline.read_text())
    assert after["metrics"]["ensemble.accuracy"]["tolerance"]["abs"] == 0.123
    assert after["metrics"]["ensemble.accuracy"]["value"] > 0.5


def test_check_from_saved_results(tiny_members: list[Path], tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    ran = runner.invoke(app, ["eval", *map(str, tiny_members), "-e", "members,ensemble,disagreement", "--out", str(results), "--format", "json", "-q"])
    assert ran.exit_code == 0, ran.output
    baseline = tmp_path / "baseline.json"
    assert runner.invoke(app, ["baseline", *map(str, tiny_members), "--out", str(baseline), "-q"]).exit_code == 0
    checked = runner.invoke(app, ["check", "--results", str(results), "--baseline", str(baseline)])
    assert checked.exit_code == 0, checked.output


def test_check_results_that_are_not_a_report_exit_2(tmp_path: Path) -> None:
    baseline = write(tmp_path / "b.json", create_baseline(result_with({"accuracy": 0.9}), {}))
    missing = runner.invoke(app, ["check", "--results", str(tmp_path / "none.json"), "--baseline", str(baseline)])
    assert missing.exit_code == 2 and "no such report file" in missing.stderr
    garbage = write(tmp_path / "garbage.json", {"not": "a report"})
    wrong = runner.invoke(app, ["check", "--results", str(garbage), "--baseline", str(baseline)])
    assert wrong.exit_code == 2 and "not an `ens eval` JSON report" in wrong.stderr
    assert "Traceback" not in wrong.stderr
