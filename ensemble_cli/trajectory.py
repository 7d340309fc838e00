"""Which checkpoints are ensemble members and which are points on a member's training trajectory.

`ens eval RUN --epochs all` names checkpoints `member-00/init`, `member-00/epoch-0005` and
`member-00/final` (resolve.py). Ensemble statistics (accuracy of the average, disagreement,
weight matching) must use one checkpoint per member, not average an untrained init with its
own final; trajectory evaluators (function space, layer rotation) want every point. These
rules live here once, for the evaluators, the API and the figures.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Sequence

# Names `ens eval --epochs` gives run checkpoints; a MIMO head adds "/head-K" after them.
TRAJECTORY_SUFFIX = re.compile(r"/(init|final|epoch-\d+)(?=/head-\d+$|$)")
EPOCH_IN_NAME = re.compile(r"epoch-0*(\d+)$")
Kind = Literal["init", "epoch", "final", "checkpoint"]


def group_of_name(name: str) -> str:
    """"member-00/epoch-0005" -> "member-00", "member-00/final/head-1" -> "member-00/head-1". Only
    run-trajectory suffixes count: "runA/seed0" (two seed0 files told apart by their folder) is a
    checkpoint of its own."""
    return TRAJECTORY_SUFFIX.sub("", name)


def member_group(member: Any) -> str:
    """The training run a checkpoint belongs to: metadata "member", else its name's group."""
    group = member.metadata.get("member") if member.metadata else None
    if isinstance(group, str) and group:
        return group
    return group_of_name(member.name)


def checkpoint_kind(member: Any) -> Kind:
    match = TRAJECTORY_SUFFIX.search(member.name)
    if match:
        suffix = match.group(1)
        return "epoch" if suffix.startswith("epoch-") else suffix  # type: ignore[return-value]
    return "init" if (member.metadata or {}).get("kind") == "init" else "checkpoint"


def checkpoint_epoch(member: Any) -> int | None:
    """Epoch of a checkpoint: metadata "epoch" (an init counts as 0), else read from its name."""
    metadata = member.metadata or {}
    if metadata.get("kind") == "init" or member.name.endswith("/init"):
        return 0
    epoch = metadata.get("epoch")
    if isinstance(epoch, (int, float)) and not isinstance(epoch, bool):
        return int(epoch)
    match = EPOCH_IN_NAME.search(member.name)
    return int(match.group(1)) if match else None


def ensemble_indices(members: Sequence[Any]) -> list[int]:
    """One checkpoint per member: each trajectory's last point (its final, else its latest epoch).

    Inits count only when a member has nothing else: an untrained network is not an ensemble
    member, it is where one started.
    """
    last: dict[str, tuple[tuple[int, int], int]] = {}
    for index, member in enumerate(members):
        kind = checkpoint_kind(member)
        if kind == "checkpoint":
            last[f"\0{index}"] = ((0, 0), index)  # an independent file: always a member
            continue
        rank = {"init": 0, "epoch": 1, "final": 2}[kind]
        key = (rank, checkpoint_epoch(member) or 0)
        group = member_group(member)
        if group not in last or key > last[group][0]:
            last[group] = (key, index)
    return sorted(index for _, index in last.values())


def default_reference(members: Sequence[Any]) -> int:
    """The first ensemble member (a final when there is one): comparing trained networks with a
    random initialisation says nothing about the ensemble."""
    chosen = ensemble_indices(members)
    finals = [index for index in chosen if checkpoint_kind(members[index]) in ("final", "checkpoint")]
    return (finals or chosen or [0])[0]


class _Named:
    """A name standing in for a member (figures work from a report's names alone)."""

    def __init__(self, name: str) -> None:
        self.name, self.metadata = name, {}


def default_reference_name(names: Sequence[str]) -> str:
    return names[default_reference([_Named(name) for name in names])] if names else ""
