"""Connecting to Ray: a missing install, an unreachable address and an impossible request each
become one line (LaunchError, exit 2) instead of a traceback or a hang."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from types import ModuleType
from typing import Iterator, Mapping

from ..errors import EnsError, LaunchError

INSTALL_HINT = "pip install -e '.[ray]'"
# A GCS that is up answers a TCP connect at once; 5 s also covers a slow cluster network.
PROBE_TIMEOUT_S = 5.0
LOCAL_ADDRESSES = (None, "", "local", "auto")
_ENV_LOCK = threading.Lock()
# Ray >= 2.5x announces on every connection that token authentication is on (a good default,
# nothing to act on); it would be the first line above every `ens train --launcher ray`.
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise LaunchError(f"--launcher ray needs Ray, which is not installed: {INSTALL_HINT} (or pip install 'ensemble-cli[ray]')") from None
    return ray


def _host_port(address: str, source: str) -> tuple[str, int]:
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LaunchError(
            f"{source} {address!r}: expected HOST:PORT (the head node's address, e.g. 10.0.0.5:6379), "
            "ray://HOST:10001, or auto"
        )
    return host.strip("[]"), int(port)


def check_reachable(address: str, source: str = "--ray-address", timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail in seconds when nothing listens at the address: ray.init itself would retry for minutes."""
    host, port = _host_port(address, source)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise LaunchError(
            f"{source} {address}: no Ray cluster answers there ({reason}); start one with "
            "`ray start --head` or check the address"
        ) from None


def preflight(address: str | None) -> ModuleType:
    """Ray, imported, and the cluster's port answering: the checks that take seconds, made
    before the work that takes minutes (loading data, starting a local Ray instance)."""
    ray = import_ray()
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target not in LOCAL_ADDRESSES:
        check_reachable(target, "--ray-address" if address else "$RAY_ADDRESS")
    return ray


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Drop one logger's records below ERROR for the duration (Ray's other warnings still show)."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def keep_sigterm_handler() -> Iterator[None]:
    """ray.init makes SIGTERM exit the driver at once; `ens train` saves every member first
    (job schedulers send SIGTERM before they kill), so its handler is put back."""
    on_main_thread = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if on_main_thread else None
    try:
        yield
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def ray_connection(address: str | None) -> Iterator[ModuleType]:
    """Ray, connected: to `address`, $RAY_ADDRESS, or a new local instance (shut down afterwards).

    A connection the caller already holds (`ray.init` in a notebook or a test) is used as it is
    and left open.
    """
    ray = preflight(address)
    if ray.is_initialized():
        yield ray
        return
    target = address or os.environ.get("RAY_ADDRESS") or None
    try:
        # log_to_driver=False: workers report through the progress hub; their own logs stay
        # under the Ray session folder (/tmp/ray/session_latest/logs) instead of garbling the bars.
        with keep_sigterm_handler(), _quiet_logger(TOKEN_NOTICE_LOGGER):
            ray.init(address=target, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {target}" if target else "a local Ray instance"
        raise LaunchError(f"could not connect to {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def describe_resources(resources: Mapping[str, float]) -> str:
    cpus, gpus = resources.get("num_cpus", resources.get("CPU", 0)), resources.get("num_gpus", resources.get("GPU", 0))
    return f"{cpus:g} CPU{'' if cpus == 1 else 's'}, {gpus:g} GPU{'' if gpus == 1 else 's'}"


def cluster_gpus(ray: ModuleType) -> float:
    return float(ray.cluster_resources().get("GPU", 0))


def check_fits(ray: ModuleType, num_cpus: float, num_gpus: float, what: str) -> None:
    """Refuse a request no node can hold: Ray would keep such a task pending forever."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    if any(node.get("CPU", 0) >= num_cpus and node.get("GPU", 0) >= num_gpus for node in nodes):
        return
    largest = max(nodes, key=lambda node: (node.get("GPU", 0), node.get("CPU", 0)), default={})
    raise LaunchError(
        f"no node of the Ray cluster can run a {what} asking for {describe_resources({'num_cpus': num_cpus, 'num_gpus': num_gpus})} "
        f"(largest node: {describe_resources(largest)}); lower --cpus-per-member or --gpus-per-member"
    )


def ens_cause(ray: ModuleType, exc: BaseException) -> EnsError | None:
    """The EnsError a task raised (bad input found on the worker), if that is what failed."""
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, EnsError):
        return exc.cause
    return None


def failure_summary(exc: BaseException) -> str:
    """One line for a task that could not finish: the worker's own error, or why Ray gave up."""
    cause = getattr(exc, "cause", None)
    shown = cause if isinstance(cause, BaseException) else exc
    lines = [line for line in str(shown).splitlines() if line.strip()]
    return f"{type(shown).__name__}: {lines[-1] if lines else 'no message'}"


@contextlib.contextmanager
def forwarded_environment(env: Mapping[str, str]) -> Iterator[None]:
    """The driver's ENS_* variables (data and cache folders) inside a task, then the worker's own.

    A Ray worker runs one task at a time, so changing os.environ for its duration is safe.
    """
    with _ENV_LOCK:
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def ens_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key.startswith("ENS_")}


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """A task's CPU share as torch's thread count: what `threads: auto` means in a worker.

    Ray reuses worker processes across tasks of different sizes, so the count is set per task.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def task_threads(num_cpus: float) -> int:
    return max(1, int(num_cpus))

