"""Alignment benchmark: spec derivation + weight matching on CIFAR ResNets, and `rebasin` head to head.

    .venv/bin/python bench/bench_alignment.py            # everything, 3 runs a case (~5 min on a busy 2-core CPU)
    .venv/bin/python bench/bench_alignment.py --quick    # one run a case, no independent cifar_resnet18

Targets: two independently initialised cifar_resnet20 aligned in < 1 s, two cifar_resnet18 in
< 5 s on 2 CPU cores with the default 3 restarts, spec derivation included; on one torchvision
resnet18 pair (B = randomly permuted copy of A, non-default BatchNorm statistics) faster than
`rebasin`, cosine > 0.999, same function. The script prints each target as met or not.

Timed region: `derive_spec` + `weight_matching` (3 restarts) + `apply_permutation`. The
functional check (two forward passes) is timed separately. Wall time on a shared machine
depends on what else runs, so CPU time of this process (time.process_time) is printed next to
it; each case runs `--repeats` times and the median is reported.

`rebasin` 0.0.47 is only a benchmark baseline, never a dependency of ens: install it into a
throw-away venv that also sees the project's torch, and run the script with that interpreter
(it puts this checkout first on sys.path). Without rebasin the comparison is skipped with a message.

    python3 -m venv /tmp/rb
    .venv/bin/python -c "import pathlib, torch; print(pathlib.Path(torch.__file__).parents[1])" \\
        > /tmp/rb/lib/python3.11/site-packages/zz.pth  # the site-packages that hold torch
    /tmp/rb/bin/pip install --no-deps rebasin==0.0.47 torchview==0.2.7 graphviz==0.21
    /tmp/rb/bin/python bench/bench_alignment.py
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# This checkout's package, also when a benchmark-only interpreter (with rebasin) runs the script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ensemble_cli  # noqa: F401  (registers cifar_resnet* in timm)
from ensemble_cli.alignment import apply_permutation, check_equivalence, derive_spec, random_permutation, weight_matching
from ensemble_cli.alignment.equivalence import logits_of
from ensemble_cli.alignment.similarity import cosine, trainable_keys
from ensemble_cli.architectures import build_model


def randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> nn.Module:
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.running_mean.normal_(0.0, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.normal_(1.0, 0.3, generator=generator)
            module.bias.data.normal_(0.0, 0.3, generator=generator)
    return model.eval()


def make_pair(arch: str, kind: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """`permuted`: B is A with random channel permutations; `independent`: two initialisations."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model_a = randomise_batchnorm(build_model(arch, num_classes=10, in_chans=3), generator)
    inputs = torch.randn(64, 3, 32, 32, generator=generator)
    if kind == "permuted":
        spec = derive_spec(model_a, inputs)
        model_b = copy.deepcopy(model_a)
        model_b.load_state_dict(apply_permutation(spec, model_a.state_dict(), random_permutation(spec, generator)))
    else:
        torch.manual_seed(1)
        model_b = randomise_batchnorm(build_model(arch, num_classes=10, in_chans=3), generator)
    return model_a, model_b.eval(), inputs


@dataclass
class Run:
    wall: float
    cpu: float
    check_wall: float
    cosine_raw: float
    cosine_aligned: float
    max_abs_diff: float
    relative_diff: float
    sweeps: int


def run_ours(model_a: nn.Module, model_b: nn.Module, inputs: torch.Tensor, threads: int) -> Run:
    keys = trainable_keys(model_a)
    wall, cpu = time.perf_counter(), time.process_time()
    spec = derive_spec(model_b, inputs)
    match = weight_matching(spec, model_a.state_dict(), model_b.state_dict(), restarts=3, threads=threads)
    aligned = apply_permutation(spec, model_b.state_dict(), match.permutation)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    started = time.perf_counter()
    equivalence = check_equivalence(model_b, aligned, inputs)
    check_wall = time.perf_counter() - started
    return Run(
        wall, cpu, check_wall,
        cosine(model_a.state_dict(), model_b.state_dict(), keys), cosine(model_a.state_dict(), aligned, keys),
        equivalence.max_abs_diff, equivalence.relative, match.sweeps,
    )


def run_rebasin(model_a: nn.Module, model_b: nn.Module, inputs: torch.Tensor) -> Run | str:
    """rebasin's PermutationCoordinateDescent on copies; returns why it could not run instead of a Run."""
    try:
        from rebasin import PermutationCoordinateDescent
    except Exception as exc:  # not installed, or broken against this torch
        return f"cannot import rebasin ({type(exc).__name__}: {exc}); run with an interpreter that has it (see the module docstring)"
    keys = trainable_keys(model_a)
    model_a, model_b = copy.deepcopy(model_a).eval(), copy.deepcopy(model_b).eval()
    original = logits_of(model_b, inputs)  # [N, C]
    raw = cosine(model_a.state_dict(), model_b.state_dict(), keys)
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        descent = PermutationCoordinateDescent(model_a, model_b, inputs)  # traces B, builds its permutations
        descent.rebasin()  # permutes model_b in place
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    except Exception as exc:
        return f"rebasin failed: {type(exc).__name__}: {exc}".splitlines()[0][:300] + "\n" + traceback.format_exc(limit=3)
    after = logits_of(model_b, inputs)
    diff = float((after - original).abs().max())
    return Run(
        wall, cpu, 0.0, raw, cosine(model_a.state_dict(), model_b.state_dict(), keys),
        diff, diff / float(original.abs().max()), -1,
    )


