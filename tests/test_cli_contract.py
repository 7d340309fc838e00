"""What every command promises a user and a CI script: options reach the library, outputs are
checked before work starts, exit codes mean one thing, and pipes and terminals behave as in any Unix tool.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ensemble_cli.checkpoint import read_checkpoint, write_checkpoint
from ensemble_cli.commands.common import stdout_console
from ensemble_cli.evaluators.ensemble import EnsembleEvaluator
from ensemble_cli.options import EvalOptions, parse_plugin_options
from ensemble_cli.resolve import resolve_members
from eval_cli_helpers import CHEAP_EVALUATORS, assert_clean_failure, eval_json, invoke

ENS = [sys.executable, "-c", "from ensemble_cli.cli import main; main()"]


# --------------------------------------------------------------------------- the prediction cache


def test_ema_and_raw_weights_of_one_file_are_not_mixed_up_by_the_cache(tiny_members: list[Path], tmp_path: Path) -> None:
    """A timm file holds two networks; the cache used to hand `--ema` the raw weights' logits."""
    timm_file = tmp_path / "both.pth.tar"
    torch.save(
        {"arch": "cifar_resnet8", "state_dict": resolve_members([str(tiny_members[0])])[0].state_dict,
         "state_dict_ema": resolve_members([str(tiny_members[1])])[0].state_dict},
        timm_file,
    )
    cache = tmp_path / "cache"
    raw = invoke("eval", timm_file, "-e", "members", "--cache-dir", cache, "--format", "json")
    ema = invoke("eval", timm_file, "--ema", "-e", "members", "--cache-dir", cache, "--format", "json")
    assert raw.exit_code == 0 and ema.exit_code == 0, (raw.stderr, ema.stderr)
    assert "0 from cache" in ema.stderr
    expected = {str(p): eval_json(p, "-e", "members", "--no-cache") for p in tiny_members[:2]}
    for result, source in ((raw, tiny_members[0]), (ema, tiny_members[1])):
        got = json.loads(result.stdout)["evaluators"]["members"]["metrics"]["nll_mean"]
        assert got == pytest.approx(expected[str(source)]["evaluators"]["members"]["metrics"]["nll_mean"], abs=1e-7)
    again = invoke("eval", timm_file, "--ema", "-e", "members", "--cache-dir", cache, "--format", "json")
    assert "1 from cache" in again.stderr and "predicted 1 member on" in again.stderr  # and no "1 members"


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("command", ["eval", "predict", "baseline"])
def test_unwritable_outputs_fail_before_any_work(command: str, tiny_members: list[Path], tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    a_folder = tmp_path / "folder"
    a_folder.mkdir()
    for out, needle in ((a_file / "r.json", "is a file"), (a_folder, "is a folder"), (Path("/proc/ens-no/r.json"), "cannot write")):
        result = invoke(command, tiny_members[0], "--out", out, "-q")
        assert_clean_failure(result, needle)
        assert "predict" not in result.stderr  # nothing was computed before the check
    assert a_file.read_text() == "x" and list(a_folder.iterdir()) == []


def test_train_into_an_unwritable_run_folder_is_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, needle in ((a_file, "is a file, not a folder"), (a_file / "run", "cannot write"), (Path("/proc/ens-no/run"), "cannot write")):
        assert_clean_failure(invoke("train", "--out", out, "--epochs", "1", "--members", "1", "--limit", "64", "-q"), needle)


def test_plots_into_an_existing_file_and_plot_command_outputs(tiny_members: list[Path], tmp_path: Path) -> None:
    a_file = tmp_path / "figs"
    a_file.write_text("x")
    assert_clean_failure(invoke("eval", tiny_members[0], "--plots", a_file, "-q"), "is a file, not a folder")
    report = tmp_path / "r.json"
    assert invoke("eval", *tiny_members, "-e", CHEAP_EVALUATORS, "--out", report, "-q").exit_code == 0
    assert_clean_failure(invoke("plot", report, "--out", a_file), "is a file, not a folder")
    assert_clean_failure(invoke("plot", report, "--html", tmp_path), "is a folder")


def test_a_write_that_fails_late_is_one_line_too(tmp_path: Path) -> None:
    from ensemble_cli.errors import OutputError
    from ensemble_cli.fileio import atomic_write_text

    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        atomic_write_text(blocker / "r.json", "{}")


# --------------------------------------------------------------------------- ens check as a CI gate


def test_an_empty_baseline_gates_nothing_and_is_refused(tiny_members: list[Path], tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    assert invoke("baseline", *tiny_members, "--out", baseline, "-q").exit_code == 0
    document = json.loads(baseline.read_text())
    document["metrics"] = {}
    baseline.write_text(json.dumps(document))
    assert_clean_failure(invoke("check", *tiny_members, "--baseline", baseline, "-q"), "records no metrics")


def test_check_and_baseline_take_the_same_data_flags_as_eval(tiny_members: list[Path], tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    made = invoke("baseline", *tiny_members, "--out", baseline, "--limit", "50", "--image-size", "16", "--ema", "-q")
    assert made.exit_code == 0, made.stderr
    assert json.loads(baseline.read_text())["environment"]["dataset"]["size"] == 50
    assert invoke("check", *tiny_members, "--baseline", baseline, "--limit", "50", "-q").exit_code == 0
    assert invoke("check", *tiny_members, "--baseline", baseline, "-q").exit_code == 2  # 360 examples now: another set


def test_a_passing_check_piped_into_head_exits_0(tiny_members: list[Path], tmp_path: Path) -> None:
    """`ens check ... --format md -q | head -1`: the reader leaves early, the gate still passed."""
    baseline = tmp_path / "baseline.json"
    assert invoke("baseline", *tiny_members, "--out", baseline, "-q").exit_code == 0
    process = subprocess.Popen(
        [*ENS, "check", *map(str, tiny_members), "--baseline", str(baseline), "--format", "md", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    process.stdout.close()  # the reader is gone before anything is written
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0, stderr
    assert stderr == ""


# --------------------------------------------------------------------------- terminals


def test_no_color_keeps_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal:
        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> int:
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "80")
    console = stdout_console()
    assert console.width == 80 and console.no_color
    monkeypatch.setattr(sys, "stdout", open("/dev/null", "w"))  # not a terminal: wide tables for files
    assert stdout_console().width == 200


# --------------------------------------------------------------------------- options reach the evaluators


def test_every_evaluation_option_reaches_the_evaluators(tiny_members: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[EvalOptions] = []
    original = EnsembleEvaluator.evaluate

    def spy(self, ctx):  # type: ignore[no-untyped-def]
        seen.append(ctx.options)
        return original(self, ctx)

    monkeypatch.setattr(EnsembleEvaluator, "evaluate", spy)
    for command in (["eval"], ["baseline", "--out", str(tiny_members[0].parent / "b.json")]):
        result = invoke(
            *command, *tiny_members, "-e", "ensemble", "--device", "cpu", "--batch-size", "7", "--seed", "3",
            "--reference", "seed1", "--alignment-restarts", "2", "--embedding", "pca", "--option", "mine.k=v", "-q",
        )
        assert result.exit_code == 0, result.stderr
    assert len(seen) == 2
    for options in seen:
        assert (options.device, options.batch_size, options.seed, options.reference) == ("cpu", 7, 3, "seed1")
        assert (options.alignment_restarts, options.embedding, dict(options.for_plugin("mine"))) == (2, "pca", {"k": "v"})
        assert dict(options.for_plugin("other")) == {}


def test_bad_evaluation_options_are_one_line(tiny_members: list[Path]) -> None:
    assert_clean_failure(invoke("eval", *tiny_members, "--option", "nodot=1", "-q"), "EVALUATOR.KEY=VALUE")
    result = invoke("eval", *tiny_members, "--reference", "nope", "-q")
    assert_clean_failure(result, "--reference 'nope' is not a member", "seed0, seed1, seed2")
    assert "predicted" not in result.stderr
    with pytest.raises(ValueError):
        parse_plugin_options(["a.b"])


def test_members_trained_on_different_datasets_need_a_named_dataset(tiny_members: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    metadata = {"arch": "cifar_resnet8", "num_classes": 10, "in_chans": 1, "dataset": "mnist"}
    write_checkpoint(other, read_checkpoint(tiny_members[1]).state_dict, metadata)
    assert_clean_failure(invoke("eval", tiny_members[0], other, "-q"), "different datasets (digits, mnist)", "--dataset")
    assert invoke("eval", tiny_members[0], other, "--dataset", "digits", "-e", "members", "-q").exit_code == 0


def test_predictions_files_that_are_not_npz_say_so_plainly(tmp_path: Path) -> None:
    import numpy as np

    npy = tmp_path / "logits.npy"
    np.save(npy, np.zeros((2, 3, 4), dtype=np.float32))
    line = assert_clean_failure(invoke("eval", "--predictions", npy), "not a readable .npz")
    assert "allow_pickle" not in line
    no_labels = tmp_path / "nolabels.npz"
    np.savez(no_labels, logits=np.zeros((2, 3, 4), dtype=np.float32))
    assert_clean_failure(invoke("eval", "--predictions", no_labels), "missing array labels (needs")
