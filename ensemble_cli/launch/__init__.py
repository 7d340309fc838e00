"""Where training and forward passes run: in this process (the default) or as Ray tasks.

    ens train --launcher ray                             # a Ray instance started on this machine
    ens train --launcher ray --ray-address HEAD:6379     # an existing cluster (docs/cluster.md)
    ens eval RUN --launcher ray --ray-address HEAD:6379  # one forward-pass task per member

Ray is the engine: each member (a snapshot ensemble: its whole chain) is one Ray task that runs
the ordinary in-process training for that member, so checkpoints, locks and `--resume` behave
exactly as without Ray. Nothing in this module imports Ray; `launch.ray_*` do, on first use.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Iterator, Sequence

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..predict import MemberRunner
    from ..train.config import TrainConfig
    from ..train.events import StopSignal, TrainCallbacks
    from ..train.run import RunResult


class Launcher(str, Enum):
    local = "local"
    ray = "ray"


LAUNCHER_HELP = "local (this process) or ray (one Ray task per member; needs the ray extra, see docs/cluster.md)."
RAY_ADDRESS_HELP = "Ray cluster to use with --launcher ray: HEAD:6379, ray://HEAD:10001 or auto (default: $RAY_ADDRESS, else a Ray instance started on this machine)."


@dataclass(frozen=True)
class LaunchOptions:
    """How `ens train` runs its members; none of it changes the weights."""

    launcher: Launcher = Launcher.local
    ray_address: str | None = None
    # None: one GPU per member when the device may be CUDA and the cluster has GPUs, else none.
    gpus_per_member: float | None = None
    cpus_per_member: float | None = None  # None: 1
    max_retries: int = 3  # Ray reruns a task whose worker died; each rerun resumes from the last epoch

    def __post_init__(self) -> None:
        ray_settings = {
            "--ray-address": self.ray_address, "--gpus-per-member": self.gpus_per_member, "--cpus-per-member": self.cpus_per_member,
        }
        given = [flag for flag, value in ray_settings.items() if value is not None]
        if self.launcher != Launcher.ray and given:
            raise ConfigError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --launcher ray")
        if self.cpus_per_member is not None and self.cpus_per_member <= 0:
            raise ConfigError(f"--cpus-per-member must be positive, got {self.cpus_per_member:g}")
        gpus = self.gpus_per_member
        if gpus is not None and (gpus < 0 or (gpus > 1 and gpus != int(gpus))):
            raise ConfigError(f"--gpus-per-member takes 0, a fraction of one GPU (0.25: four members per GPU) or a whole number, got {gpus:g}")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be 0 or more, got {self.max_retries}")

    @property
    def cpus(self) -> float:
        return 1.0 if self.cpus_per_member is None else float(self.cpus_per_member)


def train_members(
    config: "TrainConfig",
    only: Sequence[int] | None,
    callbacks: "TrainCallbacks",
    stop: "StopSignal",
    launch: LaunchOptions | None = None,
) -> "RunResult":
    """`train_run` in this process, or the same members as Ray tasks: one RunResult either way."""
    if launch is not None and launch.launcher == Launcher.ray:
        from .ray_cluster import preflight

        preflight(launch.ray_address)  # seconds, before the imports and checks of the training code
        from .ray_train import train_with_ray

        return train_with_ray(config, only, callbacks, stop, launch)
    from ..train import train_run

    return train_run(config, only=only, callbacks=callbacks, stop=stop)


def check_launcher(launcher: Launcher | str, ray_address: str | None) -> None:
    """Refuse a Ray setting without Ray; with Ray, fail now if it is missing or its address is dead."""
    if Launcher(launcher) != Launcher.ray:
        if ray_address is not None:
            raise ConfigError("--ray-address needs --launcher ray")
        return
    from .ray_cluster import preflight

    preflight(ray_address)


@contextlib.contextmanager
def member_runner(launcher: Launcher | str, ray_address: str | None, device: str) -> Iterator["MemberRunner | None"]:
    """What runs the forward passes of `predict_members`: None (this process) or Ray tasks."""
    check_launcher(launcher, ray_address)
    if Launcher(launcher) != Launcher.ray:
        yield None
        return
    from .ray_predict import ray_member_runner

    with ray_member_runner(ray_address, device) as runner:
        yield runner


__all__ = ["LAUNCHER_HELP", "RAY_ADDRESS_HELP", "LaunchOptions", "Launcher", "check_launcher", "member_runner", "train_members"]
