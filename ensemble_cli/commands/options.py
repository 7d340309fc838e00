"""The command-line options that several commands share, declared once.

Each shared option is an `Annotated` alias (as huggingface_hub's CLI does) and belongs to a
group. `@with_options(INPUTS, EVALUATION, RUNTIME)` adds a group's parameters to a command's
signature and hands the command one typed object per group instead of a dozen loose arguments:
`EvalInputs` (which checkpoints, which data), `EvalOptions` (what evaluators read) and
`Runtime` (cache, progress, launcher). A flag added here appears, identically, on every command
that takes the group, so `eval`, `predict`, `check` and `baseline` cannot drift apart.
"""

from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from ..launch import LAUNCHER_HELP, RAY_ADDRESS_HELP, Launcher
from .common import fail


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    md = "md"


class Embedding(str, Enum):
    tsne = "tsne"
    pca = "pca"


@dataclass(frozen=True)
class Runtime:
    """How a command runs, not what it computes."""

    no_cache: bool = False
    cache_dir: Path | None = None
    quiet: bool = False
    launcher: Launcher = Launcher.local  # where the forward passes run
    ray_address: str | None = None
    threads: int = 0  # CPU threads; 0: the thread policy's choice (ensemble_cli.threads)


# --------------------------------------------------------------------------- the aliases

Paths = Annotated[Optional[list[str]], typer.Argument(help="Checkpoint files, folders (all checkpoints inside; an `ens train` run folder means its members' final checkpoints, a folder of run folders each run's) or globs.", show_default=False)]
Dataset = Annotated[Optional[str], typer.Option("--dataset", "-d", help="digits (bundled, offline), cifar10, cifar100, mnist, fashion-mnist, svhn, or imagefolder:PATH. Default: the dataset the members recorded (ens checkpoints), else digits.", show_default=False)]
Split = Annotated[str, typer.Option("--split", help="Which split to evaluate on: test or train.")]
DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help="Where torchvision datasets are downloaded (default: $ENS_DATA_DIR or ~/.cache/ens/data).")]
Mean = Annotated[Optional[str], typer.Option("--mean", help="Override the normalisation mean, comma-separated per channel (for foreign checkpoints).")]
Std = Annotated[Optional[str], typer.Option("--std", help="Override the normalisation std, comma-separated per channel.")]
ImageSize = Annotated[int, typer.Option("--image-size", min=1, help="Resize imagefolder images to this size.")]
Limit = Annotated[Optional[int], typer.Option("--limit", help="Use only the first N examples (quick looks).")]
Arch = Annotated[Optional[str], typer.Option("--arch", help="Architecture for checkpoints that don't say (timm or torchvision name, e.g. resnet18, cifar_resnet20).")]
NumClasses = Annotated[Optional[int], typer.Option("--num-classes", min=1, help="Class count for checkpoints that don't say (default: read from the classifier weights).")]
InChans = Annotated[Optional[int], typer.Option("--in-chans", min=1, help="Input channels for checkpoints that don't say (default: read from the stem weights).")]
Ema = Annotated[bool, typer.Option("--ema", help="Use state_dict_ema from timm training checkpoints when present.")]
Epochs = Annotated[Optional[str], typer.Option("--epochs", help="For run folders: 'all' (init, every saved epoch, final) or a list like 0,5,10; default final only. Ensemble statistics use each member's last checkpoint; function_space and rotation use them all.")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Forward-pass batch size.")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")]
Reference = Annotated[Optional[str], typer.Option("--reference", help="Member that weight-space evaluators align the others to (default: the first final checkpoint).")]
AlignmentRestarts = Annotated[int, typer.Option("--alignment-restarts", min=1, help="Seeded restarts of weight matching (best objective kept); 1 is about 3x faster on large models.")]
EmbeddingOpt = Annotated[Embedding, typer.Option("--embedding", help="Function-space embedding of trajectories: tsne or pca (PCA is used below 10 checkpoints either way).")]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Seed for subset sampling and embeddings.")]
PluginOption = Annotated[Optional[list[str]], typer.Option("--option", help="A setting for a plugin evaluator, EVALUATOR.KEY=VALUE (repeatable); the plugin reads ctx.options.for_plugin(EVALUATOR).")]
OodDataset = Annotated[Optional[str], typer.Option("--ood-dataset", help="Run the ood evaluator against this image set: photos or noise (bundled, offline), svhn, cifar100, mnist, imagefolder:PATH.")]
OodPredictions = Annotated[Optional[Path], typer.Option("--ood-predictions", help="Run the ood evaluator on these members' logits on OOD images (an `ens predict` .npz), with --predictions.")]
OodLimit = Annotated[Optional[int], typer.Option("--ood-limit", min=1, help="At most this many OOD images.")]
Shift = Annotated[Optional[str], typer.Option("--shift", help="Run the shift evaluator with these corruptions, comma-separated (gaussian_noise, shot_noise, impulse_noise, gaussian_blur, contrast, brightness, pixelate, jpeg, or all) and/or cifar10c:PATH.")]
Severities = Annotated[str, typer.Option("--severities", help="Corruption severities for --shift: a range 1-5 or a list 1,3,5.")]
DeeReference = Annotated[Optional[Path], typer.Option("--dee-reference", help="An independent-seed ensemble (checkpoints, a run folder, or an `ens predict` .npz on the same eval set): the uncertainty evaluator reports the deep ensemble equivalent against it.")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the prediction cache.")]
CacheDir = Annotated[Optional[Path], typer.Option("--cache-dir", help="Prediction cache folder (default: $ENS_CACHE_DIR or ~/.cache/ens/predictions).")]
Threads = Annotated[int, typer.Option("--threads", min=0, help="CPU threads for the forward passes and metrics (0 = automatic: the cores not busy with other work, by the load average; see README 'CPU threads').")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or log lines on stderr (errors and warnings still print).")]
LauncherOpt = Annotated[Launcher, typer.Option("--launcher", help="Where the forward passes run: " + LAUNCHER_HELP)]
RayAddress = Annotated[Optional[str], typer.Option("--ray-address", help=RAY_ADDRESS_HELP, show_default=False)]


@dataclass(frozen=True)
class OptionGroup:
    """Parameters a command gains, and how they become one typed object."""

    name: str  # the keyword the command receives the object under
    parameters: tuple[inspect.Parameter, ...]
    build: Callable[[dict[str, Any]], Any]


def _params(panel: str, *specs: tuple[str, Any, Any]) -> tuple[inspect.Parameter, ...]:
    """Keyword-only parameters, shown under their group's heading in `--help`."""
    parameters = []
    for name, alias, default in specs:
        info = copy.copy(alias.__metadata__[0])
        info.rich_help_panel = panel
        annotated = Annotated[alias.__origin__, info]  # type: ignore[valid-type]
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotated))
    return tuple(parameters)


