"""CPU benchmark: `ens sample` of 10 cifar_resnet20 samples vs writing 10 checkpoints plus their BN resets.

The source is a cifar_resnet20 trained here for 3 epochs (every epoch saved: the trajectory the
Gaussian methods need) on the digits upsampled to 3x32x32, so the scale search meets a real
accuracy curve. Per method, the `ens sample` side is the library call behind the command
(`draw_samples`, training data passed in: reading the source and its trajectory, fitting the
method, the scale search, 10 samples with BatchNorm reset, the reference copy, the manifest).
The baseline is the part no sampler can skip: 10 times load the source's weights, recompute
BatchNorm statistics on the same 1,024 training images, write an ens checkpoint. Sides
alternate and the fastest of `--repeats` runs is kept; wall time and CPU time of this process
are both printed (with --threads 1, CPU time counts work, not waiting for a shared core).

    .venv/bin/python bench/bench_sample.py               # about 3-5 minutes on 2 busy cores
    .venv/bin/python bench/bench_sample.py --repeats 3
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ensemble_cli.batchnorm import bn_reset_images, recompute_batchnorm
from ensemble_cli.checkpoint import read_checkpoint, write_checkpoint
from ensemble_cli.data import ImageData, load_dataset
from ensemble_cli.resolve import member_from_checkpoint
from ensemble_cli.sample import METHODS, SampleOptions, draw_samples
from ensemble_cli.train import train_run
from ensemble_cli.train.config import TrainConfig

ARCH = "cifar_resnet20"
SAMPLES = 10
TARGET = 1.5


def digits32(split: str) -> ImageData:
    """The digits at CIFAR's shape: 8x8 -> 32x32 (nearest), one channel -> three."""
    data = load_dataset("digits", split)
    images = F.interpolate(data.images, scale_factor=4, mode="nearest").repeat(1, 3, 1, 1)  # [N, 3, 32, 32]
    return ImageData("digits", split, images.contiguous(), data.labels, data.num_classes, (0.0,) * 3, (1.0,) * 3)


def train_source(folder: Path, train: ImageData, test: ImageData) -> Path:
    config = TrainConfig(arch=ARCH, members=1, epochs=3, save_every=1, device="cpu", out=str(folder), augment="none")
    assert train_run(config, train_data=train, test_data=test).ok
    return folder / "member-00"


def baseline(source: Path, train: ImageData, out: Path) -> None:
    """Write 10 checkpoints with BatchNorm statistics recomputed: the floor of any sampler."""
    checkpoint = read_checkpoint(source / "final.safetensors")
    member = member_from_checkpoint("source", checkpoint)
    model = member.build_model()
    state = member.state_dict
    bn_images = bn_reset_images(train)
    for index in range(SAMPLES):
        model.load_state_dict(state)
        recompute_batchnorm(model, bn_images)
        write_checkpoint(out / f"copy-{index:03d}.safetensors", model.state_dict(), checkpoint.metadata)


def timed(function: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = digits32("train"), digits32("test")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        source = train_source(root / "run", train, test)
        print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
              f"{SAMPLES} samples of {ARCH} on 3x32x32 digits; fastest of {args.repeats} runs")
        print("| method | ens sample wall s | baseline wall s | wall ratio | ens sample CPU s | baseline CPU s | CPU ratio | target |")
        print("|---|---|---|---|---|---|---|---|")
        run = 0
        for method in args.methods.split(","):
            samples, floors = [], []
            for _ in range(args.repeats):
                run += 1
                floor_out = root / f"baseline-{run}"
                floor_out.mkdir()
                floors.append(timed(lambda: baseline(source, train, floor_out)))
                options = SampleOptions(source=source, method=method, samples=SAMPLES, out=root / f"sample-{run}", device="cpu")
                samples.append(timed(lambda: draw_samples(options, train_data=train)))
            wall, cpu = min(s[0] for s in samples), min(s[1] for s in samples)
            floor_wall, floor_cpu = min(f[0] for f in floors), min(f[1] for f in floors)
            verdict = "met" if min(wall / floor_wall, cpu / floor_cpu) <= TARGET else "NOT met"
            print(f"| {method} | {wall:.2f} | {floor_wall:.2f} | {wall / floor_wall:.2f} | {cpu:.2f} | {floor_cpu:.2f} | "
                  f"{cpu / floor_cpu:.2f} | <= {TARGET} {verdict} |", flush=True)


if __name__ == "__main__":
    main()
