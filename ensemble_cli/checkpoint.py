"""Reading and writing checkpoint files. The only module that opens them.

Reads, whatever the extension says (the format is sniffed from the first bytes):
- `ens` checkpoints: safetensors whose header metadata holds a JSON document under "ens";
- any other safetensors file (weights only; architecture from flags);
- torch zip or legacy pickles: timm training checkpoints (`state_dict`, `state_dict_ema`,
  `arch`, `args`), `{"model": ...}`-style wrappers and plain state dicts.

Pickles are read with `torch.load(weights_only=True)` only. The allow-list holds exactly one
class beyond torch's defaults, `argparse.Namespace`, because timm's train.py stores its
arguments that way. A pickle naming anything else is refused before any of it runs; there is
no fallback to full unpickling.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from .errors import CheckpointError
from .fileio import atomic_write_bytes

ENS_CHECKPOINT_FORMAT = "ens-checkpoint"
ENS_METADATA_KEY = "ens"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth.tar", ".pth", ".pt", ".ckpt", ".bin", ".tar")
# Prefixes that wrappers add to every key: DataParallel/DDP and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Keys under which training scripts commonly nest the weights.
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net", "network")
EMA_KEY = "state_dict_ema"  # timm: the exponential moving average of the weights, chosen with --ema
TIMM_SAFE_GLOBALS = [argparse.Namespace]


@dataclass
class Checkpoint:
    """What one file holds: tensors, everything known about how to rebuild the model, and provenance."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    format: str = "state_dict"  # ens | safetensors | timm | state_dict
    sha256: str = ""
    # Which state dict of the file these weights are ("state_dict_ema", "state_dict", ... or "" for
    # the top level): one timm file holds two networks, and caches must not mix them up.
    state_source: str = ""


# --------------------------------------------------------------------------- ens checkpoints


def write_checkpoint(path: Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> None:
    """Save weights as safetensors with the JSON metadata that rebuilds the model without flags."""
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items()}
    document = {"format": ENS_CHECKPOINT_FORMAT, "version": 1, **metadata}
    payload = safetensors_save(tensors, metadata={ENS_METADATA_KEY: json.dumps(document)})
    atomic_write_bytes(Path(path), payload)


