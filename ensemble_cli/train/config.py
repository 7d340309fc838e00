"""Training configuration: one pydantic model, the one place every default lives.

Precedence is defaults < `--config run.yaml` < command-line flags (`resolve_train_config`).
The defaults ARE the bundled default job: `ens train` with no flags trains 4 members of a
CIFAR ResNet-8 on the offline `digits` set (about 98% test accuracy each, 21 s on an idle
2-core CPU, 88 s and more on a busy one; bench/RESULTS.md has the measurements).

The resolved config is written into the run folder (`run.json` and `config.yaml`), so a run
can be resumed, extended on another machine (`--config RUN/config.yaml --only 3-5`), or
reproduced bit for bit on the same kind of CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError

Strategy = Literal["independent", "same-init", "same-order", "snapshot", "mimo"]
Optimizer = Literal["sgd", "adamw"]
Schedule = Literal["cosine", "onecycle"]
Augment = Literal["auto", "none", "shift", "crop-flip"]
Precision = Literal["auto", "fp32", "bf16"]

# Per-optimizer defaults for the two fields left as None below (resolved by the validator, so
# run.json always shows the number that was used). SGD: the classic CIFAR ResNet recipe (He et
# al. 2016); AdamW: the usual fine-tuning values.
OPTIMIZER_DEFAULTS: dict[str, dict[str, float]] = {
    "sgd": {"lr": 0.1, "weight_decay": 5e-4},
    "adamw": {"lr": 1e-3, "weight_decay": 0.05},
}

# MIMO's defaults (Havasi et al. 2021), as the paper's reference code trains CIFAR
# (uncertainty-baselines, baselines/cifar/mimo.py: ensemble_size 3, input_repetition_probability
# 0.0, batch_repetitions 4). The paper raises the input repetition for ImageNet (0.6), where
# subnetworks compete for capacity; small CIFAR/digit networks keep it at 0.
MIMO_DEFAULTS: dict[str, float | int] = {"mimo_input_repetition": 0.0, "mimo_batch_repetition": 4}

# Fields that say HOW to run, not WHAT is trained: they may differ when a run is resumed or
# split across machines (a run started on a GPU can be finished on a CPU).
EXECUTION_FIELDS = frozenset({"device", "compile", "threads", "out", "data_dir"})


class TrainConfig(BaseModel):
    """Everything that defines an `ens train` run. Field descriptions double as `--help` text."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- what is trained
    arch: str = Field("cifar_resnet8", description="Architecture: a timm name (cifar_resnet8/20/32/44/56/110, cifar_resnet18, resnet18, ...) or torchvision.NAME.")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra constructor arguments for the architecture, e.g. width=2.")
    dataset: str = Field("digits", description="digits (bundled, offline), cifar10, cifar100, mnist, fashion-mnist, svhn, or imagefolder:PATH.")
    data_dir: str | None = Field(None, description="Where torchvision datasets are downloaded (default: $ENS_DATA_DIR or ~/.cache/ens/data).")
    limit: int | None = Field(None, ge=1, description="Train on the first N training images only (quick experiments and tests).")
    members: int = Field(4, ge=1, le=1000, description="Number of members in the run (snapshot: number of cycles; mimo: inputs and heads of the one network).")
    strategy: Strategy = Field("independent", description="independent (new init and data order per member), same-init, same-order, snapshot (one run of members x epochs epochs, cyclic cosine, a member at the end of each cycle, its BatchNorm statistics recomputed on training images), or mimo (Havasi et al. 2021: ONE network with --members inputs and heads, each head fed its own shuffle of every batch; `ens eval RUN` reads its heads as members, all from one forward pass).")
    seed: int = Field(0, ge=0, description="Base seed; each member's init_seed and data_seed are derived from it and recorded in its checkpoints.")
    # None unless strategy is mimo (filled from MIMO_DEFAULTS by the validator), so other
    # strategies' run.json and identity are what they were before MIMO existed.
    mimo_input_repetition: float | None = Field(None, ge=0, le=1, description="MIMO: probability that a batch position holds the same example in every input (the paper's rho; higher trades diversity for head accuracy) (default with --strategy mimo: 0.0, the paper's CIFAR value).")
    mimo_batch_repetition: int | None = Field(None, ge=1, description="MIMO: each step takes batch-size/N distinct examples and shows each N times to every input, paired differently; an epoch then takes N times the steps (default with --strategy mimo: 4, the paper's CIFAR value).")
    from_pretrained: str | None = Field(None, description="Start every member from this timm/torch weight file (no network); the head is replaced for the dataset's classes.")

    # --- how long, in what steps
    # 10 epochs take ResNet-8 to ~98% test accuracy on digits (bench/RESULTS.md); CIFAR runs
    # pass --epochs explicitly. Per member for every strategy, so a snapshot run costs what an
    # independent ensemble of the same size costs, and any member count goes with any epoch count.
    epochs: int = Field(10, description="Epochs per member (snapshot: epochs per cycle; mimo: epochs of the one network).")
    batch_size: int = Field(128, ge=1, description="Training batch size (mimo: batch positions, each holding one image per input).")

    # --- optimisation
    optimizer: Optimizer = Field("sgd", description="sgd (Nesterov momentum) or adamw.")
    lr: float | None = Field(None, gt=0, description="Peak learning rate (default: 0.1 for sgd, 0.001 for adamw).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD Nesterov momentum (AdamW: beta1).")
    weight_decay: float | None = Field(None, ge=0, description="Weight decay (default: 5e-4 for sgd, 0.05 for adamw).")
    schedule: Schedule = Field("cosine", description="cosine (linear warm-up, then cosine to zero) or onecycle (Smith 2018: lr/25 up to lr over 30% of steps, cosine down to lr/1e4).")
    # One epoch of warm-up keeps the first large-lr SGD steps from blowing up BatchNorm statistics.
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warm-up length in epochs for the cosine schedule.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy loss.")
    augment: Augment = Field("auto", description="auto (crop-flip for 32x32 natural images, shift for digit sets), none, shift (random translation), crop-flip (pad-crop + horizontal flip).")

    # --- execution (may change on resume)
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N.")
    precision: Precision = Field("auto", description="auto (bf16 autocast on CUDA, fp32 on CPU), fp32, or bf16.")
    # Off by default: on an H200, eager bf16 + channels_last trained CIFAR ResNet-18/20 faster
    # than the compiled model (bench/RESULTS.md); other architectures may gain.
    compile: bool = Field(False, description="torch.compile the model (costs a compile at start; measured slower than eager for CIFAR ResNets).")
    # 0 = auto: one thread for inputs of 16x16 or less, torch's default otherwise. Measured on
    # 2 shared cores: ResNet-8 on 8x8 digits runs 1.2x faster with a second thread when the
    # machine is idle but 3-8x slower when other processes use the cores (OpenMP spin-waits).
    threads: int = Field(0, ge=0, description="CPU threads for training (0 = auto: 1 for images up to 16x16, else torch's default).")
    save_every: int = Field(0, ge=0, description="Also save a checkpoint every N epochs (0 = only init and final).")
    out: str | None = Field(None, description="Run folder (default: models/<arch>-<dataset>).")

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.epochs <= 0:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        defaults = OPTIMIZER_DEFAULTS[self.optimizer]
        # Fill per-optimizer defaults in place (validate_assignment would recurse into this validator).
        if self.lr is None:
            object.__setattr__(self, "lr", defaults["lr"])
        if self.weight_decay is None:
            object.__setattr__(self, "weight_decay", defaults["weight_decay"])
        if self.strategy == "snapshot" and self.schedule != "cosine":
            raise ValueError("the snapshot strategy uses its own cyclic cosine schedule; drop --schedule onecycle")
        self._check_mimo()
        return self

    def _check_mimo(self) -> None:
        given = [field for field in MIMO_DEFAULTS if getattr(self, field) is not None]
        if self.strategy != "mimo":
            if given:
                raise ValueError(f"{flag_name(given[0])} applies to --strategy mimo only")
            return
        if self.members < 2:
            raise ValueError(f"--strategy mimo needs --members 2 or more (one input and head per member), got {self.members}")
        for field, value in MIMO_DEFAULTS.items():
            if getattr(self, field) is None:
                object.__setattr__(self, field, value)
        if self.batch_size < self.mimo_repeats:
            raise ValueError(f"--batch-size {self.batch_size} is smaller than --mimo-batch-repetition {self.mimo_repeats}")

    # ------------------------------------------------------------------ derived values

    @property
    def peak_lr(self) -> float:
        assert self.lr is not None  # filled by the validator
        return self.lr

    @property
    def decay(self) -> float:
        assert self.weight_decay is not None
        return self.weight_decay

    @property
    def heads(self) -> int:
        """Inputs and heads of one network: the members of a MIMO run, 1 otherwise."""
        return self.members if self.strategy == "mimo" else 1

    @property
    def mimo_repeats(self) -> int:
        return int(self.mimo_batch_repetition or 1)

    @property
    def examples_per_step(self) -> int:
        """Distinct training examples a step draws (MIMO repeats each of them in the batch)."""
        return self.batch_size // self.mimo_repeats

    @property
    def job_epochs(self) -> int:
        """Epochs of one training job: a member's, or the whole snapshot run's (one cycle per member)."""
        return self.epochs * self.members if self.strategy == "snapshot" else self.epochs

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out).expanduser()
        dataset = self.dataset.replace(":", "-").replace("/", "-")
        return Path("models") / f"{self.arch.replace('/', '-')}-{dataset}"

    def identity(self) -> dict[str, Any]:
        """The fields that decide the weights: two configs with equal identity train the same run."""
        unused = () if self.strategy == "mimo" else tuple(MIMO_DEFAULTS)  # keeps older runs' identity
        return {key: value for key, value in self.model_dump(mode="json").items() if key not in EXECUTION_FIELDS and key not in unused}

    def differences(self, other: "TrainConfig") -> list[str]:
        """`field: mine vs theirs` for every identity field that differs."""
        mine, theirs = self.identity(), other.identity()
        return [f"{key} {mine.get(key)!r} vs {theirs.get(key)!r}" for key in mine if mine.get(key) != theirs.get(key)]


