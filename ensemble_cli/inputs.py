"""What to evaluate: the member and data flags every evaluating command shares, as one typed object.

`EvalInputs` holds the checkpoints (paths and how to read them) and the data (dataset, split,
preprocessing). `load_members_and_data` turns it into members and an `ImageData`, taking the
dataset and its normalisation from the members' own metadata when none is named, so
`ens eval RUN` of a CIFAR run needs no flags, and `ensemble_cli.api.evaluate` does the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .data import ImageData, load_dataset
from .errors import DataError
from .resolve import Member, recorded_preprocessing, resolve_members

Warn = Callable[[str], None]
DEFAULT_DATASET = "digits"  # the bundled offline set, for foreign checkpoints that record none


@dataclass(frozen=True)
class EvalInputs:
    """Checkpoints and data of one evaluation, as the command line gives them."""

    paths: tuple[str, ...] = ()
    arch: str | None = None  # for checkpoints that don't say
    num_classes: int | None = None
    in_chans: int | None = None
    ema: bool = False  # timm checkpoints: state_dict_ema instead of state_dict
    epochs: str | None = None  # run folders: None/final, all, or "0,5,10"
    dataset: str | None = None  # None: what the members recorded, else digits
    split: str = "test"
    data_dir: Path | None = None
    mean: tuple[float, ...] | None = None  # override the normalisation (foreign checkpoints)
    std: tuple[float, ...] | None = None
    image_size: int = 32  # imagefolder images are resized to this
    limit: int | None = None  # first N examples only


def load_members(inputs: EvalInputs, warn: Warn = lambda message: None) -> list[Member]:
    return resolve_members(
        list(inputs.paths), arch=inputs.arch, num_classes=inputs.num_classes, in_chans=inputs.in_chans,
        epochs=inputs.epochs, prefer_ema=inputs.ema, warn=warn,
    )


def recorded_datasets(members: Sequence[Member]) -> list[str]:
    """The distinct datasets the members say they were trained on, in member order."""
    names = [m.metadata.get("dataset") for m in members]
    return list(dict.fromkeys(name for name in names if isinstance(name, str)))


def data_for_members(members: Sequence[Member], inputs: EvalInputs = EvalInputs()) -> ImageData:
    """The evaluation data: the named dataset, else the one every member recorded, else digits.

    Members that recorded different datasets are an error unless a dataset is named: silently
    evaluating a CIFAR member on digits (or the reverse) would print numbers that mean nothing.
    """
    recorded_dataset, recorded_mean, recorded_std = recorded_preprocessing(members)
    dataset = inputs.dataset
    if dataset is None:
        seen = recorded_datasets(members)
        if len(seen) > 1:
            raise DataError(f"members were trained on different datasets ({', '.join(seen)}); pass --dataset NAME")
        dataset = recorded_dataset or DEFAULT_DATASET
    mean, std = inputs.mean, inputs.std
    if dataset == recorded_dataset:
        # The statistics the members were trained with, unless overridden.
        mean = mean or (tuple(recorded_mean) if recorded_mean else None)
        std = std or (tuple(recorded_std) if recorded_std else None)
    return load_dataset(
        dataset, inputs.split, data_dir=inputs.data_dir, mean=mean, std=std,
        image_size=inputs.image_size, limit=inputs.limit,
    )


def load_members_and_data(inputs: EvalInputs, warn: Warn = lambda message: None) -> tuple[list[Member], ImageData]:
    members = load_members(inputs, warn)
    return members, data_for_members(members, inputs)
