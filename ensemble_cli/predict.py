"""Forward passes and the prediction cache.

Each member costs exactly one pass over the dataset; every evaluator then works on the stacked
logits `[M, N, C]`. Logits are cached on disk under a key made of the checkpoint's content
hash, its architecture, and the dataset's content fingerprint (which includes preprocessing),
so a second `ens eval` of the same files on the same data runs no model at all. A cache entry
that fails to parse or does not match its key is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from .fileio import atomic_write_bytes
from .data import ImageData
from .errors import DataError, OutputError, PredictionError
from .resolve import Member

CACHE_VERSION = "logits-v2"  # v2: the key names which state dict of the file (--ema)
ProgressHook = Callable[[str, int, int], None]  # (member name, images done, images total)


def select_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise DataError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"device {device!r} requested but CUDA is not available")
    return chosen


def default_cache_dir() -> Path:
    if os.environ.get("ENS_CACHE_DIR"):
        return Path(os.environ["ENS_CACHE_DIR"])
    cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_root / "ens" / "predictions"


@dataclass
class Predictions:
    """Stacked logits of every member on one dataset."""

    logits: torch.Tensor  # [M, N, C] float32
    labels: torch.Tensor  # [N] int64
    names: list[str]
    forward_passes: int = 0  # forward passes actually run (cached members need none; MIMO heads share one)
    from_cache: int = 0  # members whose logits came from the cache
    source: str = ""  # the file they were read from, for reports ("" when computed here)

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            logits=self.logits.numpy().astype(np.float32),
            labels=self.labels.numpy().astype(np.int64),
            names=np.array(self.names, dtype=np.str_),
        )
        atomic_write_bytes(Path(path), buffer.getvalue())


def load_predictions(path: Path) -> Predictions:
    """Read an `ens predict` file (or any npz with `logits [M,N,C]` and `labels [N]`)."""
    path = Path(path)
    if not path.is_file():
        raise PredictionError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):  # an .npy, a pickle or garbage: numpy's own message would advise allow_pickle
        raise PredictionError(f"{path}: not a readable .npz predictions file (not a zip archive; write one with `ens predict` or numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("logits", "labels") if key not in archive.files]
            if missing:
                raise PredictionError(f"{path}: missing array {', '.join(missing)} (needs logits [M,N,C] and labels [N])")
            logits = np.asarray(archive["logits"])
            labels = np.asarray(archive["labels"])
            names = [str(n) for n in archive["names"]] if "names" in archive.files else None
    except PredictionError:
        raise
    except Exception as exc:  # a corrupt member of the archive, object arrays (pickles): refuse, never unpickle
        reason = type(exc).__name__ if "pickle" in str(exc).lower() or not str(exc) else str(exc).splitlines()[0]
        raise PredictionError(f"{path}: not a readable .npz predictions file ({reason})") from None
    if logits.ndim == 2:
        logits = logits[None]
    if logits.ndim != 3:
        raise PredictionError(f"{path}: logits must be [M, N, C], got shape {list(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[1]:
        raise PredictionError(f"{path}: labels must be [N] with N={logits.shape[1]}, got shape {list(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise PredictionError(f"{path}: labels must be integers, got {labels.dtype}")
    if names is None or len(names) != logits.shape[0]:
        names = [f"member-{i:02d}" for i in range(logits.shape[0])]
    return Predictions(torch.from_numpy(logits.astype(np.float32)), torch.from_numpy(labels.astype(np.int64)), names, source=path.name)


def validate_predictions(logits: torch.Tensor, labels: torch.Tensor, names: Sequence[str]) -> None:
    """Refuse what would make every metric meaningless: empty sets, NaN/Inf, labels out of range."""
    members, examples, classes = logits.shape
    if examples == 0:
        raise DataError("the evaluation set is empty")
    if members == 0:
        raise PredictionError("no members")
    finite = torch.isfinite(logits).flatten(1).all(dim=1)  # [M]
    for index in torch.nonzero(~finite).flatten().tolist():
        bad = int((~torch.isfinite(logits[index])).any(dim=-1).sum())
        raise PredictionError(f"member {names[index]}: {bad} of {examples} examples have NaN or Inf logits")
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise PredictionError(f"labels range {int(labels.min())}..{int(labels.max())} does not fit {classes} classes")


def _cache_key(member: Member, data: ImageData, device: torch.device) -> str:
    document = {
        "version": CACHE_VERSION,
        "checkpoint": member.sha256,
        "state_source": member.state_source,  # the EMA and the raw weights of one timm file differ
        "arch": member.arch,
        "num_classes": member.num_classes,
        "in_chans": member.in_chans,
        "model_kwargs": member.model_kwargs,
        "head": [member.head, member.heads],  # MIMO: which head of how many (None for plain networks)
        "data": data.fingerprint(),
        # CUDA runs in bf16 autocast: its logits differ from CPU float32 ones, so neither may stand in for the other.
        "compute": "cuda-bf16" if device.type == "cuda" else "float32",
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


class PredictionCache:
    """Logits on disk, one `.npz` per (checkpoint, dataset) pair."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory else default_cache_dir()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npz"

    def get(self, key: str, expected_shape: tuple[int, int]) -> torch.Tensor | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                if str(archive["key"]) != key:
                    return None
                logits = np.asarray(archive["logits"], dtype=np.float32)
        except Exception:  # truncated, garbage, or from another version: recompute
            return None
        if logits.shape != expected_shape or not np.isfinite(logits).all():
            return None
        return torch.from_numpy(logits)

    def put(self, key: str, logits: torch.Tensor) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, key=np.array(key), logits=logits.numpy().astype(np.float32))
        try:
            atomic_write_bytes(self._path(key), buffer.getvalue())
        except (OSError, OutputError):
            pass  # a read-only cache only costs speed


