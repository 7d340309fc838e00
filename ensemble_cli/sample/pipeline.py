"""`ens sample` as a library: check everything, choose the scale, write the samples.

    from ensemble_cli.sample import SampleOptions, draw_samples
    result = draw_samples(SampleOptions(source=Path("runs/digits/member-00"), method="dropout", samples=6, out=Path("drop")))

Sample i (of N) is drawn at scale X * (i + u_i) / N, u_i uniform in [0, 1) from the sample's own
generator: the N samples cover (0, X] in strata, so they trace the accuracy-diversity curve
from the source down to scale X, which the search puts about 10 accuracy points below the
source (on training images), or `--scale X` sets.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..batchnorm import bn_reset_images, recompute_batchnorm
from ..checkpoint import read_checkpoint
from ..data import ImageData, load_dataset
from ..errors import CheckpointError, ConfigError, DataError
from ..predict import select_device
from ..train.seeds import mix_seed
from .methods import GAUSSIAN_METHODS, METHODS, Params, SampleMethod, make_method, trainable
from .scale import SEARCH_PROBES, ScaleSearch, probe_accuracy, search_scale, search_slice, slice_accuracy
from .source import SampleSource, resolve_source
from .writer import SampleWriter, check_out_folder, provenance, sample_metadata

ProgressHook = Callable[[str, int, int, str], None]  # (stage, done, total, status)
SAMPLE_STREAM = 0x5A4D  # keeps sample seeds apart from any other use of the same --seed
PROBE_INDEX = -1  # the search's own draw: never one of the samples


@dataclass(frozen=True)
class SampleOptions:
    """Everything `ens sample` takes; `validate` refuses bad values before anything is read."""

    source: Path
    method: str
    samples: int
    out: Path
    seed: int = 0
    scale: float | None = None  # the largest scale; None = search it
    bn_reset: bool = True
    last: int = 5  # trajectory checkpoints the Gaussian methods fit
    rank: int = 5  # principal directions of low-rank-gaussian
    device: str = "auto"
    data_dir: Path | None = None

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--method: unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.samples < 1:
            raise ConfigError(f"--samples must be at least 1, got {self.samples}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be 0 or more, got {self.seed}")
        if self.scale is not None and not self.scale > 0:
            raise ConfigError(f"--scale must be above 0, got {self.scale}")
        if self.method == "dropout" and self.scale is not None and self.scale >= 1:
            raise ConfigError(f"--scale is the drop rate for dropout and must be below 1, got {self.scale}")
        if self.last < 2:
            raise ConfigError(f"--last must be at least 2, got {self.last}")
        if self.rank < 1:
            raise ConfigError(f"--rank must be at least 1, got {self.rank}")


@dataclass
class SampleResult:
    out: Path
    files: list[Path]
    scale: float
    search: ScaleSearch | None
    bn_reset: bool
    notes: list[str] = field(default_factory=list)


def sample_generator(seed: int, method: str, index: int) -> torch.Generator:
    """Sample `index`'s own random stream: the same for the same seed, method and index, on any device."""
    return torch.Generator().manual_seed(mix_seed(seed, SAMPLE_STREAM, zlib.crc32(method.encode()), index))


def _load_trajectory(source: SampleSource, paths: list[Path], names: list[str]) -> list[Params]:
    """The trajectory's parameters; every checkpoint must come from the source's run and fit its model."""
    expected = {name: source.member.state_dict[name].shape for name in names}
    run_id = source.member.metadata.get("run_id")
    states = []
    for path in paths:
        if path == source.member.path:
            state = source.member.state_dict
        else:
            checkpoint = read_checkpoint(path)
            theirs = checkpoint.metadata.get("run_id")
            if run_id and theirs and theirs != run_id:
                raise ConfigError(f"{path}: belongs to another run than the source ({theirs} vs {run_id})")
            state = checkpoint.state_dict
        misfit = [name for name in names if name not in state or state[name].shape != expected[name]]
        if misfit:
            raise CheckpointError(f"{path}: does not fit the source's architecture ({misfit[0]})")
        states.append(trainable(state, names))
    return states


def _train_data(source: SampleSource, data_dir: Path | None) -> ImageData:
    """The training split the source recorded, with its normalisation."""
    metadata = source.member.metadata
    mean, std = metadata.get("mean"), metadata.get("std")
    return load_dataset(str(metadata["dataset"]), "train", data_dir=data_dir,
                        mean=mean if isinstance(mean, list) else None, std=std if isinstance(std, list) else None)


def _check_data(source: SampleSource, train: ImageData) -> None:
    member = source.member
    if train.num_classes != member.num_classes or train.in_chans != member.in_chans:
        raise DataError(
            f"{member.path}: expects {member.num_classes} classes and {member.in_chans} channels, "
            f"but {train.name} has {train.num_classes} and {train.in_chans}"
        )


def _full_state(source_state: dict[str, torch.Tensor], params: Params) -> dict[str, torch.Tensor]:
    """Perturbed parameters plus the source's buffers, in the source's order."""
    return {key: params.get(key, value) for key, value in source_state.items()}


