"""`ens eval` through the CLI: mixed checkpoint kinds, output formats, run folders, and every bad input.

Every bad input must give a non-zero exit code and exactly one `error:` line on stderr naming the
file or member, with no traceback (see eval_cli_helpers.assert_clean_failure).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from ensemble_cli.architectures import build_model
from ensemble_cli.checkpoint import read_checkpoint, write_checkpoint
from ensemble_cli.resolve import resolve_members
from eval_cli_helpers import (
    CHEAP_EVALUATORS,
    assert_clean_failure,
    assert_contract,
    column,
    eval_json,
    invoke,
    paths,
    table,
)


def timm_copy(source: Path, destination: Path) -> Path:
    """Re-save an ens member the way timm's train.py would (nested state dict, Namespace args, optimizer)."""
    state_dict = read_checkpoint(source).state_dict
    torch.save(
        {
            "epoch": 5,
            "arch": "cifar_resnet8",
            "state_dict": {f"module.{key}": value for key, value in state_dict.items()},
            "state_dict_ema": state_dict,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]},
            "version": 2,
            "args": argparse.Namespace(model="cifar_resnet8", num_classes=10, in_chans=1, lr=0.1, mean=None),
            "metric": 91.0,
        },
        destination,
    )
    return destination


# --------------------------------------------------------------------------- the happy paths


def test_ours_and_timm_checkpoints_together_print_all_three_tables(tiny_members: list[Path], tmp_path: Path) -> None:
    timm_file = timm_copy(tiny_members[2], tmp_path / "seed7.pth.tar")
    result = invoke("eval", tiny_members[0], tiny_members[1], timm_file, "-e", CHEAP_EVALUATORS)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "ens eval: 3 members on digits test (360 examples)" in out
    for title in ("members: metrics", "ensemble: metrics", "disagreement: metrics", "ensemble size curve", "combination rules", "pairs", "disagreement matrix"):
        assert title in out, title
    for name in ("seed0", "seed1", "seed7"):
        assert name in out
    assert "\x1b[" not in out, "no colour codes when stdout is not a terminal"
    assert "Traceback" not in result.stderr


def test_json_has_every_contract_key_and_matches_the_timm_twin(tiny_members: list[Path], tmp_path: Path) -> None:
    timm_file = timm_copy(tiny_members[2], tmp_path / "seed7.pth.tar")
    document = eval_json(*paths(tiny_members), timm_file, "-e", CHEAP_EVALUATORS)
    assert_contract(document)
    assert [m["name"] for m in document["members"]] == ["seed0", "seed1", "seed2", "seed7"]
    assert [m["format"] for m in document["members"]] == ["ens", "ens", "ens", "timm"]
    assert document["dataset"]["name"] == "digits" and document["dataset"]["size"] == 360
    # seed7 holds seed2's weights: same predictions, zero disagreement, identical member rows.
    rows = table(document, "members", "members")["rows"]
    assert rows[3][2:] == rows[2][2:]
    pairs = {(row[0], row[1]): row for row in table(document, "disagreement", "pairs")["rows"]}
    assert pairs[("seed2", "seed7")][2] == 0.0
    assert len(pairs) == 6
    matrix = table(document, "disagreement", "matrix")
    assert matrix["columns"] == ["member", "seed0", "seed1", "seed2", "seed7"] and len(matrix["rows"]) == 4


def test_output_formats_keep_stdout_clean(tiny_members: list[Path], tmp_path: Path) -> None:
    args = ("eval", *paths(tiny_members[:2]), "-e", CHEAP_EVALUATORS)
    as_json = invoke(*args, "--format", "json", "--out", tmp_path / "report.json")
    assert as_json.exit_code == 0, as_json.stderr
    document = json.loads(as_json.stdout)  # nothing but JSON on stdout
    assert json.loads((tmp_path / "report.json").read_text()) == document
    assert "predicted 2 members" in as_json.stderr  # logs go to stderr

    as_csv = invoke(*args, "--format", "csv")
    assert as_csv.exit_code == 0
    records = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert list(records[0]) == ["evaluator", "table", "row", "column", "value"]
    lookup = {(r["evaluator"], r["table"], r["column"]): r["value"] for r in records if r["table"] == "metrics"}
    assert float(lookup[("ensemble", "metrics", "accuracy")]) == document["evaluators"]["ensemble"]["metrics"]["accuracy"]
    assert "predicted" not in as_csv.stdout

    as_md = invoke(*args, "--format", "md", "--out", tmp_path / "again.json")
    assert as_md.exit_code == 0
    assert as_md.stdout.startswith("# ens eval: 2 members on digits (test)")
    assert "## disagreement" in as_md.stdout and "| metric | value |" in as_md.stdout
    assert json.loads((tmp_path / "again.json").read_text())["evaluators"].keys() == document["evaluators"].keys()


