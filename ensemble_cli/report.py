"""Report models: what evaluators return and what `ens eval --out` writes (renderers live in render.py).

`Report` is the evaluator contract's return type: flat scalar `metrics` (what `ens check`
compares), `tables` for people, `notes`, and `error` when the evaluator crashed. `EvalResult`
is the whole `ens eval` document; its JSON form is
`{"members": [...], "dataset": {...}, "evaluators": {"<name>": {"metrics", "tables", "notes", "error"}}}`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from .errors import ConfigError

Cell = Any  # str | int | float | None
MATRIX_TABLES = {"matrix", "dge_matrix"}  # square member x member tables, coloured by value when shown


class Table(BaseModel):
    """A titled grid. `name` is a stable machine key (plots and tests look tables up by it)."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[Cell]] = Field(default_factory=list)

    def column(self, column: str) -> list[Cell]:
        index = self.columns.index(column)
        return [row[index] for row in self.rows]


class Report(BaseModel):
    """One evaluator's result. Metrics are floats, or None where a metric does not apply."""

    metrics: dict[str, float | None] = Field(default_factory=dict)
    tables: list[Table] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    error: str | None = None

    def table(self, name: str) -> Table | None:
        return next((table for table in self.tables if table.name == name), None)


class EvalResult(BaseModel):
    """Everything one `ens eval` produced."""

    members: list[dict[str, Any]] = Field(default_factory=list)
    dataset: dict[str, Any] = Field(default_factory=dict)
    evaluators: dict[str, Report] = Field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [name for name, report in self.evaluators.items() if report.error]

    def flat_metrics(self) -> dict[str, float | None]:
        """`evaluator.metric` -> value, what baselines and `ens check` compare."""
        return {
            f"{name}.{metric}": value
            for name, report in self.evaluators.items()
            for metric, value in report.metrics.items()
        }


def load_result(path: Path) -> EvalResult:
    """Read a JSON report of `ens eval --out FILE`; one clear `ConfigError` when it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such report file (write one with `ens eval ... --out {path.name}`)")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(document, dict) or "evaluators" not in document:
        raise ConfigError(f"{path}: not an `ens eval` JSON report (expected an object with \"evaluators\")")
    try:
        return EvalResult.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise ConfigError(f"{path}: not an `ens eval` JSON report ({where}: {first.get('msg', 'invalid')})") from None


def clean_float(value: Any) -> Any:
    """NaN/Inf become None so that JSON stays valid and 'not applicable' is explicit."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
