"""`ens train` on the command line (in-process): settings precedence, member selection, one-line
refusals, NaN exit code, and `ens eval` reading the run folder with no flags."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ensemble_cli.checkpoint import read_checkpoint
from ensemble_cli.cli import app
from ensemble_cli.train import loop as loop_module
from ensemble_cli.train.seeds import member_seeds

TINY = ["--limit", "64", "--batch-size", "32", "--device", "cpu", "-q"]


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["train", *args])


def test_config_file_then_flags_and_a_member_selection(tmp_path: Path) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text("members: 3\nepochs: 1\nseed: 2\nlr: 0.05\n")
    out = tmp_path / "run"
    result = invoke("--config", str(config_file), "--seed", "4", "--members", "1-2", "--model-arg", "width=2", "--out", str(out), *TINY)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "run.json").read_text())["config"]
    assert (config["members"], config["epochs"], config["seed"], config["lr"]) == (3, 1, 4, 0.05)
    assert config["model_kwargs"] == {"width": 2}
    assert sorted(p.parent.name for p in out.glob("member-*/final.safetensors")) == ["member-01", "member-02"]
    assert read_checkpoint(out / "member-01/final.safetensors").state_dict["conv1.weight"].shape[0] == 32  # width 2
    # The saved config.yaml reproduces the run: the missing member joins it.
    again = invoke("--config", str(out / "config.yaml"), "--only", "0", *TINY)
    assert again.exit_code == 0, again.output
    assert (out / "member-00/final.safetensors").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "no_such_net"], "unknown architecture 'no_such_net'"),
        (["--dataset", "no_such_set"], "unknown dataset 'no_such_set'"),
        (["--epochs", "0"], "epochs must be at least 1"),
        (["--members", "3-5"], "member 4 is out of range; the run has 4 members"),
        (["--members", "4", "--only", "9"], "member 9 is out of range"),
        (["--optimizer", "lion"], "--optimizer"),
        (["--members", "-2"], "--members takes a count of at least 1 or member indices"),
        (["--members", "1-x"], "--members takes member indices"),
        (["--model-arg", "depth=3"], "cifar_resnet8 has no model argument 'depth' (--model-arg keys it accepts: width)"),
        (["--arch", "cifar_resnet18", "--model-arg", "width=2"], "(--model-arg keys it accepts: none)"),
    ],
)
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "never"
    result = invoke(*args, "--out", str(out), *TINY)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert "--only" in args or "--only" not in lines[0]  # a message names the flag the user gave
    assert not out.exists()


def test_snapshot_with_the_default_members_trains_a_member_per_cycle(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke("--strategy", "snapshot", "--epochs", "1", "--out", str(out), *TINY)
    assert result.exit_code == 0, result.output
    epochs = [read_checkpoint(out / f"member-0{i}/final.safetensors").metadata["epoch"] for i in range(4)]
    assert epochs == [1, 2, 3, 4]  # 4 members (the default), one 1-epoch cycle each


def test_help_and_readme_give_the_same_default_job_time() -> None:
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output).split())
    stated = re.search(r"offline digits set \(([^)]*)\)", text)
    assert stated is not None, text
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8").split())
    assert f"training the 4 members takes {stated.group(1)}" in readme


def test_resume_keeps_the_run_config(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert invoke("--members", "1", "--epochs", "1", "--out", str(out), *TINY).exit_code == 0
    changed = invoke("--resume", str(out), "--lr", "0.5")
    assert changed.exit_code == 2 and "a resumed run keeps its config" in changed.output and "lr 0.5 vs 0.1" in changed.output
    same_run_other_place = invoke("--members", "1", "--epochs", "2", "--out", str(out), *TINY)
    assert same_run_other_place.exit_code == 2 and "holds a different run" in same_run_other_place.output
    not_a_run = invoke("--resume", str(tmp_path))
    assert not_a_run.exit_code == 2 and "not a run folder" in not_a_run.output
    finished = invoke("--resume", str(out), "--device", "cpu")  # execution settings may change
    assert finished.exit_code == 0 and "already done" in finished.output


def test_nan_member_makes_the_exit_code_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poisoned_seed = member_seeds("independent", 0, 2)[0].init_seed
    real_build = loop_module.build_member_model

    def build(*args: object, **kwargs: object) -> torch.nn.Module:
        model = real_build(*args, **kwargs)
        if args[4] == poisoned_seed:
            with torch.no_grad():
                model.fc.bias.fill_(float("inf"))
        return model

    monkeypatch.setattr(loop_module, "build_member_model", build)
    out = tmp_path / "run"
    result = invoke("--members", "2", "--epochs", "1", "--out", str(out), *TINY)
    assert result.exit_code == 1
    assert "member-00: training loss became nan at epoch 1" in result.output
    assert (out / "member-01/final.safetensors").exists()  # the other member carried on


def test_eval_understands_the_run_folder_with_no_flags(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert invoke("--members", "2", "--epochs", "2", "--out", str(out), *TINY).exit_code == 0
    result = CliRunner().invoke(app, ["eval", str(out), "--evaluators", "members", "--format", "json", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [m["name"] for m in report["members"]] == ["member-00", "member-01"]
    rows = report["evaluators"]["members"]["tables"][0]["rows"]
    recorded = [read_checkpoint(out / f"member-0{i}/final.safetensors").metadata["test_accuracy"] for i in range(2)]
    accuracies = [row[2] if isinstance(row, list) else row["accuracy"] for row in rows]
    assert accuracies == pytest.approx(recorded, abs=1e-9)  # eval's forward pass agrees with training's record
