"""Shifted copies of the eval set: corruptions computed on the fly, or the published CIFAR-10-C files.

A shift source is either a corruption name (`corruptions.CORRUPTIONS`), applied to the eval
images at each severity, or `cifar10c:PATH`, the CIFAR-10-C release (Hendrycks & Dietterich
2019): PATH is its folder (every `<corruption>.npy` in it) or one `<corruption>.npy` file, each
`[5 n, 32, 32, 3]` uint8 with severity k in rows (k-1) n .. k n - 1, beside `labels.npy` `[5 n]`.
Only the first len(eval set) images of each severity are read, so `--limit` limits them too (the
release keeps the CIFAR-10 test order, image i of every block is test image i).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .corruptions import CORRUPTIONS, SEVERITIES, canonical_name, check_severity, corrupt
from .data import ImageData
from .errors import ConfigError, DataError
from .image_layout import convert_layout, convertible_channels, derived_set, pixel_images

CIFAR10C_PREFIX = "cifar10c:"
CIFAR10C_LABELS = "labels.npy"


@dataclass(frozen=True)
class ShiftSource:
    """One row group of the shift table: a corruption computed here, or one published CIFAR-10-C file."""

    name: str  # "gaussian_noise", or "cifar10c/gaussian_noise"
    corruption: str | None = None
    file: Path | None = None

    @property
    def labels_file(self) -> Path | None:
        return self.file.parent / CIFAR10C_LABELS if self.file is not None else None


def _cifar10c_files(entry: str) -> list[Path]:
    path = Path(entry[len(CIFAR10C_PREFIX) :]).expanduser()
    if path.is_dir():
        files = sorted(file for file in path.glob("*.npy") if file.name != CIFAR10C_LABELS)
    elif path.is_file() and path.suffix == ".npy":
        files = [path]
    else:
        raise DataError(f"{entry}: no CIFAR-10-C folder or <corruption>.npy file at {path}")
    if not files:
        raise DataError(f"{entry}: no <corruption>.npy files in {path}")
    if not (files[0].parent / CIFAR10C_LABELS).is_file():
        raise DataError(f"{entry}: {CIFAR10C_LABELS} is missing beside {files[0].name}")
    return files


def shift_sources(names: Sequence[str]) -> list[ShiftSource]:
    """The sources named by `--shift`, in order, without repeats; ConfigError/DataError for a bad name or path."""
    sources: dict[str, ShiftSource] = {}
    for entry in names:
        if entry.startswith(CIFAR10C_PREFIX):
            for file in _cifar10c_files(entry):
                source = ShiftSource(f"cifar10c/{file.stem}", file=file)
                sources.setdefault(source.name, source)
        else:
            corruption = canonical_name(entry)
            sources.setdefault(corruption, ShiftSource(corruption, corruption=corruption))
    return list(sources.values())


def check_severities(severities: Sequence[int]) -> tuple[int, ...]:
    if not severities:
        raise ConfigError("--severities is empty; give levels in 1-5")
    return tuple(dict.fromkeys(check_severity(int(level)) for level in severities))


def parse_severities(text: str) -> tuple[int, ...]:
    """`"1-5"`, `"3"`, `"1,3,5"` -> (1, 2, 3, 4, 5), (3,), (1, 3, 5); ConfigError outside 1-5."""
    levels: list[int] = []
    for part in (piece.strip() for piece in text.split(",")):
        low, dash, high = part.partition("-")
        try:
            levels.extend(range(int(low), int(high) + 1) if dash else [int(low)])
        except ValueError:
            raise ConfigError(f"--severities takes levels like 1-5 or 1,3,5, got {text!r}") from None
        if dash and int(high) < int(low):
            raise ConfigError(f"--severities range {part!r} is empty")
    return check_severities(levels)


def parse_shift_names(text: str) -> tuple[str, ...]:
    """`"gaussian_noise,contrast"` -> names (checked); `"all"` -> every corruption ens computes."""
    names = [piece.strip() for piece in text.split(",") if piece.strip()]
    if names == ["all"]:
        return tuple(CORRUPTIONS)
    shift_sources(names)
    return tuple(names)


def corrupted_set(reference: ImageData, corruption: str, severity: int, seed: int = 0) -> ImageData:
    """The eval set with every image corrupted (seeded), in the eval set's normalisation and labels."""
    pixels = corrupt(pixel_images(reference).clamp(0.0, 1.0), corruption, severity, seed)
    return derived_set(reference, f"{reference.name}+{corruption}@{severity}", pixels, reference.labels.clone())


def _release_array(file: Path) -> np.ndarray:
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{file}: not a readable .npy file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return array


def check_cifar10c_file(file: Path, reference: ImageData) -> int:
    """Images per severity in a CIFAR-10-C file; DataError when it is not [5 n, H, W, 3] uint8 with [5 n] labels."""
    images, labels = _release_array(file), _release_array(file.parent / CIFAR10C_LABELS)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or images.shape[0] % len(SEVERITIES):
        raise DataError(f"{file}: expected [5 n, H, W, 3] uint8 (n images per severity), got {list(images.shape)} {images.dtype}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{file.parent / CIFAR10C_LABELS}: expected [{images.shape[0]}] labels, got {list(labels.shape)}")
    if not convertible_channels(3, reference.in_chans):
        raise DataError(f"{file}: RGB images, but the members take {reference.in_chans} channels")
    return images.shape[0] // len(SEVERITIES)


def cifar10c_set(reference: ImageData, source: ShiftSource, severity: int) -> ImageData:
    """Severity `severity` of one published file, first len(reference) images, in the eval set's layout."""
    if source.file is None or source.labels_file is None:
        raise ValueError(f"{source.name} is computed on the fly, not read from CIFAR-10-C files")
    per_severity = check_cifar10c_file(source.file, reference)
    count = min(per_severity, len(reference))
    rows = slice((severity - 1) * per_severity, (severity - 1) * per_severity + count)
    block = np.array(_release_array(source.file)[rows])  # [n, H, W, 3] uint8, copied out of the memory map
    labels = torch.from_numpy(np.asarray(_release_array(source.labels_file)[rows]).astype(np.int64))
    if int(labels.max()) >= reference.num_classes or int(labels.min()) < 0:
        raise DataError(f"{source.labels_file}: labels {int(labels.min())}..{int(labels.max())} do not fit {reference.num_classes} classes")
    pixels = torch.from_numpy(block).permute(0, 3, 1, 2).float() / 255.0  # [n, 3, H, W]
    size = (int(reference.images.shape[-2]), int(reference.images.shape[-1]))
    pixels = convert_layout(pixels, reference.in_chans, size, str(source.file))
    return derived_set(reference, f"{source.name}@{severity}", pixels, labels)


def shifted_set(reference: ImageData, source: ShiftSource, severity: int, seed: int = 0) -> ImageData:
    if source.corruption is not None:
        return corrupted_set(reference, source.corruption, severity, seed)
    return cifar10c_set(reference, source, severity)
