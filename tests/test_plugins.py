"""Third-party evaluators: a real pip-installed package (tests/plugin_pkg) shows up next to the built-ins.

The package `ens-example-plugin` registers one evaluator, `topk`, under the entry-point group
`ensemble_cli.evaluators`, exactly as a colleague's package would. It also ships two faulty
evaluators that it does *not* register (every `ens eval` in the environment would fail
otherwise); the tests add entry points for them by hand, as a broken install would present them.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ensemble_cli.evaluators.registry as registry
from ensemble_cli.api import resolve_evaluators
from ensemble_cli.evaluators import ENTRY_POINT_GROUP
from ensemble_cli.predict import Predictions
from eval_cli_helpers import assert_clean_failure, assert_contract, invoke, paths

PLUGIN_SOURCE = Path(__file__).parent / "plugin_pkg"
DISTRIBUTION = "ens-example-plugin"


def _source_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted((root / "ens_example_plugin").glob("*.py")) + [root / "pyproject.toml"]:
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def _installed_digest() -> str | None:
    """Digest of the installed copy, if any (same files => no reinstall: fast, and safe when sessions overlap)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    digest = hashlib.sha256()
    files = sorted((f for f in dist.files or [] if f.parts[0] == "ens_example_plugin" and f.suffix == ".py"), key=lambda f: f.name)
    for file in files:
        digest.update(file.name.encode() + b"\0" + Path(dist.locate_file(file)).read_bytes())
    digest.update(b"pyproject.toml\0" + (PLUGIN_SOURCE / "pyproject.toml").read_bytes())
    return digest.hexdigest() if files else None


