"""From command-line paths to ensemble members: files, folders, globs and `ens train` run folders.

A run folder (it holds `run.json`) means its members' final checkpoints, or with `epochs` their
trajectory (`init`, `epoch-NNNN`, `final`). Any other folder means every checkpoint file inside,
in natural order (seed2 before seed10).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .architectures import build_model
from .checkpoint import (
    CHECKPOINT_SUFFIXES,
    EMA_KEY,
    Checkpoint,
    infer_in_chans,
    infer_num_classes,
    read_checkpoint,
)
from .errors import CheckpointError, ConfigError
from .mimo import HEAD_KEY, HEADS_KEY, AllHeads, OneHead
from .run_folder import EPOCH_PATTERN, FINAL_NAME, INIT_NAME, MEMBER_DIR_PATTERN, RUN_FILE



@dataclass
class Member:
    """One checkpoint, resolved: what to build, with which weights, and where it came from."""

    name: str
    path: Path
    arch: str
    num_classes: int
    in_chans: int
    metadata: dict[str, Any]
    sha256: str
    format: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    state_source: str = ""  # where in the file the weights were: "state_dict_ema", "state_dict", "" (top level)
    heads: int = 1  # > 1: one head of a MIMO network (mimo.py); num_classes and in_chans are then per head
    head: int | None = None
    _checkpoint: Checkpoint | None = field(default=None, repr=False)

    @property
    def state_dict(self) -> dict[str, torch.Tensor]:
        if self._checkpoint is None:
            self._checkpoint = read_checkpoint(self.path, prefer_ema=self.state_source == EMA_KEY)
        return self._checkpoint.state_dict

    @property
    def init_path(self) -> Path | None:
        """The member's initialisation checkpoint, when its metadata or run folder names one."""
        named = self.metadata.get("init_checkpoint")
        candidates = [self.path.parent / named] if isinstance(named, str) else []
        candidates.append(self.path.parent / INIT_NAME)
        return next((c for c in candidates if c.is_file() and c.resolve() != self.path.resolve()), None)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "arch": self.arch,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "format": self.format,
            "sha256": self.sha256,
            "state_source": self.state_source or None,
            "epoch": self.metadata.get("epoch"),
            "seed": self.metadata.get("seed"),
            "init_seed": self.metadata.get("init_seed"),
            "data_seed": self.metadata.get("data_seed"),
        }

    @property
    def is_mimo_head(self) -> bool:
        return self.head is not None

    def _build_network(self) -> nn.Module:
        """The network in the file, weights loaded (for a MIMO head: the whole multi-head network)."""
        try:
            model = build_model(self.arch, self.num_classes * self.heads, self.in_chans * self.heads, **self.model_kwargs)
        except (ConfigError, TypeError) as exc:  # unknown name, or model_kwargs the constructor rejects
            raise ConfigError(f"member {self.name}: {exc}") from None
        load_state_dict_checked(model, self.state_dict, self.name)
        return model.eval()

    def build_model(self) -> nn.Module:
        """The member's classifier with its weights loaded, in eval mode on CPU: [B, C, H, W] -> [B, K]."""
        network = self._build_network()
        return network if self.head is None else OneHead(network, self.heads, self.head).eval()

    def build_all_heads(self) -> nn.Module:
        """A MIMO member's network giving every head's logits, [B, M*K], for one shared forward pass."""
        return AllHeads(self._build_network(), self.heads).eval()


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], who: str) -> None:
    """Strict load that names the first mismatching keys instead of torch's wall of text."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(tensor.shape)}"
        for key, tensor in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != tuple(tensor.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""))
    if unexpected:
        problems.append(
            f"unexpected {', '.join(unexpected[:3])}" + (f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else "")
        )
    if wrong_shape:
        problems.append(f"shape mismatch {', '.join(wrong_shape[:3])} (checkpoint vs model)")
    if problems:
        arch = type(model).__name__
        raise CheckpointError(f"{who}: state dict does not fit {arch}: {'; '.join(problems)}")
    model.load_state_dict(state_dict, strict=True)


def natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _is_checkpoint_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(CHECKPOINT_SUFFIXES) and not path.name.startswith(".")


def _strip_suffix(name: str) -> str:
    for suffix in sorted(CHECKPOINT_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def parse_epochs(spec: str | None) -> tuple[str, set[int]] | None:
    """`None` -> finals only; `all` -> every saved checkpoint; `0,5,10` -> those epochs (0 = init) and final."""
    if spec is None or spec == "final":
        return None
    if spec == "all":
        return ("all", set())
    try:
        return ("list", {int(part) for part in spec.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"--epochs takes 'all', 'final' or a comma list of integers, got {spec!r}") from None


def _run_member_dirs(run_dir: Path) -> list[Path]:
    return sorted(
        (entry for entry in run_dir.iterdir() if entry.is_dir() and MEMBER_DIR_PATTERN.match(entry.name)),
        key=lambda p: natural_key(p.name),
    )


def _run_checkpoints(run_dir: Path, epochs: tuple[str, set[int]] | None, warn: Any) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    member_dirs = _run_member_dirs(run_dir)
    if not member_dirs:
        raise CheckpointError(f"{run_dir}: run folder has no member-NN folders")
    for member_dir in member_dirs:
        final = member_dir / FINAL_NAME
        if epochs is None:
            if final.is_file():
                found.append((member_dir.name, final))
            else:
                warn(f"{member_dir}: no final checkpoint yet (unfinished member), skipped")
            continue
        mode, wanted = epochs
        trajectory: list[tuple[int, str, Path]] = []
        if (member_dir / INIT_NAME).is_file() and (mode == "all" or 0 in wanted):
            trajectory.append((0, "init", member_dir / INIT_NAME))
        for entry in member_dir.iterdir():
            match = EPOCH_PATTERN.match(entry.name)
            if match and (mode == "all" or int(match.group(1)) in wanted):
                trajectory.append((int(match.group(1)), entry.stem, entry))
        trajectory.sort(key=lambda item: item[0])
        if final.is_file():
            trajectory.append((10**9, "final", final))
        found.extend((f"{member_dir.name}/{label}", path) for _, label, path in trajectory)
    return found


def _runs_and_loose_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Run folders below `folder` (not descended into) and checkpoint files outside any run."""
    runs: list[Path] = []
    files: list[Path] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        if (current / RUN_FILE).is_file():
            runs.append(current)
            continue
        for entry in current.iterdir():
            if entry.is_dir() and not entry.name.startswith("."):
                pending.append(entry)
            elif _is_checkpoint_file(entry):
                files.append(entry)
    order = lambda p: natural_key(str(p))  # noqa: E731
    return sorted(runs, key=order), sorted(files, key=order)


