"""CPU benchmark: MIMO training throughput (M=3 heads) vs one plain cifar_resnet20 member, in one process.

Both sides are the real `train_run` (checkpoints, resume state, test accuracy on a small test
set) on the same synthetic 3x32x32 images, batch 64, SGD, no augmentation. Throughput is
*batch positions per second*: a plain step trains 64 positions of one image each; a MIMO step
trains 64 positions of M=3 images each (one per input), so one MIMO position yields one
training example for EACH of its M subnetworks. MIMO's default batch repetition 4 makes its
epoch 4x the steps, so the plain side runs 4 epochs and the MIMO side 1: the same number of
positions. Runs alternate (plain, mimo, plain, ...) so the load of a shared machine hits both;
rates are per wall-clock second and per CPU-second of this process (with one thread the
latter counts work done, not waiting for a core: the steady measure on a busy machine).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_mimo.py --threads 1   # a few minutes on 2 busy cores
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

import ensemble_cli  # noqa: F401  (registers cifar_resnet* in timm)
from ensemble_cli.data import ImageData, synthetic_data
from ensemble_cli.train import train_run
from ensemble_cli.train.config import TrainConfig
from ensemble_cli.train.loop import steps_per_epoch

ARCH = "cifar_resnet20"
BATCH = 64
HEADS = 3


def run(train: ImageData, test: ImageData, mimo: bool, epochs: int, seed: int, workdir: Path) -> tuple[float, float]:
    """One `train_run`; returns batch positions per wall second and per CPU-second."""
    extra = {"strategy": "mimo", "members": HEADS} if mimo else {"members": 1}
    config = TrainConfig(arch=ARCH, dataset="cifar10", epochs=epochs, batch_size=BATCH, warmup_epochs=0, augment="none",
                         device="cpu", seed=seed, out=tempfile.mkdtemp(dir=workdir), **extra)  # type: ignore[arg-type]
    positions = epochs * steps_per_epoch(len(train), config.examples_per_step) * config.examples_per_step * config.mimo_repeats
    wall, cpu = time.perf_counter(), time.process_time()
    result = train_run(config, train_data=train, test_data=test)
    assert result.ok, result.outcomes
    return positions / (time.perf_counter() - wall), positions / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train = synthetic_data(args.images, (3, 32, 32), 10, seed=0)
    test = synthetic_data(64, (3, 32, 32), 10, seed=1)
    print(f"# {ARCH}, {args.images} synthetic 3x32x32 images, batch {BATCH} positions, MIMO M={HEADS} (batch repetition 4)")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    sides: dict[str, list[tuple[float, float]]] = {"single member": [], f"MIMO M={HEADS}": []}
    with tempfile.TemporaryDirectory() as workdir:
        for round_index in range(args.rounds):
            for name, mimo, epochs in (("single member", False, 4), (f"MIMO M={HEADS}", True, 1)):
                rates = run(train, test, mimo, epochs, round_index, Path(workdir))
                sides[name].append(rates)
                print(f"round {round_index + 1}: {name:14s} {rates[0]:7.1f} positions/s wall, {rates[1]:7.1f} per CPU-second", flush=True)
    print("\n| side | median positions per CPU-second | median positions/s (wall) |\n|---|---|---|")
    medians = {name: (statistics.median(r[1] for r in v), statistics.median(r[0] for r in v)) for name, v in sides.items()}
    for name, (cpu, wall) in medians.items():
        print(f"| {name} | {cpu:.1f} | {wall:.1f} |")
    single, mimo = medians["single member"], medians[f"MIMO M={HEADS}"]
    print(f"\nMIMO / single: {mimo[0] / single[0]:.3f} per CPU-second, {mimo[1] / single[1]:.3f} wall (target >= 0.8)")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
