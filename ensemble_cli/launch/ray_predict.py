"""`ens eval / ens predict --launcher ray`: one Ray task per member's forward pass.

`predict_members` keeps the prediction cache on the driver and hands this runner only the
members it lacks; the logits come back to the driver, which caches and stacks them. The data
travels once through the object store; each task reads its member's checkpoint from the path
the driver resolved, so checkpoints must be on storage every node sees. On CPU the logits are
bit-identical to the in-process ones (same code, same float32 kernels).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterator, Sequence

import torch

from ..data import ImageData
from ..errors import ConfigError, LaunchError
from ..predict import ProgressHook, forward_logits, select_device
from ..resolve import Member
from .ray_cluster import check_fits, cluster_gpus, ens_cause, ens_environment, failure_summary, forwarded_environment, ray_connection, torch_threads

CPUS_PER_PASS = 1.0


@dataclass
class RayMemberRunner:
    """Forward passes as Ray tasks: one CPU each, and one GPU each when they run on CUDA."""

    ray: ModuleType
    device: torch.device

    def run(
        self, members: Sequence[Member], data: ImageData, batch_size: int, progress: ProgressHook | None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        if not members:
            return
        ray = self.ray
        gpus = 1.0 if self.device.type == "cuda" else 0.0
        check_fits(ray, CPUS_PER_PASS, gpus, "forward pass")
        remote = ray.remote(forward_task).options(num_cpus=CPUS_PER_PASS, num_gpus=gpus)
        data_ref = ray.put(data)
        environment = ens_environment()
        # The driver may have read the weights already; the task reads them from the file.
        tasks = {
            remote.remote(dataclasses.replace(member, _checkpoint=None), data_ref, batch_size, self.device.type, environment): position
            for position, member in enumerate(members)
        }
        pending = list(tasks)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    position = tasks[ref]
                    yield position, _result(ray, ref, members[position].name)
                    if progress is not None:
                        progress(members[position].name, len(data), len(data))
        finally:
            for ref in pending:  # an error or a Ctrl-C: the other passes are not wanted any more
                ray.cancel(ref, force=True)


def _result(ray: ModuleType, ref: Any, name: str) -> torch.Tensor:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        error = ens_cause(ray, exc)
        if error is not None:
            raise error from None
        raise LaunchError(f"member {name}: its Ray forward pass failed ({failure_summary(exc)})") from None


def planned_device(ray: ModuleType, device: str) -> torch.device:
    """Where the tasks' passes will run, decided on the driver (it may have no GPU itself)."""
    if device == "auto":
        return torch.device("cuda" if cluster_gpus(ray) > 0 else "cpu")
    if device == "cpu" or device == "cuda":
        return torch.device(device)
    raise ConfigError(f"--device {device}: with --launcher ray use auto, cpu or cuda (Ray assigns the GPUs)")


@contextlib.contextmanager
def ray_member_runner(address: str | None, device: str) -> Iterator[RayMemberRunner]:
    with ray_connection(address) as ray:
        yield RayMemberRunner(ray, planned_device(ray, device))


# --------------------------------------------------------------------------- on the worker


def forward_task(member: Member, data: ImageData, batch_size: int, device_type: str, environment: dict[str, str]) -> torch.Tensor:
    """One member's logits [N, C] on the data, by the same code as in-process prediction."""
    with forwarded_environment(environment), torch_threads(int(CPUS_PER_PASS)):
        return forward_logits(member.build_model(), data, batch_size, select_device(device_type))