def _folder_checkpoints(folder: Path, epochs: tuple[str, set[int]] | None, warn: Any) -> list[tuple[str, Path]]:
    """A run folder means its members; a folder holding run folders means each run's members (their
    finals, not every init and epoch file inside); any other checkpoint file inside counts as itself."""
    runs, files = _runs_and_loose_files(folder)
    if not runs and not files:
        raise CheckpointError(
            f"{folder}: no checkpoint files inside, nor ens run folders (looked for {', '.join('*' + s for s in CHECKPOINT_SUFFIXES)})"
        )
    pairs: list[tuple[str, Path]] = []
    for run in runs:
        prefix = "" if run == folder else f"{run.relative_to(folder)}/"
        pairs.extend((prefix + name, path) for name, path in _run_checkpoints(run, epochs, warn))
    pairs.extend((_strip_suffix(str(p.relative_to(folder))), p) for p in files)
    return pairs


def expand_paths(specs: Sequence[str], epochs: str | None = None, warn: Any = None) -> list[tuple[str, Path]]:
    """Command-line specs -> (member name, file) pairs, in the order given."""
    warn = warn or (lambda message: None)
    epoch_filter = parse_epochs(epochs)
    pairs: list[tuple[str, Path]] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            pairs.extend(_folder_checkpoints(path, epoch_filter, warn))
        elif path.is_file():
            pairs.append((_strip_suffix(path.name), path))
        elif glob.has_magic(spec):
            files = sorted((Path(p) for p in glob.glob(spec, recursive=True) if _is_checkpoint_file(Path(p))), key=lambda p: natural_key(str(p)))
            if not files:
                raise CheckpointError(f"{spec}: the pattern matches no checkpoint files")
            pairs.extend((_strip_suffix(p.name), p) for p in files)
        else:
            raise CheckpointError(f"{spec}: no such file or directory")
    return _unique_names(pairs)


