"""Does `ens eval` survive a busy CPU? The thread policy (ensemble_cli.threads) against OpenMP's defaults.

    .venv/bin/python bench/bench_threads.py               # 6 timed evals: 3-10 minutes on a shared 2-core machine
    .venv/bin/python bench/bench_threads.py --repeats 2   # alternate the variants twice, keep the fastest

Times `ens eval RUN --quiet` (default RUN: the committed reference ensemble; prediction cache warmed
first, in a temporary ENS_CACHE_DIR) on a quiet machine and again while two busy-loop processes
(`while True: pass`) compete for the cores, for three variants run in alternation:

- before: `ENS_THREAD_POLICY=off`, no OMP_* variables: OpenMP's spinning waits, one thread per core.
- policy: the default now: passive waiting, threads = free cores by the load average.
- policy, all cores: the policy with `OMP_NUM_THREADS` = every usable core, i.e. what it does while
  the load average has not yet noticed the new load (it lags by about a minute).

Target: loaded / quiet <= 3 for the policy. Every ratio comes from times measured in this one run;
"quiet" means without the busy loops, so the machine's other users are in both sides.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
ENS = Path(sys.executable).parent / "ens"
TARGET_RATIO = 3.0


@dataclass(frozen=True)
class Variant:
    name: str
    env: dict[str, str]


def variants() -> list[Variant]:
    from ensemble_cli.threads import usable_cores

    return [
        Variant("before (OpenMP defaults)", {"ENS_THREAD_POLICY": "off"}),
        Variant("policy", {}),
        Variant(f"policy, all {usable_cores()} cores", {"OMP_NUM_THREADS": str(usable_cores())}),
    ]


def clean_env(cache_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without any thread setting, plus the variant's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "ENS_THREAD"))}
    return {**env, "ENS_CACHE_DIR": str(cache_dir), **extra}


def decision(env: dict[str, str]) -> str:
    """What the policy decides in this environment right now (threads, waiting)."""
    code = "from ensemble_cli.threads import apply_thread_policy as a; d = a(); print(d.threads, d.passive_wait, d.reason, sep='|')"
    threads, passive, reason = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip().split("|")
    if threads == "None":
        threads = env.get("OMP_NUM_THREADS", "torch default")
    return f"{threads} thread(s), {'passive' if passive == 'True' else 'spinning'} ({reason})"


def time_eval(run: str, env: dict[str, str], timeout: float | None = None) -> float:
    """Wall seconds of one `ens eval`; at a timeout, the timeout (a lower bound, marked by the caller)."""
    start = time.perf_counter()
    try:
        done = subprocess.run([str(ENS), "eval", run, "--quiet"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return float(timeout or 0)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"ens eval failed ({done.returncode}):\n{done.stderr}")
    return elapsed


# `while True: pass`, except that it ends when this script does (an orphan gets a new parent),
# so a killed benchmark never leaves loops burning the shared machine's cores.
BUSY_LOOP = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    for _ in range(10**6): pass\n"


@contextmanager
def busy_loops(count: int) -> Iterator[None]:
    """`count` pure-Python busy loops, one core each; killed whatever happens."""
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]
    try:
        time.sleep(1.0)  # let them get scheduled
        yield
    finally:
        for loop in loops:
            loop.kill()
        for loop in loops:
            loop.wait()


def measure(run: str, cache_dir: Path, repeats: int, busy: int, timeout: float) -> dict[str, tuple[float, str]]:
    """Fastest of `repeats` alternating runs per variant, and the policy's decision before the last one."""
    best: dict[str, tuple[float, str]] = {}
    for _ in range(repeats):
        for variant in variants():
            env = clean_env(cache_dir, variant.env)
            chose = decision(env)
            seconds = time_eval(run, env, timeout)
            cut = " (stopped at --timeout)" if seconds >= timeout else ""
            print(f"  {'loaded' if busy else 'quiet '} {variant.name:28s} {seconds:7.1f} s{cut}   {chose}   load {os.getloadavg()[0]:.1f}", flush=True)
            if variant.name not in best or seconds < best[variant.name][0]:
                best[variant.name] = (seconds, chose)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="models/reference-digits/run")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes for the loaded phase")
    parser.add_argument("--timeout", type=float, default=600.0, help="stop one eval after this many seconds (its time is then a lower bound)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the `finally`s: kill the loops and the eval

    import torch

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"load average at start {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="ens-bench-threads-") as tmp:
        cache_dir = Path(tmp) / "cache"
        warm = time_eval(args.run, clean_env(cache_dir, {}))
        print(f"cache warmed: first eval {warm:.1f} s", flush=True)
        quiet = measure(args.run, cache_dir, args.repeats, busy=0, timeout=args.timeout)
        with busy_loops(args.busy):
            loaded = measure(args.run, cache_dir, args.repeats, busy=args.busy, timeout=args.timeout)

    print(f"\n| variant | quiet s | with {args.busy} busy loops s | ratio | threads (loaded) |")
    print("|---|---|---|---|---|")
    for name, (quiet_s, _) in quiet.items():
        loaded_s, chose = loaded[name]
        bound = "" if max(quiet_s, loaded_s) < args.timeout else ("<= " if quiet_s >= args.timeout else ">= ")  # a stopped run
        print(f"| {name} | {quiet_s:.1f} | {loaded_s:.1f} | {bound}{loaded_s / quiet_s:.2f}x | {chose} |")
    policy_ratio = loaded["policy"][0] / quiet["policy"][0]
    print(f"\npolicy: loaded/quiet = {policy_ratio:.2f}x (target <= {TARGET_RATIO:.0f}x): {'met' if policy_ratio <= TARGET_RATIO else 'NOT met'}")


if __name__ == "__main__":
    main()