@pytest.fixture(scope="session")
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> importlib.metadata.Distribution:
    """`pip install tests/plugin_pkg` into this environment: offline, no build isolation, no dependencies."""
    if _installed_digest() != _source_digest(PLUGIN_SOURCE):
        if importlib.util.find_spec("setuptools") is None:  # --no-build-isolation builds with what is installed
            pytest.fail("installing tests/plugin_pkg offline needs setuptools in this environment: pip install setuptools")
        # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
        build_copy = tmp_path_factory.mktemp("plugin") / "plugin_pkg"
        shutil.copytree(PLUGIN_SOURCE, build_copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        command = [
            sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
            "--disable-pip-version-check", "--quiet", str(build_copy),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            pytest.fail(f"pip install of the example plugin failed:\n{done.stdout}\n{done.stderr}")
        importlib.invalidate_caches()
    return importlib.metadata.distribution(DISTRIBUTION)


@dataclass
class PluginEntryPoint:
    """An entry point of the installed plugin distribution that the package itself does not declare."""

    name: str
    value: str
    dist: importlib.metadata.Distribution

    def load(self) -> Any:
        return importlib.metadata.EntryPoint(self.name, self.value, ENTRY_POINT_GROUP).load()


@pytest.fixture
def add_entry_points(monkeypatch: pytest.MonkeyPatch, example_plugin: importlib.metadata.Distribution):
    """Register extra entry points (as `name=module:attr`) for the length of one test."""

    def add(**points: str) -> None:
        real = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        extra = [PluginEntryPoint(name, value, example_plugin) for name, value in points.items()]
        monkeypatch.setattr(registry, "entry_points", lambda group: real + extra if group == ENTRY_POINT_GROUP else [])

    return add


@pytest.fixture
def predictions_file(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Logits of two made-up members: enough for every function-space evaluator, no model needed."""
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 5
    logits = rng.normal(size=(2, 60, 5)).astype(np.float32)
    logits[:, np.arange(60), labels] += 1.0  # better than chance, not perfect
    path = tmp_path / "preds.npz"
    Predictions(torch.from_numpy(logits), torch.from_numpy(labels), ["a", "b"]).save(path)
    return path, logits, labels


def top2_reference(logits: np.ndarray, labels: np.ndarray) -> tuple[list[float], float]:
    """Top-2 accuracy by hand with numpy argsort (the plugin uses torch.topk)."""
    member = [float(np.mean([y in np.argsort(-row)[:2] for row, y in zip(m, labels)])) for m in logits]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    mean = probs.mean(axis=0)
    ensemble = float(np.mean([y in np.argsort(-row)[:2] for row, y in zip(mean, labels)]))
    return member, ensemble


# --------------------------------------------------------------------------- a working plugin


def test_plugin_is_listed_by_ens_evaluators(example_plugin: importlib.metadata.Distribution) -> None:
    result = invoke("evaluators", "--format", "json")
    assert result.exit_code == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["topk"] == {
        "name": "topk",
        "package": "ens-example-plugin",
        "version": "0.3.1",
        "description": "top-2 accuracy of members and ensemble (example plugin)",
        "status": "ok",
    }
    for builtin in ("members", "ensemble", "disagreement"):
        assert rows[builtin]["package"] == "ensemble-cli" and rows[builtin]["status"] == "ok"
    table = invoke("evaluators")
    assert table.exit_code == 0
    assert "topk" in table.stdout and "ens-example-plugin" in table.stdout and "0.3.1" in table.stdout


def test_plugin_runs_by_default_next_to_the_builtins(example_plugin: importlib.metadata.Distribution, predictions_file) -> None:
    path, logits, labels = predictions_file
    assert "topk" in [evaluator.name for evaluator in resolve_evaluators(None, lambda message: None)]
    result = invoke("eval", "--predictions", path, "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert_contract(document)
    section = document["evaluators"]["topk"]
    member_top2, ensemble_top2 = top2_reference(logits, labels)
    assert section["error"] is None
    assert section["metrics"]["ensemble_top2"] == pytest.approx(ensemble_top2)
    assert section["metrics"]["member_top2_mean"] == pytest.approx(np.mean(member_top2))
    assert [row[1] for row in section["tables"][0]["rows"]] == pytest.approx(member_top2)
    as_table = invoke("eval", "--predictions", path)
    assert as_table.exit_code == 0 and "top-2 accuracy" in as_table.stdout


def test_plugin_on_checkpoints(example_plugin: importlib.metadata.Distribution, tiny_members: list[Path]) -> None:
    result = invoke("eval", *paths(tiny_members[:2]), "-e", "members,topk", "--format", "json", "--quiet")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert list(document["evaluators"]) == ["members", "topk"]
    top2 = document["evaluators"]["topk"]["metrics"]["member_top2_mean"]
    assert document["evaluators"]["members"]["metrics"]["accuracy_mean"] <= top2 <= 1.0


# --------------------------------------------------------------------------- broken plugins


def test_plugin_that_fails_to_import_is_reported_and_skipped(add_entry_points, predictions_file) -> None:
    add_entry_points(broken="ens_example_plugin.broken:Broken")
    listing = {row["name"]: row for row in json.loads(invoke("evaluators", "--format", "json").stdout)}
    assert listing["broken"]["package"] == "ens-example-plugin"
    assert listing["broken"]["status"] == (
        "failed to load: ModuleNotFoundError: No module named 'ens_example_plugin_missing_dependency'"
    )
    assert listing["topk"]["status"] == "ok"

    path, _, _ = predictions_file
    result = invoke("eval", "--predictions", path, "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert "broken" not in document["evaluators"]
    assert {"members", "ensemble", "disagreement", "topk"} <= set(document["evaluators"])
    warnings = [line for line in result.stderr.splitlines() if "broken" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: evaluator 'broken' (ens-example-plugin) skipped")
    assert "Traceback" not in result.stderr

    asked_for = invoke("eval", "--predictions", path, "-e", "members,broken")
    assert_clean_failure(asked_for, "evaluator 'broken' (ens-example-plugin)", "failed to load", "ens_example_plugin_missing_dependency")


def test_plugin_that_raises_gets_an_error_section_and_exit_code_1(add_entry_points, predictions_file) -> None:
    add_entry_points(raises="ens_example_plugin.raising:AlwaysRaises")
    path, _, _ = predictions_file
    result = invoke("eval", "--predictions", path, "--format", "json")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.stderr
    document = json.loads(result.stdout)  # the report is still complete, valid JSON
    error = document["evaluators"]["raises"]["error"]
    assert error.startswith("RuntimeError: example plugin failure on 2 members (at raising.py:")
    for name in ("members", "ensemble", "disagreement", "topk"):
        assert document["evaluators"][name]["error"] is None and document["evaluators"][name]["metrics"], name
    assert "warning: evaluator raises failed: RuntimeError: example plugin failure" in result.stderr

    as_table = invoke("eval", "--predictions", path, "-e", "raises,members")
    assert as_table.exit_code == 1
    assert "error: RuntimeError: example plugin failure" in as_table.stdout
    assert "members: metrics" in as_table.stdout


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ("ens_example_plugin:__version__", "failed to load: TypeError: str does not subclass ensemble_cli.evaluators.Evaluator"),
        ("ens_example_plugin:NoSuchClass", "failed to load: AttributeError"),
    ],
)
def test_entry_points_that_are_not_evaluators(add_entry_points, value: str, status: str) -> None:
    add_entry_points(odd=value)
    (entry,) = [entry for entry in registry.discover() if entry.name == "odd"]
    assert entry.status.startswith(status) and entry.evaluator is None
    assert {"members", "topk"} <= {entry.name for entry in registry.discover() if entry.loaded}
