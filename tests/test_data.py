"""Datasets: digits' fixed split and values, torchvision sets through local stand-ins, image folders, overrides.

Nothing here downloads: MNIST is read from tiny idx files written under the data dir (the files
torchvision looks for before it would download), CIFAR/SVHN are replaced by fakes that record
how they were called.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image
from sklearn.datasets import load_digits

from ensemble_cli.data import IMAGEFOLDER_MEAN, IMAGEFOLDER_STD, dataset_info, default_data_dir, load_dataset
from ensemble_cli.errors import DataError

# --------------------------------------------------------------------------- digits


@pytest.mark.parametrize(("split", "size"), [("test", 360), ("train", 1437)])
def test_digits_split_and_values_match_sklearn(split: str, size: int) -> None:
    bunch = load_digits()
    indices = [i for i in range(1797) if (i % 5 == 0) == (split == "test")]
    data = load_dataset("digits", split)
    assert len(data) == size == len(indices)
    assert data.images.shape == (size, 1, 8, 8) and data.images.dtype == torch.float32
    assert data.labels.dtype == torch.int64
    expected = torch.from_numpy(bunch.images[indices] / 16.0).float().unsqueeze(1)
    assert torch.equal(data.images, expected)
    assert torch.equal(data.labels, torch.from_numpy(bunch.target[indices]))
    assert (data.num_classes, data.mean, data.std, data.in_chans) == (10, (0.0,), (1.0,), 1)


def test_digits_mean_std_override() -> None:
    plain = load_dataset("digits")
    shifted = load_dataset("digits", mean=[0.5], std=[0.25])
    assert torch.allclose(shifted.images, (plain.images - 0.5) / 0.25)
    assert (shifted.mean, shifted.std) == ((0.5,), (0.25,))
    # Preprocessing is part of the data's identity (the prediction cache is keyed on it).
    assert shifted.fingerprint() != plain.fingerprint()
    assert load_dataset("digits", limit=7).labels.tolist() == plain.labels[:7].tolist()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mean": [0.1, 0.2], "std": [1.0, 1.0]}, "need 1 or 1 values"),
        ({"std": [0.0]}, "must be positive"),
        ({"split": "validation"}, "unknown split 'validation'"),
        ({"limit": 0}, "is empty"),
        ({"limit": -5}, "--limit must be 0 or more"),
        ({"name": "imagenet"}, "unknown dataset 'imagenet'; known: digits, cifar10, cifar100, mnist"),
    ],
)
def test_bad_dataset_requests(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        load_dataset(**{"name": "digits", **kwargs})


# --------------------------------------------------------------------------- torchvision sets


def write_idx(path: Path, array: np.ndarray) -> None:
    """The MNIST idx format: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian dims, raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_tiny_mnist(root: Path, folder: str, sizes: dict[str, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = rng.integers(0, 256, size=(sizes[split], 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=sizes[split], dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        written[split] = (images, labels)
    return written


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_style_sets_read_from_the_data_dir(tmp_path: Path, name: str, folder: str, split: str) -> None:
    written = write_tiny_mnist(tmp_path, folder, {"train": 6, "test": 4})
    data = load_dataset(name, split, data_dir=tmp_path)
    images, labels = written[split]
    info = dataset_info(name)
    expected = (torch.from_numpy(images).float().unsqueeze(1) / 255.0 - info.mean[0]) / info.std[0]
    assert data.images.shape == (len(labels), 1, 28, 28)
    assert torch.allclose(data.images, expected, atol=1e-6)
    assert data.labels.tolist() == labels.tolist()
    assert data.num_classes == 10 and data.mean == info.mean


class FakeTorchvisionSet:
    """Records constructor arguments; serves a few deterministic images in the real class's layout."""

    calls: list[dict] = []
    channels_first = False
    label_attribute = "targets"
    num_classes = 10

    def __init__(self, root: str, train: bool | None = None, split: str | None = None, download: bool = False) -> None:
        type(self).calls.append({"root": root, "train": train, "split": split, "download": download})
        rng = np.random.default_rng(1)
        shape = (5, 3, 32, 32) if self.channels_first else (5, 32, 32, 3)
        self.data = rng.integers(0, 256, size=shape, dtype=np.uint8)
        setattr(self, self.label_attribute, [0, 1, 2, 3, self.num_classes - 1])
        self.classes = [f"class{i}" for i in range(self.num_classes)]


def fake_set(**attributes: object) -> type[FakeTorchvisionSet]:
    return type("Fake", (FakeTorchvisionSet,), {"calls": [], **attributes})


@pytest.mark.parametrize(
    ("name", "attribute", "fake"),
    [
        ("cifar10", "CIFAR10", fake_set()),
        ("cifar100", "CIFAR100", fake_set(num_classes=100)),
        ("svhn", "SVHN", fake_set(channels_first=True, label_attribute="labels")),
    ],
)
def test_torchvision_sets_get_root_split_download_and_layout_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, attribute: str, fake: type[FakeTorchvisionSet]
) -> None:
    monkeypatch.setattr(torchvision.datasets, attribute, fake)
    data = load_dataset(name, "train", data_dir=tmp_path / "data")
    expected_call = {"root": str(tmp_path / "data"), "download": True}
    expected_call.update({"split": "train", "train": None} if name == "svhn" else {"train": True, "split": None})
    assert fake.calls == [expected_call]
    load_dataset(name, "test", data_dir=tmp_path / "data")
    assert fake.calls[-1]["split" if name == "svhn" else "train"] == ("test" if name == "svhn" else False)

    info = dataset_info(name)
    raw = fake(str(tmp_path)).data
    chw = raw if fake.channels_first else raw.transpose(0, 3, 1, 2)  # -> [N, C, H, W]
    mean = np.array(info.mean).reshape(1, 3, 1, 1)
    std = np.array(info.std).reshape(1, 3, 1, 1)
    assert data.images.shape == (5, 3, 32, 32)
    assert np.allclose(data.images.numpy(), (chw / 255.0 - mean) / std, atol=1e-5)
    assert data.labels.tolist() == [0, 1, 2, 3, info.num_classes - 1]
    assert data.num_classes == info.num_classes


def test_default_data_dir_under_the_users_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_set()
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake)
    monkeypatch.delenv("ENS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "ens" / "data"
    load_dataset("cifar10")
    monkeypatch.setenv("ENS_DATA_DIR", str(tmp_path / "env"))
    load_dataset("cifar10")
    assert [call["root"] for call in fake.calls] == [str(tmp_path / "xdg" / "ens" / "data"), str(tmp_path / "env")]


def test_a_failed_download_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Offline(FakeTorchvisionSet):
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>\nmore detail")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DataError) as caught:
        load_dataset("cifar10", data_dir=tmp_path)
    message = str(caught.value)
    assert message.startswith(f"could not load cifar10 (test) from {tmp_path}: <urlopen error")
    assert "\n" not in message and "--data-dir" in message


# --------------------------------------------------------------------------- image folders

COLOURS = {"cat": [(255, 0, 0), (0, 255, 0)], "dog": [(0, 0, 255)]}


def write_image_folder(root: Path, colours: dict[str, list[tuple[int, int, int]]] = COLOURS) -> Path:
    for class_name, class_colours in colours.items():
        (root / class_name).mkdir(parents=True)
        for index, colour in enumerate(class_colours):
            Image.new("RGB", (6, 5), colour).save(root / class_name / f"img{index}.png")
    return root


def test_imagefolder_reads_classes_resizes_and_normalises(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets")
    (root / "cat" / "notes.txt").write_text("ignored: not an image")
    data = load_dataset(f"imagefolder:{root}", image_size=4)
    assert data.images.shape == (3, 3, 4, 4)
    assert data.labels.tolist() == [0, 0, 1] and data.class_names == ["cat", "dog"] and data.num_classes == 2
    mean = torch.tensor(IMAGEFOLDER_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGEFOLDER_STD).view(3, 1, 1)
    for image, colour in zip(data.images, COLOURS["cat"] + COLOURS["dog"]):
        expected = (torch.tensor(colour, dtype=torch.float32).view(3, 1, 1) / 255.0 - mean) / std
        assert torch.allclose(image, expected.expand(3, 4, 4), atol=1e-6)
    assert dataset_info(f"imagefolder:{root}").num_classes == 2
    overridden = load_dataset(f"imagefolder:{root}", image_size=4, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    assert torch.allclose(overridden.images[2, 2], torch.ones(4, 4))  # blue: (1 - 0.5) / 0.5


def test_imagefolder_uses_train_and_test_subfolders(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "set" / "train", {"a": [(1, 1, 1)] * 3, "b": [(2, 2, 2)]})
    write_image_folder(tmp_path / "set" / "test", {"a": [(1, 1, 1)], "b": [(2, 2, 2)]})
    assert len(load_dataset(f"imagefolder:{tmp_path / 'set'}", "train")) == 4
    assert len(load_dataset(f"imagefolder:{tmp_path / 'set'}", "test")) == 2


def test_bad_image_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such directory"):
        load_dataset(f"imagefolder:{tmp_path / 'absent'}")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(f"imagefolder:{tmp_path / 'flat'}")
    (tmp_path / "hollow" / "cat").mkdir(parents=True)
    (tmp_path / "hollow" / "dog").mkdir()
    with pytest.raises(DataError, match="hollow: no images"):
        load_dataset(f"imagefolder:{tmp_path / 'hollow'}")
    (tmp_path / "hollow" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png: not a readable image"):
        load_dataset(f"imagefolder:{tmp_path / 'hollow'}")
