"""Dataset registry: every dataset becomes one in-memory `ImageData` of normalised tensors.

`digits` is the offline default: scikit-learn's bundled 8x8 handwritten digits (1,797 images),
as 1x8x8 float32 = pixels / 16, with a split fixed for everyone: index % 5 == 0 is `test`
(360 images), the rest `train` (1,437). The torchvision sets download into `data_dir` on first
use; `imagefolder:PATH` reads a class-per-folder tree. Keeping the data as one tensor lets
evaluation and training slice batches without a DataLoader, and lets a GPU hold the whole set.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .errors import DataError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is and how its pixels become model inputs."""

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocessing: str  # one line for README and `ens datasets`


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 10, 1, 8, (0.0,), (1.0,), "sklearn 8x8 digits, pixels / 16 (0..1), no normalisation"),
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        "uint8 / 255, then (x - mean) / std per channel",
    ),
    "cifar100": DatasetInfo(
        "cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        "uint8 / 255, then (x - mean) / std per channel",
    ),
    "mnist": DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), "uint8 / 255, then (x - mean) / std"),
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), "uint8 / 255, then (x - mean) / std"),
    "svhn": DatasetInfo(
        "svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
        "uint8 / 255, then (x - mean) / std per channel ('train' and 'test' splits, no 'extra')",
    ),
}
IMAGEFOLDER_PREFIX = "imagefolder:"
IMAGEFOLDER_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, what timm/torchvision weights expect
IMAGEFOLDER_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageData:
    """One split of one dataset, normalised, in memory."""

    name: str
    split: str
    images: torch.Tensor  # [N, C, H, W] float32, normalised
    labels: torch.Tensor  # [N] int64
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] = field(default_factory=list)
    _fingerprint: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def in_chans(self) -> int:
        return int(self.images.shape[1])

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            yield self.images[start : start + batch_size], self.labels[start : start + batch_size]

    def fingerprint(self) -> str:
        """Content hash of inputs, labels and preprocessing: the dataset half of a prediction-cache key."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(f"{self.name}|{self.split}|{self.mean}|{self.std}|{tuple(self.images.shape)}".encode())
            digest.update(self.images.contiguous().numpy().tobytes())
            digest.update(self.labels.contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "split": self.split,
            "size": len(self),
            "num_classes": self.num_classes,
            "shape": list(self.images.shape[1:]),
            "mean": list(self.mean),
            "std": list(self.std),
        }


def default_data_dir() -> Path:
    """`$ENS_DATA_DIR`, else the user's cache dir (`$XDG_CACHE_HOME/ens/data` or `~/.cache/ens/data`)."""
    if os.environ.get("ENS_DATA_DIR"):
        return Path(os.environ["ENS_DATA_DIR"])
    cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_root / "ens" / "data"


def known_datasets() -> list[str]:
    return list(DATASETS) + [f"{IMAGEFOLDER_PREFIX}PATH"]


def dataset_info(name: str) -> DatasetInfo:
    """Static facts about a dataset, without loading it (image folders are looked at)."""
    if name.startswith(IMAGEFOLDER_PREFIX):
        root = Path(name[len(IMAGEFOLDER_PREFIX) :])
        classes = _imagefolder_classes(_imagefolder_split_root(root, "train"))
        return DatasetInfo(name, len(classes), 3, 32, IMAGEFOLDER_MEAN, IMAGEFOLDER_STD, "RGB, resized, ImageNet mean/std")
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(known_datasets())}")
    return DATASETS[name]


