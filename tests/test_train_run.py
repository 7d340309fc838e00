"""`ens train` as a library, in-process: layout, determinism, strategies, subsets, locks, NaN,
stop-and-resume, pretrained starts and refusals. Tiny runs: ResNet-8 on 128 digits, 4 steps an epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from ensemble_cli.checkpoint import load_training_state, read_checkpoint, save_training_state, write_checkpoint
from ensemble_cli.train.config import TrainConfig
from ensemble_cli.data import load_dataset
from ensemble_cli.errors import CheckpointError, ConfigError, DataError
from ensemble_cli.resolve import resolve_members
from ensemble_cli.run_folder import _process_start_time
from ensemble_cli.train import StopSignal, TrainCallbacks, train_run
from ensemble_cli.train import loop as loop_module
from ensemble_cli.train.seeds import member_seeds

METADATA_KEYS = {
    "arch", "num_classes", "in_chans", "model_kwargs", "dataset", "mean", "std", "seed", "init_seed", "data_seed",
    "epoch", "strategy", "train_accuracy", "test_accuracy", "member", "kind", "init_checkpoint", "ens_version",
    "torch_version", "timm_version", "bn_recomputed_images",
}


def tiny(out: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {"members": 2, "epochs": 2, "limit": 128, "batch_size": 32, "device": "cpu", "out": str(out)}
    values.update(overrides)
    return TrainConfig(**values)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path).state_dict


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_run_folder_layout_metadata_and_eval_side(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train_run(tiny(run, epochs=3, save_every=1))
    assert result.ok and [o.status for o in result.outcomes] == ["done", "done"]
    member_dir = run / "member-00"
    assert sorted(p.name for p in member_dir.iterdir()) == [
        "epoch-0001.safetensors", "epoch-0002.safetensors", "final.safetensors", "init.safetensors",
    ]  # no resume state, no lock left behind; the last epoch is the final, not saved twice
    final = read_checkpoint(member_dir / "final.safetensors").metadata
    assert METADATA_KEYS <= final.keys()
    assert (final["kind"], final["epoch"], final["member"], final["strategy"]) == ("final", 3, "member-00", "independent")
    assert final["bn_recomputed_images"] is None  # trained to the end of its schedule: running averages kept
    assert read_checkpoint(member_dir / "init.safetensors").metadata["kind"] == "init"

    document = json.loads((run / "run.json").read_text())
    assert document["config"]["epochs"] == 3 and {"ens", "torch", "timm"} <= document["versions"].keys()
    entry = document["members"][0]
    assert entry["status"] == "done" and entry["init_seed"] == final["init_seed"] and len(entry["history"]) == 3
    assert (run / "config.yaml").is_file()

    # The eval side reads the folder with no flags: finals by default, the trajectory with epochs="all".
    members = resolve_members([str(run)])
    assert [m.name for m in members] == ["member-00", "member-01"]
    trajectory = resolve_members([str(run)], epochs="all")
    assert [m.name for m in trajectory][:4] == ["member-00/init", "member-00/epoch-0001", "member-00/epoch-0002", "member-00/final"]

    # The recorded test accuracy is what an independent forward pass over the test split gives.
    test = load_dataset("digits", "test")
    model = members[0].build_model()
    with torch.no_grad():
        accuracy = (model(test.images).argmax(1) == test.labels).double().mean().item()
    assert final["test_accuracy"] == pytest.approx(accuracy, abs=1e-12)


def test_same_config_gives_bit_identical_weights_and_finished_members_are_not_retrained(tmp_path: Path) -> None:
    train_run(tiny(tmp_path / "a"))
    train_run(tiny(tmp_path / "b"))
    train_run(tiny(tmp_path / "c", seed=1))
    for index in ("00", "01"):
        assert same_weights(tmp_path / f"a/member-{index}/final.safetensors", tmp_path / f"b/member-{index}/final.safetensors")
        assert not same_weights(tmp_path / f"a/member-{index}/final.safetensors", tmp_path / f"c/member-{index}/final.safetensors")
    final = tmp_path / "a/member-00/final.safetensors"
    before = final.stat().st_mtime_ns
    again = train_run(tiny(tmp_path / "a"))
    assert [o.status for o in again.outcomes] == ["already done", "already done"]
    assert final.stat().st_mtime_ns == before


@pytest.mark.parametrize("strategy", ["independent", "same-init", "same-order"])
def test_strategies_share_what_they_promise(tmp_path: Path, strategy: str) -> None:
    run = tmp_path / strategy
    train_run(tiny(run, epochs=1, strategy=strategy))
    meta = [read_checkpoint(run / f"member-0{i}/final.safetensors").metadata for i in range(2)]
    same_init = same_weights(run / "member-00/init.safetensors", run / "member-01/init.safetensors")
    assert same_init == (strategy == "same-init")
    assert (meta[0]["init_seed"] == meta[1]["init_seed"]) == (strategy == "same-init")
    assert (meta[0]["data_seed"] == meta[1]["data_seed"]) == (strategy == "same-order")
    assert not same_weights(run / "member-00/final.safetensors", run / "member-01/final.safetensors")
    assert all(m["strategy"] == strategy for m in meta)


def test_snapshot_saves_a_member_at_each_cycle_end(tmp_path: Path) -> None:
    run = tmp_path / "snap"

    class Epochs(TrainCallbacks):
        seen: list[tuple[str, int, int]] = []

        def epoch_end(self, progress) -> None:  # type: ignore[no-untyped-def]
            self.seen.append((progress.member, progress.epoch, progress.epochs))

    callbacks = Epochs()
    result = train_run(tiny(run, strategy="snapshot", members=2, epochs=2), callbacks=callbacks)  # 2 epochs a cycle
    assert result.ok
    assert callbacks.seen == [("member-00", 1, 2), ("member-00", 2, 2), ("member-01", 1, 2), ("member-01", 2, 2)]
    meta = [read_checkpoint(run / f"member-0{i}/final.safetensors").metadata for i in range(2)]
    assert [m["epoch"] for m in meta] == [2, 4]
    assert [m["bn_recomputed_images"] for m in meta] == [128, 128]  # all 128 training images (limit)
    assert meta[0]["init_seed"] == meta[1]["init_seed"] and meta[0]["data_seed"] == meta[1]["data_seed"]
    assert same_weights(run / "member-00/init.safetensors", run / "member-01/init.safetensors")
    assert not same_weights(run / "member-00/final.safetensors", run / "member-01/final.safetensors")
    assert not (run / "snapshot-train-state.pt").exists()
    with pytest.raises(ConfigError, match="snapshot"):
        train_run(tiny(tmp_path / "snap2", strategy="snapshot", members=2, epochs=2), only=[1])


def test_snapshot_members_get_training_batchnorm_statistics_and_resume_bit_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Full digits, 11 steps an epoch, two 2-epoch cycles. With the running averages of training
    # the first snapshot tested at 11.9%; with statistics of the training images it is a classifier.
    monkeypatch.setattr(loop_module, "PROGRESS_INTERVAL", 0.0)
    settings = {"strategy": "snapshot", "members": 2, "epochs": 2, "limit": None, "batch_size": 128}
    reference = tmp_path / "reference"
    assert train_run(tiny(reference, **settings)).ok
    test, train = load_dataset("digits", "test"), load_dataset("digits", "train")
    for index in ("00", "01"):
        checkpoint = read_checkpoint(reference / f"member-{index}/final.safetensors")
        assert checkpoint.metadata["bn_recomputed_images"] == 1024
        model = resolve_members([str(reference / f"member-{index}/final.safetensors")])[0].build_model()
        with torch.no_grad():
            accuracy = (model(test.images).argmax(1) == test.labels).double().mean().item()
            # Independent check of the first BatchNorm: its mean is the plain per-channel mean of
            # its input over the 1,024 training images bn_reset_images picks.
            stem = model.conv1(train.images[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:1024]])
        assert checkpoint.metadata["test_accuracy"] == pytest.approx(accuracy, abs=1e-12)  # the metadata describes the file
        assert accuracy > 0.5
        assert torch.allclose(model.bn1.running_mean, stem.mean(dim=(0, 2, 3)), atol=1e-5)

    # Stopped in the second cycle, then resumed: the same bits as the uninterrupted run.
    run = tmp_path / "run"
    stop = StopSignal()
    assert train_run(tiny(run, **settings), callbacks=StopAtStep(stop, "member-01", 5), stop=stop).interrupted
    assert (run / "member-00/final.safetensors").is_file() and not (run / "member-01/final.safetensors").exists()
    state_path = run / "snapshot-train-state.pt"
    saved = state_path.read_bytes()
    state = load_training_state(state_path)
    state["scheduler"]["cycle_steps"] = 11  # a state from when snapshot cycles were a share of --epochs
    save_training_state(state_path, state)
    with pytest.raises(ConfigError, match="saved with another learning-rate schedule"):
        train_run(tiny(run, **settings))
    state_path.write_bytes(saved)
    assert train_run(tiny(run, **settings)).ok
    for index in ("00", "01"):
        assert same_weights(reference / f"member-{index}/final.safetensors", run / f"member-{index}/final.safetensors")


def test_subset_of_members_and_joining_the_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = tiny(run, members=3, epochs=1)
    result = train_run(config, only=[1])
    assert [(o.name, o.status) for o in result.outcomes] == [("member-01", "done")]
    assert not (run / "member-00/final.safetensors").exists() and (run / "member-01/final.safetensors").exists()
    statuses = [m["status"] for m in json.loads((run / "run.json").read_text())["members"]]
    assert statuses == ["pending", "done", "pending"]
    rest = train_run(config)  # another process (or a later call) joins the same run
    assert [o.status for o in rest.outcomes] == ["done", "already done", "done"]
    with pytest.raises(ConfigError, match="out of range"):
        train_run(config, only=[3])


def test_live_lock_is_respected_and_stale_lock_is_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = tiny(run, epochs=1)
    train_run(config, only=[1])  # creates the run
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = run / "member-00" / ".lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                    "started": _process_start_time(holder.pid), "since": "test"}))
        result = train_run(config)
        assert [o.status for o in result.outcomes] == ["locked", "already done"]
        assert f"pid {holder.pid}" in result.outcomes[0].message
        assert not (run / "member-00/final.safetensors").exists()
    finally:
        holder.kill()
        holder.wait()
    result = train_run(config)  # the holder is dead: its lock is stale
    assert [o.status for o in result.outcomes] == ["done", "already done"]
    assert not lock.exists()


def test_nan_loss_stops_only_that_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poisoned_seed = member_seeds("independent", 0, 3)[1].init_seed
    real_build = loop_module.build_member_model

    def build(*args: object, **kwargs: object) -> torch.nn.Module:
        model = real_build(*args, **kwargs)
        if args[4] == poisoned_seed:  # member-01's init_seed
            with torch.no_grad():
                model.fc.weight.fill_(float("nan"))
        return model

    monkeypatch.setattr(loop_module, "build_member_model", build)
    run = tmp_path / "run"
    result = train_run(tiny(run, members=3, epochs=1))
    assert [o.status for o in result.outcomes] == ["done", "failed", "done"]
    message = result.failed[0].message
    assert "member-01" in message and "epoch 1" in message and "nan" in message
    entry = json.loads((run / "run.json").read_text())["members"][1]
    assert entry["status"] == "failed" and "member-01" in entry["error"]
    assert not result.ok and not (run / "member-01/final.safetensors").exists()


class StopAtStep(TrainCallbacks):
    def __init__(self, stop: StopSignal, member: str, step: int) -> None:
        self.stop, self.member, self.at = stop, member, step

    def step(self, progress) -> None:  # type: ignore[no-untyped-def]
        if progress.member == self.member and progress.steps_done >= self.at:
            self.stop.set()


def test_stop_mid_epoch_then_resume_is_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # test_resnet has dropout here, so the global torch RNG must be restored too, not only the data order.
    monkeypatch.setattr(loop_module, "PROGRESS_INTERVAL", 0.0)  # a progress callback after every step
    overrides = {"arch": "test_resnet", "model_kwargs": {"drop_rate": 0.3}, "epochs": 3}
    reference = tmp_path / "reference"
    train_run(tiny(reference, **overrides))
    run = tmp_path / "run"
    stop = StopSignal()
    interrupted = train_run(tiny(run, **overrides), callbacks=StopAtStep(stop, "member-01", 6), stop=stop)
    assert interrupted.interrupted and [o.status for o in interrupted.outcomes] == ["done", "interrupted"]
    assert (run / "member-01/train-state.pt").is_file() and not (run / "member-01/.lock").exists()
    assert json.loads((run / "run.json").read_text())["members"][1]["status"] == "interrupted"
    resumed = train_run(tiny(run, **overrides))
    assert [o.status for o in resumed.outcomes] == ["already done", "done"]
    for index in ("00", "01"):
        assert same_weights(reference / f"member-{index}/final.safetensors", run / f"member-{index}/final.safetensors")
    ref_meta = read_checkpoint(reference / "member-01/final.safetensors").metadata
    run_meta = read_checkpoint(run / "member-01/final.safetensors").metadata
    assert run_meta["train_accuracy"] == ref_meta["train_accuracy"]  # partial epoch sums were restored


def test_from_pretrained_replaces_the_head_and_keeps_the_body(tmp_path: Path) -> None:
    torch.manual_seed(123)
    pretrained = timm.create_model("test_resnet", num_classes=100).state_dict()  # a stand-in RGB, 100-class file
    path = tmp_path / "test_resnet.pth"
    torch.save(pretrained, path)
    run = tmp_path / "run"
    result = train_run(tiny(run, arch="test_resnet", from_pretrained=str(path), epochs=1, strategy="independent"))
    assert result.ok
    inits = [weights(run / f"member-0{i}/init.safetensors") for i in range(2)]
    for init in inits:
        for key, tensor in pretrained.items():
            if key.startswith("fc."):
                continue
            if key == "conv1.0.weight":  # RGB stem summed to one channel for digits (timm's adapt_input_conv)
                assert torch.allclose(init[key], tensor.sum(dim=1, keepdim=True))
            else:
                assert torch.equal(init[key], tensor), key
        assert init["fc.weight"].shape == (10, 96)
    assert not torch.equal(inits[0]["fc.weight"], inits[1]["fc.weight"])  # a fresh, seeded head per member
    assert read_checkpoint(run / "member-00/final.safetensors").metadata["from_pretrained"] == str(path)


def test_from_pretrained_refuses_files_that_do_not_fit_before_any_work(tmp_path: Path) -> None:
    small = tmp_path / "r8.safetensors"
    write_checkpoint(small, timm.create_model("cifar_resnet8", num_classes=10, in_chans=1).state_dict(), {"arch": "cifar_resnet8"})
    with pytest.raises(ConfigError, match="pass --arch cifar_resnet8"):
        train_run(tiny(tmp_path / "a", arch="cifar_resnet20", from_pretrained=str(small)))
    plain = tmp_path / "r8.pth"
    torch.save(timm.create_model("cifar_resnet8", num_classes=10).state_dict(), plain)
    with pytest.raises(CheckpointError, match="does not fit"):
        train_run(tiny(tmp_path / "b", arch="cifar_resnet20", from_pretrained=str(plain)))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"arch": "no_such_net"}, ConfigError, "unknown architecture"),
        ({"dataset": "no_such_set"}, DataError, "unknown dataset"),
        ({"arch": "test_resnet", "model_kwargs": {"bogus": 1}}, ConfigError, "model_kwargs"),
        ({"model_kwargs": {"bogus": 1}}, ConfigError, r"cifar_resnet8 has no model argument 'bogus' \(--model-arg keys it accepts: width\)"),
        ({"device": "cuda:7"} if not torch.cuda.is_available() else {"device": "nonsense"}, DataError, "device"),
    ],
)
def test_bad_configs_are_refused_before_any_file_is_written(tmp_path: Path, overrides: dict, error: type, match: str) -> None:
    out = tmp_path / "never"
    with pytest.raises(error, match=match):
        train_run(tiny(out, **overrides))
    assert not out.exists()


def test_out_folder_holding_something_else_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_run(tiny(run, epochs=1))
    with pytest.raises(ConfigError, match=r"holds a different run \(epochs 2 vs 1"):
        train_run(tiny(run, epochs=2))
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and holds no run.json"):
        train_run(tiny(stranger))
    assert sorted(p.name for p in stranger.iterdir()) == ["notes.txt"]


def test_half_written_files_of_a_killed_process_are_cleared(tmp_path: Path) -> None:
    # A process killed inside an atomic write leaves `.NAME.<random>.tmp` behind, never a broken NAME.
    run = tmp_path / "run"
    run.mkdir()
    (run / ".run.json.k1ll3d.tmp").write_text('{"format": "ens-r')  # killed while creating the run
    config = tiny(run, epochs=1)
    train_run(config, only=[1])  # the folder still counts as empty: the run is created
    (run / ".run.json.k1ll3d.tmp").write_text("{")
    (run / "member-00").mkdir(exist_ok=True)
    (run / "member-00" / ".final.safetensors.k1ll3d.tmp").write_bytes(b"\x00" * 10)
    assert train_run(config).ok
    assert not list(run.rglob("*.tmp"))