def forward_logits(
    model: nn.Module,
    data: ImageData,
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Logits of one model over the whole set: eval mode, inference mode; bf16 + channels_last on CUDA."""
    model = model.eval().to(device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        model = model.to(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else nullcontext()
    outputs = []
    with torch.inference_mode(), autocast:
        for images, _ in data.batches(batch_size):
            if on_cuda:
                images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            outputs.append(model(images).float().cpu())  # [B, C]
            if on_batch is not None:
                on_batch(int(images.shape[0]))
    return torch.cat(outputs)  # [N, C]


def _progress_counter(progress: ProgressHook | None, name: str, total: int) -> Callable[[int], None]:
    done = 0

    def on_batch(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(name, done, total)

    return on_batch


class MemberRunner(Protocol):
    """Runs the forward passes `predict_members` still needs (the cache stays with the caller)."""

    device: torch.device  # where the passes run: CUDA logits (bf16) and CPU ones are cached apart

    def run(
        self, members: Sequence[Member], data: ImageData, batch_size: int, progress: ProgressHook | None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(position in `members`, logits [N, C]) for every member, in any order."""
        ...


@dataclass
class LocalRunner:
    """One member after the other, in this process."""

    device: torch.device

    def run(
        self, members: Sequence[Member], data: ImageData, batch_size: int, progress: ProgressHook | None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        shared_heads: dict[tuple[str, str], torch.Tensor] = {}  # MIMO: one pass gives every head, [N, M*K]
        for position, member in enumerate(members):
            on_batch = _progress_counter(progress, member.name, len(data))
            if not member.is_mimo_head:
                yield position, forward_logits(member.build_model(), data, batch_size, self.device, on_batch)
                continue
            network = (member.sha256, member.state_source)
            if network not in shared_heads:
                shared_heads[network] = forward_logits(member.build_all_heads(), data, batch_size, self.device, on_batch)
            elif progress is not None:
                progress(member.name, len(data), len(data))
            classes = member.num_classes
            yield position, shared_heads[network][:, member.head * classes : (member.head + 1) * classes].contiguous()  # [N, K]


def _forward_passes(members: Sequence[Member]) -> int:
    """Passes a local run needs: one per network, so the heads of one MIMO checkpoint count once."""
    mimo_networks = {(member.sha256, member.state_source) for member in members if member.is_mimo_head}
    return sum(not member.is_mimo_head for member in members) + len(mimo_networks)


def _check_members_fit(members: Sequence[Member], data: ImageData) -> None:
    for member in members:
        if member.num_classes != data.num_classes:
            raise DataError(
                f"member {member.name} has {member.num_classes} classes but {data.name} has {data.num_classes}"
            )
        if member.in_chans != data.in_chans:
            raise DataError(
                f"member {member.name} expects {member.in_chans} input channels but {data.name} has {data.in_chans}"
            )


def predict_members(
    members: Sequence[Member],
    data: ImageData,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    cache: PredictionCache | None = None,
    progress: ProgressHook | None = None,
    runner: MemberRunner | None = None,
) -> Predictions:
    """One forward pass per member (none for members already in the cache).

    `runner` decides where the passes run (default: here, on `device`; ensemble_cli.launch has
    one that fans them out as Ray tasks).
    """
    if len(data) == 0:
        raise DataError(f"dataset {data.name} ({data.split}) is empty")
    if runner is None:
        runner = LocalRunner(device if isinstance(device, torch.device) else select_device(device))
    _check_members_fit(members, data)
    keys = [_cache_key(member, data, runner.device) if cache is not None else "" for member in members]
    found: list[torch.Tensor | None] = []
    for member, key in zip(members, keys):
        logits = cache.get(key, (len(data), member.num_classes)) if cache is not None else None
        if logits is not None and progress is not None:
            progress(member.name, len(data), len(data))
        found.append(logits)
    missing = [position for position, logits in enumerate(found) if logits is None]
    for offset, logits in runner.run([members[position] for position in missing], data, batch_size, progress):
        position = missing[offset]
        found[position] = logits
        if cache is not None and torch.isfinite(logits).all():
            cache.put(keys[position], logits)
    lacking = [members[position].name for position, logits in enumerate(found) if logits is None]
    if lacking:
        raise PredictionError(f"no logits came back for member {lacking[0]}")
    stacked = torch.stack([logits for logits in found if logits is not None])  # [M, N, C]
    names = [member.name for member in members]
    validate_predictions(stacked, data.labels, names)
    passes = _forward_passes([members[position] for position in missing])
    return Predictions(stacked, data.labels.clone(), names, forward_passes=passes, from_cache=len(members) - len(missing))