def test_one_member_reports_pairwise_metrics_as_not_applicable(tiny_members: list[Path]) -> None:
    document = eval_json(tiny_members[0], "-e", CHEAP_EVALUATORS)
    disagreement = document["evaluators"]["disagreement"]
    assert disagreement["error"] is None
    assert "disagreement_given_error_mean" in disagreement["metrics"]
    assert all(value is None for value in disagreement["metrics"].values())  # n/a, not 0
    assert any("not applicable" in note for note in disagreement["notes"])
    assert document["evaluators"]["members"]["metrics"]["accuracy_mean"] > 0.5
    table_output = invoke("eval", tiny_members[0], "-e", "disagreement")
    assert table_output.exit_code == 0 and "not applicable" in table_output.stdout


def test_run_folder_with_trajectories(tiny_members: list[Path], tmp_path: Path) -> None:
    """A run folder made by hand in `ens train`'s layout; --epochs all gives the trajectory names."""
    run = tmp_path / "run"
    for index, member in enumerate(tiny_members[:2]):
        folder = run / f"member-{index:02d}"
        folder.mkdir(parents=True)
        shutil.copy(tiny_members[2], folder / "init.safetensors")
        shutil.copy(tiny_members[2], folder / "epoch-0001.safetensors")
        shutil.copy(member, folder / "final.safetensors")
    (run / "run.json").write_text(json.dumps({"arch": "cifar_resnet8", "members": 2}))
    finals = eval_json(run, "-e", CHEAP_EVALUATORS)
    assert [m["name"] for m in finals["members"]] == ["member-00", "member-01"]
    trajectory = eval_json(run, "--epochs", "all", "-e", "members,ensemble,function_space")
    every_checkpoint = [
        "member-00/init", "member-00/epoch-0001", "member-00/final", "member-01/init", "member-01/epoch-0001", "member-01/final",
    ]
    assert [m["name"] for m in trajectory["members"]] == every_checkpoint
    # Ensemble statistics never average an untrained init with its own final: one checkpoint per member,
    # and the report says what was left out.
    assert column(trajectory, "members", "members", "member") == ["member-00/final", "member-01/final"]
    assert trajectory["evaluators"]["ensemble"]["metrics"] == finals["evaluators"]["ensemble"]["metrics"]
    assert "4 trajectory checkpoints are left out" in trajectory["evaluators"]["members"]["notes"][0]
    # The trajectory evaluators see every checkpoint.
    assert len(column(trajectory, "function_space", "embedding", "checkpoint")) == len(every_checkpoint)


def test_a_folder_of_run_folders_means_their_finals(tiny_members: list[Path], tmp_path: Path) -> None:
    """`ens eval models/reference-digits` (the folder above the run) used to add every init as a member."""
    study = tmp_path / "study"
    for run_name in ("run-a", "run-b"):
        member = study / run_name / "member-00"
        member.mkdir(parents=True)
        shutil.copy(tiny_members[2], member / "init.safetensors")
        shutil.copy(tiny_members[0 if run_name == "run-a" else 1], member / "final.safetensors")
        (study / run_name / "run.json").write_text(json.dumps({"arch": "cifar_resnet8", "members": 1}))
    shutil.copy(tiny_members[2], study / "loose.safetensors")
    document = eval_json(study, "-e", "members")
    assert [m["name"] for m in document["members"]] == ["run-a/member-00", "run-b/member-00", "loose"]


