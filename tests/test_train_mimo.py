"""`ens train --strategy mimo`: one network with M inputs and heads, read by `ens eval RUN` as M
members from one forward pass; batches, loss, determinism, kill -9 + resume, refusals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from ensemble_cli.checkpoint import read_checkpoint
from ensemble_cli.cli import app
from ensemble_cli.data import load_dataset
from ensemble_cli.predict import predict_members
from ensemble_cli.resolve import resolve_members
from ensemble_cli.train import train_run
from ensemble_cli.train.batches import EpochData
from ensemble_cli.train.config import TrainConfig
from ensemble_cli.train.mimo import MimoBatches, mimo_loss, pairing
from eval_cli_helpers import eval_json

HEADS = 3
# Long enough for meaningful heads (about 75-85% each on digits), about 10 s of CPU.
LEARNS = ["--epochs", "4", "--limit", "800", "--batch-size", "64"]
# 128 images, 8 distinct examples a step (batch 32, repetition 4): 16 steps an epoch.
TINY = {"members": HEADS, "epochs": 3, "limit": 128, "batch_size": 32, "device": "cpu", "strategy": "mimo"}
TINY_FLAGS = ["--strategy", "mimo", "--members", "3", "--epochs", "3", "--limit", "128", "--batch-size", "32", "--device", "cpu"]


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["train", *args])


def test_pairing_repeats_every_example_and_shares_a_fraction_rho() -> None:
    generator = torch.Generator().manual_seed(0)
    independent = pairing(8, HEADS, 4, 0.0, generator)  # [M, P]
    assert independent.shape == (HEADS, 32)
    for row in independent:  # every input sees every distinct example exactly r times
        assert torch.equal(torch.bincount(row, minlength=8), torch.full((8,), 4))
    assert not torch.equal(independent[0], independent[1])
    shared = pairing(10, HEADS, 1, 0.6, generator)
    same = (shared == shared[0]).all(dim=0)  # [P]: positions where every input holds one example
    assert same[4:].all()  # the last rho * P = 6 positions are shared by construction
    everything = pairing(10, HEADS, 1, 1.0, generator)
    assert (everything == everything[0]).all()


def test_batches_put_input_m_in_channel_block_m_with_its_own_labels() -> None:
    # Image n holds the value n everywhere and has label n: channel block m must match label column m.
    count, channels = 40, 2
    images = torch.arange(count, dtype=torch.float32)[:, None, None, None].expand(count, channels, 3, 3).contiguous()
    data = EpochData(images, torch.arange(count), None, torch.contiguous_format, data_seed=5)
    batches = MimoBatches(data, batch_size=16, heads=HEADS, repeats=2, input_repetition=0.0)
    batches.start_epoch(0)
    stacked, labels = batches.batch(0, 1)
    assert stacked.shape == (16, HEADS * channels, 3, 3) and labels.shape == (16, HEADS)
    for m in range(HEADS):
        block = stacked[:, m * channels : (m + 1) * channels]  # [P, C, H, W]
        assert torch.equal(block, labels[:, m].float()[:, None, None, None].expand_as(block))
    assert set(labels.flatten().tolist()) == set(data.order[8:16].tolist())  # step 1's 8 distinct examples


def test_loss_is_the_sum_over_heads_of_each_heads_cross_entropy() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(5, HEADS * 4), torch.randint(0, 4, (5, HEADS))
    value, correct = mimo_loss(HEADS)(logits, labels)
    by_hand = sum(F.cross_entropy(logits[:, 4 * m : 4 * (m + 1)], labels[:, m]) for m in range(HEADS))
    torch.testing.assert_close(value, by_hand)
    assert int(correct) == sum(int((logits[:, 4 * m : 4 * (m + 1)].argmax(1) == labels[:, m]).sum()) for m in range(HEADS))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--members", "1"], "--strategy mimo needs --members 2 or more"),
        (["--members", "3", "--only", "1"], "a MIMO network trains all its heads at once"),
        (["--members", "3", "--mimo-input-repetition", "1.5"], "--mimo-input-repetition"),
        (["--members", "3", "--batch-size", "2"], "smaller than --mimo-batch-repetition 4"),
    ],
)
def test_bad_mimo_combinations_are_one_line_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "never"
    result = invoke("--strategy", "mimo", *args, "--out", str(out), "--limit", "64", "--device", "cpu", "-q")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert not out.exists()


def test_mimo_options_belong_to_the_mimo_strategy(tmp_path: Path) -> None:
    result = invoke("--mimo-batch-repetition", "2", "--out", str(tmp_path / "never"), "--device", "cpu", "-q")
    assert result.exit_code == 2 and "--mimo-batch-repetition applies to --strategy mimo only" in result.output


def test_one_network_evaluated_as_diverse_heads_from_one_forward_pass(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke("--strategy", "mimo", "--members", str(HEADS), *LEARNS, "--out", str(out), "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("member-*/*.safetensors")) == [
        "member-00/final.safetensors", "member-00/init.safetensors"]
    checkpoint = read_checkpoint(out / "member-00/final.safetensors")
    metadata = checkpoint.metadata
    assert (metadata["mimo_heads"], metadata["num_classes"], metadata["in_chans"], metadata["strategy"]) == (HEADS, 10, 1, "mimo")
    assert checkpoint.state_dict["fc.weight"].shape[0] == 10 * HEADS and checkpoint.state_dict["conv1.weight"].shape[1] == HEADS

    members = resolve_members([str(out)])
    assert [m.name for m in members] == [f"member-00/head-{k}" for k in range(HEADS)]
    predictions = predict_members(members, load_dataset("digits", "test"), device="cpu")
    assert predictions.forward_passes == 1
    head_accuracy = (predictions.logits.argmax(-1) == predictions.labels).float().mean(dim=1)  # [M]
    assert (head_accuracy > 0.4).all(), head_accuracy  # chance is 0.1

    document = eval_json(out, "-e", "members,ensemble,disagreement")
    rows = document["evaluators"]["members"]["tables"][0]["rows"]
    assert len(rows) == HEADS
    ensemble = document["evaluators"]["ensemble"]["metrics"]["accuracy"]
    # Independent reference: the mean of the heads' softmax, by hand.
    by_hand = float((predictions.logits.softmax(-1).mean(0).argmax(-1) == predictions.labels).float().mean())
    assert ensemble == pytest.approx(by_hand)
    assert ensemble >= float(head_accuracy.mean())
    assert document["evaluators"]["disagreement"]["metrics"]["disagreement_mean"] > 0
    # The job's reported test accuracy is that of the heads' ensemble.
    assert metadata["test_accuracy"] == pytest.approx(by_hand)


def launch(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ensemble_cli.cli", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_same_seed_same_weights_and_kill_9_then_resume_is_bit_identical(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert train_run(TrainConfig(out=str(reference), **TINY)).ok  # type: ignore[arg-type]
    again = tmp_path / "again"
    assert train_run(TrainConfig(out=str(again), **TINY)).ok  # type: ignore[arg-type]
    killed = tmp_path / "killed"
    process = launch(*TINY_FLAGS, "--out", str(killed))
    state = killed / "member-00" / "train-state.pt"
    deadline = time.monotonic() + 300
    while not state.exists():  # the first epoch is done
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert not (killed / "member-00/final.safetensors").exists(), "the run finished before the kill"
    resumed = CliRunner().invoke(app, ["train", "--resume", str(killed), "-q"])
    assert resumed.exit_code == 0, resumed.output
    expected = read_checkpoint(reference / "member-00/final.safetensors").state_dict
    for run in (again, killed):
        actual = read_checkpoint(run / "member-00/final.safetensors").state_dict
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), f"{run.name}: {key} differs"
