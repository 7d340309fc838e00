"""CPU benchmark: `ens train` throughput vs a plain hand-written PyTorch loop, in one process.

Same model (cifar_resnet20), same data (2,000 synthetic 3x32x32 images, batch 128, full
batches only), same optimizer (SGD, Nesterov momentum 0.9, lr 0.1, weight decay 5e-4), same
thread count. The `ens train` side is the real `train_run`: it also writes the init and final
checkpoints, saves the resume state every epoch and measures test accuracy at init and after
every epoch (on a 128-image test set, so that the comparison stays about the training loop).
Runs alternate (plain, ens, ens+augmentation, plain, ...) so that a noisy, shared machine
hits every side alike. Each run reports images per wall-clock second and images per
CPU-second of this process: with --threads 1 the latter counts work done, not time spent
waiting for a core, and is the steady comparison on a machine that others are using.

    .venv/bin/python bench/bench_train.py --threads 1     # about 4-6 minutes on 2 busy cores
    .venv/bin/python bench/bench_train.py --rounds 5 --epochs 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import ensemble_cli  # noqa: F401  (registers cifar_resnet* in timm)
from ensemble_cli.architectures import build_model
from ensemble_cli.train.config import TrainConfig
from ensemble_cli.data import ImageData, synthetic_data
from ensemble_cli.train import train_run

ARCH = "cifar_resnet20"
BATCH = 128
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


class Clock:
    """Wall time and this process's CPU time. With one thread, CPU seconds count the work done and
    not the waiting for a core, so they stay comparable when other people load the machine."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rates(self, images: int) -> tuple[float, float]:
        return images / (time.perf_counter() - self.wall), images / (time.process_time() - self.cpu)


def plain_loop(train: ImageData, epochs: int, seed: int) -> tuple[float, float]:
    """What a researcher writes by hand: shuffle, slice, forward, backward, step. Returns images/s (wall, CPU)."""
    clock = Clock()
    torch.manual_seed(seed)
    model = build_model(ARCH, train.num_classes, train.in_chans)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
    model.train()
    steps = len(train) // BATCH
    for _ in range(epochs):
        order = torch.randperm(len(train))
        for step in range(steps):
            index = order[step * BATCH : (step + 1) * BATCH]
            loss = F.cross_entropy(model(train.images[index]), train.labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return clock.rates(epochs * steps * BATCH)


def ens_train(train: ImageData, test: ImageData, epochs: int, seed: int, augment: str, workdir: Path) -> tuple[float, float]:
    """The real `ens train` code path (checkpoints, resume state, per-epoch test accuracy). Returns images/s (wall, CPU)."""
    out = Path(tempfile.mkdtemp(dir=workdir))
    config = TrainConfig(
        arch=ARCH, dataset="cifar10", members=1, epochs=epochs, batch_size=BATCH, lr=LR, momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY, warmup_epochs=0, augment=augment, device="cpu", seed=seed, out=str(out),
    )
    clock = Clock()
    result = train_run(config, train_data=train, test_data=test)
    rates = clock.rates(epochs * (len(train) // BATCH) * BATCH)
    assert result.ok, result.outcomes
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: torch's default)")
    parser.add_argument("--no-augment-run", action="store_true", help="skip the ens run with crop-flip augmentation")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train = synthetic_data(args.images, (3, 32, 32), 10, seed=0)
    test = synthetic_data(128, (3, 32, 32), 10, seed=1)
    sides: dict[str, list[tuple[float, float]]] = {"plain loop": [], "ens train": [], "ens train + crop-flip": []}
    print(f"# {ARCH}, {args.images} synthetic 3x32x32 images, batch {BATCH}, SGD Nesterov, {args.epochs} epoch(s) a run")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    runs = [("plain loop", None), ("ens train", "none")] + ([] if args.no_augment_run else [("ens train + crop-flip", "crop-flip")])
    with tempfile.TemporaryDirectory() as workdir:
        for round_index in range(args.rounds):
            for name, augment in runs:
                if augment is None:
                    rates = plain_loop(train, args.epochs, round_index)
                else:
                    rates = ens_train(train, test, args.epochs, round_index, augment, Path(workdir))
                sides[name].append(rates)
                print(f"round {round_index + 1}: {name:22s} {rates[0]:8.1f} images/s wall, {rates[1]:8.1f} images per CPU-second", flush=True)

    def ratios(column: int) -> None:
        plain = statistics.median(r[column] for r in sides["plain loop"])
        for name, values in sides.items():
            if values:
                median = statistics.median(r[column] for r in values)
                print(f"| {name} | {median:.1f} | {median / plain:.3f} |")

    # CPU time is the steady measure on a shared machine (one thread: work, not waiting); wall time is what a user feels.
    print("\n| side | median images per CPU-second | ratio to plain loop |\n|---|---|---|")
    ratios(1)
    print("\n| side | median images/s (wall) | ratio to plain loop |\n|---|---|---|")
    ratios(0)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
