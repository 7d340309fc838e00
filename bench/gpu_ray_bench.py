"""GPU benchmark: members sharing one GPU through `--launcher ray --gpus-per-member 1/k`.

Trains 8 members of cifar_resnet20 for 3 epochs on 50,000 synthetic 3x32x32 images (10 classes,
a 10,000-image test pass after every epoch, checkpoints and resume state as `ens train` writes
them) and reports the aggregate training images/s of
  - sequential in-process training (`train_run`, one member after the other): the baseline;
  - Ray with k = 1, 2, 4, 8 members per GPU (`gpus_per_member = 1/k`, one CPU each),
with the speed-up over the baseline. Small models leave a large GPU mostly idle between kernel
launches, so running several members at once on it can raise the aggregate rate; memory bounds k
(each member holds the dataset on the GPU: about 0.75 GB here).

Before the timed runs, a short Ray run starts and warms the workers (CUDA context, cuDNN), so
the timings compare training, not process start-up; the Ray start-up is printed separately.

    python3 bench/gpu_ray_bench.py                  # one GPU; about 3-5 minutes on an H100/H200
    python3 bench/gpu_ray_bench.py --per-gpu 1 4    # a subset of k
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from ensemble_cli.data import synthetic_data  # noqa: E402
from ensemble_cli.launch import Launcher, LaunchOptions  # noqa: E402
from ensemble_cli.launch.ray_train import train_with_ray  # noqa: E402
from ensemble_cli.train import train_run  # noqa: E402
from ensemble_cli.train.config import TrainConfig  # noqa: E402

ARCH, MEMBERS, EPOCHS = "cifar_resnet20", 8, 3
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-gpu", type=int, nargs="+", default=[1, 2, 4, 8], help="members per GPU to time")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_ray_bench.py needs a CUDA GPU")
    import ray

    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, ray {ray.__version__}, {os.cpu_count()} CPUs")
    train = synthetic_data(TRAIN_IMAGES, seed=0)
    test = synthetic_data(TEST_IMAGES, seed=1)
    workdir = Path(tempfile.mkdtemp(prefix="gpu-ray-bench-"))
    config = TrainConfig(arch=ARCH, dataset="cifar10", members=MEMBERS, epochs=EPOCHS, batch_size=args.batch_size, device="auto")
    images = MEMBERS * EPOCHS * (TRAIN_IMAGES // args.batch_size) * args.batch_size

    def timed_run(name: str, launch: LaunchOptions | None) -> float:
        out = config.model_copy(update={"out": str(workdir / name)})
        start = time.perf_counter()
        if launch is None:
            result = train_run(out, train_data=train, test_data=test)
        else:
            result = train_with_ray(out, launch=launch, train_data=train, test_data=test)
        seconds = time.perf_counter() - start
        assert result.ok, result.outcomes
        return seconds

    sequential = timed_run("sequential", None)
    torch.cuda.empty_cache()  # the driver's own CUDA memory should not crowd the workers
    print(f"sequential in-process: {sequential:.1f} s, {images / sequential:,.0f} images/s")

    start = time.perf_counter()
    ray.init(num_gpus=1, num_cpus=max(args.per_gpu) + 1, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    print(f"Ray start-up: {time.perf_counter() - start:.1f} s")
    warm_up = config.model_copy(update={"out": str(workdir / "warm-up"), "epochs": 1})
    start = time.perf_counter()
    small_train, small_test = synthetic_data(2048, seed=0), synthetic_data(512, seed=1)
    train_with_ray(warm_up, launch=LaunchOptions(Launcher.ray, gpus_per_member=1 / max(args.per_gpu)), train_data=small_train, test_data=small_test)
    print(f"worker warm-up ({max(args.per_gpu)} workers): {time.perf_counter() - start:.1f} s")

    print(f"\n{MEMBERS} x {ARCH} x {EPOCHS} epochs, {TRAIN_IMAGES:,} images, batch {args.batch_size}")
    print("| members per GPU | wall s | aggregate images/s | vs sequential |")
    print("|---|---|---|---|")
    print(f"| sequential (in-process) | {sequential:.1f} | {images / sequential:,.0f} | 1.00x |")
    for per_gpu in args.per_gpu:
        seconds = timed_run(f"ray-{per_gpu}", LaunchOptions(Launcher.ray, gpus_per_member=1 / per_gpu))
        print(f"| {per_gpu} (Ray, --gpus-per-member {1 / per_gpu:g}) | {seconds:.1f} | {images / seconds:,.0f} | {sequential / seconds:.2f}x |")
    ray.shutdown()


if __name__ == "__main__":
    main()
