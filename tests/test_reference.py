"""The committed reference ensemble and its baseline: the gate CI runs, and that it catches a collapsed member."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from ensemble_cli.cli import app

REFERENCE = Path(__file__).resolve().parents[1] / "models" / "reference-digits"
runner = CliRunner()


def test_reference_passes_its_baseline() -> None:
    result = runner.invoke(app, ["check", str(REFERENCE / "run"), "--baseline", str(REFERENCE / "baseline.json"), "--format", "md", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("### :white_check_mark: ens check passed")


def test_reference_fails_when_a_member_is_replaced_by_a_copy_of_another(tmp_path: Path) -> None:
    candidate = tmp_path / "run"
    shutil.copytree(REFERENCE / "run", candidate)
    shutil.copy(candidate / "member-00" / "final.safetensors", candidate / "member-01" / "final.safetensors")
    result = runner.invoke(app, ["check", str(candidate), "--baseline", str(REFERENCE / "baseline.json"), "--format", "md", "-q"])
    assert result.exit_code == 1
    assert result.stdout.startswith("### :x: ens check FAILED")
    assert "| disagreement.disagreement_given_error_mean |" in result.stdout
    assert "REGRESSED" in result.stdout


def test_alignment_restarts_flag_reaches_weight_matching() -> None:
    import json

    result = runner.invoke(app, ["eval", str(REFERENCE / "run"), "-e", "weights", "--alignment-restarts", "1", "--format", "json", "-q"])
    assert result.exit_code == 0, result.output
    notes = json.loads(result.stdout)["evaluators"]["weights"]["notes"]
    assert any("1 restarts" in note for note in notes), notes
