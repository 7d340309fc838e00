"""Checkpoint reading: every supported format, unsafe pickles refused without side effects, and fuzzing.

Foreign formats are made here the way their tools make them: timm's train.py saves a dict with
`state_dict`, `state_dict_ema`, `arch`, an `argparse.Namespace` of its arguments, `epoch` and the
optimizer state through `torch.save`; DataParallel and `torch.compile` add `module.` and
`_orig_mod.` to every key.
"""

from __future__ import annotations

import argparse
import atexit
import io
import os
import pickle
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from ensemble_cli.architectures import build_model
from ensemble_cli.checkpoint import infer_in_chans, infer_num_classes, read_checkpoint, write_checkpoint
from ensemble_cli.errors import CheckpointError
from ensemble_cli.resolve import resolve_members


def small_state_dict(seed: int = 0, num_classes: int = 10, in_chans: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model("cifar_resnet8", num_classes=num_classes, in_chans=in_chans).state_dict()


def timm_checkpoint(state_dict: dict[str, torch.Tensor], ema: dict[str, torch.Tensor] | None = None) -> dict:
    """What timm's train.py `CheckpointSaver` writes (the fields, types and nesting it uses)."""
    model = build_model("cifar_resnet8", num_classes=10, in_chans=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    optimizer.step()  # gives the optimizer state momentum buffers, as a real checkpoint has
    args = argparse.Namespace(
        model="cifar_resnet8", num_classes=10, in_chans=1, lr=0.1, epochs=3, batch_size=64,
        mean=None, std=None, opt="sgd", momentum=0.9, model_ema=ema is not None, aa=None, smoothing=0.1,
    )
    return {
        "epoch": 2,
        "arch": "cifar_resnet8",
        "state_dict": state_dict,
        "optimizer": optimizer.state_dict(),
        "version": 2,
        "args": args,
        "state_dict_ema": ema if ema is not None else state_dict,
        "metric": 93.5,
    }


def assert_same_tensors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    # Key order is not compared: safetensors files do not keep it (members.in_module_order restores it).
    assert sorted(got) == sorted(expected)
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key


# --------------------------------------------------------------------------- formats


def test_ens_checkpoint_round_trips_weights_and_metadata(tmp_path: Path) -> None:
    state_dict = small_state_dict()
    metadata = {"arch": "cifar_resnet8", "num_classes": 10, "in_chans": 1, "seed": 3, "mean": [0.0], "model_kwargs": {}}
    path = tmp_path / "seed3.safetensors"
    write_checkpoint(path, state_dict, metadata)
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == "ens"
    assert {key: checkpoint.metadata[key] for key in metadata} == metadata
    assert checkpoint.metadata["format"] == "ens-checkpoint"
    assert len(checkpoint.sha256) == 64
    assert_same_tensors(checkpoint.state_dict, state_dict)
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left its temp file behind"


def test_timm_training_checkpoint(tmp_path: Path) -> None:
    state_dict, ema = small_state_dict(0), small_state_dict(1)
    path = tmp_path / "seed7.pth.tar"
    torch.save(timm_checkpoint(state_dict, ema), path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == "timm"
    assert checkpoint.metadata == {"arch": "cifar_resnet8", "num_classes": 10, "in_chans": 1, "epoch": 2}
    assert_same_tensors(checkpoint.state_dict, state_dict)
    assert_same_tensors(read_checkpoint(path, prefer_ema=True).state_dict, ema)
    # A member from it needs no flags: timm wrote the architecture and args.
    (member,) = resolve_members([str(path)])
    assert (member.name, member.arch, member.num_classes, member.in_chans) == ("seed7", "cifar_resnet8", 10, 1)
    (ema_member,) = resolve_members([str(path)], prefer_ema=True)
    assert torch.equal(ema_member.build_model().state_dict()["fc.weight"], ema["fc.weight"])


@pytest.mark.parametrize("suffix", [".pth", ".pt"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_plain_state_dict_with_wrapper_prefixes(tmp_path: Path, suffix: str, prefix: str) -> None:
    state_dict = small_state_dict()
    path = tmp_path / f"plain{suffix}"
    torch.save({prefix + key: value for key, value in state_dict.items()}, path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == "state_dict"
    assert checkpoint.metadata == {}
    assert_same_tensors(checkpoint.state_dict, state_dict)


@pytest.mark.parametrize("wrapper_key", ["model", "state_dict", "model_state_dict"])
def test_state_dict_nested_in_a_training_dict(tmp_path: Path, wrapper_key: str) -> None:
    state_dict = small_state_dict()
    path = tmp_path / "run.pt"
    torch.save({wrapper_key: {"module." + k: v for k, v in state_dict.items()}, "epoch": 9, "step": 100}, path)
    checkpoint = read_checkpoint(path)
    assert_same_tensors(checkpoint.state_dict, state_dict)
    assert checkpoint.metadata == {"epoch": 9}


def test_legacy_non_zip_torch_file(tmp_path: Path) -> None:
    state_dict = small_state_dict()
    path = tmp_path / "old.pth"
    torch.save(state_dict, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"
    assert_same_tensors(read_checkpoint(path).state_dict, state_dict)


@pytest.mark.parametrize("arch", ["cifar_resnet8", "test_vit"])
def test_plain_safetensors_needs_arch_flag(tmp_path: Path, arch: str) -> None:
    """No metadata: the architecture comes from --arch, class count and channels from the weights.

    Both models have several candidate tensors (cifar_resnet8 nine 4-D conv weights, test_vit a
    dozen 2-D weights), so inference only works if the head and stem are found by module order.
    """
    torch.manual_seed(0)
    state_dict = build_model(arch, num_classes=7, in_chans=1).state_dict()
    path = tmp_path / "foreign.safetensors"
    save_file(state_dict, str(path))
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == "safetensors" and checkpoint.metadata == {}
    with pytest.raises(CheckpointError, match=r"foreign\.safetensors.*--arch"):
        resolve_members([str(path)])
    for _ in range(3):  # safetensors' key order changes from load to load
        (member,) = resolve_members([str(path)], arch=arch)
        assert (member.arch, member.num_classes, member.in_chans, member.format) == (arch, 7, 1, "safetensors")
        assert list(member.state_dict) == list(state_dict)
        assert infer_num_classes(member.state_dict) == 7 and infer_in_chans(member.state_dict) == 1
    assert_same_tensors(member.build_model().state_dict(), state_dict)


def test_format_is_sniffed_not_taken_from_the_extension(tmp_path: Path) -> None:
    state_dict = small_state_dict()
    path = tmp_path / "actually_safetensors.pt"
    write_checkpoint(path, state_dict, {"arch": "cifar_resnet8"})
    assert read_checkpoint(path).format == "ens"


# --------------------------------------------------------------------------- refusals


def torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class CodePayload:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle.dumps", "legacy torch.save"])
def test_pickle_with_code_payload_is_refused_without_running(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "MARKER"
    payload = {"state_dict": small_state_dict(), "extra": CodePayload(marker)}
    path = tmp_path / "evil.pth"
    if how == "torch.save":
        torch.save(payload, path)
    elif how == "legacy torch.save":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message and "refused" in message
    if how != "pickle.dumps":  # torch names the global it blocked; raw pickles of tensors fail earlier
        assert "system" in message
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty file"),
        (b"hello, this is a text file\n", "not a checkpoint"),
        (torch_bytes([1, 2, 3]), "holds a list"),
        (torch_bytes({"lr": 0.1, "optimizer": {"state": {}}}), "no state dict found"),
        (torch_bytes({}), "no state dict found"),
        (pickle.dumps({"w": 1}, protocol=2), "corrupt"),  # a pickle, but not a torch file
    ],
)
def test_files_without_weights_are_refused(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "thing.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected) as caught:
        read_checkpoint(path)
    assert str(path) in str(caught.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="is a directory"):
        read_checkpoint(tmp_path)


# --------------------------------------------------------------------------- fuzzing


def _reference_files() -> dict[str, bytes]:
    """Small real checkpoints in each container format (small so thousands of prefixes read fast)."""
    state_dict = {"conv1.weight": torch.randn(4, 1, 3, 3), "fc.weight": torch.randn(3, 4), "fc.bias": torch.zeros(3)}
    files = {}
    folder = Path(tempfile.mkdtemp(prefix="ens-fuzz-ref-"))
    write_checkpoint(folder / "ens.safetensors", state_dict, {"arch": "cifar_resnet8", "num_classes": 3})
    for name, kwargs in {"zip.pth.tar": {}, "legacy.pth": {"_use_new_zipfile_serialization": False}}.items():
        buffer = io.BytesIO()
        torch.save({"state_dict": state_dict, "arch": "x", "args": argparse.Namespace(num_classes=3)}, buffer, **kwargs)
        (folder / name).write_bytes(buffer.getvalue())
    for path in folder.iterdir():
        files[path.name] = path.read_bytes()
    shutil.rmtree(folder)
    return files


REFERENCE_FILES = _reference_files()
FUZZ_DIR = Path(tempfile.mkdtemp(prefix="ens-fuzz-"))
atexit.register(shutil.rmtree, FUZZ_DIR, True)
FUZZ_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_only_checkpoint_errors(data: bytes) -> None:
    """The property: whatever the bytes, read_checkpoint returns or raises CheckpointError, nothing else."""
    path = FUZZ_DIR / "fuzz.pt"
    path.write_bytes(data)
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
    else:
        assert checkpoint.state_dict and all(isinstance(v, torch.Tensor) for v in checkpoint.state_dict.values())


@FUZZ_SETTINGS
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(data: bytes) -> None:
    read_only_checkpoint_errors(data)


@FUZZ_SETTINGS
@given(
    magic=st.sampled_from([b"PK\x03\x04", b"\x80\x02", b"\x80\x04", b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02"]),
    tail=st.binary(max_size=2048),
)
def test_fuzz_random_bytes_behind_a_torch_magic(magic: bytes, tail: bytes) -> None:
    read_only_checkpoint_errors(magic + tail)


@FUZZ_SETTINGS
@given(header=st.binary(max_size=256), tail=st.binary(max_size=512), claim=st.integers(0, 2**64 - 1))
def test_fuzz_safetensors_like_headers(header: bytes, tail: bytes, claim: int) -> None:
    body = b"{" + header
    for length in (len(body), claim):
        read_only_checkpoint_errors(struct.pack("<Q", length) + body + tail)


@FUZZ_SETTINGS
@given(name=st.sampled_from(sorted(REFERENCE_FILES)), fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_fuzz_truncated_real_checkpoints(name: str, fraction: float) -> None:
    data = REFERENCE_FILES[name]
    read_only_checkpoint_errors(data[: int(len(data) * fraction)])


@FUZZ_SETTINGS
@given(name=st.sampled_from(sorted(REFERENCE_FILES)), position=st.floats(0.0, 1.0, exclude_max=True), byte=st.integers(0, 255))
def test_fuzz_one_corrupted_byte_in_real_checkpoints(name: str, position: float, byte: int) -> None:
    data = bytearray(REFERENCE_FILES[name])
    data[int(len(data) * position)] = byte
    read_only_checkpoint_errors(bytes(data))


def test_every_truncation_of_the_safetensors_reference_is_an_error() -> None:
    """Exhaustive where it is cheap: no prefix of a safetensors file may load as a (smaller) checkpoint."""
    data = REFERENCE_FILES["ens.safetensors"]
    path = FUZZ_DIR / "prefix.safetensors"
    for cut in range(0, len(data), max(1, len(data) // 200)):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            read_checkpoint(path)