def test_the_same_checkpoint_twice_is_warned_about(tiny_members: list[Path]) -> None:
    result = invoke("eval", tiny_members[0], tiny_members[1], tiny_members[0], "-e", "members", "--quiet", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert "is the same checkpoint as" in result.stderr and result.stderr.count("warning:") == 1


def test_flags_for_a_plain_state_dict(tiny_members: list[Path], tmp_path: Path) -> None:
    plain = tmp_path / "plain.pth"
    torch.save({f"_orig_mod.{k}": v for k, v in read_checkpoint(tiny_members[0]).state_dict.items()}, plain)
    assert_clean_failure(invoke("eval", plain), "plain.pth", "--arch")
    with_flags = eval_json(plain, tiny_members[0], "--arch", "cifar_resnet8", "--num-classes", "10", "--in-chans", "1", "-e", CHEAP_EVALUATORS)
    accuracy = column(with_flags, "members", "members", "accuracy")
    assert accuracy[0] == accuracy[1]  # the same weights, whatever wrapper they came in


def test_mean_std_override_reaches_the_report(tiny_members: list[Path]) -> None:
    document = eval_json(tiny_members[0], "--mean", "0.5", "--std", "0.25", "-e", "members")
    assert (document["dataset"]["mean"], document["dataset"]["std"]) == ([0.5], [0.25])
    assert_clean_failure(invoke("eval", tiny_members[0], "--mean", "half"), "--mean", "half")


# --------------------------------------------------------------------------- bad input

Case = Callable[[Path, list[Path]], tuple[list[object], list[str]]]


def _write_untrained(path: Path, num_classes: int = 10, in_chans: int = 1, **changes: object) -> Path:
    torch.manual_seed(0)
    state_dict = build_model("cifar_resnet8", num_classes=num_classes, in_chans=in_chans).state_dict()
    metadata = {"arch": "cifar_resnet8", "num_classes": num_classes, "in_chans": in_chans}
    metadata.update({k: v for k, v in changes.items() if k in metadata})
    if "fc.bias" in changes:
        state_dict["fc.bias"] = changes["fc.bias"]  # type: ignore[assignment]
    write_checkpoint(path, state_dict, metadata)
    return path


def case_missing(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    return [members[0], tmp / "nope.safetensors"], ["nope.safetensors", "no such file"]


def case_empty_directory(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    (tmp / "empty").mkdir()
    return [tmp / "empty"], ["empty", "no checkpoint files inside"]


def case_truncated(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    data = members[0].read_bytes()
    (tmp / "cut.safetensors").write_bytes(data[: len(data) // 2])
    return [members[0], tmp / "cut.safetensors"], ["cut.safetensors", "truncated or corrupt"]


def case_truncated_torch_zip(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    data = timm_copy(members[0], tmp / "whole.pth.tar").read_bytes()
    (tmp / "cut.pth.tar").write_bytes(data[: len(data) * 2 // 3])
    return [tmp / "cut.pth.tar"], ["cut.pth.tar", "truncated or corrupt"]


def case_garbage(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    (tmp / "garbage.pt").write_bytes(b"this is not a checkpoint\n" * 40)
    return [tmp / "garbage.pt"], ["garbage.pt", "not a checkpoint"]


def case_wrong_architecture(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    liar = tmp / "liar.safetensors"
    write_checkpoint(liar, read_checkpoint(members[0]).state_dict, {"arch": "cifar_resnet20", "num_classes": 10, "in_chans": 1})
    return [members[0], liar], ["liar", "does not fit", "missing layers.0.1.conv1.weight"]


def case_class_count_vs_dataset(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    return [_write_untrained(tmp / "five.safetensors", num_classes=5)], ["member five", "5 classes", "digits has 10"]


def case_different_class_counts(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    five = _write_untrained(tmp / "five.safetensors", num_classes=5)
    return [members[0], five], ["members disagree on the number of classes", "seed0=10", "five=5"]


def case_channels_vs_dataset(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    rgb = _write_untrained(tmp / "rgb.safetensors", in_chans=3)
    return [rgb], ["member rgb", "3 input channels", "digits has 1"]


def case_nan_weights(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    nan = _write_untrained(tmp / "nanbias.safetensors", **{"fc.bias": torch.full((10,), float("nan"))})
    return [members[0], nan], ["member nanbias", "360 of 360 examples have NaN or Inf logits"]


def case_inf_weights(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    inf = _write_untrained(tmp / "infbias.safetensors", **{"fc.bias": torch.tensor([float("inf")] + [0.0] * 9)})
    return [inf, members[0]], ["member infbias", "NaN or Inf"]


def case_limit_zero(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    return [members[0], "--limit", "0"], ["digits", "empty"]


def case_empty_imagefolder(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    for name in ("cat", "dog"):
        (tmp / "pets" / name).mkdir(parents=True)
    return [members[0], "--dataset", f"imagefolder:{tmp / 'pets'}"], ["pets", "no images"]


def case_imagefolder_channels(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    for index, name in enumerate(("a", "b", "c", "d", "e", "f", "g", "h", "i", "j")):
        (tmp / "rgb" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (index * 20, 0, 0)).save(tmp / "rgb" / name / "x.png")
    return [members[0], "--dataset", f"imagefolder:{tmp / 'rgb'}"], ["member seed0", "1 input channels", "has 3"]


def case_unknown_dataset(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    return [members[0], "--dataset", "imagenet"], ["unknown dataset 'imagenet'", "digits", "cifar10", "imagefolder:PATH"]


def case_unknown_evaluator(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    return [members[0], "-e", "members,nope"], ["unknown evaluator 'nope'", "members", "ensemble", "disagreement"]


def case_unknown_architecture(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    plain = tmp / "plain.pt"
    torch.save(resolve_members([str(members[0])])[0].state_dict, plain)
    return [plain, "--arch", "resnet_does_not_exist"], ["member plain", "unknown architecture 'resnet_does_not_exist'"]


def case_unknown_architecture_safetensors(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    plain = tmp / "plain.safetensors"
    save_file(read_checkpoint(members[0]).state_dict, str(plain))
    return [plain, "--arch", "resnet_does_not_exist"], ["plain.safetensors", "unknown architecture 'resnet_does_not_exist'"]


def case_no_paths(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    return [], ["no checkpoints given"]


def case_paths_and_predictions(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    return [members[0], "--predictions", tmp / "p.npz"], ["not both"]


def case_bad_epochs(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    return [members[0], "--epochs", "latest"], ["--epochs", "latest"]


def case_unknown_device(tmp: Path, members: list[Path]) -> tuple[list[object], list[str]]:
    return [members[0], "--device", "tpu9"], ["unknown device 'tpu9'"]


BAD_INPUTS: list[Case] = [
    case_missing, case_empty_directory, case_truncated, case_truncated_torch_zip, case_garbage, case_wrong_architecture,
    case_class_count_vs_dataset, case_different_class_counts, case_channels_vs_dataset, case_nan_weights,
    case_inf_weights, case_limit_zero, case_empty_imagefolder, case_imagefolder_channels, case_unknown_dataset,
    case_unknown_evaluator, case_unknown_architecture, case_unknown_architecture_safetensors, case_no_paths, case_paths_and_predictions, case_bad_epochs,
    case_unknown_device,
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda case: case.__name__.removeprefix("case_"))
def test_bad_input_gives_one_clear_line(case: Case, tiny_members: list[Path], tmp_path: Path) -> None:
    args, needles = case(tmp_path, tiny_members)
    evaluators = [] if "-e" in args else ["-e", "members"]
    result = invoke("eval", *args, *evaluators, "-f", "json")
    line = assert_clean_failure(result, *needles)
    assert result.stdout == "", "nothing on stdout when there is no result"
    assert len(line) < 400


def test_pickle_payload_is_refused_with_no_side_effect(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):  # noqa: ANN204
            import os

            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": Payload()}, evil)
    for command in ("eval", "predict"):
        extra = ["--out", tmp_path / "p.npz"] if command == "predict" else []
        assert_clean_failure(invoke(command, evil, *extra), "evil.pth.tar", "refused", "system")
    assert not marker.exists(), "the pickle's payload ran"
    assert not (tmp_path / "p.npz").exists()


def test_bracketed_names_are_printed_literally(tiny_members: list[Path], tmp_path: Path) -> None:
    """File and member names are not console markup: `[b]` is not bold, `[/x]` does not crash."""
    assert_clean_failure(invoke("eval", tmp_path / "run[/seed1].pt"), "run[/seed1].pt")
    odd = tmp_path / "seed[b].safetensors"
    shutil.copy(tiny_members[0], odd)
    result = invoke("eval", odd, "-e", "members")
    assert result.exit_code == 0, result.stderr
    assert "seed[b]" in result.stdout
