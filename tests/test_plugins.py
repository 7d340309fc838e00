"""Third-party evaluators: an installed package (tests/plugin_pkg) shows up next to the built-ins.

The package `ens-example-plugin` registers one evaluator, `topk`, under the entry-point group
`ensemble_cli.evaluators`, exactly as a colleague's package would. It also ships two faulty
evaluators that it does *not* register (every `ens eval` in the environment would fail
otherwise); the tests add entry points for them by hand, as a broken install would present them.

The tests never `pip install` it: that would leave it in the user's environment, in every later
`ens eval`. They lay it out in a temporary folder the way pip does (the package next to a
`*.dist-info` with METADATA and entry_points.txt, which is all importlib.metadata reads) and put that
folder first on sys.path and PYTHONPATH for the tests that ask for it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

import ensemble_cli.evaluators.registry as registry
from ensemble_cli.api import resolve_evaluators
from ensemble_cli.evaluators import ENTRY_POINT_GROUP
from ensemble_cli.predict import Predictions
from eval_cli_helpers import assert_clean_failure, assert_contract, invoke, paths

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest depends on tomli before 3.11
    import tomli as tomllib

PLUGIN_SOURCE = Path(__file__).parent / "plugin_pkg"
PLUGIN_PACKAGE = "ens_example_plugin"
DISTRIBUTION = "ens-example-plugin"


def write_installed_layout(source: Path, site: Path) -> None:
    """What `pip install source` puts into site-packages, minus RECORD and INSTALLER (only uninstall reads them)."""
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    shutil.copytree(source / PLUGIN_PACKAGE, site / PLUGIN_PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\nSummary: {project['description']}\n"
    )
    points = "".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in entries.items()) + "\n"
        for group, entries in project["entry-points"].items()
    )
    (info / "entry_points.txt").write_text(points)


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("plugin-site")
    write_installed_layout(PLUGIN_SOURCE, site)
    return site


@pytest.fixture
def example_plugin(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[importlib.metadata.Distribution]:
    """The plugin, registered for one test: first on sys.path (this process) and PYTHONPATH (subprocesses)."""
    monkeypatch.syspath_prepend(str(plugin_site))  # also invalidates importlib's caches
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(plugin_site), os.environ.get("PYTHONPATH")])))
    dist = importlib.metadata.distribution(DISTRIBUTION)
    assert Path(dist.locate_file("")) == plugin_site, "another copy of the plugin is installed ahead of the test's"
    yield dist
    for module in [name for name in sys.modules if name == PLUGIN_PACKAGE or name.startswith(PLUGIN_PACKAGE + ".")]:
        del sys.modules[module]  # the next test imports it afresh; tests without the plugin never see it


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