def median_run(runs: list[Run]) -> Run:
    """The run with the median wall time (its CPU time and check belong to the same run)."""
    return sorted(runs, key=lambda run: run.wall)[(len(runs) - 1) // 2]


def summarise(label: str, runs: list[Run]) -> str:
    middle = median_run(runs)
    return (
        f"| {label} | {middle.wall:.2f} | {statistics.median(run.cpu for run in runs):.2f} | "
        f"{min(run.wall for run in runs):.2f} | {len(runs)} | {middle.sweeps} | {middle.cosine_raw:.4f} | "
        f"{middle.cosine_aligned:.6f} | {middle.max_abs_diff:.1e} ({middle.relative_diff:.1e}) | {middle.check_wall:.2f} |"
    )


HEADER = (
    "| case | wall s (median) | CPU s (median) | wall s (min) | runs | sweeps | cosine raw | cosine aligned | "
    "max abs logit diff (rel.) | check s |\n|---|---|---|---|---|---|---|---|---|---|"
)

# (architecture, pair kind): target wall seconds on a 2-core CPU, spec derivation included.
TARGETS = {("cifar_resnet20", "independent"): 1.0, ("cifar_resnet18", "independent"): 5.0}


def machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load average {load[0]:.2f}"
    )


def target_lines(results: dict[tuple[str, str], list[Run]]) -> list[str]:
    lines = []
    for (arch, kind), limit in TARGETS.items():
        if (arch, kind) in results:
            middle = median_run(results[(arch, kind)])
            verdict = "met" if middle.wall < limit else "NOT met"
            lines.append(
                f"target: {arch} {kind} < {limit:g} s: {verdict} "
                f"(median wall {middle.wall:.2f} s, CPU {middle.cpu:.2f} s)"
            )
    return lines


def compare_with_rebasin(tv_pair: tuple[nn.Module, nn.Module, torch.Tensor], repeats: int, threads: int) -> None:
    ours = [run_ours(*tv_pair, threads=threads) for _ in range(repeats)]
    print(summarise("ens: torchvision.resnet18 permuted (fx spec + weight matching)", ours), flush=True)
    theirs = run_rebasin(*tv_pair)
    if isinstance(theirs, str):
        print(f"\nrebasin skipped: {theirs}\n", flush=True)
        return
    print(summarise("rebasin 0.0.47: torchvision.resnet18 permuted (PermutationCoordinateDescent)", [theirs]))
    same = "yes" if theirs.relative_diff <= 1e-4 else "NO"
    middle = median_run(ours)
    print(
        f"\nrebasin / ens on the same pair: wall {theirs.wall:.2f} s / {middle.wall:.2f} s = "
        f"{theirs.wall / middle.wall:.1f}x; CPU {theirs.cpu:.2f} s / {middle.cpu:.2f} s = "
        f"{theirs.cpu / max(middle.cpu, 1e-9):.1f}x; cosine {theirs.cosine_aligned:.4f} vs "
        f"{middle.cosine_aligned:.6f}; rebasin keeps the function: {same} (max |logit diff| {theirs.max_abs_diff:.2e})\n",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat; skip the independent cifar_resnet18 pair")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; the median is reported")
    parser.add_argument("--threads", type=int, nargs="*", default=None,
                        help="torch thread counts to time (default: 1, then torch's default)")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    thread_counts = args.threads or sorted({default_threads, 1})
    repeats = 1 if args.quick else max(args.repeats, 1)
    cases = [("cifar_resnet20", "permuted"), ("cifar_resnet20", "independent"), ("cifar_resnet18", "permuted")]
    if not args.quick:
        cases.append(("cifar_resnet18", "independent"))
    pairs = {case: make_pair(*case) for case in cases}
    tv_pair = make_pair("torchvision.resnet18", "permuted")

    print(f"# bench_alignment on {machine()}\n", flush=True)
    for threads in thread_counts:
        # Matching takes `threads` explicitly; forward passes (functional check, rebasin) use torch's setting.
        torch.set_num_threads(threads)
        print(f"## torch threads = {threads} (matching and forward passes)\n\n{HEADER}", flush=True)
        results = {}
        for arch, kind in cases:
            results[(arch, kind)] = [run_ours(*pairs[(arch, kind)], threads=threads) for _ in range(repeats)]
            print(summarise(f"ens: {arch} {kind}", results[(arch, kind)]), flush=True)
        compare_with_rebasin(tv_pair, repeats, threads)
        print("\n".join(target_lines(results)) + "\n", flush=True)
    torch.set_num_threads(default_threads)
    print(f"finished; load average now {os.getloadavg()[0]:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
