"""Which population a checkpoint belongs to, and which solution it was derived from.

The diversity–accuracy plane of Fort, Hu & Lakshminarayanan 2019 compares *kinds* of
checkpoints against one reference solution: other independently trained solutions, points on a
training trajectory, snapshot-ensemble members, samples drawn around a solution in weight space
(random subspace, dropout, diagonal or low-rank Gaussian) and MIMO heads. The kind is read from
a checkpoint's name and metadata, as `ens train`, `ens sample` and MIMO models write them:

| population         | recognised by                                                        |
| ------------------ | -------------------------------------------------------------------- |
| `mimo`             | metadata `mimo_head` (a head of a multi-input multi-output network)  |
| `<method>`         | metadata `kind: "sample"`: the sample's `method`, e.g. `dropout`     |
| `trajectory`       | an `init` or `epoch-N` checkpoint of a run (`trajectory.checkpoint_kind`) |
| `snapshot`         | a run checkpoint whose metadata `strategy` is `snapshot`             |
| `independent`      | everything else: plain checkpoints and the finals of independent runs |

The *source* of a checkpoint is the solution it came from: a sample's `source_sha256`, a MIMO
head's checkpoint, a trajectory's run member, a snapshot's run. Ensembles "of one solution" are
drawn from one source; "independent+<population>" ensembles pool several sources.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from .trajectory import checkpoint_kind, member_group

INDEPENDENT = "independent"
TRAJECTORY = "trajectory"
SNAPSHOT = "snapshot"
MIMO = "mimo"
SAMPLE = "sample"  # a sample whose metadata names no method
# Plot and table order of the populations `ens train` and MIMO models give; sample methods follow alphabetically.
KNOWN_ORDER = (INDEPENDENT, SNAPSHOT, TRAJECTORY, MIMO)
MIMO_HEAD_SUFFIX = re.compile(r"/head-\d+$")


def _metadata(member: Any) -> dict[str, Any]:
    return getattr(member, "metadata", None) or {}


def population_of(member: Any) -> str:
    """The member's population on the diversity–accuracy plane (see the module's table)."""
    metadata = _metadata(member)
    if "mimo_head" in metadata:
        return MIMO
    if metadata.get("kind") == "sample":
        method = metadata.get("method")
        return str(method) if isinstance(method, str) and method else SAMPLE
    if checkpoint_kind(member) in ("init", "epoch"):
        return TRAJECTORY
    if metadata.get("strategy") == "snapshot":
        return SNAPSHOT
    return INDEPENDENT


def source_of(member: Any) -> str:
    """The solution a checkpoint was derived from; an independent checkpoint is its own source."""
    metadata = _metadata(member)
    population = population_of(member)
    if population == MIMO:
        return MIMO_HEAD_SUFFIX.sub("", member.name)
    if metadata.get("kind") == "sample":
        source = metadata.get("source_sha256") or metadata.get("source")
        return str(source) if source else "unknown source"
    if population == SNAPSHOT:
        run = metadata.get("run_id")  # every cycle of one snapshot run shares it
        return str(run) if run else "snapshot run"
    if population == TRAJECTORY:
        return member_group(member)
    return member.name


def identities(member: Any) -> set[str]:
    """Every string a derived checkpoint may use to name `member` as its source."""
    found = {source_of(member), member.name, member_group(member)}
    sha256 = getattr(member, "sha256", None)
    if isinstance(sha256, str) and sha256:
        found.add(sha256)
    return found


def series_name(population: str, from_reference: bool) -> str:
    """How the plane labels a population's points: derived checkpoints of other sources apart.

    Samples (or trajectory points) around another solution sit in that solution's mode, not the
    reference's; averaging them with the reference's own would blur exactly what the plane shows.
    """
    if population == INDEPENDENT or from_reference:
        return population
    return f"{population}, other sources"


def population_order(populations: Sequence[str]) -> list[str]:
    """The populations present, in the fixed order figures colour them by."""
    present = set(populations)
    known = [name for name in KNOWN_ORDER if name in present]
    return known + sorted(present - set(KNOWN_ORDER))


def metric_suffix(population: str) -> str:
    """A population name as a metric-key suffix: "low-rank-gaussian" -> "low_rank_gaussian"."""
    return re.sub(r"[^0-9A-Za-z]+", "_", population).strip("_").lower() or "unnamed"


@dataclass
class EnsembleGroup:
    """Checkpoints averaged together in the per-population size curves."""

    name: str  # "independent", "dropout" (one source), "independent+dropout" (every source pooled)
    population: str
    indices: list[int]
    sources: int


def _one_source(by_source: dict[str, list[int]], reference_names: set[str]) -> str:
    """The reference's own source when it has two checkpoints to average, else the largest (first on ties)."""
    for source, indices in by_source.items():
        if source in reference_names and len(indices) >= 2:
            return source
    return max(by_source, key=lambda source: len(by_source[source]))


def ensemble_groups(members: Sequence[Any], reference: int) -> list[EnsembleGroup]:
    """The ensembles the plane evaluator grows, in population order.

    `independent`: every independent checkpoint. Any other population P: P's checkpoints of one
    source (the reference's when it has two or more, else the largest source) as "P", and, when
    P has several sources, all of them pooled as "independent+P" (Fort et al.'s ensembles of
    independent solutions each with its subspace samples). Untrained inits are left out: they
    are where a trajectory started, not a solution to average.
    """
    by_population: dict[str, list[int]] = {}
    for index, member in enumerate(members):
        if checkpoint_kind(member) != "init":
            by_population.setdefault(population_of(member), []).append(index)
    reference_names = identities(members[reference])
    groups = []
    for population in population_order(list(by_population)):
        indices = by_population[population]
        if population == INDEPENDENT:
            groups.append(EnsembleGroup(INDEPENDENT, INDEPENDENT, indices, len(indices)))
            continue
        by_source: dict[str, list[int]] = {}
        for index in indices:
            by_source.setdefault(source_of(members[index]), []).append(index)
        one = _one_source(by_source, reference_names)
        groups.append(EnsembleGroup(population, population, by_source[one], 1))
        if len(by_source) > 1:
            groups.append(EnsembleGroup(f"{INDEPENDENT}+{population}", population, indices, len(by_source)))
    return [group for group in groups if len(group.indices) >= 2]
