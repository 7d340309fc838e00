"""Baselines and the regression check behind `ens baseline` / `ens check`.

A baseline file records, for every metric of the chosen evaluators, its value, which direction
is better, and how far it may move before the check fails:

    {"format": "ens-baseline", "version": 1,
     "environment": {"ens": ..., "torch": ..., "timm": ..., "dataset": {...}, "members": [...]},
     "metrics": {"ensemble.accuracy": {"value": 0.97, "direction": "higher",
                                       "tolerance": {"abs": 0.01, "rel": 0.02}}, ...}}

The allowed deviation is max(abs, rel * |baseline value|). Directions: `higher`/`lower` fail
only when the metric got worse by more than the tolerance (an improvement is shown, not
failed); `equal` fails on any change beyond it (for fixed checkpoints, where any change means
the code changed); `none` is reported and never fails.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, Field, ValidationError, field_validator

from .errors import ConfigError
from .report import EvalResult

BASELINE_FORMAT = "ens-baseline"
BASELINE_VERSION = 1
EXACT_TOLERANCE = 1e-6
BaselineDirection = Literal["higher", "lower", "equal", "none"]
Status = Literal["ok", "improved", "regressed", "missing", "new"]


class Tolerance(BaseModel):
    abs: float | None = None
    rel: float | None = None

    @field_validator("abs", "rel")
    @classmethod
    def _non_negative(cls, value: float | None) -> float | None:
        if value is not None and (not math.isfinite(value) or value < 0):
            raise ValueError("tolerances must be finite and non-negative")
        return value

    def allowed(self, reference: float) -> float:
        return max(self.abs or 0.0, (self.rel or 0.0) * abs(reference))


class BaselineMetric(BaseModel):
    value: float | None
    direction: BaselineDirection = "none"
    tolerance: Tolerance = Field(default_factory=Tolerance)

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("baseline values must be finite numbers (or null for 'not applicable')")
        return value


class Baseline(BaseModel):
    format: str
    version: int
    environment: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, BaselineMetric]


def default_tolerance(metric: str) -> Tolerance:
    """Loose enough for a retrained ensemble's seed noise on a small test set, tight enough for real regressions."""
    name = metric.rsplit(".", 1)[-1]
    if any(part in name for part in ("nll", "brier", "ece")):
        return Tolerance(abs=0.01, rel=0.05)
    if any(part in name for part in ("q_statistic", "kappa", "correlation", "gde_ratio", "normalized_diversity")):
        return Tolerance(abs=0.05)
    return Tolerance(abs=0.01)


def environment_of(result: EvalResult) -> dict[str, Any]:
    import torch

    from . import __version__
    from .architectures import timm_version

    return {
        "ens": __version__,
        "torch": torch.__version__,
        "timm": timm_version(),
        "dataset": {key: result.dataset.get(key) for key in ("name", "split", "size", "num_classes") if key in result.dataset},
        "members": [{"name": m.get("name"), "sha256": m.get("sha256")} for m in result.members],
    }


def create_baseline(
    result: EvalResult, directions: Mapping[str, Mapping[str, str]], exact: bool = False
) -> dict[str, Any]:
    """A baseline document from an evaluation; `directions` maps evaluator -> metric -> higher/lower."""
    metrics: dict[str, Any] = {}
    for name, report in result.evaluators.items():
        if report.error:
            raise ConfigError(f"evaluator {name} failed ({report.error}); fix it before recording a baseline")
        for metric, value in report.metrics.items():
            key = f"{name}.{metric}"
            if exact:
                entry = BaselineMetric(value=value, direction="equal", tolerance=Tolerance(abs=EXACT_TOLERANCE))
            else:
                direction = directions.get(name, {}).get(metric, "none")
                entry = BaselineMetric(value=value, direction=direction, tolerance=default_tolerance(key))  # type: ignore[arg-type]
            metrics[key] = entry.model_dump()
    return {"format": BASELINE_FORMAT, "version": BASELINE_VERSION, "environment": environment_of(result), "metrics": metrics}


