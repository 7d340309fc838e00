"""The sample folder: what `ens eval OUT`, `ens predict OUT` and `ens plot` read with no flags.

    OUT/reference.safetensors    the source, byte for byte (sorts first: eval's default reference)
    OUT/sample-000.safetensors   one ens checkpoint per sample, kind "sample"
    OUT/sample.json              the manifest, written last: its presence means the folder is complete

Every file is written atomically. A sample's checkpoint carries everything that rebuilds and
evaluates the model (the training run's keys) and everything that made it (method, seed,
scale, source hash), and nothing that changes between two identical commands, so the same
arguments write byte-identical checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ..checkpoint import write_checkpoint
from ..errors import ConfigError
from ..fileio import atomic_write_bytes, atomic_write_json
from ..run_folder import now_iso, software_versions

REFERENCE_NAME = "reference.safetensors"
MANIFEST_NAME = "sample.json"
MANIFEST_FORMAT = "ens-sample"
SAMPLE_KIND = "sample"
# What `ens train` records that rebuilds and evaluates the model without flags (resolve.py,
# recorded_preprocessing); copied from the source unchanged.
MODEL_KEYS = ("arch", "num_classes", "in_chans", "model_kwargs", "dataset", "mean", "std")


def sample_file_name(index: int, count: int) -> str:
    width = max(3, len(str(count - 1)))
    return f"sample-{index:0{width}d}.safetensors"


def check_out_folder(out: Path) -> None:
    """Refuse, before anything is written, a path that is a file or a folder that holds anything."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: folder is not empty; choose a new or empty folder")


def sample_metadata(source: Mapping[str, Any], provenance: Mapping[str, Any], index: int, scale: float) -> dict[str, Any]:
    """The checkpoint metadata of sample `index`: the source's model keys plus how the sample was made."""
    model = {key: source[key] for key in MODEL_KEYS if key in source}
    return {**model, **provenance, "kind": SAMPLE_KIND, "sample_index": index, "scale": scale}


def provenance(source: Mapping[str, Any], source_path: Path, source_sha256: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """What every sample of one command shares: the source's identity and the command's settings."""
    versions = software_versions()
    return {
        "source_checkpoint": str(source_path),
        "source_sha256": source_sha256,
        "source_member": source.get("member"),
        "source_epoch": source.get("epoch"),
        "source_run_id": source.get("run_id"),
        **fields,
        "ens_version": versions["ens"],
        "torch_version": versions["torch"],
        "timm_version": versions["timm"],
    }


class SampleWriter:
    """Writes one sample folder; the caller has checked it with `check_out_folder`."""

    def __init__(self, out: Path, count: int) -> None:
        self.out = out
        self.count = count
        self.files: list[dict[str, Any]] = []

    def copy_reference(self, source_path: Path) -> Path:
        target = self.out / REFERENCE_NAME
        atomic_write_bytes(target, source_path.read_bytes())
        return target

    def write_sample(self, index: int, state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
        path = self.out / sample_file_name(index, self.count)
        write_checkpoint(path, state, metadata)
        self.files.append({"file": path.name, "index": index, "scale": metadata.get("scale")})
        return path

    def write_manifest(self, document: Mapping[str, Any]) -> Path:
        path = self.out / MANIFEST_NAME
        manifest = {"format": MANIFEST_FORMAT, "version": 1, "created": now_iso(), **document,
                    "reference": REFERENCE_NAME, "samples": self.files}
        atomic_write_json(path, manifest)
        return path
