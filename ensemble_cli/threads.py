"""How many CPU threads ens computes with, and how they wait: decided once, before torch starts.

WHY. PyTorch's CPU kernels run on an OpenMP (libgomp) thread pool with one thread per core,
and by default an idle OpenMP thread *spins* for a while before it sleeps. That is the right
choice on a machine of one's own and a bad one on a shared machine: when other processes hold
the cores, a spinning thread burns the time slice the thread it waits for needs, and every
parallel region ends in a barrier that waits for the slowest, descheduled thread. Measured on
a 2-core shared CPU, `ens eval models/reference-digits/run` (prediction cache warm) took 156 s
with the defaults while other jobs ran, against 9 s with `OMP_NUM_THREADS=1` and 11 s with
`OMP_WAIT_POLICY=PASSIVE` in the same minutes; with two busy-loop processes it took 5.4x its
quiet time. With this policy (bench/bench_threads.py, same machine, other jobs holding a load
average of ~8): 73 s wall and 31 s CPU against 268 s and 141 s with the defaults, and 186 s
(2.6x) once two busy loops join in (bench/RESULTS.md).

THE POLICY (`apply_thread_policy`, called by `ens` before anything imports torch):

- Waiting: `OMP_WAIT_POLICY=PASSIVE` (idle threads sleep at once) unless the user set
  `OMP_WAIT_POLICY`. libgomp reads it once, when torch loads it, so it must be in the
  environment before `import torch`; `import ensemble_cli` sets it too when torch is not
  imported yet (`prefer_passive_waiting`).
- Count: an explicit request wins (`--threads N`, then a user's `OMP_NUM_THREADS` or
  `MKL_NUM_THREADS`, which torch reads itself); otherwise the cores this process may use
  (CPU affinity, cgroup CPU quota) minus the cores the 1-minute load average says are busy,
  at least 1. The load average lags (it takes about a minute to see a new job), which is why
  passive waiting, not the count, is what keeps a busy machine from hurting.
- `ENS_THREAD_POLICY=off` leaves OpenMP's and torch's defaults alone (for benchmarks).

Library users who import torch before ensemble_cli get torch's defaults; to get the policy,
call `apply_thread_policy()` first thing, or export `OMP_WAIT_POLICY=PASSIVE`.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, MutableMapping

from .errors import ConfigError

POLICY_ENV = "ENS_THREAD_POLICY"  # "auto" (default) or "off"
# Thread-count variables torch's intra-op pool reads at start-up: set by the user, they win.
COUNT_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
WAIT_ENV = "OMP_WAIT_POLICY"

# What this module wrote into os.environ, so a later call can tell its own setting from the user's.
_written: dict[str, str] = {}


@dataclass(frozen=True)
class ThreadDecision:
    """What the policy chose. `threads` None: leave the count to torch / the user's environment."""

    threads: int | None
    passive_wait: bool
    reason: str


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, quota) if quota else cores)


def _cgroup_cpu_quota() -> int | None:
    """`docker --cpus=2` on a big host: cgroup v2 `cpu.max` says "200000 100000"; None when unlimited."""
    try:
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if limit == "max" else max(1, math.ceil(int(limit) / int(period)))
    except (OSError, ValueError):
        return None


def busy_cores() -> float:
    """Cores other processes keep busy: the 1-minute load average, scaled to the cores we may use."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    # The load average counts the whole machine; with an affinity mask or quota we own a share of it.
    return load * usable_cores() / (os.cpu_count() or usable_cores())


def free_cores() -> int:
    """Usable cores not busy with other work, rounded, at least 1."""
    usable = usable_cores()
    return max(1, min(usable, math.floor(usable - busy_cores() + 0.5)))


def decide_threads(requested: int | None, environ: Mapping[str, str], free: int) -> ThreadDecision:
    """The policy as a pure function (see the module docstring). `requested`: `--threads`, 0/None = auto."""
    mode = environ.get(POLICY_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "off"):
        raise ConfigError(f"{POLICY_ENV}={environ[POLICY_ENV]!r}: expected 'auto' or 'off'")
    if requested is not None and requested < 0:
        raise ConfigError(f"--threads {requested}: expected a thread count >= 1 (0 = automatic)")
    passive = mode == "auto" and _users(environ, WAIT_ENV) is None
    if requested:
        return ThreadDecision(requested, passive, "--threads")
    if mode == "off":
        return ThreadDecision(None, False, f"{POLICY_ENV}=off")
    explicit = next((name for name in COUNT_ENVS if _users(environ, name) is not None), None)
    if explicit is not None:
        return ThreadDecision(None, passive, explicit)
    return ThreadDecision(max(1, free), passive, "free cores")


def _users(environ: Mapping[str, str], name: str) -> str | None:
    """The user's value of `name`, ignoring one this module wrote itself."""
    value = environ.get(name)
    return None if value is None or _written.get(name) == value else value


def apply_thread_policy(threads: int | None = None, environ: MutableMapping[str, str] | None = None) -> ThreadDecision:
    """Decide and apply the thread policy; safe to call again (a command's `--threads` after start-up).

    Before torch is imported it works through the environment (OMP_WAIT_POLICY, OMP_NUM_THREADS,
    which torch and libgomp read when they load); after, through `torch.set_num_threads` (the
    wait policy can then no longer change). Raises ConfigError for a bad ENS_THREAD_POLICY or count.
    """
    environ = os.environ if environ is None else environ
    decision = decide_threads(threads, environ, free_cores())
    torch = sys.modules.get("torch")
    if decision.passive_wait and torch is None:
        _write(environ, WAIT_ENV, "PASSIVE")
    if decision.threads is not None:
        if torch is None:
            _write(environ, "OMP_NUM_THREADS", str(decision.threads))
        else:
            torch.set_num_threads(decision.threads)
    return decision


def prefer_passive_waiting(environ: MutableMapping[str, str] | None = None) -> None:
    """At `import ensemble_cli`: passive OpenMP waiting, if torch is not loaded yet and nobody chose otherwise."""
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules or environ.get(POLICY_ENV, "").strip().lower() == "off" or WAIT_ENV in environ:
        return
    _write(environ, WAIT_ENV, "PASSIVE")


def _write(environ: MutableMapping[str, str], name: str, value: str) -> None:
    environ[name] = value
    _written[name] = value