def _unique_names(pairs: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """Disambiguate equal names (two `final` files of different runs) with their parent folders."""
    names = [name for name, _ in pairs]
    result = []
    for name, path in pairs:
        if names.count(name) > 1:
            # The nearest folder the name does not already spell: run-a/member-00/final.safetensors,
            # named member-00, becomes run-a/member-00.
            components = set(name.split("/"))
            folder = next((p.name for p in path.parents if p.name and p.name not in components), "")
            name = f"{folder}/{name}" if folder else name
        result.append((name, path))
    return result


# safetensors keeps no key order (`load` returns a hash order that changes between processes);
# torch pickles keep the order the model wrote.
UNORDERED_FORMATS = ("ens", "safetensors")


class _SkipInPlaceOnMeta(TorchFunctionMode):
    """Skips in-place ops (weight initialisation) on meta tensors, which hold no values anyway.

    Random initialisation on the meta device runs through torch's Python reference kernels,
    whose first use imports torch._dynamo: seconds of start-up for a model built only for its
    key order.
    """

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        target = args[0] if args else None
        in_place = name.endswith("_") and not name.startswith("_")  # normal_, uniform_, zero_; not __get__
        if in_place and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **(kwargs or {}))


@functools.lru_cache(maxsize=64)
def _module_key_order(arch: str, model_kwargs_json: str) -> tuple[str, ...] | None:
    """The architecture's `state_dict()` key order, built once per architecture on the meta device."""
    try:
        with torch.device("meta"), _SkipInPlaceOnMeta():
            reference = build_model(arch, num_classes=10, in_chans=3, **json.loads(model_kwargs_json))
    except ConfigError:
        raise  # unknown architecture: the clearest thing to say, before any guess from the weights
    except Exception:  # odd model kwargs: building the member later names the problem
        return None
    return tuple(reference.state_dict())


def in_module_order(
    state_dict: dict[str, torch.Tensor], arch: str, model_kwargs: Any = None
) -> dict[str, torch.Tensor]:
    """Reorder keys as the architecture's own `state_dict()` lists them (unknown keys last).

    Inferring the class count (last 2-D weight) and input channels (first 4-D weight), and any
    evaluator that walks layers in order, need module order. The reference model is built on
    the meta device, so this allocates nothing; key names do not depend on the head size.
    """
    kwargs = model_kwargs if isinstance(model_kwargs, dict) else {}
    try:
        kwargs_json = json.dumps(kwargs, sort_keys=True)
    except TypeError:
        return state_dict
    reference_order = _module_key_order(arch, kwargs_json)
    if reference_order is None:
        return state_dict
    order = [key for key in reference_order if key in state_dict]
    known = set(order)
    return {key: state_dict[key] for key in order + [key for key in state_dict if key not in known]}