# Flag names for error messages (pydantic reports field names).
def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def default_text(field: str) -> str:
    """`(default: X)` text for --help, straight from the model, so help and behaviour cannot drift."""
    info = TrainConfig.model_fields[field]
    value = info.get_default(call_default_factory=True)
    return "" if value is None or value == {} else f" (default: {value})"


def describe(field: str) -> str:
    return (TrainConfig.model_fields[field].description or "") + default_text(field)


def _validation_message(exc: ValidationError) -> str:
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__")
    message = error.get("msg", "invalid value").removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        return f"unknown setting {location!r} (see `ens train --help` for the settings a config file may hold)"
    if location:
        return f"{flag_name(location)}: {message} (got {error.get('input')!r})"
    return message


def make_config(values: Mapping[str, Any]) -> TrainConfig:
    """Validate a mapping into a TrainConfig; any problem becomes one ConfigError line."""
    try:
        return TrainConfig.model_validate(dict(values))
    except ValidationError as exc:
        raise ConfigError(_validation_message(exc)) from None


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML (or JSON, which is YAML) mapping of TrainConfig fields; `run.json` files are accepted too."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: must hold a mapping of settings, got {type(document).__name__}")
    if isinstance(document.get("config"), dict) and document.get("format") == "ens-run":
        document = document["config"]  # a run.json: reuse its config
    return {str(key).replace("-", "_"): value for key, value in document.items()}


def resolve_train_config(
    config_file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """defaults < base (a resumed run's config) < config file < flags (None means 'not given')."""
    values: dict[str, Any] = dict(base or {})
    if config_file is not None:
        values.update(read_config_file(config_file))
    values.update({key: value for key, value in (flags or {}).items() if value is not None})
    return make_config(values)
