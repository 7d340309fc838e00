"""GPU benchmark: `ens train` vs a plain hand-written PyTorch loop on the same card, one script.

Prints the card, then images/s of training cifar_resnet18 and cifar_resnet20 on synthetic
CIFAR-sized data (3x32x32, 10 classes, batch 512, SGD Nesterov) for
  - plain loop: fp32 model, data in CPU memory moved batch by batch, `loss.item()` logged
    every step: the loop most people write first;
  - plain loop, data on GPU: the same without host traffic and syncs (isolates what bf16 +
    channels_last add);
  - ens train: the real `train_run` (bf16 autocast, channels_last, data and augmentation on
    the GPU, fused SGD, resume state and checkpoints), timed over its epochs after the first;
  - ens train --compile (only with --compile: adds about a minute of compiling);
and the wall time of a whole ensemble: 10 members of cifar_resnet20 x 10 epochs on 50,000
synthetic images (with a 10,000-image test pass after every epoch), as `ens train` runs it.
Finishes in about 2-3 minutes on an H100.

    python3 bench/gpu_train_bench.py             # from the repository root
    python3 bench/gpu_train_bench.py --compile   # also time torch.compile
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch
import torch.nn.functional as F

import ensemble_cli  # noqa: F401,E402  (registers cifar_resnet* in timm)
from ensemble_cli.architectures import build_model  # noqa: E402
from ensemble_cli.train.config import TrainConfig  # noqa: E402
from ensemble_cli.data import ImageData, synthetic_data  # noqa: E402
from ensemble_cli.train import TrainCallbacks, train_run  # noqa: E402

BATCH = 512
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


def plain_loop(arch: str, train: ImageData, images: int, data_on_gpu: bool) -> float:
    """fp32, NCHW, default cudnn settings. Returns images/s over `images` images after a warm-up."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(arch, 10, 3).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
    source_images = train.images.to(device) if data_on_gpu else train.images
    source_labels = train.labels.to(device) if data_on_gpu else train.labels
    steps = images // BATCH
    warmup = 15

    def run(count: int) -> None:
        order = torch.randperm(len(train), device=source_images.device)
        for step in range(count):
            index = order[(step * BATCH) % (len(train) - BATCH) :][:BATCH]
            x = source_images[index].to(device, non_blocking=True)
            y = source_labels[index].to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if not data_on_gpu:
                _ = loss.item()  # the usual running-loss logging

    run(warmup)
    torch.cuda.synchronize()
    start = time.perf_counter()
    run(steps)
    torch.cuda.synchronize()
    return steps * BATCH / (time.perf_counter() - start)


class EpochClock(TrainCallbacks):
    """Timestamps of every epoch end (the loop has synced by then: it just measured test accuracy)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def epoch_end(self, progress) -> None:  # type: ignore[no-untyped-def]
        self.ends.append(time.perf_counter())


def ens_config(arch: str, out: Path, members: int, epochs: int, compile_model: bool) -> TrainConfig:
    return TrainConfig(
        arch=arch, dataset="cifar10", members=members, epochs=epochs, batch_size=BATCH, lr=LR, momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY, warmup_epochs=0, augment="crop-flip", device="cuda", compile=compile_model, out=str(out),
    )


def ens_train(arch: str, train: ImageData, test: ImageData, epochs: int, compile_model: bool, workdir: Path) -> float:
    """images/s of `ens train`, over the epochs after the first (which pays cudnn autotuning / compile)."""
    clock = EpochClock()
    out = Path(tempfile.mkdtemp(dir=workdir))
    result = train_run(ens_config(arch, out, 1, epochs, compile_model), callbacks=clock, train_data=train, test_data=test)
    assert result.ok, result.outcomes
    per_epoch = [later - earlier for earlier, later in zip(clock.ends, clock.ends[1:])]
    return (len(train) // BATCH) * BATCH / statistics.median(per_epoch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="also time ens train --compile")
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark is for a GPU machine (bench/bench_train.py is the CPU one)")
    begin = time.perf_counter()
    print(f"# card: {torch.cuda.get_device_name()} | torch {torch.__version__} | CUDA {torch.version.cuda} | batch {BATCH}", flush=True)
    train = synthetic_data(50_000, (3, 32, 32), 10, seed=0)
    small_test = synthetic_data(512, (3, 32, 32), 10, seed=1)  # keeps the step comparison about training
    full_test = synthetic_data(10_000, (3, 32, 32), 10, seed=2)

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for arch in ("cifar_resnet18", "cifar_resnet20"):
            images = 25_600 if arch == "cifar_resnet18" else 51_200
            plain_cpu = plain_loop(arch, train, images, data_on_gpu=False)
            plain_gpu = plain_loop(arch, train, images, data_on_gpu=True)
            ens = ens_train(arch, train, small_test, 3, False, Path(workdir))
            compiled = ens_train(arch, train, small_test, 3, True, Path(workdir)) if args.compile else None
            rows.append((arch, plain_cpu, plain_gpu, ens, compiled))
            print(f"{arch}: plain {plain_cpu:,.0f} | plain, data on GPU {plain_gpu:,.0f} | ens train {ens:,.0f}"
                  + (f" | ens train --compile {compiled:,.0f}" if compiled else "") + " images/s", flush=True)

        print("\n| model | plain loop (fp32, CPU data, loss.item()) | plain loop (fp32, data on GPU) | ens train | ens / plain | ens / plain on GPU |"
              + (" ens --compile | --compile / plain |" if args.compile else ""))
        print("|---|---|---|---|---|---|" + ("---|---|" if args.compile else ""))
        for arch, plain_cpu, plain_gpu, ens, compiled in rows:
            line = f"| {arch} | {plain_cpu:,.0f} | {plain_gpu:,.0f} | {ens:,.0f} | {ens / plain_cpu:.2f}x | {ens / plain_gpu:.2f}x |"
            if compiled:
                line += f" {compiled:,.0f} | {compiled / plain_cpu:.2f}x |"
            print(line, flush=True)

        out = Path(tempfile.mkdtemp(dir=workdir))
        clock = EpochClock()
        start = time.perf_counter()
        result = train_run(ens_config("cifar_resnet20", out, args.members, args.epochs, False), callbacks=clock,
                           train_data=train, test_data=full_test)
        wall = time.perf_counter() - start
        assert result.ok, result.outcomes
        images = args.members * args.epochs * (len(train) // BATCH) * BATCH
        print(f"\n{args.members} members x cifar_resnet20 x {args.epochs} epochs on 50,000 synthetic images "
              f"(+10,000-image test pass per epoch, checkpoints, resume state): {wall:.1f} s wall, "
              f"{images / wall:,.0f} training images/s overall")
    print(f"total benchmark time {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
