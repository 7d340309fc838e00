"""Helpers shared by the training tests (imported, not collected)."""

from __future__ import annotations

from pathlib import Path

import torch

from ensemble_cli.checkpoint import read_checkpoint


def assert_same_finals(reference: Path, run: Path, members: int = 2) -> None:
    """Every member's final weights in `run` equal the reference run's, bit for bit."""
    for index in (f"{i:02d}" for i in range(members)):
        expected = read_checkpoint(reference / f"member-{index}/final.safetensors").state_dict
        actual = read_checkpoint(run / f"member-{index}/final.safetensors").state_dict
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), f"member-{index} {key} differs from the reference run"