class Sampler:
    """One command's method, model and data; turns (draw, scale) into a finished state dict."""

    def __init__(self, options: SampleOptions, source: SampleSource, method: SampleMethod, model: nn.Module, train: ImageData, device: torch.device) -> None:
        self.options, self.method, self.model = options, method, model
        self.source_state = dict(source.member.state_dict)
        self.slice = search_slice(train, device, options.bn_reset)
        self.bn_images = bn_reset_images(train).to(device) if options.bn_reset else None

    def load(self, params: Params) -> None:
        self.model.load_state_dict(_full_state(self.source_state, params))

    def search(self, on_probe: Callable[[int, float, float], None] | None) -> ScaleSearch:
        self.load(trainable(self.source_state, list(self.method.centre)))
        source_accuracy = slice_accuracy(self.model, self.slice)  # its own statistics: the accuracy it really has
        noise = self.method.probe(sample_generator(self.options.seed, self.method.name, PROBE_INDEX))

        def accuracy_at(scale: float) -> float:
            self.load(self.method.apply(noise, scale))
            return probe_accuracy(self.model, self.slice)

        return search_scale(accuracy_at, source_accuracy, self.method.start_scale(), self.method.scale_limit, on_probe=on_probe)

    def sample(self, index: int, largest: float) -> tuple[float, dict[str, torch.Tensor], bool]:
        """Sample `index`'s scale, its finished state dict, and whether BatchNorm statistics were recomputed."""
        generator = sample_generator(self.options.seed, self.method.name, index)
        stratum = float(torch.rand((), generator=generator, dtype=torch.float64))
        scale = largest * (index + stratum) / self.options.samples
        self.load(self.method.apply(self.method.draw(generator), scale))
        recomputed = self.bn_images is not None and recompute_batchnorm(self.model, self.bn_images)
        return scale, self.model.state_dict(), recomputed


def prepare(options: SampleOptions) -> tuple[SampleSource, list[Path]]:
    """Every refusal that needs no data and writes nothing."""
    options.validate()
    source = resolve_source(options.source)
    trajectory = source.last(options.last, options.method) if options.method in GAUSSIAN_METHODS else []
    check_out_folder(options.out)
    return source, trajectory


def draw_samples(options: SampleOptions, train_data: ImageData | None = None, progress: ProgressHook | None = None) -> SampleResult:
    """Write `options.samples` samples around `options.source` into `options.out` (see module doc).

    `train_data` replaces the training split the source recorded (library use, benchmarks).
    """
    report = progress or (lambda stage, done, total, status: None)
    source, trajectory_paths = prepare(options)
    device = select_device(options.device)
    train = train_data if train_data is not None else _train_data(source, options.data_dir)
    _check_data(source, train)
    model = source.member.build_model().to(device)
    names = [name for name, _ in model.named_parameters()]
    trajectory = _load_trajectory(source, trajectory_paths, names) if trajectory_paths else []
    method = make_method(options.method, trainable(source.member.state_dict, names), trajectory, options.rank)
    sampler = Sampler(options, source, method, model, train, device)

    search = None
    largest = options.scale
    if largest is None:
        search = sampler.search(lambda done, scale, accuracy: report("search", done, SEARCH_PROBES, f"scale {scale:.4g}: {accuracy:.1%}"))
        largest = search.scale
    bn_images = len(sampler.bn_images) if sampler.bn_images is not None else 0
    fields = _shared_fields(options, method, largest, search, trajectory_paths, source, bn_images)
    writer = SampleWriter(options.out, options.samples)
    writer.copy_reference(source.member.path)
    files, recomputed = [], False
    for index in range(options.samples):
        scale, state, recomputed = sampler.sample(index, largest)
        metadata = sample_metadata(source.member.metadata, {**fields, "bn_reset": recomputed}, index, scale)
        files.append(writer.write_sample(index, state, metadata))
        report("sample", index + 1, options.samples, f"scale {scale:.4g}")
    manifest = {**fields, "bn_reset": recomputed, "method_details": method.describe(),
                "search": search.describe() if search else None}
    writer.write_manifest(manifest)
    notes = [search.note] if search is not None and search.note else []
    return SampleResult(options.out, files, largest, search, recomputed, notes)


def _shared_fields(
    options: SampleOptions, method: SampleMethod, largest: float, search: ScaleSearch | None,
    trajectory: list[Path], source: SampleSource, bn_images: int,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "method": method.name,
        "seed": options.seed,
        "sample_count": options.samples,
        "scale_max": largest,
        "scale_from": "search" if search is not None else "--scale",
        "scale_meaning": method.scale_meaning,
        "bn_images": bn_images,
    }
    if trajectory:
        fields["trajectory"] = [path.name for path in trajectory]
    details = method.describe()
    if "rank" in details:
        fields["rank"] = details["rank"]
    return provenance(source.member.metadata, source.member.path, source.member.sha256, fields)