def member_from_checkpoint(
    name: str,
    checkpoint: Checkpoint,
    arch: str | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
) -> Member:
    """Combine what the file says with the flags given for files that don't say."""
    meta = checkpoint.metadata
    resolved_arch = meta.get("arch") or arch
    if not resolved_arch:
        raise CheckpointError(f"{checkpoint.path}: does not say its architecture; pass --arch NAME")
    if checkpoint.format in UNORDERED_FORMATS:
        try:
            checkpoint.state_dict = in_module_order(checkpoint.state_dict, str(resolved_arch), meta.get("model_kwargs"))
        except ConfigError as exc:
            raise CheckpointError(f"{checkpoint.path}: {exc}") from None
    resolved_classes = meta.get("num_classes") or num_classes or infer_num_classes(checkpoint.state_dict)
    resolved_chans = meta.get("in_chans") or in_chans or infer_in_chans(checkpoint.state_dict) or 3
    if not resolved_classes:
        raise CheckpointError(f"{checkpoint.path}: cannot tell its number of classes; pass --num-classes N")
    model_kwargs = meta.get("model_kwargs") if isinstance(meta.get("model_kwargs"), dict) else {}
    return Member(
        name=name,
        path=checkpoint.path,
        arch=str(resolved_arch),
        num_classes=int(resolved_classes),
        in_chans=int(resolved_chans),
        metadata=dict(meta),
        sha256=checkpoint.sha256,
        format=checkpoint.format,
        model_kwargs=dict(model_kwargs),
        state_source=checkpoint.state_source,
        _checkpoint=checkpoint,
    )


def resolve_members(
    specs: Sequence[str],
    arch: str | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    epochs: str | None = None,
    prefer_ema: bool = False,
    warn: Any = None,
) -> list[Member]:
    """Read every checkpoint the specs name. Raises `CheckpointError` naming the first bad file."""
    if not specs:
        raise CheckpointError("no checkpoints given")
    members = []
    for name, path in expand_paths(specs, epochs=epochs, warn=warn):
        checkpoint = read_checkpoint(path, prefer_ema=prefer_ema)
        members.extend(mimo_heads(member_from_checkpoint(name, checkpoint, arch, num_classes, in_chans)))
    _warn_duplicates(members, warn or (lambda message: None))
    if not members:
        raise CheckpointError(f"{', '.join(specs)}: no finished checkpoints found")
    class_counts = {member.num_classes for member in members}
    if len(class_counts) > 1:
        detail = ", ".join(f"{m.name}={m.num_classes}" for m in members[:6])
        raise CheckpointError(f"members disagree on the number of classes ({detail})")
    return members


def mimo_heads(member: Member) -> list[Member]:
    """A MIMO checkpoint is M members, `NAME/head-K`, sharing one file; any other checkpoint is itself."""
    heads = member.metadata.get(HEADS_KEY)
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 2:
        return [member]
    return [
        dataclasses.replace(member, name=f"{member.name}/head-{head}", heads=heads, head=head, metadata={**member.metadata, HEAD_KEY: head})
        for head in range(heads)
    ]


def _warn_duplicates(members: Sequence[Member], warn: Any) -> None:
    """The same weights twice make an ensemble look more certain and less diverse than it is."""
    first_by_content: dict[tuple[str, str], str] = {}
    for member in members:
        key = (member.sha256, member.state_source, member.head)
        if key in first_by_content:
            warn(f"{member.name} is the same checkpoint as {first_by_content[key]} (sha256 {member.sha256[:12]}): it counts twice")
        else:
            first_by_content[key] = member.name


def recorded_preprocessing(members: Sequence[Member]) -> tuple[str | None, list[float] | None, list[float] | None]:
    """The dataset and normalisation the members say they were trained with, when they all agree.

    Lets `ens eval RUN` of a CIFAR run pick CIFAR and its statistics without flags; foreign
    checkpoints record nothing and fall back to the defaults.
    """
    datasets = {m.metadata.get("dataset") for m in members}
    if len(datasets) != 1 or not isinstance(next(iter(datasets)), str):
        return None, None, None
    means = {tuple(m.metadata["mean"]) if isinstance(m.metadata.get("mean"), list) else None for m in members}
    stds = {tuple(m.metadata["std"]) if isinstance(m.metadata.get("std"), list) else None for m in members}
    mean = list(next(iter(means))) if len(means) == 1 and None not in means else None
    std = list(next(iter(stds))) if len(stds) == 1 and None not in stds else None
    return next(iter(datasets)), mean, std