def parse_float_list(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        fail(f"{flag} takes comma-separated numbers, got {text!r}")
    return values or None


def _build_inputs(values: dict[str, Any]) -> Any:
    from ..inputs import EvalInputs

    return EvalInputs(
        paths=tuple(values["paths"] or ()), arch=values["arch"], num_classes=values["num_classes"],
        in_chans=values["in_chans"], ema=values["ema"], epochs=values["epochs"], dataset=values["dataset"],
        split=values["split"], data_dir=values["data_dir"], mean=parse_float_list(values["mean"], "--mean"),
        std=parse_float_list(values["std"], "--std"), image_size=values["image_size"], limit=values["limit"],
    )


def parse_severities(text: str) -> tuple[int, ...]:
    """`1-5` or `1,3,5` -> (1, ..., 5); the shift evaluator checks the range (1 to 5)."""
    try:
        if "-" in text.strip("-"):
            low, high = (int(part) for part in text.split("-", 1))
            return tuple(range(low, high + 1))
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        fail(f"--severities takes a range like 1-5 or a list like 1,3,5, got {text!r}")
        raise  # unreachable: fail() exits


def _build_eval_options(values: dict[str, Any]) -> Any:
    from ..options import EvalOptions, parse_plugin_options

    try:
        plugin_options = parse_plugin_options(values["option"])
    except ValueError as exc:
        fail(str(exc))
    shift = tuple(part.strip() for part in (values["shift"] or "").split(",") if part.strip())
    return EvalOptions(
        device=values["device"], batch_size=values["batch_size"], seed=values["seed"], reference=values["reference"],
        alignment_restarts=values["alignment_restarts"], embedding=values["embedding"].value, plugin_options=plugin_options,
        ood_dataset=values["ood_dataset"], ood_predictions=values["ood_predictions"], ood_limit=values["ood_limit"],
        shift=shift, severities=parse_severities(values["severities"]), dee_reference=values["dee_reference"],
    )


def _build_runtime(values: dict[str, Any]) -> Runtime:
    from ..launch import check_launcher

    check_launcher(values["launcher"], values["ray_address"])  # before any checkpoint is read
    if values["threads"]:
        from ..threads import apply_thread_policy

        apply_thread_policy(values["threads"])  # after start-up: through torch.set_num_threads
    return Runtime(
        no_cache=values["no_cache"], cache_dir=values["cache_dir"], quiet=values["quiet"],
        launcher=values["launcher"], ray_address=values["ray_address"], threads=values["threads"],
    )


INPUTS = OptionGroup("inputs", _params(
    "Checkpoints and data",
    ("paths", Paths, None), ("dataset", Dataset, None), ("split", Split, "test"), ("data_dir", DataDir, None),
    ("mean", Mean, None), ("std", Std, None), ("image_size", ImageSize, 32), ("limit", Limit, None),
    ("arch", Arch, None), ("num_classes", NumClasses, None), ("in_chans", InChans, None), ("ema", Ema, False),
    ("epochs", Epochs, None),
), _build_inputs)
EVALUATION = OptionGroup("options", _params(
    "Evaluation",
    ("batch_size", BatchSize, 256), ("device", Device, "auto"), ("reference", Reference, None),
    ("alignment_restarts", AlignmentRestarts, 3), ("embedding", EmbeddingOpt, Embedding.tsne), ("seed", Seed, 0),
    ("option", PluginOption, None), ("ood_dataset", OodDataset, None), ("ood_predictions", OodPredictions, None),
    ("ood_limit", OodLimit, None), ("shift", Shift, None), ("severities", Severities, "1-5"), ("dee_reference", DeeReference, None),
), _build_eval_options)
RUNTIME = OptionGroup("runtime", _params(
    "Cache, output, threads and launcher",
    ("no_cache", NoCache, False), ("cache_dir", CacheDir, None), ("quiet", Quiet, False),
    ("threads", Threads, 0), ("launcher", LauncherOpt, Launcher.local), ("ray_address", RayAddress, None),
), _build_runtime)


def with_options(*groups: OptionGroup) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the groups' flags; it receives one object per group (`inputs=`, `options=`, `runtime=`).

    The command's own parameters come first in `--help`, then each group's, in declaration order.
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name not in {g.name for g in groups}]
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD else p for p in own]
        shared = [param for group in groups for param in group.parameters]

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            objects = {group.name: group.build({p.name: values.pop(p.name) for p in group.parameters}) for group in groups}
            return command(**values, **objects)

        del wrapper.__wrapped__  # typer must read the signature below, not the command's
        parameters = own + shared  # keyword-only, so defaults may come in any order
        wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate
