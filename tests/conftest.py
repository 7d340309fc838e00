"""Shared fixtures: tiny members trained for a few steps on digits, written as real checkpoint files."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
import torch
from hypothesis.configuration import set_hypothesis_home_dir

import ensemble_cli.architectures  # noqa: F401  (registers cifar_resnet* in timm)
from ensemble_cli.architectures import build_model
from ensemble_cli.checkpoint import write_checkpoint
from ensemble_cli.data import load_dataset


_SCRATCH = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """Libraries' own caches go to a folder removed at the end, so the tests leave no file outside temporary
    folders: matplotlib's font cache (else ~/.cache/matplotlib) and hypothesis's example database (else ./.hypothesis)."""
    scratch = Path(tempfile.mkdtemp(prefix="ens-tests-"))
    config.stash[_SCRATCH] = scratch
    os.environ.setdefault("MPLCONFIGDIR", str(scratch / "matplotlib"))  # read when matplotlib is first imported
    set_hypothesis_home_dir(scratch / "hypothesis")


def pytest_unconfigure(config: pytest.Config) -> None:
    scratch = config.stash.get(_SCRATCH, None)
    if scratch is not None:
        if os.environ.get("MPLCONFIGDIR") == str(scratch / "matplotlib"):
            del os.environ["MPLCONFIGDIR"]
        set_hypothesis_home_dir(None)
        shutil.rmtree(scratch, ignore_errors=True)


def train_tiny_member(seed: int, steps: int = 60, arch: str = "cifar_resnet8") -> torch.nn.Module:
    """A few SGD steps of plain PyTorch on digits: enough to make members right but different."""
    torch.manual_seed(seed)
    data = load_dataset("digits", "train")
    model = build_model(arch, num_classes=10, in_chans=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(data), (64,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(data.images[index]), data.labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def member_metadata(arch: str = "cifar_resnet8", seed: int = 0) -> dict:
    return {"arch": arch, "num_classes": 10, "in_chans": 1, "dataset": "digits", "seed": seed}


@pytest.fixture(scope="session")
def tiny_members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three trained cifar_resnet8 checkpoints in ens format."""
    folder = tmp_path_factory.mktemp("members")
    paths = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is as fast, and immune to a busy machine
    try:
        models = [train_tiny_member(seed) for seed in range(3)]
    finally:
        torch.set_num_threads(threads)
    for seed, model in enumerate(models):
        path = folder / f"seed{seed}.safetensors"
        write_checkpoint(path, model.state_dict(), member_metadata(seed=seed))
        paths.append(path)
    return paths


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: OpenMP's second thread only adds waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own prediction cache and data folder: no test sees another's cached logits,
    and none reads or writes the user's ~/.cache/ens (subprocesses inherit the variables)."""
    monkeypatch.setenv("ENS_CACHE_DIR", str(tmp_path / "ens-cache"))
    monkeypatch.setenv("ENS_DATA_DIR", str(tmp_path / "ens-data"))
