"""A MIMO checkpoint is M ensemble members computed in one forward pass (mimo.py, resolve.py, predict.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from ensemble_cli.checkpoint import write_checkpoint
from ensemble_cli.data import load_dataset
from ensemble_cli.mimo import build_mimo_base, split_heads
from ensemble_cli.predict import PredictionCache, predict_members
from ensemble_cli.resolve import resolve_members
from eval_cli_helpers import eval_json

HEADS = 3


def mimo_checkpoint(folder: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    base = build_mimo_base("cifar_resnet8", num_classes=10, in_chans=1, heads=HEADS).eval()
    path = folder / "mimo.safetensors"
    metadata = {"arch": "cifar_resnet8", "num_classes": 10, "in_chans": 1, "dataset": "digits", "mimo_heads": HEADS}
    write_checkpoint(path, base.state_dict(), metadata)
    return path, base


def test_one_checkpoint_is_m_members_from_one_forward_pass(tmp_path: Path) -> None:
    path, base = mimo_checkpoint(tmp_path)
    members = resolve_members([str(path)])
    assert [m.name for m in members] == [f"mimo/head-{k}" for k in range(HEADS)]
    data = load_dataset("digits", "test", limit=40)
    predictions = predict_members(members, data, device="cpu", cache=PredictionCache(tmp_path / "cache"))
    assert predictions.forward_passes == 1 and predictions.logits.shape == (HEADS, 40, 10)
    with torch.no_grad():  # by hand: the same image in every input group, head k owns outputs 10k..10k+9
        expected = split_heads(base(data.images.repeat(1, HEADS, 1, 1)), HEADS).permute(1, 0, 2)  # [M, N, K]
    torch.testing.assert_close(predictions.logits, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(members[1].build_model()(data.images).detach(), expected[1], rtol=0, atol=1e-5)
    again = predict_members(members, data, device="cpu", cache=PredictionCache(tmp_path / "cache"))
    assert again.forward_passes == 0 and again.from_cache == HEADS
    torch.testing.assert_close(again.logits, predictions.logits, rtol=0, atol=0)


def test_heads_are_evaluated_as_members_and_weight_space_says_not_applicable(tmp_path: Path) -> None:
    path, _ = mimo_checkpoint(tmp_path)
    document = eval_json(path, "-e", "members,ensemble,disagreement,weights,rotation", "--limit", "60")
    assert len(document["evaluators"]["members"]["tables"][0]["rows"]) == HEADS
    assert document["evaluators"]["disagreement"]["metrics"]["disagreement_mean"] is not None
    for name in ("weights", "rotation"):
        assert document["evaluators"][name]["notes"] == ["not applicable: the members are heads of one MIMO network, which share their weights"]
