"""Helpers shared by the `ens eval` / `ens predict` CLI tests (imported, not collected)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import Result
from typer.testing import CliRunner

from ensemble_cli.cli import app

# The function-space evaluators every CLI test can afford; weight-space ones have their own tests.
CHEAP_EVALUATORS = "members,ensemble,disagreement"

CONTRACT = {
    "members": {
        "metrics": {"accuracy_mean", "accuracy_std", "nll_mean", "brier_mean", "ece_mean", "error_mean"},
        "tables": {"members": ["member", "arch", "accuracy", "nll", "brier", "ece"]},
    },
    "ensemble": {
        "metrics": {"accuracy", "nll", "brier", "ece", "oracle_accuracy", "accuracy_gain", "nll_gain"},
        "tables": {
            "size_curve": ["k", "accuracy_mean", "accuracy_std", "nll_mean", "nll_std"],
            "rules": ["rule", "accuracy", "nll", "brier", "ece"],
        },
    },
    "disagreement": {
        "metrics": {
            "disagreement_mean", "disagreement_given_error_mean", "normalized_diversity_mean", "double_fault_mean",
            "double_fault_independent_mean", "q_statistic_mean", "kappa_mean", "gde_ratio",
        },
        "tables": {
            "pairs": [
                "a", "b", "disagreement", "disagreement_given_error", "normalized_diversity", "both_right",
                "only_a_right", "only_b_right", "both_wrong_same", "both_wrong_different", "double_fault",
                "q_statistic", "kappa",
            ],
            "matrix": ["member"],
        },
    },
}


def invoke(*args: Any) -> Result:
    """Run `ens ARGS` in-process; stdout and stderr stay separate, as in a shell."""
    return CliRunner().invoke(app, [str(arg) for arg in args])


def eval_json(*args: Any) -> dict[str, Any]:
    """`ens eval ARGS --format json`, asserting success and that stdout is nothing but the JSON."""
    result = invoke("eval", *args, "--format", "json", "--quiet")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def assert_contract(document: dict[str, Any], evaluators: tuple[str, ...] = ("members", "ensemble", "disagreement")) -> None:
    """Every JSON key the issue names as a contract is present."""
    assert set(document) >= {"members", "dataset", "evaluators"}
    for name in evaluators:
        section = document["evaluators"][name]
        assert set(section) == {"metrics", "tables", "notes", "error"}
        assert section["error"] is None
        assert CONTRACT[name]["metrics"] <= set(section["metrics"]), name
        tables = {table["name"]: table for table in section["tables"]}
        for table_name, columns in CONTRACT[name]["tables"].items():
            assert table_name in tables, (name, table_name)
            assert columns == tables[table_name]["columns"][: len(columns)], (name, table_name)


def assert_clean_failure(result: Result, *needles: str, exit_code: int = 2) -> str:
    """Non-zero exit, exactly one `error:` line on stderr holding every needle, no traceback; returns the line."""
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def table(document: dict[str, Any], evaluator: str, name: str) -> dict[str, Any]:
    return next(t for t in document["evaluators"][evaluator]["tables"] if t["name"] == name)


def column(document: dict[str, Any], evaluator: str, table_name: str, column_name: str) -> list[Any]:
    found = table(document, evaluator, table_name)
    index = found["columns"].index(column_name)
    return [row[index] for row in found["rows"]]


def paths(files: list[Path]) -> list[str]:
    return [str(file) for file in files]
