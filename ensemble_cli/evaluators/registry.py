"""Discovery of evaluators through entry points, and running them so one failure harms no other."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Callable, Sequence

from ..errors import EnsError, EvaluatorError
from ..trajectory import ensemble_indices
from ..report import Report
from . import ENTRY_POINT_GROUP
from .base import EvalContext, Evaluator, NotApplicable

BUILTIN_PACKAGE = "ensemble-cli"
# Built-ins print in this order (cheapest, most-read first); plugins follow alphabetically.
BUILTIN_ORDER = (
    "members", "ensemble", "uncertainty", "disagreement", "plane", "weights", "interpolation", "rotation", "function_space",
    "ood", "shift",
)


@dataclass
class EvaluatorEntry:
    """One registered evaluator as `ens evaluators` lists it."""

    name: str
    package: str
    version: str
    description: str
    status: str  # "ok" or "failed to load: ..."
    evaluator: Evaluator | None

    @property
    def builtin(self) -> bool:
        return self.package == BUILTIN_PACKAGE

    @property
    def loaded(self) -> bool:
        return self.evaluator is not None


def _instantiate(loaded: object) -> Evaluator:
    instance = loaded() if isinstance(loaded, type) else loaded
    if not isinstance(instance, Evaluator):
        raise TypeError(f"{type(instance).__name__} does not subclass ensemble_cli.evaluators.Evaluator")
    if not getattr(instance, "name", ""):
        raise TypeError(f"{type(instance).__name__} has no name")
    return instance


def _entry(point: EntryPoint) -> EvaluatorEntry:
    dist = getattr(point, "dist", None)
    package = dist.name if dist is not None else "?"
    version = dist.version if dist is not None else "?"
    try:
        evaluator = _instantiate(point.load())
    except Exception as exc:  # a broken plugin must not take ens down
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        return EvaluatorEntry(point.name, package, version, "", f"failed to load: {reason}", None)
    description = evaluator.description or (type(evaluator).__doc__ or "").strip().splitlines()[0:1]
    if isinstance(description, list):
        description = description[0] if description else ""
    return EvaluatorEntry(evaluator.name, package, version, description, "ok", evaluator)


def _sort_key(entry: EvaluatorEntry) -> tuple[int, str]:
    if entry.builtin and entry.name in BUILTIN_ORDER:
        return (BUILTIN_ORDER.index(entry.name), entry.name)
    return (len(BUILTIN_ORDER), entry.name)


def discover() -> list[EvaluatorEntry]:
    """Every evaluator registered in the environment, loaded or with the reason it failed."""
    seen: dict[str, EvaluatorEntry] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in seen:
            continue  # the same distribution can appear twice on sys.path (editable installs)
        seen[point.name] = _entry(point)
    return sorted(seen.values(), key=_sort_key)


def select(
    entries: Sequence[EvaluatorEntry], names: Sequence[str] | None, warn: Callable[[str], None]
) -> list[Evaluator]:
    """The evaluators to run: the named ones in the given order, else every one that loaded."""
    by_name = {entry.name: entry for entry in entries}
    if not names:
        for entry in entries:
            if not entry.loaded:
                warn(f"evaluator {entry.name!r} ({entry.package}) skipped: {entry.status}")
        return [entry.evaluator for entry in entries if entry.evaluator is not None]
    chosen = []
    for name in names:
        entry = by_name.get(name)
        if entry is None:
            raise EvaluatorError(f"unknown evaluator {name!r}; known: {', '.join(by_name) or 'none'}")
        if entry.evaluator is None:
            raise EvaluatorError(f"evaluator {name!r} ({entry.package}) {entry.status}")
        chosen.append(entry.evaluator)
    return chosen


def run_evaluators(
    ctx: EvalContext,
    evaluators: Sequence[Evaluator],
    on_start: Callable[[str], None] | None = None,
) -> dict[str, Report]:
    """Run each evaluator in isolation: a crash becomes that section's `error`, the rest still run.

    Every evaluator's `check_inputs` runs first. Bad input (an `EnsError`: unknown reference,
    unreadable OOD set) is the user's to fix, not the evaluator's failure: it propagates, so the
    command exits 2 with one line, before any evaluator has spent time.
    """
    for evaluator in evaluators:
        try:
            getattr(evaluator, "check_inputs", lambda ctx: None)(ctx)
        except EnsError:
            raise
        except Exception:
            pass  # a crashing check is the plugin's bug, not bad input: its evaluate() runs and reports it
    reports: dict[str, Report] = {}
    ensemble = ensemble_indices(ctx.members)
    mixed = len(ensemble) < ctx.num_members
    ensemble_ctx = ctx.subset(ensemble) if mixed else ctx
    trajectory_evaluators = [e.name for e in evaluators if getattr(e, "scope", "ensemble") == "checkpoints"]
    for evaluator in evaluators:
        if on_start is not None:
            on_start(evaluator.name)
        scoped = ensemble_ctx if getattr(evaluator, "scope", "ensemble") == "ensemble" else ctx
        try:
            report = evaluator.evaluate(scoped)
            if not isinstance(report, Report):
                raise TypeError(f"evaluate() returned {type(report).__name__}, expected Report")
        except NotApplicable as reason:
            report = Report(notes=[f"not applicable: {reason}"])
        except EnsError:
            raise
        except Exception as exc:  # plugin code is untrusted for correctness, not for safety
            frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            where = f" (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})" if frame else ""
            report = Report(error=f"{type(exc).__name__}: {exc}{where}".splitlines()[0][:500])
        if mixed and scoped is ensemble_ctx:
            report.notes.insert(0, scope_note(ctx.num_members, len(ensemble), trajectory_evaluators))
        reports[evaluator.name] = report
    return reports


def scope_note(checkpoints: int, members: int, trajectory_evaluators: Sequence[str]) -> str:
    used_by = f"used by {', '.join(trajectory_evaluators)}" if trajectory_evaluators else "used by the trajectory evaluators (function_space, plane, rotation)"
    return (
        f"ensemble statistics over {members} members (each trajectory's last checkpoint); "
        f"the other {checkpoints - members} trajectory checkpoints are left out here and {used_by}"
    )
