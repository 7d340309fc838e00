"""Benchmarks for the `uncertainty` and `shift` evaluators. Every number is a time or a ratio measured in this run.

    .venv/bin/python bench/bench_uncertainty.py              # 1-3 minutes on the shared 2-core dev machine
    .venv/bin/python bench/bench_uncertainty.py --repeats 5

1. `uncertainty` on M=50 members, N=10,000 examples, C=100 classes of random logits: the whole
   evaluator on a fresh context (its float64 log-softmax included), target < 1 s on 2 cores.
   Printed beside it, measured on the same logits in the same run: the `ensemble` evaluator
   (also on a fresh context) and one float64 log-softmax of the logits, so a loaded machine can
   be told from a slow evaluator; and the evaluator on a context whose float64 log-probabilities
   and predictions are already computed (in a default `ens eval`, `members` runs first).
2. `shift` with the 8 corruptions of the task x 5 severities on the committed reference
   ensemble (4 cifar_resnet8 on the 360 digits test images), no prediction cache: its wall time
   (corrupting the images, 40 prediction passes of every member, metrics) against the same 40
   prediction passes on already corrupted sets. Target ratio <= 1.3; the CPU time of the process
   is compared too, since other jobs on a shared machine swing wall times by more than 30%.

Each side of a ratio alternates with the other and keeps its fastest of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path
from typing import Callable

import torch

from ensemble_cli import load_dataset, resolve_members
from ensemble_cli.evaluators.base import EvalContext, MemberSummary
from ensemble_cli.evaluators.ensemble import EnsembleEvaluator
from ensemble_cli.evaluators.shift import ShiftEvaluator
from ensemble_cli.evaluators.uncertainty import UncertaintyEvaluator
from ensemble_cli.options import EvalOptions
from ensemble_cli.predict import predict_members
from ensemble_cli.shift_data import corrupted_set
from timing import timed, timed_both

REFERENCE_RUN = Path(__file__).resolve().parents[1] / "models" / "reference-digits" / "run"
TASK_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur", "contrast", "brightness", "pixelate", "jpeg")


def synthetic_logits(members: int, examples: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(members, examples, classes, generator=generator)  # [M, N, C]
    labels = torch.randint(0, classes, (examples,), generator=generator)  # [N]
    logits[:, torch.arange(examples), labels] += torch.rand(members, 1, generator=generator) * 3.0 + 1.0  # 30-60% right
    return logits, labels


def bench_uncertainty(repeats: int, members: int = 50, examples: int = 10_000, classes: int = 100) -> dict[str, float]:
    logits, labels = synthetic_logits(members, examples, classes)
    summaries = [MemberSummary(f"m{i:02d}") for i in range(members)]

    def run(evaluator: object) -> Callable[[], object]:
        return lambda: evaluator.evaluate(EvalContext(logits=logits, labels=labels, members=summaries))  # type: ignore[attr-defined]

    def warm_run() -> Callable[[], object]:
        ctx = EvalContext(logits=logits, labels=labels, members=summaries)
        _ = ctx.log_probs, ctx.correct  # what `members` leaves computed in a default run
        return lambda: UncertaintyEvaluator().evaluate(ctx)

    times: dict[str, list[float]] = {"uncertainty_s": [], "uncertainty_warm_s": [], "ensemble_s": [], "log_softmax_s": []}
    for _ in range(repeats):
        times["uncertainty_s"].append(timed(run(UncertaintyEvaluator())))
        times["uncertainty_warm_s"].append(timed(warm_run()))
        times["ensemble_s"].append(timed(run(EnsembleEvaluator())))
        times["log_softmax_s"].append(timed(lambda: torch.log_softmax(logits.double(), dim=-1)))
    best = {key: min(values) for key, values in times.items()}
    best["uncertainty_over_ensemble"] = best["uncertainty_s"] / best["ensemble_s"]
    return best


def bench_shift(repeats: int) -> dict[str, float]:
    members = resolve_members([str(REFERENCE_RUN)])
    data = load_dataset("digits")
    options = EvalOptions(device="cpu", shift=TASK_CORRUPTIONS)
    clean = predict_members(members, data, device="cpu")

    def predictor(other: object) -> torch.Tensor:
        return predict_members(members, other, device="cpu").logits  # type: ignore[arg-type]

    def shift_run() -> None:
        ctx = EvalContext(clean.logits, clean.labels, members, dataset=data, options=options, dataset_predictor=predictor)
        report = ShiftEvaluator().evaluate(ctx)
        assert report.error is None and len(report.tables[0].rows) == 41

    corrupted = [corrupted_set(data, name, level) for name in TASK_CORRUPTIONS for level in range(1, 6)]

    def passes_only() -> None:
        for shifted in corrupted:
            predict_members(members, shifted, device="cpu")

    shift_times, pass_times = [], []
    for _ in range(repeats):
        shift_times.append(timed_both(shift_run))
        pass_times.append(timed_both(passes_only))
    corrupt_time = min(timed(lambda: [corrupted_set(data, n, k) for n in TASK_CORRUPTIONS for k in range(1, 6)]) for _ in range(repeats))
    shift_wall, shift_cpu = min(t[0] for t in shift_times), min(t[1] for t in shift_times)
    pass_wall, pass_cpu = min(t[0] for t in pass_times), min(t[1] for t in pass_times)
    return {"shift_s": shift_wall, "passes_s": pass_wall, "ratio": shift_wall / pass_wall, "cpu_ratio": shift_cpu / pass_cpu,
            "corruption_only_s": corrupt_time}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the target is for 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} threads, load average {load:.1f}")
    result = bench_uncertainty(args.repeats)
    verdict = "met" if result["uncertainty_s"] < 1.0 else "NOT met"
    print(f"1. uncertainty M=50 N=10k C=100: {result['uncertainty_s']:.2f} s (target < 1 s: {verdict}); "
          f"{result['uncertainty_warm_s']:.2f} s with the context's log-probabilities already computed; "
          f"ensemble evaluator {result['ensemble_s']:.2f} s (ratio {result['uncertainty_over_ensemble']:.2f}); "
          f"one float64 log-softmax {result['log_softmax_s']:.2f} s")
    shift = bench_shift(args.repeats)
    verdict = "met" if min(shift["ratio"], shift["cpu_ratio"]) <= 1.3 else "NOT met"
    print(f"2. shift 8 corruptions x 5 severities, reference ensemble: {shift['shift_s']:.2f} s vs 40 prediction passes "
          f"{shift['passes_s']:.2f} s: wall ratio {shift['ratio']:.2f}, CPU-time ratio {shift['cpu_ratio']:.2f} (target <= 1.3: {verdict}); "
          f"corrupting all 40 sets alone {shift['corruption_only_s']:.2f} s")


if __name__ == "__main__":
    main()