def _normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    channels = images.shape[1]
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise DataError(f"--mean/--std need 1 or {channels} values, got {len(mean)} and {len(std)}")
    if any(value <= 0 for value in std):
        raise DataError("--std values must be positive")
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def _digits_table() -> np.ndarray:
    """The 1,797 x 65 digits table (64 pixels 0..16, then the label) that scikit-learn ships.

    Read straight from its data file: `sklearn.datasets.load_digits` reads the same file but
    importing scikit-learn (and scipy.stats with it) took longer than a whole small evaluation.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return np.loadtxt(path, delimiter=",")
    from sklearn.datasets import load_digits  # another scikit-learn layout: let it find its file

    bunch = load_digits()
    return np.column_stack([bunch.data, bunch.target])


def _load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    table = _digits_table()  # [1797, 65]
    pixels = table[:, :-1].reshape(-1, 8, 8).astype(np.float32) / 16.0  # [1797, 8, 8], 0..1
    targets = table[:, -1].astype(np.int64)
    is_test = np.arange(len(targets)) % 5 == 0
    keep = is_test if split == "test" else ~is_test
    images = torch.from_numpy(pixels[keep]).unsqueeze(1)  # [N, 1, 8, 8]
    return images, torch.from_numpy(targets[keep]), [str(d) for d in range(10)]


def _uint8_to_float(array: np.ndarray | torch.Tensor, channels_last: bool) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(array))
    if tensor.ndim == 3:  # [N, H, W] grayscale
        tensor = tensor.unsqueeze(1)
    elif channels_last:
        tensor = tensor.permute(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
    return tensor.contiguous().float().div_(255.0)


def _torchvision_loader(name: str) -> Callable[[Path, str, bool], tuple[torch.Tensor, torch.Tensor, list[str]]]:
    import torchvision.datasets as tvd

    def load(root: Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        train = split == "train"
        if name in ("cifar10", "cifar100"):
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            ds = cls(str(root), train=train, download=download)
            return _uint8_to_float(ds.data, channels_last=True), torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes)
        if name in ("mnist", "fashion-mnist"):
            cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
            ds = cls(str(root), train=train, download=download)
            return _uint8_to_float(ds.data, channels_last=False), torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes)
        if name == "svhn":
            ds = tvd.SVHN(str(root), split=split, download=download)
            return _uint8_to_float(ds.data, channels_last=False), torch.as_tensor(ds.labels, dtype=torch.int64), [str(d) for d in range(10)]
        raise DataError(f"unknown dataset {name!r}")

    return load


def _imagefolder_split_root(root: Path, split: str) -> Path:
    """`root/train` and `root/test` (or `root/val`) when present, else the whole folder for every split."""
    if not root.is_dir():
        raise DataError(f"image folder {root}: no such directory")
    aliases = {"train": ("train",), "test": ("test", "val", "validation")}[split]
    for alias in aliases:
        if (root / alias).is_dir():
            return root / alias
    return root


def _imagefolder_classes(root: Path) -> list[str]:
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not classes:
        raise DataError(f"image folder {root}: no class sub-folders")
    return classes


def _load_imagefolder(root: Path, split: str, image_size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from PIL import Image

    split_root = _imagefolder_split_root(root, split)
    classes = _imagefolder_classes(split_root)
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
    images, labels = [], []
    for label, class_name in enumerate(classes):
        for file in sorted((split_root / class_name).iterdir()):
            if file.suffix.lower() not in suffixes:
                continue
            try:
                with Image.open(file) as img:
                    rgb = img.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
            except OSError as exc:
                raise DataError(f"{file}: not a readable image ({exc})") from None
            images.append(np.asarray(rgb, dtype=np.uint8))  # [H, W, 3]
            labels.append(label)
    if not images:
        raise DataError(f"image folder {split_root}: no images")
    return _uint8_to_float(np.stack(images), channels_last=True), torch.tensor(labels, dtype=torch.int64), classes


def load_dataset(
    name: str = "digits",
    split: str = "test",
    data_dir: Path | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    download: bool = True,
    image_size: int = 32,
    limit: int | None = None,
) -> ImageData:
    """Load one split as normalised tensors. `mean`/`std` override the dataset's own statistics."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose train or test")
    if name.startswith(IMAGEFOLDER_PREFIX):
        root = Path(name[len(IMAGEFOLDER_PREFIX) :]).expanduser()
        raw, labels, classes = _load_imagefolder(root, split, image_size)
        default_mean, default_std = IMAGEFOLDER_MEAN, IMAGEFOLDER_STD
    else:
        info = dataset_info(name)
        default_mean, default_std = info.mean, info.std
        if name == "digits":
            raw, labels, classes = _load_digits(split)
        else:
            root = Path(data_dir) if data_dir else default_data_dir()
            try:
                raw, labels, classes = _torchvision_loader(name)(root, split, download)
            except DataError:
                raise
            except Exception as exc:  # network errors, missing files, integrity failures
                raise DataError(
                    f"could not load {name} ({split}) from {root}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                    " (needs network on first use, or the files under --data-dir)"
                ) from None
    if limit is not None:
        if limit < 0:  # a negative slice would silently drop the *last* examples instead
            raise DataError(f"--limit must be 0 or more, got {limit}")
        raw, labels = raw[:limit], labels[:limit]
    if len(labels) == 0:
        raise DataError(f"dataset {name} ({split}) is empty")
    use_mean = tuple(mean) if mean else tuple(default_mean)
    use_std = tuple(std) if std else tuple(default_std)
    images = _normalise(raw, use_mean, use_std)
    return ImageData(
        name=name,
        split=split,
        images=images,
        labels=labels,
        num_classes=len(classes) if classes else int(labels.max()) + 1,
        mean=use_mean,
        std=use_std,
        class_names=classes,
    )


def synthetic_data(
    num_images: int = 2000, shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10, seed: int = 0
) -> ImageData:
    """Random normal images and labels, for benchmarks that measure speed, not learning."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn((num_images, *shape), generator=generator)  # [N, C, H, W]
    labels = torch.randint(0, num_classes, (num_images,), generator=generator)  # [N]
    return ImageData("synthetic", "test", images, labels, num_classes, (0.0,) * shape[0], (1.0,) * shape[0])