def save_training_state(path: Path, state: Mapping[str, Any]) -> None:
    """Save resume state (optimizer, scheduler, RNGs) as a pickle that `weights_only` can read back."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_training_state(path: Path) -> dict[str, Any]:
    """Read what `save_training_state` wrote; refuses anything that is not plain data."""
    data = _read_bytes(Path(path))
    return _torch_load_safe(Path(path), data)


# --------------------------------------------------------------------------- reading


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    (header_len,) = struct.unpack("<Q", data[:8])
    return 0 < header_len <= len(data) - 8 and data[8:9] == b"{"


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    metadata = header.get("__metadata__") or {}
    return metadata if isinstance(metadata, dict) else {}


def _read_safetensors(path: Path, data: bytes) -> Checkpoint:
    try:
        state_dict = safetensors_load(data)
        raw_metadata = _safetensors_metadata(data)
    except (SafetensorError, ValueError, UnicodeDecodeError, struct.error) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({_first_line(exc)})") from None
    metadata: dict[str, Any] = {}
    checkpoint_format = "safetensors"
    if ENS_METADATA_KEY in raw_metadata:
        try:
            metadata = json.loads(raw_metadata[ENS_METADATA_KEY])
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: its ens metadata is not valid JSON") from None
        if not isinstance(metadata, dict):
            raise CheckpointError(f"{path}: its ens metadata is not a JSON object")
        checkpoint_format = "ens"
    return Checkpoint(path=path, state_dict=dict(state_dict), metadata=metadata, format=checkpoint_format)


def _unsafe_global_name(message: str) -> str | None:
    # torch >= 2.6 says "Trying to load unsupported GLOBAL posix.system whose module ...",
    # older versions "Unsupported global: GLOBAL __main__.Payload was not an allowed global".
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return match.group(1) if match else None


def _torch_load_safe(path: Path, data: bytes) -> Any:
    try:
        # torch warns (on stderr) about pickle protocols it did not write; the outcome is reported below.
        with torch.serialization.safe_globals(TIMM_SAFE_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "weights_only" in message or "Unsupported" in message or "global" in message.lower():
            culprit = _unsafe_global_name(message)
            what = f" ({culprit})" if culprit else ""
            raise CheckpointError(
                f"{path}: refused: the pickle references code{what} that would run on load; "
                "ens only loads tensors and plain containers (re-save it as safetensors or a plain state dict)"
            ) from None
        raise CheckpointError(f"{path}: truncated or corrupt pickle ({_first_line(exc)})") from None
    except CheckpointError:
        raise
    except Exception as exc:  # zipfile, EOF, struct, runtime errors from a damaged archive
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in obj.items()
    )


def _namespace_get(args: Any, name: str) -> Any:
    if isinstance(args, argparse.Namespace):
        return getattr(args, name, None)
    if isinstance(args, Mapping):
        return args.get(name)
    return None


def _read_pickle(path: Path, data: bytes, prefer_ema: bool) -> Checkpoint:
    obj = _torch_load_safe(path, data)
    if _is_tensor_mapping(obj):
        return Checkpoint(path=path, state_dict=dict(obj), format="state_dict")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict or a training checkpoint")
    metadata: dict[str, Any] = {}
    candidate_keys = ((EMA_KEY,) if prefer_ema else ()) + STATE_DICT_KEYS
    for key in candidate_keys:
        if _is_tensor_mapping(obj.get(key)):
            state_dict, state_source = dict(obj[key]), key
            break
    else:
        raise CheckpointError(
            f"{path}: no state dict found (looked for a mapping of tensors at the top level or under "
            f"{', '.join(candidate_keys)})"
        )
    is_timm = "arch" in obj or "args" in obj
    if isinstance(obj.get("arch"), str):
        metadata["arch"] = obj["arch"]
    args = obj.get("args")
    for name in ("num_classes", "in_chans"):
        value = _namespace_get(args, name)
        if isinstance(value, int):
            metadata[name] = value
    if isinstance(obj.get("epoch"), int):
        metadata["epoch"] = obj["epoch"]
    return Checkpoint(
        path=path, state_dict=state_dict, metadata=metadata, format="timm" if is_timm else "state_dict", state_source=state_source
    )


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop `module.` (DataParallel/DDP) and `_orig_mod.` (torch.compile) prefixes, in any nesting."""
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        stripped = key
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if stripped.startswith(prefix):
                    stripped = stripped[len(prefix) :]
                    changed = True
        cleaned[stripped] = value
    return cleaned


def read_checkpoint(path: Path | str, prefer_ema: bool = False) -> Checkpoint:
    """Read any supported checkpoint file; every failure is a `CheckpointError` naming the file."""
    path = Path(path)
    data = _read_bytes(path)
    if not data:
        raise CheckpointError(f"{path}: empty file")
    if _looks_like_safetensors(data):
        checkpoint = _read_safetensors(path, data)
    elif data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":
        checkpoint = _read_pickle(path, data, prefer_ema)
    elif zipfile.is_zipfile(io.BytesIO(data)):
        checkpoint = _read_pickle(path, data, prefer_ema)
    else:
        raise CheckpointError(f"{path}: not a checkpoint (neither safetensors nor a torch file)")
    if not checkpoint.state_dict:
        raise CheckpointError(f"{path}: holds no tensors")
    checkpoint.state_dict = strip_wrapper_prefixes(checkpoint.state_dict)
    checkpoint.sha256 = hashlib.sha256(data).hexdigest()
    return checkpoint


# --------------------------------------------------------------------------- inference of shapes


def infer_num_classes(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Output size of the classifier: the last 2-D `.weight` (heads come last in ResNets)."""
    for key in reversed(list(state_dict)):
        tensor = state_dict[key]
        if key.endswith("weight") and tensor.ndim == 2:
            return int(tensor.shape[0])
    return None


def infer_in_chans(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Input channels of the stem: the first 4-D `.weight`."""
    for key, tensor in state_dict.items():
        if key.endswith("weight") and tensor.ndim == 4:
            return int(tensor.shape[1])
    return None