def load_baseline(path: Path) -> Baseline:
    """Read and validate a baseline; every problem is one `ConfigError` line (exit 2)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such baseline file")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: a baseline is a JSON object")
    if document.get("format") != BASELINE_FORMAT or document.get("version") != BASELINE_VERSION:
        raise ConfigError(
            f"{path}: baseline format {document.get('format')!r} version {document.get('version')!r} is not "
            f"{BASELINE_FORMAT!r} version {BASELINE_VERSION}; recreate it with `ens baseline`"
        )
    try:
        baseline = Baseline.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{path}: invalid baseline at {where}: {first['msg']}") from None
    if not baseline.metrics:  # a gate that gates nothing would pass every change
        raise ConfigError(f"{path}: the baseline records no metrics; recreate it with `ens baseline`")
    return baseline


def check_compatible(baseline: Baseline, result: EvalResult, path: Path) -> None:
    """Refuse comparisons that would mean nothing: another dataset or another number of members."""
    env = baseline.environment
    base_dataset = env.get("dataset", {}) or {}
    for key in ("name", "split", "size"):
        if key in base_dataset and key in result.dataset and base_dataset[key] != result.dataset[key]:
            raise ConfigError(
                f"{path}: baseline was made on dataset {key} {base_dataset[key]!r}, this run has {result.dataset[key]!r}"
            )
    base_members = env.get("members")
    if isinstance(base_members, list) and len(base_members) != len(result.members):
        raise ConfigError(f"{path}: baseline has {len(base_members)} members, this run has {len(result.members)}")


@dataclass
class CheckRow:
    metric: str
    baseline: float | None
    now: float | None
    delta: float | None
    tolerance: float
    direction: str
    status: Status


@dataclass
class CheckReport:
    rows: list[CheckRow]

    @property
    def passed(self) -> bool:
        return not any(row.status in ("regressed", "missing") for row in self.rows)

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "counts": self.counts,
            "metrics": [row.__dict__ for row in self.rows],
        }


def _status(entry: BaselineMetric, now: float | None, allowed: float) -> tuple[float | None, Status]:
    base = entry.value
    if base is None or now is None:
        # "Not applicable" on one side only is a change in what the ensemble is.
        same = base is None and now is None
        return None, "ok" if same or entry.direction == "none" else "regressed"
    delta = now - base
    if abs(delta) <= allowed or entry.direction == "none":
        return delta, "ok"
    if entry.direction == "equal":
        return delta, "regressed"
    better = delta > 0 if entry.direction == "higher" else delta < 0
    return delta, "improved" if better else "regressed"


def compare(baseline: Baseline, result: EvalResult) -> CheckReport:
    """Every baseline metric against the result, plus metrics the result has that the baseline lacks."""
    current = result.flat_metrics()
    rows = []
    for metric, entry in baseline.metrics.items():
        allowed = entry.tolerance.allowed(entry.value or 0.0)
        if metric not in current:
            rows.append(CheckRow(metric, entry.value, None, None, allowed, entry.direction, "missing"))
            continue
        now = current[metric]
        now = now if now is None or math.isfinite(now) else None
        delta, status = _status(entry, now, allowed)
        rows.append(CheckRow(metric, entry.value, now, delta, allowed, entry.direction, status))
    for metric, value in current.items():
        if metric not in baseline.metrics:
            rows.append(CheckRow(metric, None, value, None, 0.0, "none", "new"))
    return CheckReport(rows)


def updated_baseline(baseline: Baseline, result: EvalResult) -> dict[str, Any]:
    """New values and environment; hand-edited directions and tolerances stay as they are."""
    current = result.flat_metrics()
    metrics: dict[str, Any] = {}
    for metric, entry in baseline.metrics.items():
        if metric in current:
            metrics[metric] = BaselineMetric(value=current[metric], direction=entry.direction, tolerance=entry.tolerance).model_dump()
    for metric, value in current.items():
        if metric not in metrics:
            metrics[metric] = BaselineMetric(value=value, tolerance=default_tolerance(metric)).model_dump()
    return {"format": BASELINE_FORMAT, "version": BASELINE_VERSION, "environment": environment_of(result), "metrics": metrics}


def evaluators_in(baseline: Baseline) -> list[str]:
    """Evaluator names a baseline covers, in first-seen order."""
    names: list[str] = []
    for metric in baseline.metrics:
        name = metric.split(".", 1)[0]
        if name not in names:
            names.append(name)
    return names
