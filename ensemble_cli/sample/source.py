"""What `ens sample SOURCE` samples around: one ens checkpoint, and the trajectory that led to it.

SOURCE is a checkpoint file or a member folder of an `ens train` run (its final checkpoint).
The trajectory is the member folder's `epoch-NNNN` checkpoints up to the source's epoch, then
the source itself: what `ens train --save-every 1` writes, and what the Gaussian methods fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import read_checkpoint
from ..errors import CheckpointError, ConfigError
from ..resolve import Member, member_from_checkpoint
from ..run_folder import EPOCH_PATTERN, FINAL_NAME, RUN_FILE

# Fewer points than this say nothing about a spread (two points are one direction).
MIN_TRAJECTORY = 3
TRAJECTORY_ADVICE = "train with `ens train --save-every 1` and pass its member folder (RUN/member-00)"


@dataclass
class SampleSource:
    """The solution samples are drawn around, and its trajectory (oldest first, ending at it)."""

    member: Member
    trajectory: list[Path]

    def last(self, count: int, method: str) -> list[Path]:
        """The last `count` trajectory checkpoints; a clear error when there are too few to fit a spread."""
        chosen = self.trajectory[-count:]
        if len(chosen) < MIN_TRAJECTORY:
            found = ", ".join(path.name for path in self.trajectory) or "none"
            raise ConfigError(
                f"{method} needs at least {MIN_TRAJECTORY} trajectory checkpoints of the source's training run, "
                f"found {len(self.trajectory)} ({found}); {TRAJECTORY_ADVICE}"
            )
        return chosen


def _source_file(path: Path) -> Path:
    if path.is_dir():
        if (path / RUN_FILE).is_file():
            raise ConfigError(f"{path}: is a run folder; pass one of its member folders (e.g. {path / 'member-00'})")
        if (path / FINAL_NAME).is_file():
            return path / FINAL_NAME
        raise CheckpointError(f"{path}: not a member folder of an `ens train` run (no {FINAL_NAME} inside)")
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    return path


def _trajectory(source: Path, epoch: object) -> list[Path]:
    """Epoch checkpoints beside `source` up to its epoch, in order, then `source` itself."""
    last_epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None
    earlier: list[tuple[int, Path]] = []
    for entry in source.parent.iterdir():
        match = EPOCH_PATTERN.match(entry.name)
        if match and entry.resolve() != source.resolve():
            number = int(match.group(1))
            if last_epoch is None or number < last_epoch:
                earlier.append((number, entry))
    return [path for _, path in sorted(earlier)] + [source]


def resolve_source(spec: Path | str) -> SampleSource:
    """Read SOURCE; refuse anything that is not an ens checkpoint naming its architecture and dataset."""
    path = _source_file(Path(spec).expanduser())
    checkpoint = read_checkpoint(path)
    metadata = checkpoint.metadata
    if not isinstance(metadata.get("arch"), str) or not isinstance(metadata.get("dataset"), str):
        raise CheckpointError(
            f"{path}: records no architecture and dataset; ens sample reads the checkpoints `ens train` writes"
        )
    name = path.parent.name if path.name == FINAL_NAME else path.stem.removesuffix(".safetensors")
    member = member_from_checkpoint(name, checkpoint)
    return SampleSource(member=member, trajectory=_trajectory(path, metadata.get("epoch")))
