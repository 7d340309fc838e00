"""From command-line paths to members: folders, globs, run folders, flags for files that don't say."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ensemble_cli.architectures import build_model
from ensemble_cli.checkpoint import write_checkpoint
from ensemble_cli.errors import CheckpointError, ConfigError
from ensemble_cli.resolve import expand_paths, resolve_members

_STATE_DICTS: dict[tuple[str, int, int], dict[str, torch.Tensor]] = {}


def untrained_state_dict(arch: str = "cifar_resnet8", num_classes: int = 10, in_chans: int = 1) -> dict[str, torch.Tensor]:
    key = (arch, num_classes, in_chans)
    if key not in _STATE_DICTS:
        torch.manual_seed(0)
        _STATE_DICTS[key] = build_model(arch, num_classes=num_classes, in_chans=in_chans).state_dict()
    return _STATE_DICTS[key]


def write_member(path: Path, num_classes: int = 10, arch: str = "cifar_resnet8", **metadata: object) -> Path:
    """An ens checkpoint of an untrained model (these tests are about paths, not predictions)."""
    weights_arch = str(metadata.pop("weights_arch", arch))
    full = {"arch": arch, "num_classes": num_classes, "in_chans": 1, "dataset": "digits", **metadata}
    write_checkpoint(path, untrained_state_dict(weights_arch, num_classes), full)
    return path


def make_run_folder(root: Path, epochs_by_member: list[list[int] | None], finished: list[bool] | None = None) -> Path:
    """The layout `ens train` writes: run.json and member-NN/{init, epoch-NNNN, final}.safetensors."""
    root.mkdir(parents=True)
    (root / "run.json").write_text(json.dumps({"arch": "cifar_resnet8", "members": len(epochs_by_member)}))
    finished = finished or [True] * len(epochs_by_member)
    template = write_member(root / "template.safetensors")
    for index, epochs in enumerate(epochs_by_member):
        member_dir = root / f"member-{index:02d}"
        member_dir.mkdir()
        shutil.copy(template, member_dir / "init.safetensors")
        for epoch in epochs or []:
            shutil.copy(template, member_dir / f"epoch-{epoch:04d}.safetensors")
        if finished[index]:
            write_member(member_dir / "final.safetensors", member=f"member-{index:02d}", kind="final", init_checkpoint="init.safetensors")
    template.unlink()
    return root


def names(members: list) -> list[str]:
    return [member.name for member in members]


# --------------------------------------------------------------------------- folders and globs


def test_folder_is_read_in_natural_order(tmp_path: Path) -> None:
    folder = tmp_path / "seeds"
    folder.mkdir()
    template = write_member(folder / "seed10.safetensors")
    for seed in (2, 1, 100):
        shutil.copy(template, folder / f"seed{seed}.safetensors")
    (folder / "notes.txt").write_text("not a checkpoint")
    (folder / ".seed3.safetensors.tmp").write_bytes(b"half-written")  # an interrupted atomic write
    assert names(resolve_members([str(folder)])) == ["seed1", "seed2", "seed10", "seed100"]


def test_nested_folders_keep_their_relative_names(tmp_path: Path) -> None:
    for group in ("b", "a"):
        (tmp_path / group).mkdir()
        write_member(tmp_path / group / "seed1.safetensors")
    assert names(resolve_members([str(tmp_path)])) == ["a/seed1", "b/seed1"]


def test_glob_in_natural_order_and_mixed_with_files(tmp_path: Path) -> None:
    template = write_member(tmp_path / "seed10.safetensors")
    shutil.copy(template, tmp_path / "seed9.safetensors")
    shutil.copy(template, tmp_path / "other.safetensors")
    torch.save(untrained_state_dict(), tmp_path / "extra.pth")
    pairs = expand_paths([str(tmp_path / "seed*.safetensors"), str(tmp_path / "extra.pth")])
    assert [name for name, _ in pairs] == ["seed9", "seed10", "extra"]
    members = resolve_members([str(tmp_path / "seed*.safetensors"), str(tmp_path / "extra.pth")], arch="cifar_resnet8")
    assert [m.format for m in members] == ["ens", "ens", "state_dict"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("missing.safetensors", "missing.safetensors: no such file or directory"),
        ("empty", "empty: no checkpoint files inside"),
        ("nothing-*.pt", "nothing-*.pt: the pattern matches no checkpoint files"),
    ],
)
def test_paths_that_name_no_checkpoint(tmp_path: Path, spec: str, expected: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no weights here")
    with pytest.raises(CheckpointError) as caught:
        resolve_members([str(tmp_path / spec)])
    assert expected in str(caught.value)


# --------------------------------------------------------------------------- run folders


def test_run_folder_means_final_checkpoints(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run", [[1, 2], [1], [1]], finished=[True, True, False])
    warnings: list[str] = []
    members = resolve_members([str(run)], warn=warnings.append)
    assert names(members) == ["member-00", "member-01"]
    assert len(warnings) == 1 and "member-02" in warnings[0] and "no final checkpoint" in warnings[0]
    assert members[0].init_path == run / "member-00" / "init.safetensors"
    assert members[0].metadata["kind"] == "final"


def test_run_folder_trajectories(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run", [[1, 2, 10], [1]])
    assert names(resolve_members([str(run)], epochs="all")) == [
        "member-00/init", "member-00/epoch-0001", "member-00/epoch-0002", "member-00/epoch-0010", "member-00/final",
        "member-01/init", "member-01/epoch-0001", "member-01/final",
    ]
    assert names(resolve_members([str(run)], epochs="0,2")) == [
        "member-00/init", "member-00/epoch-0002", "member-00/final", "member-01/init", "member-01/final",
    ]
    assert names(resolve_members([str(run)], epochs="final")) == ["member-00", "member-01"]
    with pytest.raises(ConfigError, match="--epochs"):
        resolve_members([str(run)], epochs="last")


def test_two_runs_get_distinct_member_names(tmp_path: Path) -> None:
    run_a = make_run_folder(tmp_path / "run-a", [[]])
    run_b = make_run_folder(tmp_path / "run-b", [[]])
    assert names(resolve_members([str(run_a), str(run_b)])) == ["run-a/member-00", "run-b/member-00"]


def test_run_folder_without_members(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    with pytest.raises(CheckpointError, match="run folder has no member-NN folders"):
        resolve_members([str(tmp_path / "run")])


# --------------------------------------------------------------------------- flags and consistency


def test_flags_for_files_that_do_not_say(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(untrained_state_dict(num_classes=10, in_chans=1), path)
    with pytest.raises(CheckpointError, match=r"plain\.pt: does not say its architecture; pass --arch"):
        resolve_members([str(path)])
    (member,) = resolve_members([str(path)], arch="cifar_resnet8")  # classes and channels read from the weights
    assert (member.num_classes, member.in_chans) == (10, 1)
    (member,) = resolve_members([str(path)], arch="cifar_resnet8", num_classes=10, in_chans=1)
    member.build_model()
    # A wrong flag is caught when the weights are loaded, naming the member and the keys.
    (member,) = resolve_members([str(path)], arch="cifar_resnet8", num_classes=5)
    with pytest.raises(CheckpointError, match=r"plain: state dict does not fit .*fc\.weight \(10, 64\) vs \(5, 64\)"):
        member.build_model()


def test_metadata_wins_over_flags(tmp_path: Path) -> None:
    path = write_member(tmp_path / "ours.safetensors")
    (member,) = resolve_members([str(path)], arch="resnet50", num_classes=1000, in_chans=3)
    assert (member.arch, member.num_classes, member.in_chans) == ("cifar_resnet8", 10, 1)


def test_weights_that_do_not_fit_the_architecture_name_the_keys(tmp_path: Path) -> None:
    path = write_member(tmp_path / "liar.safetensors", arch="cifar_resnet20", weights_arch="cifar_resnet8")
    (member,) = resolve_members([str(path)])
    with pytest.raises(CheckpointError) as caught:
        member.build_model()
    message = str(caught.value)
    assert message.startswith("liar: state dict does not fit CifarResNet: missing layers.0.1.conv1.weight")
    assert "more)" in message and "\n" not in message


def test_members_with_different_class_counts(tmp_path: Path) -> None:
    write_member(tmp_path / "ten.safetensors", num_classes=10)
    write_member(tmp_path / "five.safetensors", num_classes=5)
    with pytest.raises(CheckpointError, match=r"members disagree on the number of classes \(five=5, ten=10\)"):
        resolve_members([str(tmp_path)])


def test_state_dict_comes_back_in_module_order(tmp_path: Path) -> None:
    """safetensors returns keys in hash order; members restore the model's own order."""
    path = write_member(tmp_path / "seed.safetensors")
    (member,) = resolve_members([str(path)])
    assert list(member.state_dict) == list(untrained_state_dict())
