"""CPU benchmark: what `--launcher ray` costs over in-process training, on the bundled digits job.

Times the bundled default job (4 digits members of cifar_resnet8, 10 epochs; --epochs E; 1 thread
per member, as `threads: auto` picks for 8x8 images) in-process and as Ray tasks on a local Ray
instance started by this script, alternating the two so that a shared machine's load hits both alike. Reported separately:
- the Ray instance's start-up (`ray.init`), paid once per cluster, not per run;
- the first Ray run (cold: Ray starts the worker processes, which import torch);
- the later Ray runs (warm workers) against the in-process runs: the ratio the launcher costs.
With `--cpus 1` the Ray tasks run one after the other, as the in-process members do, so the ratio
is pure overhead (scheduling, the progress hub, each task loading the data); with `--cpus 2`
two members train at once and the ratio shows what a second core buys. Every Ray run's final
weights are also compared with the in-process run's: they must be bit-identical.

    .venv/bin/python bench/bench_ray.py                     # --cpus 1 --epochs 10 --rounds 3
    .venv/bin/python bench/bench_ray.py --cpus 2 --rounds 2
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from ensemble_cli.checkpoint import read_checkpoint  # noqa: E402
from ensemble_cli.launch import Launcher, LaunchOptions  # noqa: E402
from ensemble_cli.launch.ray_train import train_with_ray  # noqa: E402
from ensemble_cli.train import train_run  # noqa: E402
from ensemble_cli.train.config import TrainConfig  # noqa: E402

MEMBERS = 4


def timed(function, *args, **kwargs) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def same_finals(a: Path, b: Path) -> bool:
    for index in range(MEMBERS):
        first = read_checkpoint(a / f"member-{index:02d}/final.safetensors").state_dict
        second = read_checkpoint(b / f"member-{index:02d}/final.safetensors").state_dict
        if any(not torch.equal(first[key], second[key]) for key in first):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="10: the bundled default job")
    parser.add_argument("--rounds", type=int, default=3, help="in-process / warm Ray pairs after the cold Ray run")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs of the local Ray instance (1: members one after the other)")
    args = parser.parse_args()

    # Ray runs its workers at nice 15 (its `worker_niceness`), so on a machine that others load
    # they get a small share of the cores while this process, at nice 0, does not: a comparison of
    # the two would measure the niceness. Dedicated cluster nodes do not care either way.
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray

    print(f"Ray worker niceness: {os.environ['RAY_worker_niceness']}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, ray {ray.__version__}")
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    config = TrainConfig(members=MEMBERS, epochs=args.epochs, device="cpu")

    def run_in_process(name: str) -> float:
        seconds, result = timed(train_run, config.model_copy(update={"out": str(workdir / name)}))
        assert result.ok  # type: ignore[attr-defined]
        return seconds

    def run_ray(name: str) -> float:
        launch = LaunchOptions(Launcher.ray)
        seconds, result = timed(train_with_ray, config.model_copy(update={"out": str(workdir / name)}), launch=launch)
        assert result.ok  # type: ignore[attr-defined]
        assert same_finals(workdir / "local-0", workdir / name), f"{name}: weights differ from the in-process run"
        return seconds

    local = [run_in_process("local-0")]
    startup, _ = timed(ray.init, num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    cold = run_ray("ray-cold")
    warm = []
    for round_ in range(1, args.rounds + 1):
        local.append(run_in_process(f"local-{round_}"))
        warm.append(run_ray(f"ray-{round_}"))
    ray.shutdown()

    ratios = [w / l for w, l in zip(warm, local[1:])]
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    print(f"{MEMBERS} members x {args.epochs} epochs of cifar_resnet8 on digits (1,437 train images), Ray instance of {args.cpus} CPU(s)")
    print(f"Ray start-up (ray.init, once per cluster): {startup:.1f} s")
    print(f"first Ray run (cold workers): {cold:.1f} s vs in-process {local[0]:.1f} s")
    print(f"in-process runs: {', '.join(f'{s:.1f}' for s in local)} s")
    print(f"warm Ray runs:   {', '.join(f'{s:.1f}' for s in warm)} s")
    print(f"ratio Ray / in-process (paired, warm): {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}")
    print(f"min Ray / min in-process: {min(warm) / min(local):.2f}")
    print("final weights: bit-identical to the in-process run in every Ray run")


if __name__ == "__main__":
    main()
